"""Atomic file/dir writes and line-numbered JSONL reading.

Every writer in specforge goes through these helpers so that an interrupted or failed run never
leaves a half-written file behind: content is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from specforge.errors import SpecforgeError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it to ``path``, on error delete it.

    For a directory an existing ``path`` is replaced (old copy removed after the rename succeeds).
    """
    path = Path(path)
    created = [p for p in [path.parent, *path.parent.parents] if not p.exists()]  # innermost first
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent)) if is_dir else None
    if not is_dir:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True) if is_dir else tmp.unlink(missing_ok=True)
        for d in created:  # a failed write leaves no directories it made either
            try:
                d.rmdir()
            except OSError:
                break
        raise
    if is_dir:
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temp file for writing; it replaces ``path`` only if the block finishes without error."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for each non-blank line of a JSONL file.

    Raises :class:`SpecforgeError` naming the file and line on malformed JSON or a non-object row.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecforgeError(f"{path}: file not found; check the path you passed.")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise SpecforgeError(
                    f"{path}:{lineno}: malformed JSON ({e.msg}); fix or remove that line."
                ) from None
            if not isinstance(rec, dict):
                raise SpecforgeError(
                    f"{path}:{lineno}: expected a JSON object per line, got {type(rec).__name__}."
                )
            yield lineno, rec


def write_jsonl(path: str | os.PathLike, rows) -> int:
    """Atomically write an iterable of dicts as JSONL; returns the number of rows."""
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG atomically, then close it; returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return path
