"""Two training files for the same questions: the target's regenerated answers and the original ones.

For the data-source ablation (BENCHMARKS.md, "regenerated or original answers"): a row goes in only if its
first user turn is the same in both sources; each file holds that question and its first answer, in the same
random order, so two `specforge train` runs on them differ only in who wrote the answers.

    python benchmarks/pair_answers.py --regenerated WORK/regen1 --original WORK/dataset/sharegpt_train.jsonl \\
        --exclude WORK/dataset/regen_eval.jsonl --rows 3000 --out-regenerated regen_set.jsonl --out-original raw_set.jsonl
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import sys
from pathlib import Path


def first_exchange(row: dict) -> list[dict] | None:
    """The first user turn and the answer to it (as they are: a regenerated answer keeps its ``truncated``
    mark), or None when the row does not start that way."""
    turns = [t for t in row.get("conversations", []) if t.get("role") != "system"]
    if len(turns) < 2 or turns[0]["role"] != "user" or turns[1]["role"] != "assistant":
        return None
    if not turns[1]["content"].strip():
        return None
    return [dict(turns[0]), dict(turns[1])]


def read_rows(paths: list[str]) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for p in paths:
        with open(p, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    rows.setdefault(str(r["id"]), r)
    return rows


def pair(regenerated: dict[str, dict], original: dict[str, dict], exclude: set[str], n: int, seed: int):
    """(regenerated rows, original rows) for up to ``n`` shared questions, in one random order."""
    ids = []
    for i, r in regenerated.items():
        a, b = first_exchange(r), first_exchange(original.get(i, {}))
        if i not in exclude and a and b and a[0]["content"] == b[0]["content"]:
            ids.append(i)
    ids.sort()
    random.Random(seed).shuffle(ids)
    ids = ids[:n]
    return ([{"id": i, "conversations": first_exchange(regenerated[i])} for i in ids],
            [{"id": i, "conversations": first_exchange(original[i])} for i in ids])


def write(path: str, rows: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regenerated", required=True, help="a regenerate output dir (its shards) or a JSONL file")
    ap.add_argument("--original", required=True, help="the conversations the questions came from (prepare-data)")
    ap.add_argument("--exclude", nargs="*", default=[], help="JSONL files whose ids are left out (the eval set)")
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-regenerated", required=True)
    ap.add_argument("--out-original", required=True)
    args = ap.parse_args(argv)
    src = Path(args.regenerated)
    regen_files = sorted(glob.glob(str(src / "shard_*.jsonl"))) if src.is_dir() else [str(src)]
    if not regen_files:
        print(f"pair_answers: no shard_*.jsonl in {src}", file=sys.stderr)
        return 2
    exclude = set(read_rows(args.exclude)) if args.exclude else set()
    regen_rows, orig_rows = pair(read_rows(regen_files), read_rows([args.original]), exclude, args.rows, args.seed)
    write(args.out_regenerated, regen_rows)
    write(args.out_original, orig_rows)
    chars = lambda rows: sum(len(r["conversations"][1]["content"]) for r in rows) / max(1, len(rows))
    print(f"{len(regen_rows)} questions; mean answer length {chars(regen_rows):.0f} characters regenerated, "
          f"{chars(orig_rows):.0f} original")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
