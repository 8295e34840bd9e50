"""The output directory of a regeneration run: shards, ``error.jsonl``, the run manifest, and resume.

Layout of ``--output-dir``:

* ``shard_00000.jsonl``, ``shard_00001.jsonl``, ... -- completed rows only, ``--num-per-shard`` each (the last
  shard of a run may hold fewer). A shard file appears by an atomic rename once it is complete, so it never
  holds a torn line.
* ``shard_0000N.jsonl.partial`` -- the shard being filled: one line appended (and flushed) per completed row.
  After a crash or SIGKILL, ``--resume`` keeps its complete lines, cuts a torn last line, and goes on filling
  it; the end of a run renames it to its final name.
* ``error.jsonl`` -- ``{"id", "error", ...}`` of rows that failed after retries; ``--resume`` retries them, and
  the end of a run rewrites it with only the ids still failing (one line each).
* ``run.json`` -- the settings that shape the output (model, input file, sampling); ``--resume`` refuses a
  run with different ones, and a dir holding another run's files is refused without ``--resume``.

Nothing is created before the first row or error is written, so a run that fails at start-up leaves no
empty shard files behind.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from specforge.errors import SpecforgeError
from specforge.fileio import atomic_open

SHARD_RE = re.compile(r"^shard_(\d{5,})\.jsonl(\.partial)?$")
ERROR_FILE = "error.jsonl"
MANIFEST = "run.json"


def row_key(rec: dict) -> str:
    """The resume key of an output row: its id (plus the sample index with --num-samples > 1)."""
    key = str(rec.get("id"))
    return key if rec.get("sample") is None else f"{key}#{rec['sample']}"


def _read_complete_lines(path: Path, repair: bool) -> list[dict]:
    """Rows of a JSONL file; a torn or invalid *last* line of a partial shard is cut off when ``repair``."""
    rows: list[dict] = []
    good_end = 0
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break  # no newline: torn last line
        line = data[pos:nl]
        try:
            rec = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            rec = False
        if rec is False or (rec is not None and not isinstance(rec, dict)):
            if not repair or data.find(b"\n", nl + 1) >= 0:
                raise SpecforgeError(f"{path}: line {len(rows) + 1} is not valid JSON; the file was edited or "
                                     "corrupted -- fix or remove it, then rerun with --resume.")
            break
        if rec is not None:
            rows.append(rec)
        pos = good_end = nl + 1
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return rows


class ShardStore:
    """Writes completed rows to shards and failures to ``error.jsonl``; knows what a resumed run has done."""

    def __init__(self, output_dir: str | os.PathLike, num_per_shard: int, manifest: dict[str, Any], resume: bool):
        if num_per_shard < 1:
            raise SpecforgeError(f"--num-per-shard must be >= 1 (got {num_per_shard}).")
        self.dir = Path(output_dir)
        self.k = num_per_shard
        self.manifest = manifest
        self.done: set[str] = set()  # keys of rows in shards
        self.prev_errors: dict[str, dict] = {}  # key -> last error record of earlier runs
        self.new_errors: dict[str, dict] = {}
        self._partial: Any = None  # open file object of the shard being filled
        self._partial_rows = 0
        self._index = 0
        self._started = False
        if self.dir.exists() and not self.dir.is_dir():
            raise SpecforgeError(f"--output-dir {self.dir} is a file; pass a directory.")
        self._scan(resume)

    # ---- start-up -----------------------------------------------------------------------------------

    def _scan(self, resume: bool) -> None:
        names = sorted(os.listdir(self.dir)) if self.dir.is_dir() else []
        shards = [(int(m.group(1)), bool(m.group(2)), n) for n in names if (m := SHARD_RE.match(n))]
        ours = [n for n in names if n in (ERROR_FILE, MANIFEST)] + [s[2] for s in shards]
        if ours and not resume:
            raise SpecforgeError(
                f"--output-dir {self.dir} already holds another run's output ({len(shards)} shard file(s)"
                f"{', error.jsonl' if ERROR_FILE in names else ''}); pass --resume to continue that run, "
                "or choose an empty --output-dir.")
        if not ours:
            return
        old = self._read_manifest()
        if old is not None:
            diff = [k for k, v in self.manifest.items() if k in old and old[k] != v]
            if diff:
                k = diff[0]
                raise SpecforgeError(
                    f"--resume: {self.dir} holds a run made with {k}={old[k]!r}, this one has {k}={self.manifest[k]!r}; "
                    "rerun with the same settings, or choose another --output-dir.")
        partials = [s for s in shards if s[1]]
        for idx, _, name in shards:
            rows = _read_complete_lines(self.dir / name, repair=name.endswith(".partial"))
            self.done.update(row_key(r) for r in rows)
            if name.endswith(".partial") and (idx, name) != (partials[-1][0], partials[-1][2]):
                # a stray older partial (cannot happen in one run's life): finalise it
                os.replace(self.dir / name, self.dir / name[: -len(".partial")])
        self._started = True
        if partials:
            self._index = partials[-1][0]
            path = self.dir / partials[-1][2]
            with open(path, "rb") as f:
                self._partial_rows = sum(1 for _ in f)
            self._partial = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open while the shard fills
        else:
            self._index = max((s[0] for s in shards), default=-1) + 1
        if (self.dir / ERROR_FILE).is_file():
            for rec in _read_complete_lines(self.dir / ERROR_FILE, repair=True):
                self.prev_errors[row_key(rec)] = rec

    def _read_manifest(self) -> dict | None:
        path = self.dir / MANIFEST
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise SpecforgeError(f"{path} is unreadable; remove it to resume without the settings check.") from None

    def _start(self) -> None:
        if self._started:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_open(self.dir / MANIFEST) as f:
            json.dump(self.manifest, f, indent=1, ensure_ascii=False)
        self._started = True

    # ---- writing ------------------------------------------------------------------------------------

    def shard_path(self, index: int) -> Path:
        return self.dir / f"shard_{index:05d}.jsonl"

    def write_row(self, row: dict) -> None:
        """Append a completed row to the current shard; a full shard is renamed into place."""
        key = row_key(row)
        if key in self.done:  # never written twice
            return
        self._start()
        if self._partial is None:
            self._partial = open(  # noqa: SIM115 - kept open while the shard fills
                str(self.shard_path(self._index)) + ".partial", "a", encoding="utf-8")
            self._partial_rows = 0
        # One write() per complete line, flushed at once: a kill leaves at most one torn last line.
        self._partial.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._partial.flush()
        self.done.add(key)
        self.new_errors.pop(key, None)
        self._partial_rows += 1
        if self._partial_rows >= self.k:
            self._finalise_partial()

    def _finalise_partial(self) -> None:
        f, self._partial = self._partial, None
        if f is None:
            return
        f.flush()
        os.fsync(f.fileno())
        f.close()
        name = f.name
        if self._partial_rows:
            os.replace(name, name[: -len(".partial")])
            self._index += 1
        else:
            os.unlink(name)
        self._partial_rows = 0

    def write_error(self, key: str, record: dict) -> None:
        """Record a failed row (appended now; deduplicated when the run closes)."""
        self._start()
        self.new_errors[key] = record
        with open(self.dir / ERROR_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self, complete: bool = True) -> None:
        """Finish the run: rename the partial shard into place and rewrite ``error.jsonl`` deduplicated.

        With ``complete=False`` (an interrupted run) the partial shard stays for ``--resume``.
        """
        if complete:
            self._finalise_partial()
        elif self._partial is not None:
            self._partial.close()
            self._partial = None
        if not self._started:
            return
        errors = {**self.prev_errors, **self.new_errors}
        errors = {k: v for k, v in errors.items() if k not in self.done}
        path = self.dir / ERROR_FILE
        if errors:
            with atomic_open(path) as f:
                for rec in errors.values():
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        elif path.exists() and complete:
            path.unlink()

    def shard_files(self) -> list[Path]:
        return sorted(p for p in self.dir.glob("shard_*.jsonl")) if self.dir.is_dir() else []
