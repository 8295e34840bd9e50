"""Train an EAGLE-3 draft model online: the target runs in the loop and feeds the draft its hidden states.

Single process: ``specforge train ...``; data parallel: ``torchrun --nproc_per_node N
scripts/train_eagle3_online.py ...`` (gloo on CPU, nccl on CUDA). Checkpoints go to
``OUTPUT_DIR/epoch_<i>/`` (and ``step_<n>/`` with ``--save-interval``); ``--resume`` continues the
latest one. Metrics: ``OUTPUT_DIR/metrics.jsonl`` and ``OUTPUT_DIR/training_curves.png``.
"""

from __future__ import annotations

import argparse

from specforge.train.args import add_arguments as _add_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``specforge train`` flags."""
    _add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Build the typed run configuration from the flags, then train; returns the process exit status."""
    from specforge.flags import target_from_args
    from specforge.train.config import TrainRunConfig
    from specforge.train.run import run_training

    args.target_model_path = target_from_args(args)
    run_training(TrainRunConfig.from_namespace(args))
    return 0
