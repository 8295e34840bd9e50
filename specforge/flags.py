"""Flags shared by every command line (the ``specforge`` commands and the standalone tools): one definition
of the target model flag.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from specforge.errors import SpecforgeError

TARGET_DEST = "target_model_path"
_GIVEN = "_target_flags_given"


class _TargetFlag(argparse.Action):
    """Stores the target; remembers which spelling gave which value so that two different ones are refused."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: str | None = None):
        given = dict(getattr(namespace, _GIVEN, None) or {})
        given[option_string or self.dest] = values
        setattr(namespace, _GIVEN, given)
        setattr(namespace, self.dest, values)


def add_target_flag(parser: Any, names: Sequence[str] = ("--target-model-path", "--model-path"),
                    optional: bool = False, help: str | None = None) -> None:
    """Add the target model flag under every seed spelling in ``names`` (dest ``target_model_path``).

    ``optional``: no default, the command runs without a target (export, validate); otherwise the default is
    the offline default model."""
    from specforge.modeling.loading import DEFAULT_TARGET

    text = help or "target model: local HF directory, repo id, or the offline default / alias smollm2-135m"
    parser.add_argument(*names, dest=TARGET_DEST, action=_TargetFlag, default=None if optional else DEFAULT_TARGET,
                        help=text + (f" (also {', '.join(names[1:])})" if len(names) > 1 else ""))


def target_from_args(ns: argparse.Namespace) -> str | None:
    """The target the flags name; two spellings with different values are one clear error."""
    given = getattr(ns, _GIVEN, None) or {}
    if len(set(given.values())) > 1:
        parts = ", ".join(f"{k} ({v})" for k, v in given.items())
        raise SpecforgeError(f"{parts} name different targets; they are one flag, pass one of them.")
    return getattr(ns, TARGET_DEST)


def add_drafting_flags(parser: Any, hybrid_help: str) -> None:
    """``--hybrid-lookup`` (prompt lookup in front of the draft) and ``--min-draft-prob`` (dynamic draft depth),
    shared by ``bench`` and ``serve``; see :class:`specforge.inference.drafters.LookupDrafter`."""
    parser.add_argument("--hybrid-lookup", action="store_true",
                        help=f"{hybrid_help}: where the context's last 2-3 tokens occurred before, propose what "
                             "followed them (prompt lookup, no draft forward), else draft")
    parser.add_argument("--min-draft-prob", type=float, default=0.0,
                        help="dynamic draft depth: stop drafting once every branch's cumulative draft probability "
                             "is below this, and verify only nodes above it (0 = always num_steps levels)")


def check_min_draft_prob(value: float) -> None:
    """One clear error for a --min-draft-prob outside [0, 1)."""
    from specforge.errors import SpecforgeError

    if not 0.0 <= value < 1.0:
        raise SpecforgeError(f"--min-draft-prob must be in [0, 1) (got {value}).")
