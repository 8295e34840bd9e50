"""Shipped drafts load by name in bench, validate and export (``drafts/<name>/`` or ``$SPECFORGE_DRAFTS``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from specforge import shipped_drafts
from specforge.cli import main
from specforge.errors import SpecforgeError

NAME = "tiny-test-eagle3"


@pytest.fixture(scope="module")
def drafts_root(tmp_path_factory, tiny_target_dir):
    """A drafts folder holding one tiny draft for the tiny target, named NAME."""
    from safetensors.torch import save_file

    from specforge.modeling.auto import AutoEagle3DraftModel, derive_draft_config
    from specforge.modeling.loading import load_config

    root = tmp_path_factory.mktemp("drafts")
    torch.manual_seed(0)
    cfg = derive_draft_config(load_config(tiny_target_dir), draft_vocab_size=2000)
    cfg.save_pretrained(root / NAME)
    save_file(AutoEagle3DraftModel.from_config(cfg).state_dict_for_save(), str(root / NAME / "model.safetensors"))
    return root


def test_repo_drafts_folder_is_where_an_editable_install_looks():
    repo = Path(__file__).resolve().parent.parent
    assert shipped_drafts.draft_dirs()[-1] == repo / "drafts"


def test_name_resolution(drafts_root, monkeypatch, tmp_path):
    monkeypatch.setenv(shipped_drafts.ENV, str(drafts_root))
    assert shipped_drafts.resolve_draft(NAME) == str(drafts_root / NAME)
    assert NAME in shipped_drafts.available()
    # an existing directory wins over a shipped name; other paths pass through unchanged
    monkeypatch.chdir(tmp_path)
    (tmp_path / NAME).mkdir()
    assert shipped_drafts.resolve_draft(NAME) == NAME
    assert shipped_drafts.resolve_draft("some/missing/dir") == "some/missing/dir"
    with pytest.raises(SpecforgeError, match=f"no shipped draft.*available: .*{NAME}"):
        shipped_drafts.resolve_draft("no-such-draft", "--speculative-draft-model-path")


def test_bench_validate_export_take_a_name(drafts_root, monkeypatch, tmp_path, tiny_target_dir, capsys):
    monkeypatch.setenv(shipped_drafts.ENV, str(drafts_root))
    out = tmp_path / "b.jsonl"
    assert main(["bench", "--model-path", tiny_target_dir, "--speculative-draft-model-path", NAME,
                 "--config-list", "1,2,1,3", "--benchmark-list", "gsm8k:1", "--max-new-tokens", "4",
                 "--baselines", "--no-plots", "--output", str(out)]) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert any(r["method"] == "eagle3" and r["accept_length"] is not None for r in recs)
    assert main(["validate", NAME, "--no-decode"]) == 0
    assert main(["export", "--to", "sglang", "--checkpoint", NAME, "--output-dir", str(tmp_path / "sg")]) == 0
    assert (tmp_path / "sg" / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["bench", "--model-path", tiny_target_dir, "--speculative-draft-model-path", "no-such-draft",
                 "--config-list", "1,2,1,3", "--benchmark-list", "gsm8k:1", "--no-plots",
                 "--output", str(tmp_path / "x.jsonl")]) != 0
    assert "no shipped draft" in capsys.readouterr().err


def test_serve_takes_a_name(drafts_root, monkeypatch, tiny_target_dir):
    """`serve --speculative-draft-model-path NAME` loads the shipped draft (uvicorn replaced by a stub)."""
    import uvicorn

    monkeypatch.setenv(shipped_drafts.ENV, str(drafts_root))
    served = {}

    def fake_run(app, **kw):
        served["app"], served["port"] = app, kw["port"]

    monkeypatch.setattr(uvicorn, "run", fake_run)
    assert main(["serve", "--model-path", tiny_target_dir, "--speculative-draft-model-path", NAME,
                 "--speculative-config", "1,2,1,3", "--port", "30111", "--device", "cpu"]) == 0
    assert served["port"] == 30111 and served["app"] is not None
    assert main(["serve", "--model-path", tiny_target_dir, "--speculative-draft-model-path", "no-such-draft",
                 "--port", "30111"]) != 0
