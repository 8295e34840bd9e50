"""Multi-node launch path: two torchrun "nodes" (`--nnodes 2 --node-rank i --rdzv-endpoint 127.0.0.1:PORT`,
one process each, c10d rendezvous over loopback, gloo) train exactly like one process with the same
global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from test_train_cli import argv, data, target_dir  # noqa: F401  (module fixtures reused)
from test_train_tp import REPO, assert_same_run

from specforge.cli import main

COMMON = ("--batch-size", "1", "--num-epochs", "1", "--total-steps", "2", "--learning-rate", "3e-3", "--dist-timeout", "2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_over_loopback_equal_one_process(target_dir, data, tmp_path):  # noqa: F811
    single, multi = tmp_path / "single", tmp_path / "two_nodes"
    assert main(argv(target_dir, data, single, *COMMON, "--accumulation-steps", "2")) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = []
    for node_rank in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node_rank),
               "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "sf-test",
               str(REPO / "scripts" / "train_eagle3_online.py"), *argv(target_dir, data, multi, *COMMON)[1:]]
        nodes.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in nodes]
    for p, (_, err) in zip(nodes, outs):
        assert p.returncode == 0, err[-3000:]
    assert "world size 2" in outs[0][1]
    assert_same_run(multi, single)
