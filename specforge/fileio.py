"""Atomic file/dir writes and line-numbered JSONL reading.

Every writer in specforge goes through these helpers so that an interrupted or failed run never
leaves a half-written file behind: content is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from specforge.errors import SpecforgeError

logger = logging.getLogger(__name__)

# Temporaries are named ".<final name>.tmp-<pid>-<random>" (and ".<name>.old-<pid>" while a directory is
# being replaced), so a later run can tell a leftover of a killed process from one still being written.
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?:(?P<pid>\d+)(?:-.*)?|[^-]*)$")
STALE_AGE_S = 3600.0  # leftovers without a pid in their name (older releases) count as stale after this


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, owned by someone else
        return True
    return True


def clean_stale_temps(directory: str | os.PathLike, pattern: str = "*") -> list[Path]:
    """Remove leftovers of killed writers in ``directory`` whose final name matches ``pattern``.

    A temporary is stale when the process that made it is gone (its pid is in the name) or, for names
    without a pid, when it is older than :data:`STALE_AGE_S`. Only specforge's own ``.<name>.tmp-*`` /
    ``.<name>.old-*`` entries are considered. Returns what was removed (each is logged once).
    """
    d = Path(directory)
    removed: list[Path] = []
    if not d.is_dir():
        return removed
    now = time.time()
    for p in d.iterdir():
        m = _TEMP_RE.match(p.name)
        if not m or not fnmatch.fnmatchcase(m.group("name"), pattern):
            continue
        pid = m.group("pid")
        try:
            stale = (int(pid) != os.getpid() and not _pid_alive(int(pid))) if pid else \
                now - p.lstat().st_mtime > STALE_AGE_S
        except OSError:
            continue
        if not stale:
            continue
        final = d / m.group("name")
        if m.group("kind") == "old" and not final.exists():  # killed mid-replace: the old copy is all there is
            os.replace(p, final)
            logger.info("restored %s from %s, left behind by an interrupted run", final, p.name)
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        removed.append(p)
        logger.info("removed %s, left behind by an interrupted run", p)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it to ``path``, on error delete it.

    For a directory an existing ``path`` is replaced (old copy removed after the rename succeeds).
    Stale temporaries of ``path`` left by a killed earlier writer are removed first.
    """
    path = Path(path)
    created = [p for p in [path.parent, *path.parent.parents] if not p.exists()]  # innermost first
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent, glob_escape(path.name))
    prefix = f".{path.name}.tmp-{os.getpid()}-"
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    old = None
    try:
        yield tmp
        if is_dir:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary directory
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result is an ordinary file
            os.replace(tmp, path)
    except BaseException as e:
        if old is not None and old.exists() and not path.exists():
            os.replace(old, path)  # the replacement failed: put the previous copy back
        if is_dir:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        for d in created:  # a failed write leaves no directories it made either
            try:
                d.rmdir()
            except OSError:
                break
        if not isinstance(e, (OSError, SpecforgeError, KeyboardInterrupt)) and _disk_full(path.parent):
            # C/Rust writers (torch.save, safetensors) report a full disk as their own error types.
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
        raise


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def glob_escape(name: str) -> str:
    """``name`` as an fnmatch pattern that matches only itself."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _disk_full(directory: Path) -> bool:
    try:
        return shutil.disk_usage(directory).free < (1 << 20)
    except OSError:
        return False


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temp file for writing; it replaces ``path`` only if the block finishes without error."""
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
        yield f


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for each non-blank line of a JSONL file.

    Raises :class:`SpecforgeError` naming the file and line on malformed JSON or a non-object row.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecforgeError(f"{path}: file not found; check the path you passed.")
    with open_text(path) as f:
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


# ------------------------------------------------------------------ shared checks of user-given paths

@contextlib.contextmanager
def open_text(path: str | os.PathLike):
    """Open a UTF-8 text file for reading; bytes that are not UTF-8 raise one :class:`SpecforgeError`
    naming the file (whenever they are met while reading inside the block)."""
    try:
        with open(path, encoding="utf-8") as f:
            yield f
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None


def not_utf8(path: str | os.PathLike, e: UnicodeDecodeError) -> SpecforgeError:
    """The one-line error for a text file that is not UTF-8."""
    return SpecforgeError(f"{path}: not UTF-8 text (invalid byte 0x{e.object[e.start]:02x}); re-encode the file "
                          "as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`.")


def check_name(name: str, flag: str) -> str:
    """A file-name stem given by the user must stay inside the directory it belongs to."""
    bad = (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
           or (os.altsep is not None and os.altsep in name) or name.startswith("."))
    if bad:
        raise SpecforgeError(f"{flag} {name!r}: must be a plain file name (no '/', no '..', not hidden); "
                             "use the output directory flag to choose where files go.")
    return name


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """Fail early (before any long work) when ``path`` cannot be written as a file.

    Catches an existing directory, a parent that is a file, and a read-only or missing-permission
    place, by creating and removing a probe file in the nearest existing ancestor.
    """
    path = Path(path)
    if path.is_dir():
        raise SpecforgeError(f"{flag} {path}: is a directory; pass a file path such as {path / 'output.jsonl'}.")
    parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise SpecforgeError(f"{flag} {path}: {parent} is a file, not a directory; choose another path.")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SpecforgeError(f"{flag} {path}: cannot write in {parent} ({e.strerror}); choose a writable place.") from None
    return path


def check_output_dir(path: str | os.PathLike, flag: str) -> Path:
    """Fail early when ``path`` exists and is not a directory (or sits under a file)."""
    path = Path(path)
    node = next((p for p in [path, *path.parents] if p.exists()), None)
    if node is not None and not node.is_dir():
        what = "is a file" if node == path else f"is under {node}, which is a file"
        raise SpecforgeError(f"{flag} {path}: {what}, not a directory; choose a directory path.")
    return path


# errno -> what to do, for the one-line message of an OSError that reaches the CLI
_OS_ADVICE = {
    errno.ENOSPC: "free some disk space or write elsewhere, then re-run",
    getattr(errno, "EDQUOT", -1): "free some quota or write elsewhere, then re-run",
    errno.EACCES: "choose a place you can write to",
    errno.EPERM: "choose a place you can write to",
    errno.EROFS: "the file system is read-only; choose a writable place",
    errno.EISDIR: "a directory is in the way of a file; choose another path",
    errno.ENOTDIR: "a file is in the way of a directory; choose another path",
    errno.EEXIST: "a file is in the way of a directory; choose another path",
    errno.ENAMETOOLONG: "use a shorter path",
}


def describe_os_error(e: OSError) -> str | None:
    """One line for an environment error (disk full, permissions, file in the way), or None for others."""
    advice = _OS_ADVICE.get(e.errno or 0)
    if advice is None:
        return None
    where = e.filename if e.filename is not None else "writing output"
    return f"{where}: {e.strerror or os.strerror(e.errno or 0)}; {advice} (nothing half-written was kept)."


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """``safetensors.torch.save_file``, with the umask's permissions (its writer creates files 0600)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~_umask())


def load_safetensors(path: str | os.PathLike) -> dict:
    """All tensors of one ``.safetensors`` file; a truncated or corrupt file is one clear error."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise SpecforgeError(f"{path}: file not found; the checkpoint is incomplete.") from None
    except Exception as e:  # noqa: BLE001 - SafetensorError / OSError / ValueError, by what is broken
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SpecforgeError(f"{path}: corrupt or truncated safetensors file ({msg}); re-train, re-export or "
                             "copy the checkpoint again.") from None
