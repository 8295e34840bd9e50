"""Logging set-up shared by the CLI and the standalone tools (``specforge.bench.overhead``)."""

from __future__ import annotations

import logging
import sys


def setup_logging(verbose: bool = False) -> None:
    """Plain, one-line log records on stderr."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="[specforge] %(levelname)s %(message)s" if verbose else "[specforge] %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "fsspec", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
