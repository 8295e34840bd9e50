"""Trainer loop pieces on a toy module: schedule, batching, optimisation, checkpoints, resume, trackers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from specforge.errors import SpecforgeError
from specforge.train import checkpoint as ckpt
from specforge.train.batching import epoch_batches, group_batches
from specforge.train.schedule import build_scheduler, lr_factor, warmup_steps_for
from specforge.train.trackers import build_tracker, read_metrics
from specforge.train.trainer import TrainConfig, Trainer, accept_length

VOCAB = 32


class Toy(torch.nn.Module):
    """Next-token predictor with a frozen embedding (like the draft's) and two trainable layers."""

    def __init__(self):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(VOCAB, 16)
        self.embed_tokens.requires_grad_(False)
        self.fc = torch.nn.Linear(16, 16)
        self.lm_head = torch.nn.Linear(16, VOCAB, bias=False)
        self.register_buffer("d2t", torch.arange(4))


def toy_forward(model):
    def fn(batch):
        h = torch.tanh(model.fc(model.embed_tokens(batch["input_ids"][:, :-1])))
        logits = model.lm_head(h).float()
        target = batch["input_ids"][:, 1:]
        mask = (batch["loss_mask"][:, 1:] * batch["attention_mask"][:, 1:]).float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        loss = (nll * mask).sum() / mask.sum().clamp_min(1)
        acc = ((logits.argmax(-1) == target).float() * mask).sum() / mask.sum().clamp_min(1)
        return loss, {"acc": torch.stack([acc, acc * 0.5])}
    return fn


def toy_rows(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(4, 12, (1,), generator=g))
        ids = torch.randint(1, VOCAB, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "loss_mask": [0] + [1] * (length - 1)})
    return rows


def make_trainer(tmp_path, **kw):
    torch.manual_seed(0)
    model = Toy()
    cfg = TrainConfig(output_dir=str(tmp_path), progress=False, learning_rate=1e-2, warmup_ratio=0.25, **kw)
    return Trainer(cfg, model, toy_forward(model), toy_rows(), toy_rows(4, seed=2), draft_config={"a": 1})


# ---------------------------------------------------------------- schedule
def test_schedule_warmup_then_cosine():
    total, warm = 20, warmup_steps_for(20, 0.1)
    assert warm == 2
    assert lr_factor(0, total, warm) == pytest.approx(0.5)
    assert lr_factor(1, total, warm) == pytest.approx(1.0)
    for s in range(2, 25):
        expect = 0.5 * (1 + math.cos(math.pi * min(1.0, (s - 2) / 18)))
        assert lr_factor(s, total, warm) == pytest.approx(expect)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = build_scheduler(opt, total, 0.1)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    torch.testing.assert_close(torch.tensor(seen), 2.0 * torch.tensor([lr_factor(s, total, warm) for s in range(total)]),
                               check_dtype=False)


# ---------------------------------------------------------------- batching
def test_epoch_batches_cover_each_row_once_and_bucket():
    lengths = [int(x) for x in torch.randint(1, 500, (203,), generator=torch.Generator().manual_seed(0))]
    b0 = epoch_batches(lengths, 4, seed=3, epoch=0)
    assert sorted(i for b in b0 for i in b) == list(range(203))
    assert b0 == epoch_batches(lengths, 4, seed=3, epoch=0)
    assert b0 != epoch_batches(lengths, 4, seed=3, epoch=1)
    assert b0 != epoch_batches(lengths, 4, seed=4, epoch=0)
    pad = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in b0)
    naive = [list(range(i, min(i + 4, 203))) for i in range(0, 203, 4)]
    pad_naive = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in naive)
    assert pad < 0.2 * pad_naive
    r0 = epoch_batches(lengths, 4, 3, 0, rank=0, world_size=2)
    r1 = epoch_batches(lengths, 4, 3, 0, rank=1, world_size=2)
    assert len(r0) == len(r1) == 25
    assert not set(map(tuple, r0)) & set(map(tuple, r1))
    assert [len(g) for g in group_batches(b0, 4)] == [4] * 12 + [3]


def test_accept_length():
    assert accept_length([1.0, 1.0, 1.0]) == 4.0
    assert accept_length([0.5, 0.5]) == pytest.approx(1 + 0.5 + 0.25)


# ---------------------------------------------------------------- loop vs an independent manual loop
def test_loop_matches_manual_adamw_clip_schedule(tmp_path):
    tr = make_trainer(tmp_path, batch_size=3, accumulation_steps=2, max_grad_norm=0.05, num_epochs=2)
    tr.fit()
    logged = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    total = 2 * math.ceil(4 / 2)
    assert len(logged) == total

    torch.manual_seed(0)
    ref = Toy()
    opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=1e-2, betas=(0.9, 0.95),
                            weight_decay=0.0)
    rows, fn = toy_rows(), toy_forward(ref)
    losses, warm = [], warmup_steps_for(total, 0.25)
    from specforge.data.collate import pad_batch

    step = 0
    for epoch in range(2):
        for group in group_batches(epoch_batches([len(r["input_ids"]) for r in rows], 3, 0, epoch), 2):
            opt.zero_grad()
            ls = []
            for idx in group:
                loss, _ = fn(pad_batch([rows[i] for i in idx], 0))
                (loss / len(group)).backward()
                ls.append(loss.item())
            grads = [p.grad for p in ref.parameters() if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            for g in grads:
                g.mul_(min(1.0, 0.05 / (float(norm) + 1e-6)))
            for pg in opt.param_groups:
                pg["lr"] = 1e-2 * lr_factor(step, total, warm)
            opt.step()
            step += 1
            losses.append(sum(ls) / len(ls))
    torch.testing.assert_close(torch.tensor([r["loss"] for r in logged]), torch.tensor(losses))
    torch.testing.assert_close(tr.draft.fc.weight, ref.fc.weight)
    assert losses[-1] < losses[0]
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4] and len(evals[0]["acc"]) == 2
    a0, a1 = evals[-1]["acc"]  # simulated τ of chains 1/1/2 and 2/1/3, the last = accept_len
    assert evals[-1]["sim_tau"] == pytest.approx([1 + a0, 1 + a0 + a0 * a1]) and evals[-1]["sim_tau"][-1] == \
        pytest.approx(evals[-1]["accept_len"])
    assert (tmp_path / "training_curves.png").stat().st_size > 1000


def test_train_records_are_interval_means_with_token_throughput(tmp_path):
    """--log-interval 3 logs the mean of 3 single-step records, and every record counts its tokens."""
    one = make_trainer(tmp_path / "one", batch_size=2, num_epochs=1)
    one.fit()
    three = make_trainer(tmp_path / "three", batch_size=2, num_epochs=1, log_interval=3)
    three.fit()
    a = [r for r in read_metrics(tmp_path / "one" / "metrics.jsonl") if r["split"] == "train"]
    b = [r for r in read_metrics(tmp_path / "three" / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in a] == list(range(1, 7)) and [r["step"] for r in b] == [3, 6]
    for k, rec in enumerate(b):
        chunk = a[3 * k:3 * k + 3]
        assert rec["loss"] == pytest.approx(sum(r["loss"] for r in chunk) / 3)
        assert rec["acc"] == pytest.approx([sum(r["acc"][i] for r in chunk) / 3 for i in range(2)])
        assert rec["tokens"] == sum(r["tokens"] for r in chunk) and rec["interval_steps"] == 3
        assert rec["tokens_per_s"] == pytest.approx(rec["tokens"] / rec["step_time"])
    rows = toy_rows()
    assert sum(r["tokens"] for r in a) == sum(len(r["input_ids"]) for r in rows)  # one epoch: every real token
    assert sum(r["supervised_tokens"] for r in a) == sum(sum(r["loss_mask"]) for r in rows)
    assert all(r["supervised_tokens_per_s"] > 0 for r in a)


# ---------------------------------------------------------------- checkpoints + resume
def test_resume_after_interrupt_reproduces_losses(tmp_path, monkeypatch):
    full = make_trainer(tmp_path / "full", batch_size=2, num_epochs=2, save_interval=2)
    full.fit()
    want = read_metrics(tmp_path / "full" / "metrics.jsonl")

    cut = make_trainer(tmp_path / "cut", batch_size=2, num_epochs=2, save_interval=2)
    real_step = Trainer.train_step

    def dying_step(self, group):
        if self.global_step == 9:  # the "kill": after step_8 was saved, mid-way through epoch 1
            raise KeyboardInterrupt
        return real_step(self, group)

    monkeypatch.setattr(Trainer, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    monkeypatch.setattr(Trainer, "train_step", real_step)
    latest = ckpt.resolve_resume_dir("latest", tmp_path / "cut")
    assert latest.name == "step_8"

    resumed = make_trainer(tmp_path / "cut", batch_size=2, num_epochs=2, save_interval=2)
    resumed.resume_from(latest)
    resumed.fit()
    got = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [(r["split"], r["step"]) for r in got] == [(r["split"], r["step"]) for r in want]
    torch.testing.assert_close(torch.tensor([r["loss"] for r in got]), torch.tensor([r["loss"] for r in want]),
                               rtol=0, atol=0)
    torch.testing.assert_close(resumed.draft.lm_head.weight, full.draft.lm_head.weight, rtol=0, atol=0)


def test_checkpoint_layout_and_weights_only_state(tmp_path):
    tr = make_trainer(tmp_path, batch_size=4, num_epochs=1)
    tr.fit()
    d = tmp_path / "epoch_0"
    from safetensors.torch import load_file

    names = set(load_file(str(d / "model.safetensors")))
    assert names == {"fc.weight", "fc.bias", "lm_head.weight", "d2t"}  # no embedding
    assert json.loads((d / "config.json").read_text()) == {"a": 1}
    state = ckpt.load_trainer_state(d)
    assert state["state"]["global_step"] == 3 and state["state"]["epoch"] == 1
    assert set(state["optimizer"]) == {"state", "param_groups"}
    assert ckpt.resolve_resume_dir(str(d), tmp_path) == d  # an explicit checkpoint dir
    assert ckpt.resolve_resume_dir(str(tmp_path), "/unused") == d  # a run dir: its newest checkpoint
    with pytest.raises(SpecforgeError, match="not a checkpoint"):
        ckpt.resolve_resume_dir(str(tmp_path / "runs"), tmp_path)
    fresh = Toy()
    ckpt.load_draft_weights(fresh, d)
    torch.testing.assert_close(fresh.fc.weight, tr.draft.fc.weight)
    # A different run layout is refused with one line instead of silently misaligned data.
    other = make_trainer(tmp_path, batch_size=2, num_epochs=1)
    with pytest.raises(SpecforgeError, match="batch_size"):
        other.resume_from(d)


def test_atomic_checkpoint_leaves_nothing_on_failure(tmp_path):
    class Bad:
        def to_dict(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        ckpt.save_checkpoint(tmp_path / "epoch_0", Toy(), Bad(), {"global_step": 1})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SpecforgeError, match="no checkpoint"):
        ckpt.resolve_resume_dir("latest", tmp_path)


# ---------------------------------------------------------------- trackers
def test_trackers(tmp_path):
    t = build_tracker("tensorboard", tmp_path, {"lr": 1})
    t.log({"split": "train", "step": 1, "loss": 1.0, "acc": [0.5, 0.25]})
    t.finish()
    assert list((tmp_path / "runs").glob("events.out.tfevents.*"))
    for name, pkg in (("wandb", "wandb"), ("mlflow", "mlflow")):
        try:
            __import__(pkg)
        except ImportError:
            with pytest.raises(SpecforgeError, match=f"pip install {pkg}"):
                build_tracker(name, tmp_path, {})


def test_auto_attention_backend_is_lean_for_the_device():
    from specforge.errors import SpecforgeError
    from specforge.train.components import resolve_attention_backend

    assert resolve_attention_backend("auto", "cpu") is None  # registry default: sdpa (fused CPU kernel)
    assert resolve_attention_backend("auto", "cuda:0") == "flex_attention"
    assert resolve_attention_backend("eager", "cuda") == "eager"
    with pytest.raises(SpecforgeError, match="unknown --draft-attention-backend"):
        resolve_attention_backend("flash9", "cpu")
