"""Offline training from stored hidden states: same losses as online, resumable store, clear errors."""

from __future__ import annotations

import pytest
import torch
from test_train_cli import argv, data, target_dir, train_losses  # noqa: F401  (fixtures)

from specforge.cli import main
from specforge.train.trackers import read_metrics


def prepare_argv(target_dir, data, out, *extra):  # noqa: F811
    return ["prepare-hidden-states", "--target-model-path", target_dir, "--train-data-path", data["train"],
            "--eval-data-path", data["eval"], "--cache-dir", data["cache"], "--output-dir", str(out),
            "--draft-vocab-size", "256", "--max-length", "64", "--dtype", "float32", "--no-progress", *extra]


def test_offline_training_equals_online(target_dir, data, tmp_path, monkeypatch):  # noqa: F811
    from specforge.modeling import loading

    loads = []
    real_load = loading.load_target_model

    def spy(*a, **kw):
        model = real_load(*a, **kw)
        loads.append((kw.get("head_only", False), model.config.num_hidden_layers))
        return model

    monkeypatch.setattr(loading, "load_target_model", spy)
    store = tmp_path / "hs"
    assert main(prepare_argv(target_dir, data, store, "--storage-dtype", "float32", "--shard-size", "4")) == 0
    assert sorted(p.name for p in store.iterdir()) == ["eval-00000.safetensors", "meta.json", "train-00000.safetensors",
                                                       "train-00001.safetensors", "vocab_mapping.safetensors"]
    common = ("--batch-size", "3", "--num-epochs", "1", "--learning-rate", "3e-3")
    assert main(argv(target_dir, data, tmp_path / "online", *common)) == 0
    off = [a for a in argv(target_dir, data, tmp_path / "offline", *common)
           if a not in (data["train"], data["eval"], "--train-data-path", "--eval-data-path")]
    assert main([*off, "--hidden-states-path", str(store)]) == 0
    # online runs the whole target; offline reads only its embedding, final norm and lm_head
    assert loads[-1] == (True, 0) and loads[-2][0] is False and loads[-2][1] > 0
    a, b = train_losses(tmp_path / "online"), train_losses(tmp_path / "offline")
    assert len(a) == 2
    ta = [r for r in read_metrics(tmp_path / "online" / "metrics.jsonl") if r["split"] == "train"]
    tb = [r for r in read_metrics(tmp_path / "offline" / "metrics.jsonl") if r["split"] == "train"]
    torch.testing.assert_close(torch.tensor([r["acc"] for r in tb]), torch.tensor([r["acc"] for r in ta]))
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-5, atol=1e-6)
    ea = [r for r in read_metrics(tmp_path / "online" / "metrics.jsonl") if r["split"] == "eval"]
    eb = [r for r in read_metrics(tmp_path / "offline" / "metrics.jsonl") if r["split"] == "eval"]
    torch.testing.assert_close(torch.tensor([r["acc"] for r in eb]), torch.tensor([r["acc"] for r in ea]))


def test_store_is_resumable_and_refuses_other_settings(target_dir, data, tmp_path, capsys):  # noqa: F811
    from safetensors.torch import load_file

    store = tmp_path / "hs"
    assert main(prepare_argv(target_dir, data, store, "--shard-size", "2")) == 0
    shards = sorted(store.glob("train-*.safetensors"))
    assert len(shards) == 3
    first = load_file(str(shards[1]))
    assert first["aux_hidden"].dtype == torch.bfloat16 and first["loss_mask"].dtype == torch.int8
    kept = shards[0].stat().st_mtime_ns
    shards[1].unlink()  # as if interrupted before this shard was renamed into place
    assert main(prepare_argv(target_dir, data, store, "--shard-size", "2")) == 0
    assert shards[0].stat().st_mtime_ns == kept  # finished shards are skipped
    again = load_file(str(shards[1]))
    for k in first:
        torch.testing.assert_close(again[k], first[k], rtol=0, atol=0)
    assert not [p for p in store.iterdir() if p.name.startswith(".")]  # no temp files left
    capsys.readouterr()
    assert main(prepare_argv(target_dir, data, store, "--shard-size", "3")) != 0
    assert "other inputs or settings" in capsys.readouterr().err
    assert len(list(store.glob("train-*.safetensors"))) == 3


def test_missing_store_is_one_clear_error(target_dir, data, tmp_path, capsys):  # noqa: F811
    off = ["train", "--target-model-path", target_dir, "--hidden-states-path", str(tmp_path / "nope"),
           "--output-dir", str(tmp_path / "o"), "--dtype", "float32"]
    assert main(off) != 0
    assert "prepare-hidden-states" in capsys.readouterr().err
    assert main([*off, "--train-data-path", data["train"]]) != 0
    assert "replaces --train-data-path" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_head_only_target_matches_the_full_one(target_dir):  # noqa: F811
    from specforge.modeling.loading import load_target_model

    full = load_target_model(target_dir, dtype="float32")
    head = load_target_model(target_dir, dtype="float32", head_only=True)
    assert head.config.num_hidden_layers == 0 and len(head.model.layers) == 0
    assert head.config.source_num_hidden_layers == full.config.num_hidden_layers
    for get in (lambda m: m.get_input_embeddings().weight, lambda m: m.get_output_embeddings().weight,
                lambda m: m.model.norm.weight):
        torch.testing.assert_close(get(head), get(full), rtol=0, atol=0)
    assert sum(p.numel() for p in head.parameters()) < sum(p.numel() for p in full.parameters())
