"""Build deterministic default drafts and export them in every directory layout; hash what is written.

``tests/fixtures/export_golden.json`` holds these hashes as produced by the code *before* the EAGLE-3 code
moved to ``specforge/eagle3/`` (run ``python tests/export_golden.py --write`` only when an export format is
meant to change). ``tests/test_export_golden.py`` checks that exporting a default draft is byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

GOLDEN = Path(__file__).parent / "fixtures" / "export_golden.json"
LAYOUTS = ("sglang", "vllm-eagle3", "vllm-speculators", "hf")


def _tiny_target_config(**over):
    from transformers import LlamaConfig

    kw = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=False,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)
    kw.update(over)
    return LlamaConfig(**kw)


def _checkpoint(directory: Path, case: str) -> Path:
    """A training-checkpoint-like dir: the derived default config and a seeded draft's tensors."""
    from safetensors.torch import save_file

    from specforge.modeling.auto import AutoEagle3DraftModel, derive_draft_config

    cfg = derive_draft_config(_tiny_target_config(), 100 if case != "default" else None)
    if case == "custom_ids":
        cfg.eagle_config = {"eagle_aux_hidden_state_layer_ids": [0, 2, 4]}
    torch.manual_seed(0)
    model = AutoEagle3DraftModel.from_config(cfg)
    g = torch.Generator().manual_seed(1)
    ids = torch.randperm(cfg.vocab_size, generator=g)[:cfg.draft_vocab_size].sort().values
    t2d = torch.zeros(cfg.vocab_size, dtype=torch.bool)
    t2d[ids] = True
    model.d2t.copy_(ids - torch.arange(cfg.draft_vocab_size))
    model.t2d.copy_(t2d)
    d = directory / f"ckpt-{case}"
    d.mkdir(parents=True)
    data = cfg.to_dict()
    data.pop("transformers_version", None)
    (d / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    save_file(model.state_dict_for_save(), str(d / "model.safetensors"))
    return d


def hashes(tmp: Path) -> dict[str, str]:
    """``{case/layout/file: sha256}`` of every file the directory exports write (manifest without its source)."""
    from specforge.export import ExportOptions, export_draft

    out = {}
    for case in ("default", "custom_ids"):
        ckpt = _checkpoint(tmp, case)
        for layout in LAYOUTS:
            dst = tmp / f"{case}-{layout}"
            export_draft(ckpt, dst, layout, None, ExportOptions(verifier="tiny/target"))
            for f in sorted(dst.iterdir()):
                data = f.read_bytes()
                if f.name == "specforge_export.json":
                    man = json.loads(data)
                    man.pop("source")
                    data = json.dumps(man, sort_keys=True).encode()
                out[f"{case}/{layout}/{f.name}"] = hashlib.sha256(data).hexdigest()
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as t:
        h = hashes(Path(t))
    if "--write" in sys.argv:
        GOLDEN.write_text(json.dumps(h, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps(h, indent=2))
