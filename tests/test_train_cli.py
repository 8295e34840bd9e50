"""`specforge train` end to end on a tiny random Llama target (CPU): pinned loss curve against an
independent re-implementation, resume after a kill, checkpoint round-trip, clear errors."""

from __future__ import annotations

import json
import math
import random
import sys

import pytest
import torch

from specforge.cli import main
from specforge.train.trackers import read_metrics

from conftest import ANSWER_WORDS as WORDS


@pytest.fixture(scope="module")
def target_dir(boosted_target_dir):
    return boosted_target_dir


def write_chats(path, n, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            conv = [{"role": "user", "content": " ".join(rng.choices(WORDS, k=4))},
                    {"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(6, 16)))}]
            f.write(json.dumps({"id": str(i), "conversations": conv}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("chats")
    return {"train": write_chats(d / "train.jsonl", 6), "eval": write_chats(d / "eval.jsonl", 3, seed=1),
            "cache": str(d / "cache")}


def argv(target_dir, data, out, *extra):
    return ["train", "--target-model-path", target_dir, "--train-data-path", data["train"],
            "--eval-data-path", data["eval"], "--cache-dir", data["cache"], "--output-dir", str(out),
            "--draft-vocab-size", "256", "--max-length", "64", "--ttt-length", "3", "--seed", "3",
            "--dtype", "float32", *extra]  # fp32: compared with fp32 references (auto = bf16 on bf16 CPUs)


def train_losses(out):
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]


def test_loss_curve_matches_independent_loop(target_dir, data, tmp_path):
    """Full-batch run (every step sees all 6 rows) vs. a hand-written loop: own target forward, own
    AdamW/clip/warmup-cosine; the logged losses and the saved weights must agree."""
    from transformers import AutoModelForCausalLM

    from specforge.core.eagle3 import Eagle3TTT
    from specforge.data.cache import build_eagle3_dataset_cache
    from specforge.data.collate import pad_batch
    from specforge.modeling.auto import AutoEagle3DraftModel, derive_draft_config

    out = tmp_path / "run"
    steps, lr, warmup = 4, 3e-3, 0.25
    rc = main(argv(target_dir, data, out, "--batch-size", "6", "--num-epochs", "4", "--learning-rate", str(lr),
                   "--warmup-ratio", str(warmup), "--max-grad-norm", "0.5", "--draft-attention-backend", "eager"))
    assert rc == 0
    got = train_losses(out)
    assert len(got) == steps

    target = AutoModelForCausalLM.from_pretrained(target_dir).eval()
    cache = build_eagle3_dataset_cache(target_dir, data["train"], cache_dir=data["cache"], max_length=64,
                                       draft_vocab_size=256)
    batch = pad_batch(list(cache.train), target.config.pad_token_id)
    with torch.no_grad():
        o = target(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    L = target.config.num_hidden_layers
    aux = torch.cat([o.hidden_states[i] for i in (2, L // 2, L - 3)], -1)
    torch.manual_seed(3)
    draft = AutoEagle3DraftModel.from_config(derive_draft_config(target.config, 256))
    draft.d2t.copy_(cache.d2t)
    draft.t2d.copy_(cache.t2d)
    draft.load_embedding(target.get_input_embeddings().weight)
    ttt = Eagle3TTT(draft, 3, "eager")
    params = [p for p in draft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    n_warm = math.ceil(warmup * steps)
    want = []
    for s in range(steps):
        factor = (s + 1) / n_warm if s < n_warm else 0.5 * (1 + math.cos(math.pi * (s - n_warm) / (steps - n_warm)))
        for g in opt.param_groups:
            g["lr"] = lr * factor
        opt.zero_grad()
        loss, _ = ttt(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], aux, o.logits)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        opt.step()
        want.append(loss.item())
    assert want[0] > 0 and want[-1] < want[0]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-5)

    # The last epoch checkpoint loads through the auto registry and holds the same weights.
    loaded = AutoEagle3DraftModel.from_pretrained(out / "epoch_3")
    assert type(loaded) is type(draft)
    sd = loaded.state_dict_for_save()
    assert not any("embed_tokens" in k for k in sd)
    for k, v in draft.state_dict_for_save().items():
        torch.testing.assert_close(sd[k], v, rtol=1e-4, atol=1e-5, msg=k)
    ev = [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "eval"]
    assert [r["step"] for r in ev] == [1, 2, 3, 4] and len(ev[0]["acc"]) == 3 and ev[0]["accept_len"] >= 1
    assert (out / "training_curves.png").stat().st_size > 1000


def test_resume_after_kill_equals_uninterrupted_run(target_dir, data, tmp_path, monkeypatch):
    from specforge.train.trainer import Trainer

    common = ("--batch-size", "2", "--num-epochs", "2", "--save-interval", "2", "--learning-rate", "2e-3",
              "--accumulation-steps", "1", "--eval-interval", "2")
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(argv(target_dir, data, full, *common)) == 0

    real = Trainer.train_step

    def killed(self, group):
        if self.global_step == 5:  # dies after step_4 was saved, inside epoch 1
            raise KeyboardInterrupt
        return real(self, group)

    monkeypatch.setattr(Trainer, "train_step", killed)
    assert main(argv(target_dir, data, cut, *common)) == 130
    monkeypatch.setattr(Trainer, "train_step", real)
    assert main(argv(target_dir, data, cut, *common, "--resume")) == 0

    a, b = read_metrics(full / "metrics.jsonl"), read_metrics(cut / "metrics.jsonl")
    assert [(r["split"], r["step"]) for r in a] == [(r["split"], r["step"]) for r in b]
    torch.testing.assert_close(torch.tensor([r["loss"] for r in b]), torch.tensor([r["loss"] for r in a]),
                               rtol=0, atol=0)
    from safetensors.torch import load_file

    wa, wb = load_file(str(full / "epoch_1" / "model.safetensors")), load_file(str(cut / "epoch_1" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=0)


@pytest.mark.parametrize("extra, needle", [
    (("--draft-model-config", "BADCFG"), "hidden"),
    (("--draft-attention-backend", "nope"), "nope"),
    (("--tp-size", "4"), "--tp-size 4"),
    (("--model-path", "/elsewhere"), "--model-path"),
    (("--train-data-path", "/no/such/file.jsonl"), "/no/such/file.jsonl"),
    (("--report-to", "wandb"), "pip install wandb"),
])
def test_bad_inputs_give_one_line_and_exit_2(target_dir, data, tmp_path, capsys, monkeypatch, extra, needle):
    if "wandb" in extra:
        import importlib.util

        if importlib.util.find_spec("wandb") is not None:  # the error path is for a missing package
            monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    if "BADCFG" in extra:
        cfg = tmp_path / "draft.json"
        cfg.write_text(json.dumps({"architectures": ["LlamaForCausalLMEagle3"], "hidden_size": 128,
                                   "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 256,
                                   "num_hidden_layers": 1, "vocab_size": 49152, "draft_vocab_size": 256}))
        extra = ("--draft-model-config", str(cfg))
    rc = main(argv(target_dir, data, tmp_path / "o", *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: ") and needle in err[-1]
    assert not (tmp_path / "o" / "epoch_0").exists()


def test_help_lists_every_seed_flag(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--target-model-path --model-path --draft-model-config --train-data-path --eval-data-path "
                 "--tp-size --output-dir --num-epochs --batch-size --learning-rate --draft-attention-backend "
                 "--max-length --chat-template --cache-dir --mem-frac --total-steps --warmup-ratio --dist-timeout "
                 "--wandb-project --wandb-name --report-to --ttt-length --max-grad-norm --accumulation-steps --seed "
                 "--save-interval --eval-interval --log-interval --resume --device --dtype").split():
        assert flag in text, flag


def test_two_rank_gloo_ddp_equals_single_process_accumulation(target_dir, data, tmp_path):
    """torchrun 2 ranks x batch 1 (DDP averages the ranks' gradients) must equal one process with
    batch 1 x 2 accumulation steps: rank r of step k gets exactly micro-batch r of group k."""
    import os
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    common = ("--batch-size", "1", "--num-epochs", "1", "--learning-rate", "3e-3", "--dist-timeout", "2")
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main(argv(target_dir, data, single, *common, "--accumulation-steps", "2")) == 0
    env = {**os.environ, "PYTHONPATH": str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(repo / "scripts" / "train_eagle3_online.py"), *argv(target_dir, data, ddp, *common)[1:]]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "world size 2" in res.stderr
    a, b = read_metrics(single / "metrics.jsonl"), read_metrics(ddp / "metrics.jsonl")
    assert [(r["split"], r["step"]) for r in a] == [(r["split"], r["step"]) for r in b]
    torch.testing.assert_close(torch.tensor([r["loss"] for r in b]), torch.tensor([r["loss"] for r in a]))
    torch.testing.assert_close(torch.tensor([r["acc"] for r in b]), torch.tensor([r["acc"] for r in a]))
    from safetensors.torch import load_file

    wa, wb = load_file(str(single / "epoch_0" / "model.safetensors")), load_file(str(ddp / "epoch_0" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6, msg=k)
