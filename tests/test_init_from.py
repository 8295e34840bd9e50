"""`specforge train --init-from`: warm-start a new run from trained weights (fresh optimizer and schedule)."""

from __future__ import annotations

import pytest
import torch
from test_train_cli import argv, data, target_dir, write_chats  # noqa: F401  (fixtures)

from specforge.cli import main
from specforge.fileio import load_safetensors


@pytest.fixture(scope="module")
def trained(target_dir, data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("a") / "run"
    assert main(argv(target_dir, data, out, "--batch-size", "3", "--num-epochs", "2", "--learning-rate", "3e-3")) == 0
    return out / "epoch_1"


def test_init_from_starts_at_the_given_weights_and_keeps_their_vocab(target_dir, data, trained, tmp_path):  # noqa: F811
    other = dict(data, train=write_chats(tmp_path / "other.jsonl", 6, seed=7), cache=str(tmp_path / "cache"))
    out = tmp_path / "warm"
    # a vanishing learning rate: the run's weights stay where --init-from put them
    common = ("--batch-size", "3", "--num-epochs", "1", "--learning-rate", "1e-12", "--warmup-ratio", "0")
    assert main([*argv(target_dir, other, out, *common), "--init-from", str(trained)]) == 0
    a, b = load_safetensors(trained / "model.safetensors"), load_safetensors(out / "epoch_0" / "model.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    # the new data alone would have picked another draft vocab: the init's is kept (its lm_head rows need it)
    assert main(argv(target_dir, other, tmp_path / "fresh", *common)) == 0
    fresh = load_safetensors(tmp_path / "fresh" / "epoch_0" / "model.safetensors")
    assert not torch.equal(fresh["t2d"], a["t2d"])
    assert not torch.allclose(fresh["fc.weight"], a["fc.weight"], atol=1e-3)


@pytest.mark.parametrize("extra, needle", [
    (("--init-from", "/nonexistent/ckpt"), "--init-from /nonexistent/ckpt"),
    (("--init-from", "no-such-draft"), "no shipped draft of that name"),
    (("--init-from", "TRAINED", "--resume"), "pass one of them"),
    (("--init-from", "TRAINED", "--draft-vocab-size", "128"), "has shape"),
])
def test_bad_init_from_is_one_clear_line(target_dir, data, trained, tmp_path, capsys, extra, needle):  # noqa: F811
    extra = tuple(str(trained) if e == "TRAINED" else e for e in extra)
    args = [a for a in argv(target_dir, data, tmp_path / "o") if a not in ("--draft-vocab-size", "256")]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
