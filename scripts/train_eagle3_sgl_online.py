#!/usr/bin/env python
"""Seed-compatible shim for `specforge train`."""
import sys

from specforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
