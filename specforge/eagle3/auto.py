"""The seed's draft registries: drafts chosen by ``architectures[0]`` of their config.json.

Register a custom draft (no edit inside specforge needed)::

    AutoEagle3DraftModel._model_mapping[MyDraftConfig] = [MyDraftEagle3]
    AutoDraftModelConfig._config_mapping["MyDraftEagle3"] = MyDraftConfig

The class is then used by train, bench, export and validate for any config.json naming it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

from transformers import LlamaConfig

from specforge.eagle3.config import ARCH, Eagle3Config, derive_draft_fields
from specforge.eagle3.llama import LlamaForCausalLMEagle3
from specforge.errors import SpecforgeError
from specforge.registry import ClassByConfig


class AutoEagle3DraftModel(ClassByConfig):
    """Draft models by config class; the class named by ``architectures[0]`` wins among candidates."""

    # the model mapping is a plain registry: add entries for custom drafts
    _model_mapping: ClassVar[dict] = {LlamaConfig: [LlamaForCausalLMEagle3]}
    _kind = "EAGLE-3 draft model"

    @classmethod
    def from_config(cls, config, **kwargs):
        """Build a randomly initialised draft from a config (its embedding still has to be loaded)."""
        return cls._get_model_class(config)(config, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs):
        """Load ``DIR/config.json`` + ``DIR/model.safetensors`` (strict, except the frozen embedding)."""
        from safetensors.torch import load_file

        path = Path(path)
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise SpecforgeError(f"{path} has no model.safetensors; pass a draft checkpoint directory "
                                 "such as OUTPUT_DIR/epoch_0.")
        model = cls.from_config(AutoDraftModelConfig.from_file(path), **kwargs)
        model.load_checkpoint_state(load_file(str(weights)), source=str(weights))
        return model


class AutoDraftModelConfig:
    """Draft configs keyed by ``architectures[0]`` of a config.json."""

    _config_mapping: ClassVar[dict[str, Any]] = {ARCH: LlamaConfig}

    @classmethod
    def config_class(cls, data: dict, source: str = "draft config"):
        """The config class registered for ``data['architectures'][0]``."""
        archs = data.get("architectures") or []
        if not archs:
            raise SpecforgeError(f"{source} has no 'architectures' entry; set it to e.g. [\"{ARCH}\"].")
        if archs[0] not in cls._config_mapping:
            raise SpecforgeError(
                f"{source}: unknown draft architecture '{archs[0]}'; known: {', '.join(sorted(cls._config_mapping))}.")
        return cls._config_mapping[archs[0]]

    @classmethod
    def from_dict(cls, data: dict, source: str = "draft config"):
        """Build the config class registered for ``data['architectures'][0]``."""
        config_cls = cls.config_class(data, source)
        if issubclass(config_cls, LlamaConfig):
            Eagle3Config.from_dict(data, source)  # one clear line for a missing / inconsistent field
        try:
            return config_cls.from_dict(dict(data))
        except (TypeError, ValueError) as e:  # the config library's own validators (StrictDataclass*, ...)
            detail = " ".join(str(e).split())[:300]
            raise SpecforgeError(f"{source}: invalid draft config ({detail}); fix the file.") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike):
        """Read a draft config.json (or a directory holding one)."""
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise SpecforgeError(f"draft config {p} does not exist; check --draft-model-config.")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SpecforgeError(f"draft config {p} is not valid JSON ({e.__class__.__name__}: line "
                                 f"{getattr(e, 'lineno', '?')}); fix the file.") from None
        if not isinstance(data, dict):
            raise SpecforgeError(f"draft config {p} must hold a JSON object.")
        return cls.from_dict(data, source=str(p))


def check_llama_draft_fields(data: dict, source: str = "draft config") -> None:
    """One clear line for a missing, non-integer or inconsistent field of a Llama-style draft config."""
    Eagle3Config.from_dict(data, source)


def derive_draft_config(target_config, draft_vocab_size: int | None = None) -> LlamaConfig:
    """A 1-layer ``LlamaForCausalLMEagle3`` config from a target config (no ``--draft-model-config``);
    see :func:`specforge.eagle3.config.derive_draft_fields`."""
    return LlamaConfig(**derive_draft_fields(target_config, draft_vocab_size))


def check_draft_target_compat(draft_config, target_config) -> None:
    """Raise one clear line when the draft cannot sit on this target (hidden size or vocab mismatch)."""
    Eagle3Config.of(draft_config).check_target(target_config)
