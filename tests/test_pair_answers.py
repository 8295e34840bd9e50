"""benchmarks/pair_answers.py: the same questions, once with the regenerated and once with the original answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pair_answers.py"


def conv(rid, *turns):
    roles = ["user", "assistant"] * len(turns)
    return {"id": rid, "conversations": [{"role": r, "content": c} for r, c in zip(roles, turns)]}


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_pairs_share_questions_order_and_leave_out_the_excluded(tmp_path):
    regen = tmp_path / "regen"
    regen.mkdir()
    write(regen / "shard_00000.jsonl", [conv(f"q{i}", f"question {i}", f"target answer {i}") for i in range(8)]
          + [conv("edited", "a changed question", "x"), conv("noanswer", "question 9")])
    write(regen / "shard_00001.jsonl", [conv("held", "held out", "target")])
    original = write(tmp_path / "orig.jsonl",
                     [{"id": f"q{i}", "conversations": [{"role": "system", "content": "s"},
                                                        *conv("", f"question {i}", f"human answer {i}",
                                                              "more", "more")["conversations"]]}
                      for i in range(8)]
                     + [conv("edited", "the original question", "y"), conv("noanswer", "question 9", "z"),
                        conv("held", "held out", "orig")])
    exclude = write(tmp_path / "eval.jsonl", [conv("held", "held out", "target")])
    out_r, out_o = tmp_path / "r.jsonl", tmp_path / "o.jsonl"
    p = subprocess.run([sys.executable, str(SCRIPT), "--regenerated", str(regen), "--original", original,
                        "--exclude", exclude, "--rows", "6", "--out-regenerated", str(out_r),
                        "--out-original", str(out_o)], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr
    r = [json.loads(x) for x in out_r.read_text().splitlines()]
    o = [json.loads(x) for x in out_o.read_text().splitlines()]
    assert len(r) == len(o) == 6
    assert [x["id"] for x in r] == [x["id"] for x in o]  # same questions, same order
    assert {x["id"] for x in r} < {f"q{i}" for i in range(8)}  # edited, answerless and held-out rows dropped
    assert [x["id"] for x in r] != sorted(x["id"] for x in r) or len(r) < 2  # shuffled (seed 0)
    for a, b in zip(r, o):
        n = a["id"][1:]
        assert a["conversations"] == [{"role": "user", "content": f"question {n}"},
                                      {"role": "assistant", "content": f"target answer {n}"}]
        assert b["conversations"] == [{"role": "user", "content": f"question {n}"},
                                      {"role": "assistant", "content": f"human answer {n}"}]
