"""Seed entry point: ``python bench_model_speedup.py --model-path ... --config-list ...``.

A thin shim onto ``specforge bench`` (see ``specforge bench --help``).
"""

import sys

from specforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
