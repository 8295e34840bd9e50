"""Benchmark output: JSONL records (rewritten atomically after each one), a rich table and PNG plots."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from specforge.fileio import save_figure, write_jsonl

logger = logging.getLogger(__name__)


class RecordWriter:
    """Keeps all records and atomically rewrites ``path`` after each one, so Ctrl-C never leaves half a file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: list[dict] = []

    def add(self, record: dict) -> None:
        self.records.append(record)
        write_jsonl(self.path, self.records)


def _fmt(v, nd=2):
    return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def print_table(records: list[dict]) -> None:
    """One row per record: benchmark, method, config, τ, tokens/s, speed-up, where the time goes
    (t_target / t_verify / t_draft, see :func:`specforge.bench.runner.step_times`), wall time, samples."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="specforge bench")
    for col in ("benchmark", "method", "config", "τ", "tok/s", "speed-up", "t_target ms", "t_verify ms",
                "t_draft ms", "wall s", "samples"):
        table.add_column(col, justify="left" if col in ("benchmark", "method", "config") else "right")
    for r in records:
        table.add_row(r["benchmark"], r["method"], r["config_str"], _fmt(r.get("accept_length")),
                      _fmt(r["tokens_per_s"], 1), _fmt(r.get("speedup")), _fmt(r.get("t_target_ms"), 1),
                      _fmt(r.get("t_verify_ms"), 1), _fmt(r.get("t_draft_ms"), 1), _fmt(r["wall_time_s"], 1),
                      str(r["num_samples"]))
    console = Console(stderr=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 200  # piped or logged: rich's 80-column default would cut every cell to "ben…"
    console.print(table)


def write_plots(records: list[dict], output: str | Path) -> list[Path]:
    """τ histograms (one bar group per speculative record) and speed-up per benchmark, next to ``output``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(output)
    stem = out.with_suffix("")
    paths = []
    spec = [r for r in records if r.get("accept_histogram")]
    if spec:
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / len(spec)
        for i, r in enumerate(spec):
            h = r["accept_histogram"]
            tot = max(1, sum(h))
            ax.bar([j + 1 + i * width for j in range(len(h))], [x / tot for x in h], width=width,
                   label=f"{r['benchmark']} {r['config_str']} (τ={r['accept_length']:.2f})")
        ax.set_xlabel("tokens per verification (τ)")
        ax.set_ylabel("fraction of verifications")
        ax.legend(fontsize=7)
        paths.append(save_figure(fig, f"{stem}_tau_hist.png"))
    with_speed = [r for r in records if r.get("speedup") is not None]
    if with_speed:
        benches = list(dict.fromkeys(r["benchmark"] for r in with_speed))
        labels = list(dict.fromkeys(f"{r['method']} {r['config_str']}" for r in with_speed))
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / len(labels)
        for i, lab in enumerate(labels):
            ys = [next((r["speedup"] for r in with_speed if r["benchmark"] == b
                        and f"{r['method']} {r['config_str']}" == lab), 0.0) for b in benches]
            ax.bar([j + i * width for j in range(len(benches))], ys, width=width, label=lab)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(benches))], benches)
        ax.set_ylabel("speed-up vs vanilla (wall time)")
        ax.legend(fontsize=7)
        paths.append(save_figure(fig, f"{stem}_speedup.png"))
    return paths
