#!/usr/bin/env python
"""Seed-compatible shim for `specforge build-cache`."""
import sys

from specforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["build-cache", *sys.argv[1:]]))
