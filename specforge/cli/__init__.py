"""The ``specforge`` command line: one entry point, one module per sub-command.

Each sub-command module under ``specforge.cli`` defines ``add_arguments(parser)`` and ``run(args)``.
Modules are imported only when their command runs, so ``specforge --help`` is fast; a new command is
a new module plus one line in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from specforge.errors import SpecforgeError
from specforge.logs import setup_logging

# command name -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare-data": ("specforge.cli.prepare_data", "convert a raw chat data set into conversations JSONL"),
    "regenerate": ("specforge.cli.regenerate", "re-answer every user turn with the target (embedded or servers)"),
    "serve": ("specforge.cli.serve", "serve the target as an OpenAI-compatible chat server (optionally speculative)"),
    "build-cache": ("specforge.cli.build_cache", "tokenise conversations, build loss masks and the draft vocab"),
    "prepare-hidden-states": ("specforge.cli.prepare_hidden_states",
                              "run the target once and store its hidden states for offline training"),
    "train": ("specforge.cli.train", "train an EAGLE-3 draft model online (target in the loop)"),
    "bench": ("specforge.cli.bench", "measure acceptance length and speed-up with the built-in decoder"),
    "export": ("specforge.cli.export", "export a draft checkpoint for SGLang, vLLM or HF"),
    "validate": ("specforge.cli.validate", "check that a draft checkpoint will load completely"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: specforge <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "Run `specforge <command> --help` for the options of a command."]
    return "\n".join(lines)


def build_parser(command: str) -> tuple[argparse.ArgumentParser, object]:
    """Return the parser of one sub-command and its module."""
    module_name, desc = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"specforge {command}", description=(module.__doc__ or desc).strip().split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    module.add_arguments(parser)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``specforge`` and of the ``scripts/*.py`` shims."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from specforge import __version__

        print(f"specforge {__version__}")
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(f"specforge: unknown command '{command}'.\n\n{_usage()}", file=sys.stderr)
        return 2
    parser, module = build_parser(command)
    args = parser.parse_args(argv[1:])
    setup_logging()
    try:
        return int(module.run(args) or 0)  # type: ignore[attr-defined]  # each command module defines run
    except SpecforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, read-only or permission-denied place, a file in the way
        from specforge.fileio import describe_os_error

        line = describe_os_error(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return SpecforgeError.exit_code
