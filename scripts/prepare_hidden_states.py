#!/usr/bin/env python
"""Shim for `specforge prepare-hidden-states`."""
import sys

from specforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare-hidden-states", *sys.argv[1:]]))
