"""`specforge train --tp-size`: a TP=2 run equals TP=1, TP=2 x DP=2 (4 processes) equals one process
with the same global batch, and bad TP layouts fail with one line before anything is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train_cli import argv, data, target_dir  # noqa: F401  (module fixtures reused)

from specforge.cli import main
from specforge.train.trackers import read_metrics

REPO = Path(__file__).resolve().parents[1]


def torchrun(nproc: int, args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(REPO / "scripts" / "train_eagle3_online.py"), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def assert_same_run(got_dir: Path, want_dir: Path) -> None:
    """Same records, losses, accuracies and gradient norms (the draft gradients), same final weights."""
    from safetensors.torch import load_file

    a, b = read_metrics(want_dir / "metrics.jsonl"), read_metrics(got_dir / "metrics.jsonl")
    assert [(r["split"], r["step"]) for r in a] == [(r["split"], r["step"]) for r in b]
    for key in ("loss", "acc"):
        torch.testing.assert_close(torch.tensor([r[key] for r in b]), torch.tensor([r[key] for r in a]), msg=key)
    ga = [r["grad_norm"] for r in a if r["split"] == "train"]
    torch.testing.assert_close(torch.tensor([r["grad_norm"] for r in b if r["split"] == "train"]), torch.tensor(ga))
    wa, wb = load_file(str(want_dir / LAST / "model.safetensors")), load_file(str(got_dir / LAST / "model.safetensors"))
    assert set(wa) == set(wb)
    for k in wa:
        # AdamW turns fp32 rounding noise in near-zero gradients into ~1e-5 weight noise; a wrong TP
        # split moves weights by O(lr) = 3e-3 per step.
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-4, msg=k)


COMMON = ("--batch-size", "1", "--num-epochs", "1", "--total-steps", "2", "--learning-rate", "3e-3", "--dist-timeout", "2")
LAST = "step_2"


def test_tp2_training_equals_tp1(target_dir, data, tmp_path):  # noqa: F811
    """2 processes, --tp-size 2: one data-parallel replica whose target forward is split over both
    ranks; every step (loss, grad norm, weights) equals the single-process run."""
    single, tp = tmp_path / "single", tmp_path / "tp2"
    assert main(argv(target_dir, data, single, *COMMON)) == 0
    res = torchrun(2, argv(target_dir, data, tp, *COMMON, "--tp-size", "2")[1:])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "tensor parallel: 1 groups of 2 ranks" in res.stderr
    assert json.loads((tp / LAST / "trainer_state" / "state.json").read_text())["tp_size"] == 2
    assert_same_run(tp, single)


def test_tp2_x_dp2_equals_single_process_same_global_batch(target_dir, data, tmp_path):  # noqa: F811
    """4 processes = 2 TP groups x 2 ranks, batch 1 each: equals one process with batch 1 x 2
    accumulation steps (TP group d reads micro-batch d of each step)."""
    single, run = tmp_path / "single", tmp_path / "tp2dp2"
    assert main(argv(target_dir, data, single, *COMMON, "--accumulation-steps", "2")) == 0
    res = torchrun(4, argv(target_dir, data, run, *COMMON, "--tp-size", "2")[1:], timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "tensor parallel: 2 groups of 2 ranks" in res.stderr
    assert_same_run(run, single)


@pytest.mark.parametrize("tp, needle", [
    ("3", "--tp-size 3 does not divide the target's 4 attention heads"),
    ("2", "--tp-size 2 does not divide the world size 1"),
    ("gpt2", "no tensor-parallel target is registered for model type 'gpt2'"),
])
def test_bad_tp_layouts_give_one_line(target_dir, data, tmp_path, capsys, tp, needle):  # noqa: F811
    target = target_dir
    if tp == "gpt2":
        from transformers import GPT2Config

        target = tmp_path / "gpt2"
        GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=256).save_pretrained(target)
        target, tp = str(target), "2"
    rc = main(argv(target, data, tmp_path / "o", "--tp-size", tp))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and needle in err[-1], err[-3:]
    assert not (tmp_path / "o").exists()


def test_resume_at_another_world_size_is_refused(tmp_path):
    from specforge.errors import SpecforgeError
    from specforge.train.dist import DistInfo
    from test_train_loop import make_trainer

    tr = make_trainer(tmp_path, batch_size=4, num_epochs=1)
    tr.fit()
    other = make_trainer(tmp_path, batch_size=4, num_epochs=1)
    other.dist = DistInfo(rank=0, world_size=2)
    with pytest.raises(SpecforgeError, match="world_size=1 but this run has 2"):
        other.resume_from(tmp_path / "epoch_0")
    other.dist = DistInfo(rank=0, world_size=1, tp_size=1)
    other.resume_from(tmp_path / "epoch_0")  # the same layout resumes
