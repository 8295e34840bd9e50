"""Bad input and faults in export / validate / bench (issue 15): garbage drafts are FAIL rows, impossible
configs and unusable outputs are refused before any work, every failure is one line."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
import torch
from test_bench_cli import tiny_draft_dir  # noqa: F401  (shared fixture)
from test_export import _one_thread, draft_tensors, target_dir, write_ckpt  # noqa: F401  (shared fixtures)
from test_faults_data import last_error

from specforge.bench.runner import parse_config
from specforge.cli import main
from specforge.errors import SpecforgeError


def nan_ckpt(tmp_path):
    t = draft_tensors()
    t["fc.weight"] = torch.full_like(t["fc.weight"], float("nan"))
    return write_ckpt(tmp_path / "epoch_0", tensors=t)


def truncated_ckpt(tmp_path):
    d = write_ckpt(tmp_path / "epoch_0")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return d


# ---------------------------------------------------------------------------------------- garbage weights
def test_validate_fails_nan_weights_with_its_own_row(tmp_path, capsys):
    d = nan_ckpt(tmp_path)
    assert main(["validate", str(d), "--no-decode"]) == 1
    out = capsys.readouterr().out
    assert "finite weights" in out and "NaN/inf values in fc.weight" in out and "all checks passed" not in out


def test_export_refuses_nan_weights(tmp_path, capsys):
    d = nan_ckpt(tmp_path)
    assert main(["export", "--to", "sglang", "--checkpoint", str(d), "--output-dir", str(tmp_path / "x")]) == 2
    assert "finite weights" in last_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0"]


def test_validate_corrupt_safetensors_is_a_fail_row(tmp_path, capsys):
    d = truncated_ckpt(tmp_path)
    assert main(["validate", str(d), "--no-decode"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "corrupt or truncated safetensors" in out


def test_export_corrupt_safetensors_is_one_line(tmp_path, capsys):
    d = truncated_ckpt(tmp_path)
    assert main(["export", "--to", "hf", "--checkpoint", str(d), "--output-dir", str(tmp_path / "x")]) == 2
    assert "corrupt or truncated safetensors" in last_error(capsys)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("cmd", ["export", "validate"])
def test_target_dir_given_as_a_draft(target_dir, tmp_path, capsys, cmd):  # noqa: F811
    argv = (["export", "--to", "sglang", "--checkpoint", target_dir, "--output-dir", str(tmp_path / "x")]
            if cmd == "export" else ["validate", target_dir, "--no-decode"])
    assert main(argv) == 2
    assert "is a target model (LlamaForCausalLM, 6 layers), not an EAGLE-3 draft" in last_error(capsys)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_export_disk_full_or_read_only(tmp_path, capsys, monkeypatch, err):
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: (_ for _ in ()).throw(
        OSError(err, os.strerror(err))))
    d = write_ckpt(tmp_path / "epoch_0")
    assert main(["export", "--to", "sglang", "--checkpoint", str(d), "--output-dir", str(tmp_path / "x")]) == 2
    assert os.strerror(err) in last_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0"]  # no temp dir left


def test_export_output_dir_is_a_file(tmp_path, capsys):
    d = write_ckpt(tmp_path / "epoch_0")
    (tmp_path / "x").write_text("keep me")
    assert main(["export", "--to", "sglang", "--checkpoint", str(d), "--output-dir", str(tmp_path / "x")]) == 2
    assert "--output-dir" in last_error(capsys) and (tmp_path / "x").read_text() == "keep me"


# ---------------------------------------------------------------------------------------- bench configs
@pytest.mark.parametrize("text, needle", [
    ("1,3,1,9", "a 3-step chain verifies 2..4 tokens"),
    ("1,3,1,1", "a 3-step chain verifies 2..4 tokens"),
    ("1,2,2,8", "a 2-step top-2 tree verifies 2..7 tokens"),
    ("1,3,0,4", "topk >= 1"),
    ("1,-1,1,4", "steps >= 0"),
])
def test_impossible_configs_are_rejected_with_the_valid_range(text, needle):
    with pytest.raises(SpecforgeError, match=needle):
        parse_config(text)


@pytest.mark.parametrize("text", ["1,3,1,4", "1,7,1,8", "1,5,4,8", "1,2,2,7", "1,0,0,0", "2,0,1,1", "1,0,5,9"])
def test_possible_configs_and_printed_labels_are_accepted(text):
    assert parse_config(text) == tuple(int(x) for x in text.split(","))


def test_vanilla_label_runs_as_a_config(tmp_path, tiny_target_dir):
    out = tmp_path / "o.jsonl"
    assert main(["bench", "--model-path", tiny_target_dir, "--config-list", "1,0,0,0", "--benchmark-list",
                 "gsm8k:1", "--max-new-tokens", "2", "--output", str(out), "--baselines", "--no-plots"]) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert {r["config_str"] for r in recs} == {"1,0,0,0"}


@pytest.mark.parametrize("where", ["dir", "under-file", "read-only"])
def test_bench_output_checked_before_any_measurement(tmp_path, tiny_target_dir, capsys, monkeypatch, where):
    import specforge.bench.runner as runner

    monkeypatch.setattr(runner, "load_benchmark", lambda s: pytest.fail("measured before checking --output"))
    if where == "dir":
        out = tmp_path / "d"
        out.mkdir()
    elif where == "under-file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "o.jsonl"
    else:
        import specforge.fileio as fileio

        def denied(*a, **k):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

        monkeypatch.setattr(fileio.tempfile, "mkstemp", denied)
        out = tmp_path / "o.jsonl"
    rc = main(["bench", "--model-path", tiny_target_dir, "--config-list", "1,0,1,1", "--benchmark-list", "gsm8k:1",
               "--output", str(out)])
    assert rc == 2 and "--output" in last_error(capsys)
    assert not [p for p in tmp_path.rglob(".*tmp*")]


@pytest.mark.parametrize("kind", ["truncated", "target"])
def test_bench_bad_draft_dir_is_one_line(tmp_path, tiny_target_dir, tiny_draft_dir, capsys, kind):  # noqa: F811
    if kind == "truncated":
        draft = tmp_path / "draft"
        shutil.copytree(tiny_draft_dir, draft)
        f = draft / "model.safetensors"
        f.write_bytes(f.read_bytes()[:1000])
        needle = "corrupt or truncated safetensors"
    else:
        draft, needle = tiny_target_dir, "is a target model"
    rc = main(["bench", "--model-path", tiny_target_dir, "--speculative-draft-model-path", str(draft),
               "--config-list", "1,3,1,4", "--benchmark-list", "gsm8k:1", "--output", str(tmp_path / "o.jsonl")])
    assert rc == 2 and needle in last_error(capsys)
    assert not (tmp_path / "o.jsonl").exists()
