"""The typed run configuration of ``specforge train`` (built from the flags at the CLI edge).

Defaults live here once: :mod:`specforge.train.args` copies them onto its flags. The library (``run``,
``components``) reads this dataclass, never an ``argparse.Namespace``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields
from typing import Any

from specforge.errors import SpecforgeError
from specforge.modeling.loading import DEFAULT_TARGET


@dataclass(frozen=True)
class DataOptions:
    """What the dataset cache is built from (``train`` and ``prepare-hidden-states`` fill it from their flags)."""

    train_data_path: str
    eval_data_path: str | None = None
    cache_dir: str = "./cache"
    chat_template: str = "auto"
    max_length: int = 2048
    num_proc: int = 1


@dataclass(kw_only=True)
class LoopSettings:
    """The training loop's schedule and cadence: what the run configuration and the loop config share."""

    num_epochs: int = 1
    batch_size: int = 1
    accumulation_steps: int = 1
    learning_rate: float = 1e-4
    total_steps: int | None = None
    warmup_ratio: float = 0.02
    max_grad_norm: float = 0.5
    seed: int = 0
    save_interval: int = 0
    eval_interval: int = 0
    log_interval: int = 1


@dataclass(kw_only=True)
class TrainRunConfig(LoopSettings):
    """Everything ``specforge train`` was asked to do; validated on construction (one clear line)."""

    # models
    target_model_path: str = DEFAULT_TARGET
    draft_model_config: str | None = None
    draft_vocab_size: int | None = None
    draft_attention_backend: str = "auto"
    ttt_length: int = 7
    freeze_lm_head: bool = False
    init_from: str | None = None
    # data
    train_data_path: str | None = None
    eval_data_path: str | None = None
    hidden_states_path: str | None = None
    chat_template: str = "auto"
    max_length: int = 2048
    cache_dir: str = "./cache"
    num_proc: int = 1
    # optimisation, checkpoints, evaluation, logging (schedule and cadence: LoopSettings)
    output_dir: str | None = None
    resume: str | None = None
    overwrite: bool = False
    report_to: str = "none"
    wandb_project: str | None = None
    wandb_name: str | None = None
    # runtime
    device: str = "auto"
    dtype: str = "auto"
    tp_size: int = 1
    fsdp: bool = False
    mem_frac: float | None = None
    dist_timeout: float = 30.0

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """``field -> default`` (what the flags default to)."""
        return {f.name: f.default for f in fields(cls)}

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> TrainRunConfig:
        """The CLI edge: keep the namespace's values of this dataclass's fields (other attributes ignored)."""
        return cls(**{f.name: getattr(ns, f.name) for f in fields(cls) if hasattr(ns, f.name)})

    def data_options(self) -> DataOptions:
        """The dataset-cache inputs of this run (needs ``train_data_path``)."""
        if self.train_data_path is None:
            raise SpecforgeError("--train-data-path is required (a conversations JSONL file).")
        return DataOptions(self.train_data_path, self.eval_data_path, self.cache_dir, self.chat_template,
                           self.max_length, self.num_proc)

    def validate(self) -> None:
        """Reject inconsistent or out-of-range values with one clear line (no side effects)."""
        if self.train_data_path is None and not self.hidden_states_path:
            raise SpecforgeError("--train-data-path is required (a conversations JSONL file), or --hidden-states-path.")
        if self.hidden_states_path and (self.train_data_path or self.eval_data_path):
            raise SpecforgeError("--hidden-states-path replaces --train-data-path/--eval-data-path (the store holds "
                                 "its rows); pass one or the other.")
        if self.output_dir is None:
            raise SpecforgeError("--output-dir is required (where checkpoints are written).")
        positive = {"--num-epochs": self.num_epochs, "--batch-size": self.batch_size,
                    "--accumulation-steps": self.accumulation_steps, "--ttt-length": self.ttt_length,
                    "--max-length": self.max_length, "--tp-size": self.tp_size, "--num-proc": self.num_proc,
                    "--log-interval": self.log_interval}
        for flag, value in positive.items():
            if value < 1:
                raise SpecforgeError(f"{flag} must be >= 1 (got {value}).")
        if self.total_steps is not None and self.total_steps < 1:
            raise SpecforgeError(f"--total-steps must be >= 1 (got {self.total_steps}).")
        if self.draft_vocab_size is not None and self.draft_vocab_size < 1:
            raise SpecforgeError(f"--draft-vocab-size must be >= 1 (got {self.draft_vocab_size}).")
        for flag, value in (("--save-interval", self.save_interval), ("--eval-interval", self.eval_interval)):
            if value < 0:
                raise SpecforgeError(f"{flag} must be >= 0 (got {value}).")
        floats: tuple[tuple[str, float | None], ...] = (
            ("--learning-rate", self.learning_rate), ("--warmup-ratio", self.warmup_ratio),
            ("--max-grad-norm", self.max_grad_norm), ("--mem-frac", self.mem_frac), ("--dist-timeout", self.dist_timeout))
        for flag, fvalue in floats:
            if fvalue is not None and not math.isfinite(fvalue):
                raise SpecforgeError(f"{flag} must be a finite number (got {fvalue}).")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise SpecforgeError(f"--warmup-ratio must be in [0, 1) (got {self.warmup_ratio}).")
        if self.learning_rate <= 0:
            raise SpecforgeError(f"--learning-rate must be > 0 (got {self.learning_rate}).")
        if self.max_grad_norm < 0:
            raise SpecforgeError(f"--max-grad-norm must be >= 0 (got {self.max_grad_norm}).")
        if self.mem_frac is not None and not 0.0 < self.mem_frac <= 1.0:
            raise SpecforgeError(f"--mem-frac must be in (0, 1] (got {self.mem_frac}).")
        if self.dist_timeout <= 0:
            raise SpecforgeError(f"--dist-timeout must be > 0 minutes (got {self.dist_timeout}).")
        if self.init_from and self.resume:
            raise SpecforgeError("--resume continues a run with its own weights and schedule; --init-from starts a new "
                                 "run from other weights: pass one of them.")
        if self.overwrite and self.resume:
            raise SpecforgeError("--overwrite deletes the run that --resume would continue; pass one of them.")
        if self.eval_interval and not self.eval_data_path:
            raise SpecforgeError("--eval-interval needs --eval-data-path (there is nothing to evaluate on).")
