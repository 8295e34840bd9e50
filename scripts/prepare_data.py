#!/usr/bin/env python
"""Seed-compatible shim for `specforge prepare-data`."""
import sys

from specforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare-data", *sys.argv[1:]]))
