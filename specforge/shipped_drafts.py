"""Drafts that ship with specforge, loadable by name (``--speculative-draft-model-path NAME``).

A shipped draft is a directory ``drafts/<name>/`` (``config.json`` + ``model.safetensors`` + a card) at the
root of the specforge repository. A source checkout and an editable install (``pip install -e .``) find it
there: the package is imported from ``<repo>/specforge/``, so ``drafts/`` is its parent's sibling. A wheel
(``pip install .``) does not carry ``drafts/``: point ``$SPECFORGE_DRAFTS`` at a copy of that folder
(os.pathsep-separated list; searched first) or pass the draft's directory path.
"""

from __future__ import annotations

import os
from pathlib import Path

from specforge.errors import SpecforgeError

ENV = "SPECFORGE_DRAFTS"


def draft_dirs() -> list[Path]:
    """Folders searched for shipped drafts, in order: ``$SPECFORGE_DRAFTS`` entries, then ``<repo>/drafts``."""
    dirs = [Path(p) for p in os.environ.get(ENV, "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parent.parent / "drafts")
    return dirs


def available() -> list[str]:
    """Names of the shipped drafts found (sorted, de-duplicated)."""
    names: set[str] = set()
    for d in draft_dirs():
        if d.is_dir():
            names.update(p.name for p in d.iterdir() if (p / "config.json").is_file())
    return sorted(names)


def _is_name(text: str) -> bool:
    return bool(text) and "/" not in text and os.sep not in text and not text.startswith((".", "~"))


def resolve_draft(name_or_path: str, flag: str = "draft") -> str:
    """A draft directory from a path (returned unchanged when it exists) or a shipped draft's name.

    A bare name that is not a local directory is looked up in :func:`draft_dirs`; when it is not found the
    error says where specforge looked and which names exist. Other paths come back unchanged (the
    caller reports a missing directory in its own words).
    """
    text = str(name_or_path)
    if os.path.isdir(text) or not _is_name(text):
        return text
    for d in draft_dirs():
        cand = d / text
        if (cand / "config.json").is_file():
            return str(cand)
    names = available()
    raise SpecforgeError(
        f"{flag} '{text}': no such directory, and no shipped draft of that name in "
        f"{', '.join(str(d) for d in draft_dirs())} (available: {', '.join(names) if names else 'none'}); "
        f"pass a draft directory or set ${ENV}.")
