"""Bad input and faults in build-cache / train (issue 15): never lose a finished run, never train on
nothing or on NaNs, fall back from a corrupt checkpoint, clean up leftovers of killed saves."""

from __future__ import annotations

import errno
import json
import logging
import os

import pytest
import torch
from test_faults_data import last_error
from test_train_loop import make_trainer

from specforge.cli import main
from specforge.errors import SpecforgeError
from specforge.train import checkpoint as ckpt


def write_rows(path, convs):
    path.write_text("".join(json.dumps({"id": str(i), "conversations": c}) + "\n" for i, c in enumerate(convs)),
                    encoding="utf-8")
    return str(path)


GOOD = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there, friend."}]


def train_argv(target, train, out, cache, *extra):
    return ["train", "--target-model-path", target, "--train-data-path", train, "--cache-dir", str(cache),
            "--output-dir", str(out), "--draft-vocab-size", "64", "--max-length", "48", "--ttt-length", "2", *extra]


# ------------------------------------------------------------------------------ re-running into a run dir
def test_train_refuses_to_overwrite_a_run_without_resume(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "step_4" / "trainer_state").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"split": "train", "step": 1}\n')
    rc = main(train_argv("/no/target/needed", write_rows(tmp_path / "t.jsonl", [GOOD]), out, tmp_path / "c"))
    line = last_error(capsys)
    assert rc == 2 and "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert (out / "step_4").is_dir() and (out / "metrics.jsonl").read_text().startswith('{"split"')


def test_overwrite_and_resume_together_are_refused(tmp_path, capsys):
    rc = main(train_argv("/unused", write_rows(tmp_path / "t.jsonl", [GOOD]), tmp_path / "o", tmp_path / "c",
                         "--overwrite", "--resume"))
    assert rc == 2 and "pass one of them" in last_error(capsys)


def test_overwrite_removes_the_old_run_and_temps(tmp_path):
    out = tmp_path / "run"
    for d in ("step_4", "step_8", "epoch_0", f".step_8.tmp-{2 ** 22 + 7}-abc", "runs"):
        (out / d).mkdir(parents=True)
    (out / "metrics.jsonl").write_text("{}\n")
    (out / "notes.txt").write_text("mine")
    ckpt.guard_output_dir(out, resume=None, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "runs"]
    ckpt.guard_output_dir(out, resume=None, overwrite=False)  # nothing left to protect: no error


def test_output_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SpecforgeError, match="is a file"):
        ckpt.guard_output_dir(f, resume=None, overwrite=False)


# ------------------------------------------------------------------------------ corrupt checkpoints
@pytest.mark.parametrize("victim", ["model.safetensors", "trainer_state/optimizer.pt"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog, victim):
    tr = make_trainer(tmp_path, batch_size=2, num_epochs=1, save_interval=2)
    tr.fit()
    newest = ckpt.list_checkpoints(tmp_path)[-1]
    assert newest.name == "epoch_0"
    f = newest / victim
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncated, as by a full disk or a kill
    with caplog.at_level(logging.WARNING):
        got = ckpt.resolve_resume_dir("latest", tmp_path)
    assert got.name == "step_6"
    assert any("newest intact" in r.getMessage() and "epoch_0" in r.getMessage() for r in caplog.records)
    with pytest.raises(SpecforgeError, match="corrupt or truncated"):
        ckpt.resolve_resume_dir(str(newest), tmp_path)  # named explicitly: no silent substitute


def test_every_checkpoint_corrupt_is_one_line(tmp_path):
    tr = make_trainer(tmp_path, batch_size=4, num_epochs=1)
    tr.fit()
    (tmp_path / "epoch_0" / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(SpecforgeError, match="every checkpoint .* is corrupt"):
        ckpt.resolve_resume_dir("latest", tmp_path)


# ------------------------------------------------------------------------------ non-finite training
def test_non_finite_loss_stops_training_before_the_update(tmp_path):
    tr = make_trainer(tmp_path, batch_size=2, num_epochs=1)
    real = tr.forward_fn

    def poisoned(batch):
        loss, metrics = real(batch)
        return loss * float("nan") if tr.global_step == 1 else loss, metrics

    tr.forward_fn = poisoned
    with pytest.raises(SpecforgeError, match=r"step 2: the loss is nan.*--learning-rate"):
        tr.fit()
    assert tr.global_step == 1 and all(torch.isfinite(p).all() for p in tr.params)


def test_non_finite_gradient_stops_training(tmp_path):
    tr = make_trainer(tmp_path, batch_size=2, num_epochs=1, max_grad_norm=0.0)
    real = tr.forward_fn

    def bad_gradient(batch):  # finite loss (sqrt(0) = 0) whose gradient is 0 * inf = nan
        loss, metrics = real(batch)
        w = tr.draft.fc.weight
        return loss + 0.0 * torch.sqrt((w - w.detach()).sum()), metrics

    tr.forward_fn = bad_gradient
    with pytest.raises(SpecforgeError, match="step 1: the gradient norm is nan"):
        tr.fit()


@pytest.mark.parametrize("flag, value", [("--learning-rate", "nan"), ("--learning-rate", "inf"),
                                         ("--max-grad-norm", "nan"), ("--warmup-ratio", "nan")])
def test_non_finite_float_flags_are_rejected(tmp_path, capsys, flag, value):
    rc = main(train_argv("/unused", write_rows(tmp_path / "t.jsonl", [GOOD]), tmp_path / "o", tmp_path / "c",
                         flag, value))
    assert rc == 2 and f"{flag} must be a finite number" in last_error(capsys)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ nothing to learn
NOTHING = {
    "empty assistant turns": [[{"role": "user", "content": "a question"}, {"role": "assistant", "content": ""}]] * 3,
    "empty conversations": [[]] * 3,
    "cut by max-length": [[{"role": "user", "content": "word " * 80}, {"role": "assistant", "content": "late"}]] * 3,
}


@pytest.mark.parametrize("case", sorted(NOTHING))
def test_build_cache_refuses_a_split_without_supervised_tokens(tiny_target_dir, tmp_path, capsys, case):
    data = write_rows(tmp_path / "t.jsonl", NOTHING[case])
    base = ["build-cache", "--target-model-path", tiny_target_dir, "--train-data-path", data, "--cache-dir",
            str(tmp_path / "c"), "--max-length", "48"]
    assert main(base) == 2
    line = last_error(capsys)
    if case == "empty conversations":  # not even a prompt: the row itself is refused, with its line number
        assert "t.jsonl:1: row has an empty 'conversations' list" in line
        return
    assert "train split has no supervised tokens" in line and "--allow-no-supervised-tokens" in line
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())
    assert main([*base, "--allow-no-supervised-tokens"]) == 0
    assert "(0 supervised tokens)" in capsys.readouterr().out
    # train never trains on such a cache (it is a cache hit now)
    rc = main(train_argv(tiny_target_dir, data, tmp_path / "o", tmp_path / "c"))
    assert rc == 2 and "no supervised tokens" in last_error(capsys)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("epoch_*"))


def test_build_cache_reports_supervised_tokens_per_split(tiny_target_dir, tmp_path, capsys):
    data = write_rows(tmp_path / "t.jsonl", [GOOD] * 2)
    ev = write_rows(tmp_path / "e.jsonl", NOTHING["empty assistant turns"])
    base = ["build-cache", "--target-model-path", tiny_target_dir, "--train-data-path", data, "--cache-dir",
            str(tmp_path / "c"), "--max-length", "48"]
    assert main(base) == 0
    assert "2 train rows (" in capsys.readouterr().out
    assert main([*base, "--eval-data-path", ev]) == 2
    assert "eval split has no supervised tokens" in last_error(capsys)


@pytest.mark.parametrize("n", ["0", "-1"])
def test_num_proc_below_one_is_rejected(tiny_target_dir, tmp_path, capsys, n):
    data = write_rows(tmp_path / "t.jsonl", [GOOD])
    rc = main(["build-cache", "--target-model-path", tiny_target_dir, "--train-data-path", data, "--cache-dir",
               str(tmp_path / "c"), "--num-proc", n])
    assert rc == 2 and "--num-proc must be >= 1" in last_error(capsys)


def test_checkpoint_save_on_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    import safetensors.torch

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    tr = make_trainer(tmp_path, batch_size=4, num_epochs=1)
    with pytest.raises(OSError) as e:
        tr.fit()
    from specforge.fileio import describe_os_error

    assert "No space left on device" in describe_os_error(e.value)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.name.startswith("epoch")]


# ------------------------------------------------------------------------------ draft configs
DRAFT = {"architectures": ["LlamaForCausalLMEagle3"], "hidden_size": 64, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 128, "num_hidden_layers": 1, "vocab_size": 49152,
         "draft_vocab_size": 64}


@pytest.mark.parametrize("edit, needle", [
    ({"num_attention_heads": 5}, "hidden_size 64 is not divisible by num_attention_heads 5"),
    ({"num_key_value_heads": 3}, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    ({"hidden_size": "64"}, "hidden_size must be a positive integer, got '64'"),
    ({"intermediate_size": -1}, "intermediate_size must be a positive integer, got -1"),
    ({"hidden_size": None}, "missing hidden_size"),
    ({"vocab_size": None}, "missing vocab_size"),
])
def test_draft_config_errors_are_one_line(tiny_target_dir, tmp_path, capsys, edit, needle):
    cfg = {k: v for k, v in {**DRAFT, **edit}.items() if v is not None}
    path = tmp_path / "draft.json"
    path.write_text(json.dumps(cfg))
    rc = main(train_argv(tiny_target_dir, write_rows(tmp_path / "t.jsonl", [GOOD]), tmp_path / "o", tmp_path / "c",
                         "--draft-model-config", str(path)))
    line = last_error(capsys)
    assert rc == 2 and str(path) in line and needle in line
    assert "4096" not in line and "32000" not in line  # never a default the user did not write


def test_train_input_not_utf8(tiny_target_dir, tmp_path, capsys):
    bad = tmp_path / "t.jsonl"
    bad.write_bytes(json.dumps({"conversations": GOOD}).encode()[:-3] + b"\xff\"}]}\n")
    rc = main(train_argv(tiny_target_dir, str(bad), tmp_path / "o", tmp_path / "c"))
    line = last_error(capsys)
    assert rc == 2 and str(bad) in line and "UTF-8" in line


def test_cache_dir_that_is_a_file_and_full_disk(tiny_target_dir, tmp_path, capsys, monkeypatch):
    data = write_rows(tmp_path / "t.jsonl", [GOOD])
    (tmp_path / "file").write_text("x")
    base = ["build-cache", "--target-model-path", tiny_target_dir, "--train-data-path", data]
    assert main([*base, "--cache-dir", str(tmp_path / "file")]) == 2
    assert "file" in last_error(capsys)
    import safetensors.torch

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    cache = tmp_path / "c"
    stale = cache / f".eagle3-0123.tmp-{2 ** 22 + 9}-abc"  # left by a killed build
    stale.mkdir(parents=True)
    assert main([*base, "--cache-dir", str(cache)]) == 2
    assert "No space left on device" in last_error(capsys)
    assert list(cache.iterdir()) == []  # neither the half-built cache nor the old leftover
