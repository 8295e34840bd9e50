"""Auto registries (the seed's API): drafts chosen by ``architectures[0]``, TP targets by config class.

Register a custom draft (the classes live in :mod:`specforge.eagle3.auto`, re-exported here)::

    AutoEagle3DraftModel._model_mapping[MyModelConfig] = [MyModelEagle3]
    AutoDraftModelConfig._config_mapping["MyModelEagle3"] = MyModelConfig

and a tensor-parallel target: ``AutoDistributedTargetModel._model_mapping[MyConfig] = [MyModelForCausalLM]``.
"""

from __future__ import annotations

from typing import ClassVar

from transformers import LlamaConfig, Qwen2Config, Qwen3Config

from specforge.eagle3.auto import (
    AutoDraftModelConfig,
    AutoEagle3DraftModel,
    check_draft_target_compat,
    check_llama_draft_fields,
    derive_draft_config,
)
from specforge.eagle3.config import ARCH as DRAFT_ARCH
from specforge.modeling.target.llama_tp import (
    LlamaTPForCausalLM,
    Qwen2TPForCausalLM,
    Qwen3TPForCausalLM,
)
from specforge.registry import ClassByConfig


class AutoDistributedTargetModel(ClassByConfig):
    """Tensor-parallel target implementations (``DistributedTargetModel`` subclasses) by config class.

    The HF backend serves ``--tp-size 1``; ``--tp-size > 1`` builds the class registered here with a
    ``tp_group`` and loads its shards (:func:`specforge.modeling.loading.load_tp_target`).
    """

    _model_mapping: ClassVar[dict] = {
        LlamaConfig: [LlamaTPForCausalLM],
        Qwen2Config: [Qwen2TPForCausalLM],
        Qwen3Config: [Qwen3TPForCausalLM],
    }
    _kind = "tensor-parallel target model"

    @classmethod
    def from_config(cls, config, **kwargs):
        """Instantiate the registered TP target for ``config`` (``tp_group=`` in kwargs; weights via ``load_weights``)."""
        return cls._get_model_class(config)(config, **kwargs)


__all__ = [
    "DRAFT_ARCH", "AutoDistributedTargetModel", "AutoDraftModelConfig", "AutoEagle3DraftModel",
    "check_draft_target_compat", "check_llama_draft_fields", "derive_draft_config",
]
