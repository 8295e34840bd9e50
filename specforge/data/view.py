"""``--view-train-data``: print a tokenised sample with loss_mask==1 text green and 0 text red."""

from __future__ import annotations

from collections.abc import Sequence


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


# Without colours (a pipe, a file, NO_COLOR) the trained text is bracketed instead.
PLAIN_MARKS = ("[[", "]]")


def render_sample(input_ids: Sequence[int], loss_mask: Sequence[int], tokenizer, marks: bool = False):
    """A ``rich.text.Text`` of the decoded sample, green where ``loss_mask == 1`` and red where 0; with
    ``marks`` the ``loss_mask == 1`` runs are also wrapped in :data:`PLAIN_MARKS`."""
    from rich.text import Text

    text = Text()
    for m, ids in mask_runs(input_ids, loss_mask):
        # Decode whole runs, not single tokens, so multi-token characters and spacing come out right.
        piece = tokenizer.decode(ids, skip_special_tokens=False)
        if m and marks:
            piece = PLAIN_MARKS[0] + piece + PLAIN_MARKS[1]
        text.append(piece, style="green" if m else "red")
    return text


def make_console(file=None):
    """A rich Console that honours ``NO_COLOR`` / ``FORCE_COLOR`` as set now (read here, not at import)."""
    import os

    from rich.console import Console

    force = os.environ.get("FORCE_COLOR")
    return Console(file=file, highlight=False, soft_wrap=True, no_color=os.environ.get("NO_COLOR", "") != "",
                   force_terminal=None if force is None else force != "")


def view_samples(dataset, indices: Sequence[int], tokenizer, console=None) -> None:
    """Print ``dataset[i]`` for each index with a one-line header (tokens, loss tokens).

    Colours follow rich's rules (terminal detection, ``NO_COLOR``, ``FORCE_COLOR``); when they are off the
    trained spans are marked in plain text so a piped or paged view still shows them.
    """
    from rich.markup import escape
    from rich.rule import Rule

    console = console or make_console()
    marks = console.no_color or console.color_system is None
    legend = f"{PLAIN_MARKS[0]}trained{PLAIN_MARKS[1]} = 1, rest = 0" if marks else "green = 1, red = 0"
    for i in indices:
        row = dataset[int(i)]
        n_loss = sum(int(x) for x in row["loss_mask"])
        console.print(Rule(escape(f"train sample {i}: {len(row['input_ids'])} tokens, {n_loss} with loss_mask=1 "
                                  f"({legend})")))
        console.print(render_sample(row["input_ids"], row["loss_mask"], tokenizer, marks))
