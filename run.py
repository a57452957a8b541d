#!/usr/bin/env python3
"""BIDS App entry point (containers call this): the same CLI as ``nmbids``."""
import sys

from nmbids.cli import main

if __name__ == "__main__":
    sys.exit(main())
