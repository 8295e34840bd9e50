"""``export_draft``: build a layout's plan, write it atomically, validate it before it appears."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from specforge.errors import SpecforgeError
from specforge.export import spec
from specforge.export.formats import REGISTRY, write_plan
from specforge.export.source import ExportOptions, load_source, target_info

logger = logging.getLogger(__name__)


def _guard_output(out: Path, src_dir: Path | None, force: bool) -> None:
    out_r = out.resolve()
    if src_dir is not None:
        s = src_dir.resolve()
        if out_r == s or s.is_relative_to(out_r):
            raise SpecforgeError(f"--output-dir {out} would replace the checkpoint it reads; pick another dir.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not (out / spec.MANIFEST).is_file() \
            and not force:
        raise SpecforgeError(f"--output-dir {out} exists and is not a specforge export; choose a new "
                             "directory (or pass --force to replace it).")


def export_draft(checkpoint: str | os.PathLike, output_dir: str | os.PathLike, to: str = "sglang",
                 target_model_path: str | None = None, options: ExportOptions | None = None,
                 force: bool = False):
    """Export ``checkpoint`` as layout ``to`` (a key of :data:`EXPORTERS`) into ``output_dir``.

    The directory appears atomically and only after the structural validation passed; returns the
    :class:`specforge.export.report.Report` of the written directory.
    """
    from specforge.export.validate import validate_directory
    from specforge.fileio import atomic_path

    build = REGISTRY.get(to)
    if to == "gguf":
        raise SpecforgeError("the gguf layout is one file, not a directory: use specforge.export.export_gguf "
                             "(`specforge export --to gguf --output FILE.gguf`).")
    out = Path(output_dir)
    _guard_output(out, Path(checkpoint), force)
    src = load_source(checkpoint)
    if src.dropped:
        logger.info("not exporting %s: the engines share the target's embedding", ", ".join(src.dropped))
    target = target_info(target_model_path) if target_model_path else None
    plan = build(src, target, options or ExportOptions())
    with atomic_path(out, is_dir=True) as tmp:
        write_plan(plan, tmp)
        report = validate_directory(tmp, layout=to, decode=False, target=target)
        if not report.ok:
            bad = report.failures()[0]
            raise SpecforgeError(f"export refused: {bad.name}: {bad.detail} ({bad.fix})")
    report.directory = str(out)
    return report
