"""Draft checkpoints (``epoch_<i>/``, ``step_<n>/``) and the trainer state that ``--resume`` reads.

Layout of one checkpoint directory (written atomically: built in a temp sibling, then renamed)::

    config.json            HF-style draft config (architectures[0] picks the class on load)
    model.safetensors      draft weights without the embedding (it is the target's)
    trainer_state/
        state.json         epoch, global step, data position, seed, world size, ...
        optimizer.pt       optimizer.state_dict()  (tensors + plain types; loaded weights_only=True)
        scheduler.pt       scheduler.state_dict()  (plain types)
        rng_rank<r>.pt     torch CPU / CUDA generator states of rank r

Nothing is unpickled: every ``torch.load`` here uses ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from specforge.errors import SpecforgeError
from specforge.fileio import atomic_path

logger = logging.getLogger(__name__)

STATE_DIR = "trainer_state"
_CKPT_RE = re.compile(r"^(epoch|step)_(\d+)$")


def draft_state_dict(draft: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Exportable draft tensors: every parameter and buffer except the frozen target embedding.

    Returns contiguous CPU tensors keyed by the draft's own names (``midlayer.*``, ``fc.weight``,
    ``norm.weight``, ``lm_head.weight``, ``d2t``, ``t2d``).
    """
    save = getattr(draft, "state_dict_for_save", None)  # Eagle3DraftModel knows its own non-checkpoint keys
    if save is not None:
        tensors = save()
    else:
        tensors = {k: v for k, v in draft.state_dict().items() if "embed_tokens" not in k}
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def config_dict(config: Any) -> dict:
    """The draft config as a JSON-ready dict (HF ``PretrainedConfig`` or a plain mapping)."""
    if hasattr(config, "to_dict"):
        d = config.to_dict()
    elif isinstance(config, dict):
        d = dict(config)
    else:
        d = dict(vars(config))
    return json.loads(json.dumps(d, default=str))


def save_checkpoint(path: str | Path, draft: torch.nn.Module, config: Any,
                    trainer_state: dict | None = None, optimizer=None, scheduler=None,
                    rng_states: dict[int, dict] | None = None) -> Path:
    """Atomically write one checkpoint directory (see module docstring); returns its path.

    ``rng_states`` maps rank -> ``{"cpu": ByteTensor, "cuda": [ByteTensor, ...]}``. ``draft`` and
    ``optimizer`` may also be already-gathered state dicts (an FSDP-sharded draft, see ``sharded.py``).
    """
    from specforge.fileio import save_safetensors

    path = Path(path)
    with atomic_path(path, is_dir=True) as tmp:
        with open(tmp / "config.json", "w", encoding="utf-8") as f:
            json.dump(config_dict(config), f, indent=2, sort_keys=True)
        weights = draft if isinstance(draft, dict) else draft_state_dict(draft)
        save_safetensors(weights, tmp / "model.safetensors", metadata={"format": "pt"})
        if trainer_state is not None:
            sd = tmp / STATE_DIR
            sd.mkdir()
            with open(sd / "state.json", "w", encoding="utf-8") as f:
                json.dump(trainer_state, f, indent=2, sort_keys=True)
            if optimizer is not None:
                torch.save(optimizer if isinstance(optimizer, dict) else optimizer.state_dict(), sd / "optimizer.pt")
            if scheduler is not None:
                torch.save(scheduler.state_dict(), sd / "scheduler.pt")
            for rank, states in (rng_states or {}).items():
                torch.save(states, sd / f"rng_rank{rank}.pt")
    return path


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint dirs with a trainer state under ``output_dir``, oldest first.

    Ordered by global step; at equal step an ``epoch_`` dir sorts after a ``step_`` dir (it also
    has the epoch-end evaluation behind it).
    """
    root = Path(output_dir)
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = _CKPT_RE.match(p.name)
            state = p / STATE_DIR / "state.json"
            if p.is_dir() and m and state.is_file():
                try:
                    step = int(json.loads(state.read_text(encoding="utf-8"))["global_step"])
                except (ValueError, KeyError, json.JSONDecodeError):
                    logger.warning("ignoring %s: unreadable trainer state", p)
                    continue
                found.append((step, m.group(1) == "epoch", int(m.group(2)), p))
    return [p for *_, p in sorted(found)]


def resolve_resume_dir(resume: str, output_dir: str | Path) -> Path:
    """``--resume`` value -> a checkpoint dir: ``latest`` (newest in ``output_dir``), a checkpoint dir,
    or a run dir holding checkpoints (its newest intact one: a corrupt newer one is skipped, and said so)."""
    if resume == "latest":
        ckpts = list_checkpoints(output_dir)
        if not ckpts:
            raise SpecforgeError(f"--resume: no checkpoint with a trainer state in {output_dir}; "
                                 "train without --resume first (or pass a checkpoint dir).")
        return newest_intact(ckpts)
    p = Path(resume)
    if (p / STATE_DIR / "state.json").is_file():
        verify_checkpoint(p)
        return p
    ckpts = list_checkpoints(p)
    if ckpts:
        return newest_intact(ckpts)
    raise SpecforgeError(f"--resume {resume}: not a checkpoint dir with {STATE_DIR}/state.json "
                         "nor a dir containing epoch_*/step_* checkpoints.")


def verify_checkpoint(ckpt: str | Path) -> None:
    """Read every file of a checkpoint once; a truncated or corrupt one raises :class:`SpecforgeError`."""
    from specforge.fileio import load_safetensors

    load_safetensors(Path(ckpt) / "model.safetensors")
    load_trainer_state(ckpt)


def newest_intact(ckpts: list[Path]) -> Path:
    """The newest of ``ckpts`` (oldest first) that reads completely; logs each corrupt one skipped."""
    skipped = []
    for c in reversed(ckpts):
        try:
            verify_checkpoint(c)
        except SpecforgeError as e:
            skipped.append(c)
            logger.warning("checkpoint %s is corrupt (%s); trying an older one", c, e)
            continue
        if skipped:
            logger.warning("resuming from %s, the newest intact checkpoint (skipped corrupt %s)", c,
                           ", ".join(x.name for x in skipped))
        return c
    raise SpecforgeError(f"--resume: every checkpoint in {ckpts[-1].parent} is corrupt "
                         f"({', '.join(c.name for c in ckpts)}); train again without --resume.")


def guard_output_dir(output_dir: str | Path, resume, overwrite: bool, is_main: bool = True) -> None:
    """Refuse to train over another run's checkpoints unless ``--resume`` or ``--overwrite`` says so.

    With ``overwrite`` the old run's checkpoints and metrics are removed first (rank 0), so no older
    ``step_<n>/`` can later pass for the newest checkpoint. Stale temporaries of killed saves always go.
    """
    import shutil

    from specforge.fileio import check_output_dir, clean_stale_temps

    root = check_output_dir(output_dir, "--output-dir")
    if is_main:
        clean_stale_temps(root)
    if resume or not root.is_dir():
        return
    old = sorted(p for p in root.iterdir() if _CKPT_RE.match(p.name) and p.is_dir())
    old += [root / n for n in ("metrics.jsonl", "training_curves.png") if (root / n).is_file()]
    if not old:
        return
    if not overwrite:
        raise SpecforgeError(f"--output-dir {root} already holds a run ({', '.join(p.name for p in old[:4])}"
                             f"{', ...' if len(old) > 4 else ''}); continue it with --resume, pick another "
                             "--output-dir, or pass --overwrite to delete it and start over.")
    if is_main:
        logger.info("--overwrite: removing the previous run's %s", ", ".join(p.name for p in old))
        for p in old:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def load_trainer_state(ckpt: str | Path, rank: int = 0) -> dict:
    """Read the trainer state of a checkpoint (JSON + tensors, ``weights_only=True``).

    Returns ``{"state": dict, "optimizer": dict | None, "scheduler": dict | None, "rng": dict | None}``.
    """
    sd = Path(ckpt) / STATE_DIR
    try:
        state = json.loads((sd / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SpecforgeError(f"{sd / 'state.json'}: unreadable trainer state ({e}).") from None

    def _load(name):
        f = sd / name
        if not f.is_file():
            return None
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - truncated zip, bad pickle opcodes, ...: unreadable either way
            raise SpecforgeError(f"{f}: corrupt or truncated ({str(e).splitlines()[0] if str(e) else type(e).__name__})."
                                 ) from None

    rng = _load(f"rng_rank{rank}.pt") or _load("rng_rank0.pt")
    return {"state": state, "optimizer": _load("optimizer.pt"), "scheduler": _load("scheduler.pt"),
            "rng": rng}


def read_draft_weights(ckpt: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's ``model.safetensors`` (one clear line when it is missing)."""
    from specforge.fileio import load_safetensors

    f = Path(ckpt) / "model.safetensors"
    if not f.is_file():
        raise SpecforgeError(f"{f}: missing draft weights; the checkpoint is incomplete.")
    return load_safetensors(f)


def load_draft_weights(draft: torch.nn.Module, ckpt: str | Path) -> None:
    """Load ``model.safetensors`` of a checkpoint into ``draft`` (embedding excluded, all else strict)."""
    f = Path(ckpt) / "model.safetensors"
    tensors = read_draft_weights(ckpt)
    load = getattr(draft, "load_checkpoint_state", None)
    if load is not None:
        load(tensors, source=str(f))
        return
    missing, unexpected = draft.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if "embed_tokens" not in k]
    if missing or unexpected:
        raise SpecforgeError(f"{f}: weights do not match the draft (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}); was it written for another config?")


def capture_rng() -> dict:
    """Current torch generator states: ``{"cpu": ByteTensor, "cuda": [ByteTensor per device]}``."""
    out: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(states: dict | None) -> None:
    """Inverse of :func:`capture_rng` (missing entries are left alone)."""
    if not states:
        return
    torch.set_rng_state(states["cpu"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
