"""Check that a draft directory (training checkpoint or export) will load completely and decode well.

Catches the silent failures of the serving engines: missing tensors (SGLang keeps a random lm_head),
unknown or ``model.``-prefixed names, shapes or transposed weights that disagree with config.json, an
exported embedding that is not the target's, d2t/t2d that disagree with each other or with the draft
vocab size, ``norm_before_residual`` left implicit, aux layer ids in the wrong engine's convention, and,
with ``--target-model-path``, a config that does not fit the target and a greedy decode with τ <= 1.
Exits 1 when any check fails.
"""

from __future__ import annotations

import argparse

_STYLE = {"pass": "green", "fail": "bold red", "warn": "yellow", "skip": "dim"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``specforge validate``."""
    from specforge.flags import add_target_flag

    parser.add_argument("directory", help="draft directory to check")
    add_target_flag(parser, optional=True,
                    help="target model: enables the target-consistency, embedding and τ > 1 decode checks")
    parser.add_argument("--layout", default="auto",
                        choices=("auto", "checkpoint", "hf", "sglang", "vllm-eagle3", "vllm-speculators", "eagle3"),
                        help="layout to check against (auto: from specforge_export.json / the config)")
    parser.add_argument("--no-decode", action="store_true", help="skip the greedy decode (τ) check")
    parser.add_argument("--device", default="cpu", help="device of the τ decode (cpu, cuda, auto)")
    parser.add_argument("--num-steps", type=int, default=4, help="draft steps of the τ decode (chain)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per prompt in the τ decode")


def print_report(report) -> None:
    """Print a report as a rich table (one row per check, failures with their fix)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report.directory} ({report.layout})", show_lines=False)
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    table.add_column("fix", overflow="fold")
    for c in report.checks:
        st = _STYLE.get(c.status, "")
        table.add_row(c.name, f"[{st}]{c.status.upper()}[/{st}]", c.detail, c.fix if c.status in ("fail", "warn") else "")
    console = Console(width=max(120, Console().width))
    console.print(table)
    bad = report.failures()
    console.print(f"[bold red]{len(bad)} check(s) failed[/bold red]" if bad else "[green]all checks passed[/green]")


def run(args: argparse.Namespace) -> int:
    """Validate and print; 0 when every check passed (warnings allowed), 1 otherwise."""
    from specforge.flags import target_from_args

    args.target_model_path = target_from_args(args)
    from specforge.export import validate_directory
    from specforge.modeling.loading import resolve_device
    from specforge.shipped_drafts import resolve_draft

    args.directory = resolve_draft(args.directory, "directory")  # a path, or a shipped draft's name
    report = validate_directory(args.directory, args.target_model_path, layout=args.layout,
                                decode=not args.no_decode, device=resolve_device(args.device),
                                decode_options={"num_steps": args.num_steps, "max_new_tokens": args.max_new_tokens})
    print_report(report)
    return 0 if report.ok else 1
