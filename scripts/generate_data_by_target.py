#!/usr/bin/env python
"""Seed-compatible shim for `specforge regenerate`."""
import sys

from specforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["regenerate", *sys.argv[1:]]))
