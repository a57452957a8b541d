"""Nipype workflow factories (no science here: wiring only)."""
