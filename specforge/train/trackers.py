"""Experiment trackers (``--report-to``) and the metrics JSONL log every run writes.

A metrics record is a flat dict such as ``{"split": "train", "step": 3, "epoch": 0, "loss": 1.2,
"lr": 1e-4, "acc": [..per TTT position..], "pos_loss": [...], "accept_len": 2.1}``. The JSONL log keeps
them as written; trackers receive them flattened (``train/loss``, ``train/acc_0``, ...).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from specforge.errors import SpecforgeError
from specforge.fileio import atomic_open

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def flatten(record: dict) -> dict[str, float]:
    """``{"split": "train", "loss": x, "acc": [a, b]}`` -> ``{"train/loss": x, "train/acc_0": a, ...}``."""
    split = record.get("split", "train")
    out = {}
    for k, v in record.items():
        if k in ("split", "step", "epoch"):
            continue
        if isinstance(v, (list, tuple)):
            out.update({f"{split}/{k}_{i}": float(x) for i, x in enumerate(v)})
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{split}/{k}"] = float(v)
    return out


class MetricsLog:
    """Append-only JSONL of metric records in the output dir.

    Lines are appended and flushed one by one (rewriting the file per step would be quadratic);
    :meth:`truncate_after` rewrites it atomically on ``--resume`` so the log equals an uninterrupted run's.
    """

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Keep only well-formed records with ``step <= step`` (drops a torn last line after a kill)."""
        rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        with atomic_open(self.path) as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")

    def reset(self) -> None:
        """Start a fresh log (a new, non-resumed run)."""
        with atomic_open(self.path) as f:
            f.write("")

    def log(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def read_metrics(path: str | Path) -> list[dict]:
    """All well-formed records of a metrics JSONL (a torn trailing line is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                rows.append(rec)
    return rows


class Tracker:
    """Base tracker: ``log(record)`` per metrics record, ``finish()`` at the end. Does nothing."""

    def log(self, record: dict) -> None:
        pass

    def finish(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    """Scalars to ``OUTPUT_DIR/runs`` via ``torch.utils.tensorboard``."""

    def __init__(self, output_dir: str | Path, config: dict, project: str | None = None, name: str | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SpecforgeError("--report-to tensorboard needs the tensorboard package: "
                                 "run `pip install tensorboard`.") from None
        self.writer = SummaryWriter(log_dir=str(Path(output_dir) / "runs"))
        self.writer.add_text("config", "\n".join(f"{k}: {v}" for k, v in sorted(config.items())))

    def log(self, record: dict) -> None:
        for k, v in flatten(record).items():
            if math.isfinite(v):
                self.writer.add_scalar(k, v, record.get("step", 0))
        self.writer.flush()

    def finish(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    """Weights & Biases run (``--wandb-project``, ``--wandb-name``)."""

    def __init__(self, output_dir: str | Path, config: dict, project: str | None, name: str | None):
        try:
            import wandb
        except ImportError:
            raise SpecforgeError("--report-to wandb needs the wandb package: run `pip install wandb` "
                                 "(or use --report-to tensorboard|none).") from None
        self.wandb = wandb
        self.run = wandb.init(project=project or "specforge", name=name, config=config, dir=str(output_dir))

    def log(self, record: dict) -> None:
        self.run.log(flatten(record), step=record.get("step", 0))

    def finish(self) -> None:
        self.run.finish()


class MlflowTracker(Tracker):
    """MLflow run: experiment = ``--wandb-project``, run name = ``--wandb-name``."""

    def __init__(self, output_dir: str | Path, config: dict, project: str | None, name: str | None):
        try:
            import mlflow
        except ImportError:
            raise SpecforgeError("--report-to mlflow needs the mlflow package: run `pip install mlflow` "
                                 "(or use --report-to tensorboard|none).") from None
        self.mlflow = mlflow
        if project:
            mlflow.set_experiment(project)
        mlflow.start_run(run_name=name)
        mlflow.log_params({k: str(v)[:500] for k, v in config.items()})

    def log(self, record: dict) -> None:
        self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in flatten(record).items()},
                                step=record.get("step", 0))

    def finish(self) -> None:
        self.mlflow.end_run()


_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_tracker_available(report_to: str) -> None:
    """Fail early (before any model is loaded) when the ``--report-to`` package is not installed."""
    pkg = _PACKAGES.get(report_to)
    if pkg is None:
        return
    try:
        __import__(pkg)
    except ImportError:
        raise SpecforgeError(f"--report-to {report_to} needs the {pkg} package: run `pip install {pkg}` "
                             "(or use --report-to tensorboard|none).") from None


#: ``--report-to`` name -> tracker class (each built as ``cls(output_dir, config, project, name)``)
TRACKERS: dict[str, Callable[..., Tracker]] = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker,
                                      "mlflow": MlflowTracker}


def build_tracker(report_to: str, output_dir: str | Path, config: dict[str, Any],
                  project: str | None = None, name: str | None = None) -> Tracker:
    """Tracker for ``--report-to none|tensorboard|wandb|mlflow`` (optional packages checked here)."""
    if report_to in (None, "none"):
        if project or name:
            logger.info("--wandb-project/--wandb-name are used only with --report-to wandb|mlflow")
        return Tracker()
    if report_to not in TRACKERS:
        raise SpecforgeError(f"unknown --report-to '{report_to}'; use one of none, {', '.join(TRACKERS)}.")
    return TRACKERS[report_to](output_dir, config, project, name)


def log_all(trackers: Iterable, record: dict) -> None:
    """Send one record to every sink."""
    for t in trackers:
        t.log(record)
