"""The one training loop: micro-batches -> gradient accumulation -> clip -> AdamW -> schedule,
with evaluation, checkpoints, resume, trackers and the progress bar.

The loop is model-agnostic: it trains ``model`` (an ``nn.Module`` whose trainable parameters are the
draft's) through ``forward_fn(batch) -> (loss, metrics)``, where ``batch`` holds ``input_ids``,
``attention_mask``, ``loss_mask`` (``[B, L]``) and ``metrics`` maps names to float tensors: scalars
or per-TTT-position vectors ``[K]`` (``acc``, ``pos_loss``, ...). :mod:`specforge.train.run` builds the
EAGLE-3 ``forward_fn`` (target in the loop + TTT unroll); unit tests pass a small module.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from specforge.data.collate import pad_batch, row_lengths
from specforge.eagle3.ttt import accept_length
from specforge.errors import SpecforgeError
from specforge.train import checkpoint as ckpt
from specforge.train import sharded
from specforge.train.batching import epoch_batches, group_batches
from specforge.train.config import LoopSettings
from specforge.train.dist import DistInfo, all_reduce_sum, barrier
from specforge.train.plot import PLOT_FILE, plot_metrics
from specforge.train.schedule import build_scheduler
from specforge.train.trackers import MetricsLog, Tracker

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TrainConfig(LoopSettings):
    """Loop settings: the schedule and cadence (:class:`LoopSettings`, shared with the run configuration)
    plus where and how the loop runs."""

    output_dir: str
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    pad_token_id: int = 0
    progress: bool = True
    run_config: dict = field(default_factory=dict)  # recorded in the trainer state (for humans)


class Trainer:
    """Runs the loop; see the module docstring for ``model`` / ``forward_fn``.

    ``save_fn(path, trainer_state, optimizer, scheduler, rng)`` writes a checkpoint (defaults to
    :func:`specforge.train.checkpoint.save_checkpoint` with ``draft``/``draft_config``).
    """

    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, forward_fn: Callable,
                 train_rows, eval_rows=None, draft: torch.nn.Module | None = None, draft_config: Any = None,
                 trackers: list[Tracker] | None = None, dist: DistInfo | None = None,
                 collate: Callable | None = None):
        self.cfg, self.model, self.forward_fn = cfg, model, forward_fn
        self.draft = draft if draft is not None else model
        self.draft_config = draft_config
        self.dist = dist or DistInfo()
        self.trackers = trackers or []
        self.train_rows, self.eval_rows = train_rows, eval_rows
        self.collate = collate or pad_batch
        self.train_lengths = row_lengths(train_rows)
        if not self.train_lengths:
            raise SpecforgeError("the training set is empty; check --train-data-path.")
        self.batches_per_epoch = len(epoch_batches(self.train_lengths, cfg.batch_size, cfg.seed, 0,
                                                   self.dist.dp_rank, self.dist.dp_size))
        if self.batches_per_epoch == 0:
            raise SpecforgeError(f"the training set ({len(self.train_lengths)} rows) is too small for "
                                 f"{self.dist.world_size} processes x batch {cfg.batch_size}.")
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.accumulation_steps)
        planned = cfg.num_epochs * self.steps_per_epoch
        self.total_steps = cfg.total_steps or planned
        if cfg.total_steps and cfg.total_steps > planned:
            logger.info("--total-steps %d > %d epochs x %d steps: the run ends after the epochs, before the "
                        "schedule reaches 0", cfg.total_steps, cfg.num_epochs, self.steps_per_epoch)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise SpecforgeError("the draft has no trainable parameters.")
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(0.9, 0.95), weight_decay=0.0)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, cfg.warmup_ratio)
        self.device_type = torch.device(cfg.device).type
        # Master weights stay fp32; bf16/fp16 only inside autocast. fp16 also needs loss scaling.
        self.autocast = cfg.dtype in (torch.bfloat16, torch.float16)
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=cfg.dtype == torch.float16)
        # only the main rank writes metrics; the others never reach the code that logs
        self.metrics_log: Any = MetricsLog(cfg.output_dir) if self.dist.is_main else None
        self.global_step, self.epoch, self.group_pos = 0, 0, 0

    # ------------------------------------------------------------------ state
    def trainer_state(self) -> dict:
        """JSON part of the trainer state: where the run stands and what must match on resume."""
        return {"global_step": self.global_step, "epoch": self.epoch, "group_in_epoch": self.group_pos,
                "seed": self.cfg.seed, "world_size": self.dist.world_size, "tp_size": self.dist.tp_size,
                "batch_size": self.cfg.batch_size,
                "accumulation_steps": self.cfg.accumulation_steps, "train_rows": len(self.train_lengths),
                "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
                "run_config": self.cfg.run_config}

    def resume_from(self, path: str | Path) -> None:
        """Restore weights, optimizer, scheduler, RNG and data position from a checkpoint dir."""
        loaded = ckpt.load_trainer_state(path, self.dist.rank)
        st = loaded["state"]
        st.setdefault("tp_size", 1)  # checkpoints from before tensor parallelism
        for key, mine in (("seed", self.cfg.seed), ("world_size", self.dist.world_size), ("tp_size", self.dist.tp_size),
                          ("batch_size", self.cfg.batch_size), ("accumulation_steps", self.cfg.accumulation_steps),
                          ("train_rows", len(self.train_lengths)), ("total_steps", self.total_steps)):
            if st.get(key) != mine:
                raise SpecforgeError(f"--resume {path}: it was trained with {key}={st.get(key)} but this run has "
                                     f"{mine}; resume with the same settings (or start a new --output-dir).")
        if sharded.is_sharded(self.draft):
            sharded.load_draft_sharded(self.draft, ckpt.read_draft_weights(path), str(path))
            if loaded["optimizer"] is not None:
                self.optimizer.load_state_dict(sharded.shard_optimizer_state(loaded["optimizer"], self.optimizer))
        else:
            ckpt.load_draft_weights(self.draft, path)
            if loaded["optimizer"] is not None:
                try:
                    self.optimizer.load_state_dict(loaded["optimizer"])
                except ValueError as e:  # e.g. resumed with a different --freeze-lm-head
                    raise SpecforgeError(f"--resume {path}: its optimizer state does not fit this run's trainable "
                                         f"parameters ({e}); resume with the same flags (e.g. --freeze-lm-head).") from None
        if loaded["scheduler"] is not None:
            self.scheduler.load_state_dict(loaded["scheduler"])
        self._rng_to_restore = loaded["rng"]
        self.global_step, self.epoch, self.group_pos = st["global_step"], st["epoch"], st["group_in_epoch"]
        if self.metrics_log is not None:
            self.metrics_log.truncate_after(self.global_step)
        logger.info("resumed from %s at step %d (epoch %d, group %d)", path, self.global_step, self.epoch,
                    self.group_pos)

    def save(self, name: str) -> Path:
        """Write ``OUTPUT_DIR/<name>/`` from rank 0, then wait for it on every rank.

        Only rank 0's RNG state is recorded: the loop itself draws no random numbers (data order is a
        pure function of seed and epoch), so the other ranks' generators do not affect a resumed run.
        """
        path = Path(self.cfg.output_dir) / name
        draft: Any = self.draft
        optim: Any = self.optimizer
        if sharded.is_sharded(self.draft):  # FSDP: every rank takes part in gathering full tensors
            draft, optim = sharded.full_draft_state(self.draft), sharded.full_state(self.optimizer.state_dict())
        if self.dist.is_main:
            ckpt.save_checkpoint(path, draft, self.draft_config, self.trainer_state(), optim,
                                 self.scheduler, {0: ckpt.capture_rng()})
            logger.info("saved %s", path)
        barrier(self.dist)
        return path

    # ------------------------------------------------------------------ steps
    def _batch(self, rows_idx: list[int], rows, counts: list[int] | None = None) -> dict[str, torch.Tensor]:
        batch = self.collate([rows[i] for i in rows_idx], self.cfg.pad_token_id)
        if counts is not None:  # [trained tokens, supervised tokens], counted on the host copy (no device sync)
            att = batch.get("attention_mask", batch["input_ids"])
            counts[0] += int(att.sum()) if "attention_mask" in batch else att.numel()
            counts[1] += int(batch["loss_mask"].sum())
        return {k: v.to(self.cfg.device) for k, v in batch.items()}

    def _forward(self, batch):
        ctx = (torch.autocast(self.device_type, dtype=self.cfg.dtype) if self.autocast
               else contextlib.nullcontext())
        with ctx:
            return self.forward_fn(batch)

    def train_step(self, group: list[list[int]]) -> dict:
        """One optimizer step over the micro-batches of ``group``; returns its metrics record, which also
        holds ``tokens`` / ``supervised_tokens`` (real and loss-masked tokens of the step, all ranks) and
        ``step_time`` (this rank's wall seconds, data collation and target forward included)."""
        t0 = time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        counts = [0, 0]
        for i, idx in enumerate(group):
            last = i == len(group) - 1
            no_sync = getattr(self.model, "no_sync", None)  # DDP: skip the all-reduce until the last micro-batch
            sync = no_sync() if (self.dist.enabled and not last and no_sync is not None) else contextlib.nullcontext()
            with sync:
                loss, metrics = self._forward(self._batch(idx, self.train_rows, counts))
                self.scaler.scale(loss / len(group)).backward()
            _accumulate(sums, {"loss": loss.detach(), **metrics})
        # token counts ride along the metrics all-reduce: sum over ranks / micro-batches, rescaled in _record
        sums["tokens"] = torch.tensor(float(counts[0]))
        sums["supervised_tokens"] = torch.tensor(float(counts[1]))
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if not self.scaler.is_enabled():  # (fp16 loss scaling skips such steps itself)
            _check_finite(self.global_step + 1, sums["loss"], grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.global_step += 1
        record = self._record("train", sums, len(group))
        for k in ("tokens", "supervised_tokens"):  # _record divided the all-rank sum by all micro-batches
            record[k] = round(record[k] * len(group) * self.dist.world_size)
        record.update(lr=lr, grad_norm=float(grad_norm), step_time=time.perf_counter() - t0)
        return record

    @torch.no_grad()
    def evaluate(self) -> dict | None:
        """Metrics over the whole eval set (averaged per batch, then over ranks)."""
        if self.eval_rows is None or len(self.eval_rows) == 0:
            return None
        self.model.eval()
        lengths = row_lengths(self.eval_rows)
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])[self.dist.dp_rank::self.dist.dp_size]
        sums: dict[str, torch.Tensor] = {}
        n = 0
        for s in range(0, len(order), self.cfg.batch_size):
            loss, metrics = self._forward(self._batch(order[s:s + self.cfg.batch_size], self.eval_rows))
            _accumulate(sums, {"loss": loss.detach(), **metrics})
            n += 1
        if n == 0:  # fewer eval rows than ranks: still contribute same-shaped zeros to the all-reduce
            loss, metrics = self._forward(self._batch([0], self.eval_rows))
            _accumulate(sums, {k: torch.zeros_like(torch.as_tensor(v)) for k, v in {"loss": loss, **metrics}.items()})
        self.model.train()
        return self._record("eval", sums, n)

    def _record(self, split: str, sums: dict, n: int) -> dict:
        keys = sorted(sums)
        # Sums and batch counts are reduced over ranks before dividing: ranks may hold unequal eval shards.
        flat = torch.cat([sums[k].double().reshape(-1) for k in keys] + [torch.tensor([float(n)], dtype=torch.float64)])
        flat = all_reduce_sum(flat, self.dist)
        means = (flat[:-1] / flat[-1]).tolist()
        record: dict[str, Any] = {"split": split, "step": self.global_step, "epoch": self.epoch}
        pos = 0
        for k in keys:
            size = sums[k].numel()
            vals = means[pos:pos + size]
            pos += size
            record[k] = vals if sums[k].dim() > 0 else vals[0]
        if "correct" in record and "valid" in record:  # pool accuracy over tokens, not over batches
            correct, valid = record.pop("correct"), record.pop("valid")
            record["acc"] = [c / v if v > 0 else 0.0 for c, v in zip(correct, valid)]
        if isinstance(record.get("acc"), list) and "accept_len" not in record:
            record["accept_len"] = accept_length(record["acc"])
            # simulated τ of a chain of k drafts (bench config 1,k,1,k+1), k = 1..K: what `bench` should decode
            record["sim_tau"] = [accept_length(record["acc"][:k]) for k in range(1, len(record["acc"]) + 1)]
        return record

    def _log(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        self.metrics_log.log(record)
        for t in self.trackers:
            t.log(record)
        if record["split"] == "train" and (self.cfg.log_interval > 1 or not self.cfg.progress):
            # one line per interval (with the bar on and --log-interval 1 the bar shows the same)
            logger.info("step %d: loss %.4f, %.0f tokens/s trained, %.0f supervised (mean of %d steps)",
                        record["step"], record["loss"], record["tokens_per_s"], record["supervised_tokens_per_s"],
                        record["interval_steps"])
        if record["split"] == "eval":
            acc = record.get("acc")
            logger.info("eval step %d: loss %.4f%s", record["step"], record["loss"],
                        f", acc {[round(a, 3) for a in acc]}, accept_len {record['accept_len']:.3f}" if acc else "")
            if acc:
                sim = record["sim_tau"]
                logger.info("eval step %d: simulated τ %s (compare `bench --config-list %s`)", record["step"],
                            ", ".join(f"{k}/1/{k + 1} {sim[k - 1]:.2f}" for k in sorted({min(3, len(sim)), len(sim)})),
                            " ".join(f"1,{k},1,{k + 1}" for k in sorted({min(3, len(sim)), len(sim)})))

    # ------------------------------------------------------------------ loop
    def fit(self) -> Path | None:
        """Train to the end (epochs or ``total_steps``); returns the last checkpoint written."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        if self.global_step == 0 and self.dist.is_main:
            self.metrics_log.reset()
        ckpt.restore_rng(getattr(self, "_rng_to_restore", None))
        bar = tqdm(total=min(self.total_steps, cfg.num_epochs * self.steps_per_epoch), initial=self.global_step,
                   disable=not (cfg.progress and self.dist.is_main), desc="train", dynamic_ncols=True)
        last_ckpt = None
        interval = IntervalMeans()
        try:
            while self.epoch < cfg.num_epochs and self.global_step < self.total_steps:
                groups = group_batches(epoch_batches(self.train_lengths, cfg.batch_size, cfg.seed, self.epoch,
                                                     self.dist.dp_rank, self.dist.dp_size), cfg.accumulation_steps)
                while self.group_pos < len(groups) and self.global_step < self.total_steps:
                    record = self.train_step(groups[self.group_pos])
                    self.group_pos += 1
                    interval.add(record)
                    bar.update(1)
                    postfix = {"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.2e}",
                               "tok/s": f"{record['tokens'] / max(record['step_time'], 1e-9):.0f}"}
                    if isinstance(record.get("acc"), list):
                        postfix["acc0"] = f"{record['acc'][0]:.3f}"
                    bar.set_postfix(postfix)
                    if self.global_step % cfg.log_interval == 0:
                        self._log(interval.flush())
                    if cfg.eval_interval and self.global_step % cfg.eval_interval == 0:
                        self._log_eval()
                    if cfg.save_interval and self.global_step % cfg.save_interval == 0:
                        last_ckpt = self.save(f"step_{self.global_step}")
                if self.group_pos >= len(groups):  # epoch finished
                    self._log_eval()
                    done = self.epoch
                    self.epoch, self.group_pos = self.epoch + 1, 0
                    last_ckpt = self.save(f"epoch_{done}")
                elif self.global_step >= self.total_steps:  # stopped mid-epoch by --total-steps
                    self._log_eval()
                    if not (cfg.save_interval and self.global_step % cfg.save_interval == 0):
                        last_ckpt = self.save(f"step_{self.global_step}")
        finally:
            bar.close()
        if self.dist.is_main:
            png = plot_metrics(self.metrics_log.path, Path(cfg.output_dir) / PLOT_FILE)
            if png:
                logger.info("wrote %s and %s", self.metrics_log.path, png)
        return last_ckpt

    def _log_eval(self) -> None:
        if getattr(self, "_last_eval_step", None) == self.global_step:  # interval and epoch end coincide
            return
        self._last_eval_step = self.global_step
        rec = self.evaluate()
        if rec is not None:
            self._log(rec)


def _check_finite(step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
    """Stop before a non-finite loss or gradient reaches the weights (the saved checkpoints stay intact)."""
    loss_v, norm_v = float(loss), float(grad_norm)
    if math.isfinite(loss_v) and math.isfinite(norm_v):
        return
    what = f"the loss is {loss_v}" if not math.isfinite(loss_v) else f"the gradient norm is {norm_v}"
    raise SpecforgeError(f"step {step}: {what}; training stopped before updating the weights (checkpoints "
                         "already saved are intact). Lower --learning-rate, keep --max-grad-norm > 0, or "
                         "train in --dtype float32/bfloat16.")


class IntervalMeans:
    """Train records between two log lines -> one record: means of the metrics (lists element-wise),
    the last ``step``/``epoch``/``lr``, summed token counts and time, and the interval's throughput
    ``tokens_per_s`` / ``supervised_tokens_per_s`` (tokens of every rank over this rank's wall time)."""

    SUMMED = ("tokens", "supervised_tokens", "step_time")
    LAST = ("split", "step", "epoch", "lr")

    def __init__(self):
        self.records: list[dict] = []

    def add(self, record: dict) -> None:
        self.records.append(record)

    def flush(self) -> dict:
        recs, self.records = self.records, []
        out = dict(recs[-1])
        n = len(recs)
        for k, v in recs[-1].items():
            if k in self.LAST or isinstance(v, bool):
                continue
            if k in self.SUMMED:
                out[k] = sum(r[k] for r in recs)
            elif isinstance(v, list):
                out[k] = [sum(r[k][i] for r in recs) / n for i in range(len(v))]
            elif isinstance(v, (int, float)):
                out[k] = sum(r[k] for r in recs) / n
        t = max(out.get("step_time", 0.0), 1e-9)
        out["tokens_per_s"] = out.get("tokens", 0) / t
        out["supervised_tokens_per_s"] = out.get("supervised_tokens", 0) / t
        out["interval_steps"] = n
        if isinstance(out.get("acc"), list):
            out["accept_len"] = accept_length(out["acc"])
        return out


def _accumulate(sums: dict, metrics: dict) -> None:
    for k, v in metrics.items():
        v = torch.as_tensor(v).detach().float().cpu()
        sums[k] = sums[k] + v if k in sums else v.clone()


