"""The recipe's ablation: short `specforge train` runs that change one setting at a time, side by side.

Each variant is one training run from scratch over the same rows in the same order (same seed, same number of
optimizer steps), then one evaluation on held-out conversations. The table gives, per variant: trained tokens/s
(wall time of the steps, target forward included), held-out per-position accuracy (a draft token counts as
accepted when it equals the target's greedy token; positions whose target token is outside the draft vocab are
misses) and the simulated chain acceptance length (sim τ) of draft chains of 1, 3 and 7 tokens, i.e. what
`specforge bench --config-list 1,1,1,2 1,3,1,4 1,7,1,8` should decode. Variants change one setting against the
recipe's (draft vocab 8192, TTT 3, lr 2e-3, trained lm_head, bf16): a training flag, or a draft-config field
(the config derived from the target, as `train` derives it, with that field changed: more draft layers, the
EAGLE-3.1 norms, other aux layers):

    python benchmarks/ablate_recipe.py --train-data-path TRAIN.jsonl --eval-data-path EVAL.jsonl --steps 200 \
        --variants recipe "2 draft layers"

Short runs rank settings by how fast they learn, not by where they end: read it as "τ per hour of training".
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ["--draft-vocab-size", "8192", "--ttt-length", "3", "--learning-rate", "2e-3", "--dtype", "auto"]
#: name -> training flags (replacing BASE's values; ``--no-X`` drops BASE's ``--X``) or {"config": fields} set in
#: the draft config derived from the target
VARIANTS: dict[str, list[str] | dict] = {
    "recipe": [],
    "draft vocab 16K": ["--draft-vocab-size", "16384"],
    "draft vocab 32K": ["--draft-vocab-size", "32768"],
    "TTT 7": ["--ttt-length", "7"],
    "lr 1e-3": ["--learning-rate", "1e-3"],
    "lr 4e-3": ["--learning-rate", "4e-3"],
    "frozen lm_head": ["--freeze-lm-head"],
    "2 draft layers": {"config": {"num_hidden_layers": 2}},
    "EAGLE-3.1 norms": {"config": {"fc_norm": True, "norm_output": True}},
    "aux layers 8/20/28": {"config": {"eagle_aux_hidden_state_layer_ids": [8, 20, 28]}},
}


def merged(extra: list[str]) -> list[str]:
    """BASE with the variant's flags replacing BASE's values (``--no-X`` drops BASE's ``--X``)."""
    out = list(BASE)
    i = 0
    while i < len(extra):
        flag = extra[i]
        if flag.startswith("--no-"):
            out = [a for a in out if a != "--" + flag[5:]]
            i += 1
            continue
        j = out.index(flag) if flag in out else -1
        if j >= 0:
            out[j + 1] = extra[i + 1]
        else:
            out += extra[i:i + 2]
        i += 2
    return out


def variant_config(fields: dict, target: str, path: Path) -> list[str]:
    """Write the draft config ``train`` would derive from ``target`` with ``fields`` set; its flag."""
    from specforge.eagle3.config import derive_draft_fields
    from specforge.fileio import atomic_open
    from specforge.modeling.loading import load_config

    with atomic_open(path) as f:
        json.dump({**derive_draft_fields(load_config(target)), **fields}, f, indent=1)
    return ["--draft-model-config", str(path)]


def run_variant(name: str, variant: list[str] | dict, args, work: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from specforge.train.trackers import read_metrics

    slug = "".join(c if c.isalnum() else "_" for c in name)
    out = work / slug
    if isinstance(variant, dict):
        work.mkdir(parents=True, exist_ok=True)
        flags = list(BASE) + variant_config(variant["config"], args.target_model_path, work / f"{slug}.json")
    else:
        flags = merged(variant)
    cmd = [sys.executable, "-m", "specforge", "train", "--target-model-path", args.target_model_path,
           "--train-data-path", args.train_data_path, "--eval-data-path", args.eval_data_path,
           "--cache-dir", str(args.cache_dir or work / "cache"), "--chat-template", args.chat_template,
           "--max-length", str(args.max_length), "--batch-size", str(args.batch_size), "--num-epochs", "1",
           "--total-steps", str(args.steps), "--warmup-ratio", "0.02", "--seed", "0", "--log-interval", "10",
           "--output-dir", str(out), "--overwrite", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    print("+", shlex.join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return {"variant": name, "failed": p.returncode, "stderr": p.stderr.strip()[-400:]}
    recs = read_metrics(out / "metrics.jsonl")
    train = [r for r in recs if r["split"] == "train"]
    ev = [r for r in recs if r["split"] == "eval"][-1]
    t = sum(r["step_time"] for r in train[1:])
    tok = sum(r["tokens"] for r in train[1:])
    return {"variant": name, "flags": flags, "steps": train[-1]["step"], "tokens_per_s": tok / t,
            "eval_loss": ev["loss"], "acc": ev["acc"], "sim_tau": ev["sim_tau"]}


def table(rows: list[dict]) -> str:
    lines = ["| variant | trained tok/s | eval acc (pos 0, 1, 2) | sim τ 1/1/2 | sim τ 3/1/4 | sim τ 7/1/8 |",
             "|---|---:|---|---:|---:|---:|"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['variant']} | failed (rc {r['failed']}) | | | | |")
            continue
        sim = r["sim_tau"]  # sim[k-1]: a chain of k drafts; a TTT-K run scores only k <= K
        acc = ", ".join(f"{a:.3f}" for a in r["acc"][:3])
        tau = " | ".join(f"{sim[k - 1]:.3f}" if k <= len(sim) else "–" for k in (1, 3, 7))
        lines.append(f"| {r['variant']} | {r['tokens_per_s']:.0f} | {acc} | {tau} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target-model-path", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    ap.add_argument("--train-data-path", required=True)
    ap.add_argument("--eval-data-path", required=True)
    ap.add_argument("--chat-template", default="smollm2")
    ap.add_argument("--cache-dir", help="dataset cache root (default: inside the work dir)")
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps per variant")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--work-dir", help="keep the runs here (default: a temp dir)")
    ap.add_argument("--markdown", help="also write the table to this file")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from specforge.fileio import atomic_open

    rows = []
    with tempfile.TemporaryDirectory(prefix="ablate_") as tmp:
        work = Path(args.work_dir or tmp)
        for name in args.variants:
            rows.append(run_variant(name, VARIANTS[name], args, work))
            print(json.dumps(rows[-1]), flush=True)
    text = table(rows)
    print(text)
    if args.markdown:
        with atomic_open(args.markdown) as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
