"""`specforge train --fsdp` (FSDP2 fully_shard over 2 gloo ranks): the same steps as DDP, checkpoints in
the single-process format, and a run killed at world size 2 resumes to the uninterrupted result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_cli import argv, data, target_dir  # noqa: F401  (module fixtures reused)
from test_train_tp import REPO, assert_same_run, torchrun

from specforge.cli import main
from specforge.train.trackers import read_metrics

COMMON = ("--batch-size", "1", "--num-epochs", "1", "--total-steps", "2", "--learning-rate", "3e-3",
          "--dist-timeout", "2", "--fsdp")


@pytest.fixture(scope="module")
def fsdp_run(target_dir, data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("fsdp") / "run"
    res = torchrun(2, argv(target_dir, data, out, *COMMON, "--save-interval", "1")[1:])
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_fsdp_step_equals_ddp(target_dir, data, fsdp_run, tmp_path):  # noqa: F811
    """2 ranks x batch 1 under FSDP2 equal one process with batch 1 x 2 accumulation steps, which the
    DDP test (test_train_cli) pins to DDP: same losses, grad norms and saved full weights."""
    single = tmp_path / "single"
    plain = [a for a in COMMON if a != "--fsdp"]
    assert main(argv(target_dir, data, single, *plain, "--accumulation-steps", "2")) == 0
    assert_same_run(fsdp_run, single)
    opt = torch.load(fsdp_run / "step_2" / "trainer_state" / "optimizer.pt", weights_only=True)
    assert all(type(t) is torch.Tensor for st in opt["state"].values() for t in st.values())  # full, not DTensor


def test_fsdp_resume_after_kill_equals_uninterrupted(target_dir, data, fsdp_run, tmp_path):  # noqa: F811
    cut = tmp_path / "cut"
    args = argv(target_dir, data, cut, *COMMON, "--save-interval", "1")[1:]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "scripts" / "train_eagle3_online.py"), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (cut / "step_1").is_dir() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the kill: the whole torchrun job, mid-run
        proc.wait()
    assert (cut / "step_1").is_dir() and not (cut / "step_2").exists()  # killed between the two steps
    res = torchrun(2, [*args, "--resume"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stderr
    assert_same_run(cut, fsdp_run)
    a, b = read_metrics(fsdp_run / "metrics.jsonl"), read_metrics(cut / "metrics.jsonl")
    torch.testing.assert_close(torch.tensor([r["loss"] for r in b]), torch.tensor([r["loss"] for r in a]), rtol=0, atol=0)


def test_fsdp_resume_at_another_world_size_fails_with_one_line(target_dir, data, fsdp_run, tmp_path, capsys):  # noqa: F811
    import shutil

    out = tmp_path / "one"
    shutil.copytree(fsdp_run / "step_1", out / "step_1")
    rc = main(argv(target_dir, data, out, *COMMON, "--save-interval", "1", "--resume"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "world_size=2 but this run has 1" in err[-1]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("step", "epoch"))) == ["step_1"]
