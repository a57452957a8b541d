"""Thin nipype interfaces: read files, call plain functions, write files."""
