"""``--view-train-data``: print a tokenised sample with loss_mask==1 text green and 0 text red."""

from __future__ import annotations

from typing import Sequence


def mask_runs(input_ids: Sequence[int], loss_mask: Sequence[int]) -> list[tuple[int, list[int]]]:
    """Split a row into maximal runs of equal mask: ``[(mask, ids), ...]`` in order."""
    runs: list[tuple[int, list[int]]] = []
    for tok, m in zip(input_ids, loss_mask):
        m = int(m)
        if runs and runs[-1][0] == m:
            runs[-1][1].append(int(tok))
        else:
            runs.append((m, [int(tok)]))
    return runs


def render_sample(input_ids: Sequence[int], loss_mask: Sequence[int], tokenizer):
    """A ``rich.text.Text`` of the decoded sample, green where ``loss_mask == 1`` and red where 0."""
    from rich.text import Text

    text = Text()
    for m, ids in mask_runs(input_ids, loss_mask):
        # Decode whole runs, not single tokens, so multi-token characters and spacing come out right.
        text.append(tokenizer.decode(ids, skip_special_tokens=False), style="green" if m else "red")
    return text


def view_samples(dataset, indices: Sequence[int], tokenizer, console=None) -> None:
    """Print ``dataset[i]`` for each index with a one-line header (tokens, loss tokens)."""
    from rich.console import Console
    from rich.rule import Rule

    console = console or Console(highlight=False, soft_wrap=True)
    for i in indices:
        row = dataset[int(i)]
        n_loss = sum(int(x) for x in row["loss_mask"])
        console.print(Rule(f"train sample {i}: {len(row['input_ids'])} tokens, {n_loss} with loss_mask=1 "
                           "(green = 1, red = 0)"))
        console.print(render_sample(row["input_ids"], row["loss_mask"], tokenizer))
