#!/usr/bin/env python
"""Shim for `specforge train --hidden-states-path ...` (offline training from stored hidden states)."""
import sys

from specforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
