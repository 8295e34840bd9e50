"""Widen a trained EAGLE-3 draft's MLP without changing what it computes, to keep training it with more capacity.

The new ``intermediate_size - old`` SiLU units get small random ``gate_proj``/``up_proj`` rows and *zero*
``down_proj`` columns, so the widened draft's logits equal the original's exactly; training then grows the new
units from there (``specforge train --init-from OUT`` takes OUT's config). ``intermediate_size`` is a standard
Llama field, so the widened draft still exports to SGLang, vLLM and llama.cpp. Example::

    python benchmarks/widen_draft.py --draft smollm2-135m-instruct-eagle3 --intermediate-size 4608 --output wide3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

# Run from a checkout without installing: the repository root is the parent of this folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MLP = "midlayer.mlp."


def widen(tensors: dict[str, torch.Tensor], config: dict, size: int, seed: int = 0) -> tuple[dict, dict]:
    """``(tensors, config)`` of the same draft with ``intermediate_size = size`` (function-preserving)."""
    from specforge.errors import SpecforgeError

    old = int(config["intermediate_size"])
    if size <= old:
        raise SpecforgeError(f"--intermediate-size {size}: the draft already has {old}; pass a larger size.")
    if int(config.get("num_hidden_layers", 1)) != 1 or MLP + "down_proj.weight" not in tensors:
        raise SpecforgeError("widen_draft: expects a 1-layer LlamaForCausalLMEagle3 checkpoint (midlayer.mlp.*).")
    g = torch.Generator().manual_seed(seed)
    std = float(config.get("initializer_range", 0.02))
    out = dict(tensors)
    for name in ("gate_proj", "up_proj"):
        w = tensors[MLP + name + ".weight"]
        extra = torch.randn(size - old, w.shape[1], generator=g, dtype=torch.float32) * std
        out[MLP + name + ".weight"] = torch.cat([w, extra.to(w.dtype)], 0).contiguous()
    down = tensors[MLP + "down_proj.weight"]
    out[MLP + "down_proj.weight"] = torch.cat([down, down.new_zeros(down.shape[0], size - old)], 1).contiguous()
    return out, {**config, "intermediate_size": size}


def main() -> None:
    from specforge.errors import SpecforgeError
    from specforge.fileio import atomic_path, load_safetensors, save_safetensors
    from specforge.shipped_drafts import resolve_draft

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draft", required=True, help="a draft checkpoint dir (config.json + model.safetensors) "
                    "or a shipped draft's name")
    ap.add_argument("--intermediate-size", type=int, required=True, help="the widened MLP size")
    ap.add_argument("--seed", type=int, default=0, help="seed of the new units' gate/up rows")
    ap.add_argument("--output", required=True, help="directory to write (must not exist)")
    a = ap.parse_args()
    try:
        src = Path(resolve_draft(a.draft, "--draft"))
        if Path(a.output).exists():
            raise SpecforgeError(f"--output {a.output} exists; pass a new directory.")
        config = json.loads((src / "config.json").read_text(encoding="utf-8"))
        tensors, config = widen(load_safetensors(src / "model.safetensors"), config, a.intermediate_size, a.seed)
        with atomic_path(Path(a.output), is_dir=True) as tmp:
            (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            save_safetensors(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
    except SpecforgeError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {a.output}: intermediate_size {config['intermediate_size']} (from {src})")


if __name__ == "__main__":
    main()
