"""End-of-run PNG: loss and per-position accuracy over optimizer steps (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

from specforge.fileio import save_figure
from specforge.train.trackers import read_metrics

PLOT_FILE = "training_curves.png"


def plot_metrics(metrics_path: str | Path, out_path: str | Path) -> Path | None:
    """Draw train/eval loss and per-TTT-position train/eval accuracy from a metrics JSONL.

    Returns the PNG path, or None when there are no records to draw.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [r for r in rows if r.get("split") == "train"]
    evals = [r for r in rows if r.get("split") == "eval"]
    if not train and not evals:
        return None
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    for recs, style, label in ((train, "-", "train"), (evals, "o--", "eval")):
        if recs:
            ax_loss.plot([r["step"] for r in recs], [r["loss"] for r in recs], style, label=f"{label} loss")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("weighted TTT loss")
    ax_loss.set_title("loss")
    ax_loss.legend()
    cmap = plt.get_cmap("viridis")
    for recs, style, label in ((train, "-", "train"), (evals, "o--", "eval")):
        if not recs or "acc" not in recs[0]:
            continue
        k = len(recs[0]["acc"])
        for i in range(k):
            ax_acc.plot([r["step"] for r in recs], [r["acc"][i] for r in recs], style,
                        color=cmap(i / max(1, k - 1)), label=f"{label} pos {i}", linewidth=1)
    ax_acc.set_xlabel("optimizer step")
    ax_acc.set_ylabel("accuracy (draft argmax == teacher argmax)")
    ax_acc.set_ylim(0, 1)
    ax_acc.set_title("per-position accuracy")
    ax_acc.legend(fontsize=7, ncol=2)
    return save_figure(fig, out_path)
