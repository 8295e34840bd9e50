"""Bad input and faults in prepare-data / build-cache and the shared file helpers (issue 15): one clear line,
exit 2, nothing written outside the output dir, no half-written file, no leftovers of killed runs."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest

from specforge.cli import main
from specforge.fileio import atomic_path

FIXTURE = Path(__file__).parent / "fixtures" / "sharegpt_small.json"


def last_error(capsys) -> str:
    """The last stderr line of a failed command: one line, no traceback anywhere (shared by test_faults_*)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def prepare(out, *extra):
    return main(["prepare-data", "--dataset", "sharegpt", "--data-path", str(extra[0]) if extra else str(FIXTURE),
                 "--output-path", str(out), "--no-progress", *extra[1:]])


@pytest.mark.parametrize("name", ["../../escape", "sub/x", "..", ".hidden", ""])
def test_output_name_cannot_leave_the_output_dir(tmp_path, capsys, name):
    out = tmp_path / "a" / "b" / "out"
    assert prepare(out, FIXTURE, "--output-name", name) == 2
    assert "--output-name" in last_error(capsys)
    assert sorted(p.name for p in tmp_path.rglob("*")) == []  # nothing anywhere, inside or outside


def test_non_utf8_input_names_the_file(tmp_path, capsys):
    src = tmp_path / "latin1.jsonl"
    src.write_bytes(json.dumps({"conversations": [{"from": "human", "value": "caf"}]}).encode()[:-4]
                    + b"\xe9\"}]}\n")
    assert prepare(tmp_path / "out", src) == 2
    line = last_error(capsys)
    assert str(src) in line and "UTF-8" in line
    assert not (tmp_path / "out").exists()


def test_non_utf8_json_array_names_the_file(tmp_path, capsys):
    src = tmp_path / "latin1.json"
    src.write_bytes(b'[{"conversations": [{"from": "human", "value": "caf\xe9"}]}]')
    assert prepare(tmp_path / "out", src) == 2
    assert str(src) in last_error(capsys)


@pytest.mark.parametrize("text", [
    json.dumps({"data": json.loads(FIXTURE.read_text(encoding="utf-8"))}),
    json.dumps({"data": json.loads(FIXTURE.read_text(encoding="utf-8"))}, indent=2),
])
def test_single_json_object_says_which_shapes_are_read(tmp_path, capsys, text):
    src = tmp_path / "obj.json"
    src.write_text(text, encoding="utf-8")
    assert prepare(tmp_path / "out", src) == 2
    line = last_error(capsys)
    assert "one JSON object" in line and "JSON array" in line and "JSONL" in line and "'data'" in line


def test_output_path_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("x")
    assert prepare(f) == 2
    assert "is a file" in last_error(capsys)
    assert f.read_text() == "x"


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES])
def test_disk_full_or_read_only_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch, err):
    import specforge.fileio as fileio

    real = fileio.json.dumps

    def failing(*a, **k):  # the write of the first row fails like a full disk / read-only dir
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(fileio.json, "dumps", failing)
    out = tmp_path / "out"
    assert prepare(out) == 2
    monkeypatch.setattr(fileio.json, "dumps", real)
    line = last_error(capsys)
    assert os.strerror(err) in line and ("disk space" in line or "write to" in line)
    assert not out.exists()


def test_stale_temps_of_dead_processes_are_removed(tmp_path):
    from specforge.fileio import clean_stale_temps

    dead = 2 ** 22 + 12345  # above the default pid_max: never a live process
    mine = tmp_path / f".ckpt.tmp-{os.getpid()}-abc"
    stale = tmp_path / f".ckpt.tmp-{dead}-xyz"
    old_style = tmp_path / ".ckpt.tmp-k2j4h5g6"
    young_old_style = tmp_path / ".other.tmp-a1b2c3d4"
    foreign = tmp_path / f".unrelated.tmp-{dead}-q"
    for d in (mine, stale, old_style, young_old_style, foreign):
        d.mkdir()
        (d / "blob").write_bytes(b"0" * 10)
    past = time.time() - 2 * 3600
    os.utime(old_style, (past, past))
    removed = clean_stale_temps(tmp_path, "ckpt")
    assert sorted(removed) == sorted([stale, old_style])
    assert mine.exists() and young_old_style.exists() and foreign.exists()
    # atomic_path cleans its own name's leftovers before writing
    with atomic_path(tmp_path / "unrelated", is_dir=True) as t:
        (t / "f").write_text("1")
    assert not foreign.exists() and (tmp_path / "unrelated" / "f").read_text() == "1"


def test_killed_mid_replace_restores_the_previous_copy(tmp_path):
    from specforge.fileio import clean_stale_temps

    dead = 2 ** 22 + 777
    old = tmp_path / f".export.old-{dead}"  # the old export was moved aside, then the process died
    old.mkdir()
    (old / "model.safetensors").write_text("weights")
    (tmp_path / f".export.tmp-{dead}-abc").mkdir()
    clean_stale_temps(tmp_path, "export")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert (tmp_path / "export" / "model.safetensors").read_text() == "weights"


def test_failed_dir_replace_puts_the_old_copy_back(tmp_path, monkeypatch):
    import specforge.fileio as fileio

    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "f").write_text("old")
    real = fileio.os.replace

    def fail_second(src, dst):
        if str(src).startswith(str(tmp_path / ".ckpt.tmp-")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", fail_second)
    with pytest.raises(OSError):
        with atomic_path(d, is_dir=True) as t:
            (t / "f").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"] and (d / "f").read_text() == "old"


def test_failed_rename_leaves_no_temp(tmp_path):
    target = tmp_path / "out.jsonl"
    target.mkdir()  # a directory in the way: the final rename fails
    with pytest.raises(OSError):
        with atomic_path(target) as t:
            t.write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


# ------------------------------------------------------------------------------ --view-train-data without colours
class _Rows:
    def __init__(self, ids, mask):
        self.row = {"input_ids": ids, "loss_mask": mask}

    def __getitem__(self, i):
        return self.row


@pytest.mark.parametrize("env, marked", [({}, True), ({"NO_COLOR": "1"}, True), ({"FORCE_COLOR": "1"}, False),
                                         ({"FORCE_COLOR": "1", "NO_COLOR": "1"}, True)])
def test_view_marks_trained_text_when_colours_are_off(smollm2_tokenizer, monkeypatch, env, marked):
    import io

    from specforge.data.preprocess import tokenize_conversation
    from specforge.data.template import get_renderer
    from specforge.data.view import make_console, view_samples

    for k in ("NO_COLOR", "FORCE_COLOR", "TERM", "COLORTERM"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    tok = smollm2_tokenizer
    ids, mask = tokenize_conversation([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                                      tok, get_renderer("smollm2"))
    buf = io.StringIO()  # a pipe: not a terminal
    view_samples(_Rows(ids, mask), [0], tok, console=make_console(buf))
    out = buf.getvalue()
    assert ("[[hello<|im_end|>\n]]" in out) == marked
    assert ("([[trained]] = 1, rest = 0)" in out) == marked  # the legend says what the marks mean
    if not marked:  # colours on: they carry the marking
        assert "\x1b[32m" in out
