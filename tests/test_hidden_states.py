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
    assert main(prepare_argv(target_dir, data, store, "--shard-size", "2", "--storage-dtype", "float8")) != 0
    err = capsys.readouterr().err
    assert "other inputs or settings" in err and "storage_dtype 'bfloat16' there, 'float8' now" in err
    assert len(list(store.glob("train-*.safetensors"))) == 3
    assert load_file(str(shards[1]))["aux_hidden"].dtype == torch.bfloat16  # untouched by the refused runs


@pytest.mark.parametrize("dtype", ["bfloat16", "float8"])
def test_non_finite_hidden_states_are_refused(target_dir, data, tmp_path, monkeypatch, capsys, dtype):  # noqa: F811
    """A target that overflows (inf/NaN in a hidden state) stops the store with one clear line, in any storage
    dtype (bf16 would keep the inf, fp8 would turn it into NaN/zeros), and no shard holding that row is written."""
    from specforge.modeling.target.hf_target import HFEagle3TargetModel

    real, calls = HFEagle3TargetModel.generate_eagle3_data, []

    def overflowing(self, input_ids, *a, **kw):
        out = real(self, input_ids, *a, **kw)
        calls.append(1)
        if len(calls) == 3:  # the first row of the second shard
            out.last_hidden[0, 1, 0] = float("inf")
        return out

    monkeypatch.setattr(HFEagle3TargetModel, "generate_eagle3_data", overflowing)
    store = tmp_path / "hs"
    assert main(prepare_argv(target_dir, data, store, "--shard-size", "2", "--storage-dtype", dtype)) != 0
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if "train row 2: the target's last_hidden holds inf/NaN" in line]) == 1
    assert [p.name for p in store.glob("train-*.safetensors")] == ["train-00000.safetensors"]
    assert not [p for p in store.iterdir() if p.name.startswith(".")]


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


# --- float8 stores: float8_e4m3fn with one float32 scale per token (row) of aux_hidden and of last_hidden ---


def fp8_error_bound(x: torch.Tensor) -> torch.Tensor:
    """Worst-case |x - dequantize(quantize(x))| (dequantised in fp32) per element of ``x [T, H]``, derived: with
    y = x / s, s = amax_row / 448, e4m3 rounds y to nearest with 3 mantissa bits in its normal range
    (|y| >= 2^-6: half an ulp <= 2^-4 |y|) and in steps of 2^-9 below it (subnormals: half a step = 2^-10);
    the fp32 divide and multiply add < 2^-22 |x|. Times s: 2^-4 |x| + 2^-10 s. Per row that is <= 2^-4 amax."""
    s = x.abs().amax(-1, keepdim=True) / 448
    return (2**-4 + 2**-22) * x.abs() + 2**-10 * s * (1 + 2**-20)


def normal_range_rel_error(x: torch.Tensor, xh: torch.Tensor) -> float:
    """Largest relative error over elements well inside e4m3's normal range (|x| >= amax_row / 64): close to
    2^-4 for fp8, at most 2^-9 for bf16 and 0 for fp32 - so it tells an fp8 store from a wider one."""
    big = (x.abs() >= x.abs().amax(-1, keepdim=True) / 64) & (x != 0)
    return float(((xh - x).abs() / x.abs())[big].max())


def test_quantize_fp8_per_token_bound():
    from specforge.data.hidden_states import FP8, dequantize_fp8, quantize_fp8

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 192, generator=g) * 10 ** (torch.rand(64, 1, generator=g) * 6 - 3)  # rows 1e-3..1e3
    x[::5, 7] *= 300  # massive-activation outliers: the rest of those rows falls into e4m3's subnormals
    x[3] = 0
    q, scale = quantize_fp8(x)
    assert q.dtype == FP8 and q.shape == x.shape and scale.dtype == torch.float32 and scale.shape == (64,)
    assert scale[3] == 1 and not q.float().isnan().any()
    torch.testing.assert_close(scale, x.abs().amax(-1) / 448 + (x.abs().amax(-1) == 0), rtol=0, atol=0)
    xh = dequantize_fp8(q, scale, torch.float32)
    err = (xh - x).abs()
    assert (err <= fp8_error_bound(x)).all()
    assert (err <= x.abs().amax(-1, keepdim=True) * 2**-4).all()
    assert (xh[3] == 0).all()
    torch.testing.assert_close(xh.abs().amax(-1), x.abs().amax(-1), rtol=2**-22, atol=0)  # amax maps to 448
    assert normal_range_rel_error(x, xh) > 2**-6  # really 3 mantissa bits, not a copy
    bf = dequantize_fp8(q, scale)
    assert bf.dtype == torch.bfloat16 and torch.equal(bf, xh.to(torch.bfloat16))


@pytest.fixture(scope="module")
def stores(target_dir, data, tmp_path_factory):  # noqa: F811
    """The same data as an fp32, a bf16 and a float8 store (2 train shards + 1 eval shard each)."""
    root = tmp_path_factory.mktemp("stores")
    out = {}
    for dt in ("float32", "bfloat16", "float8"):
        out[dt] = root / dt
        assert main(prepare_argv(target_dir, data, out[dt], "--storage-dtype", dt, "--shard-size", "4")) == 0
    return out


def test_fp8_store_round_trip(stores):
    from safetensors.torch import load_file

    from specforge.data.hidden_states import HiddenStateRows, read_meta

    shard = load_file(str(stores["float8"] / "train-00000.safetensors"))
    T = shard["input_ids"].shape[0]
    for k, sk in (("aux_hidden", "aux_scale"), ("last_hidden", "last_scale")):
        assert shard[k].dtype == torch.float8_e4m3fn and shard[k].shape[0] == T
        assert shard[sk].dtype == torch.float32 and shard[sk].shape == (T,) and (shard[sk] > 0).all()
    meta = read_meta(stores["float8"])
    assert meta["storage_dtype"] == "float8" and meta["fp8"]["format"] == "float8_e4m3fn"
    worst = 0.0
    for split in ("train", "eval"):
        ref = HiddenStateRows(stores["float32"], split)
        fp32 = HiddenStateRows(stores["float8"], split, torch.float32)
        bf16 = HiddenStateRows(stores["float8"], split)  # what training reads by default
        assert len(ref) == len(fp32) == len(bf16) > 0 and ref.lengths() == fp32.lengths()
        for i in range(len(ref)):
            r, q, b = ref[i], fp32[i], bf16[i]
            for k in ("input_ids", "loss_mask"):
                assert torch.equal(q[k], r[k]) and torch.equal(b[k], r[k])
            for k in ("aux_hidden", "last_hidden"):
                x, xh = r[k], q[k]
                assert x.dtype == xh.dtype == torch.float32 and b[k].dtype == torch.bfloat16
                err = (xh - x).abs()
                assert (err <= fp8_error_bound(x)).all(), (split, i, k)
                assert (err <= x.abs().amax(-1, keepdim=True) * 2**-4).all()
                assert torch.equal(b[k], xh.to(torch.bfloat16))
                worst = max(worst, normal_range_rel_error(x, xh))
    assert worst > 2**-6, worst  # fp8 precision, not bit-identical to the fp32 store (nor bf16's 2^-9)


def test_fp8_store_is_half_the_bytes(stores):
    from specforge.data.hidden_states import FP8, estimate_bytes, read_meta

    def per_token(store):
        tokens = sum(s["tokens"] for s in read_meta(store)["splits"].values())
        return tokens, sum(p.stat().st_size for p in store.glob("*-*.safetensors")) / tokens

    tokens, fp8 = per_token(stores["float8"])
    _, bf16 = per_token(stores["bfloat16"])
    assert fp8 < 0.6 * bf16, (fp8, bf16)
    Ht = read_meta(stores["float8"])["target_hidden_size"]
    for got, dtype in ((fp8, FP8), (bf16, torch.bfloat16)):  # the estimate printed first: data + scales
        est = estimate_bytes(tokens, Ht, dtype) / tokens
        assert est <= got <= 1.1 * est, (got, est, dtype)
    assert estimate_bytes(1, 576, FP8) == 4 * 576 + 8 + 9 and estimate_bytes(1, 576, torch.bfloat16) == 4617


def test_fp8_store_is_resumable_and_refuses_another_dtype(target_dir, data, stores, tmp_path, capsys):  # noqa: F811
    import shutil

    store = tmp_path / "hs"
    shutil.copytree(stores["float8"], store)
    shard = store / "train-00001.safetensors"
    before = shard.read_bytes()
    shard.unlink()
    assert main(prepare_argv(target_dir, data, store, "--storage-dtype", "float8", "--shard-size", "4")) == 0
    assert shard.read_bytes() == before
    capsys.readouterr()
    assert main(prepare_argv(target_dir, data, store, "--storage-dtype", "bfloat16", "--shard-size", "4")) != 0
    assert "storage_dtype 'float8' there, 'bfloat16' now" in capsys.readouterr().err
    assert shard.read_bytes() == before


def test_offline_training_from_fp8_store_tracks_fp32(target_dir, data, stores, tmp_path):  # noqa: F811
    common = ("--batch-size", "2", "--num-epochs", "2", "--learning-rate", "3e-3")
    losses = {}
    for dt in ("float32", "float8"):
        off = [a for a in argv(target_dir, data, tmp_path / dt, *common)
               if a not in (data["train"], data["eval"], "--train-data-path", "--eval-data-path")]
        assert main([*off, "--hidden-states-path", str(stores[dt])]) == 0
        losses[dt] = torch.tensor(train_losses(tmp_path / dt))
    a, b = losses["float32"], losses["float8"]
    assert len(a) == len(b) == 6
    rel = ((b - a).abs() / a).max()
    assert rel < 0.02, (a, b)  # every step's train loss within 2 % of the fp32 store's
    assert not torch.equal(a, b)  # the store really was quantised
