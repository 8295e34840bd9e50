"""benchmarks/widen_draft.py: a wider draft MLP that computes exactly what the original did, and still learns."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_llama_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "widen_draft.py"


def _saved_draft(tmp_path):
    from specforge.eagle3.auto import AutoEagle3DraftModel, derive_draft_config
    from specforge.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = derive_draft_config(tiny_llama_config(), draft_vocab_size=64)
    draft = AutoEagle3DraftModel.from_config(cfg)
    return save_checkpoint(tmp_path / "draft", draft, cfg), cfg.intermediate_size


def test_widened_draft_computes_the_same_and_its_new_units_learn(tmp_path):
    from specforge.eagle3.auto import AutoEagle3DraftModel

    src, old = _saved_draft(tmp_path)
    out = tmp_path / "wide"
    r = subprocess.run([sys.executable, str(SCRIPT), "--draft", str(src), "--intermediate-size", str(3 * old),
                        "--output", str(out)], capture_output=True, text=True, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "config.json").read_text())["intermediate_size"] == 3 * old
    a, b = AutoEagle3DraftModel.from_pretrained(src), AutoEagle3DraftModel.from_pretrained(out)
    assert b.midlayer.mlp.down_proj.weight.shape == (a.config.hidden_size, 3 * old)
    for k, v in a.state_dict().items():  # everything but the MLP is the same tensor
        if ".mlp." not in k and "embed_tokens" not in k:
            assert torch.equal(v, b.state_dict()[k]), k
    x = torch.randn(2, 5, a.config.hidden_size)
    torch.testing.assert_close(b.midlayer.mlp(x), a.midlayer.mlp(x), rtol=0, atol=1e-6)
    b.midlayer.mlp(x).pow(2).sum().backward()  # the zero columns get a gradient: the new units can learn
    assert b.midlayer.mlp.down_proj.weight.grad[:, old:].abs().sum() > 0


def test_widen_refuses_a_size_that_is_not_larger(tmp_path):
    src, old = _saved_draft(tmp_path)
    r = subprocess.run([sys.executable, str(SCRIPT), "--draft", str(src), "--intermediate-size", str(old),
                        "--output", str(tmp_path / "w")], capture_output=True, text=True, cwd=ROOT, check=False)
    assert r.returncode != 0 and "pass a larger size" in r.stderr
    assert not (tmp_path / "w").exists()


def test_widen_function_rejects_a_two_layer_draft():
    spec = importlib.util.spec_from_file_location("widen_draft", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from specforge.errors import SpecforgeError

    with pytest.raises(SpecforgeError, match="1-layer"):
        mod.widen({}, {"intermediate_size": 8, "num_hidden_layers": 2}, 16)
