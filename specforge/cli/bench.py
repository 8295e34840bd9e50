"""Measure acceptance length τ and speed-up of an EAGLE-3 draft with the built-in speculative decoder.

Each ``--config-list`` entry is ``batch_size,num_steps,topk,num_verify_tokens`` (steps 0 = no
speculation); each ``--benchmark-list`` entry is ``name[:n]`` (mtbench, gsm8k, humaneval, math500, alpaca).
One JSONL record per (config, benchmark) goes to ``--output``, next to vanilla greedy, prompt-lookup and
(with ``--assistant-model``) HF assisted generation on the same prompts; plots are written beside it.
``--speculative-draft-model-path oracle`` proposes the target's own greedy output (the decoder's ceiling);
``oracle:DIR`` does the same while also running the draft in DIR, to pay a real draft's cost.
``--engine llamacpp`` runs the same prompts through llama.cpp instead (``pip install 'specforge[llamacpp]'``):
no speculation, llama.cpp's n-gram speculation (the prompt_lookup baseline) and the EAGLE-3 draft (a checkpoint
dir, exported to GGUF on the fly, or a .gguf file) at each config's num_steps, with 1 llama.cpp thread by default.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The seed's ``bench_model_speedup.py`` flags plus decoding options."""
    from specforge.flags import add_drafting_flags, add_target_flag

    add_target_flag(parser, ("--model-path", "--target-model-path"))
    parser.add_argument("--speculative-draft-model-path", default=None,
                        help="EAGLE-3 draft: a dir (e.g. OUTPUT_DIR/epoch_0), a shipped draft's name "
                             "(drafts/NAME, e.g. smollm2-135m-instruct-eagle3), 'oracle' or 'oracle:DIR'")
    parser.add_argument("--config-list", nargs="+", default=["1,3,1,4"],
                        help="configs batch_size,num_steps,topk,num_verify_tokens (steps 0 = no speculation)")
    parser.add_argument("--benchmark-list", nargs="+", default=["mtbench:5"],
                        help="benchmarks name[:n]: mtbench gsm8k humaneval math500 alpaca")
    parser.add_argument("--output", default="output.jsonl", help="JSONL records (plots are written beside it)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (output equals the target's)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="new tokens per answer")
    parser.add_argument("--system-prompt", default=None, help="system message prepended to every conversation")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto",
                        help="auto (bf16 on CUDA and on CPUs with avx512_bf16/amx, else fp32), float32, bfloat16, "
                             "float16; greedy output equals the target's own in that dtype")
    parser.add_argument("--assistant-model", default=None, help="small model for the HF assisted-generation baseline")
    parser.add_argument("--baselines", nargs="*", default=["prompt_lookup"], choices=["prompt_lookup", "assisted"],
                        help="extra baselines (vanilla greedy always runs; assisted is added by --assistant-model)")
    parser.add_argument("--prompt-lookup-num-tokens", type=int, default=10, help="n-gram draft length of prompt lookup")
    add_drafting_flags(parser, "also run each speculative config as eagle3+lookup")
    parser.add_argument("--interleave", action="store_true",
                        help="run every method on one block of conversations before the next block, so that a "
                             "machine whose speed drifts (shared CPUs) slows all methods alike; records are "
                             "written when each benchmark ends")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (temperature > 0)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--engine", default="builtin", choices=("builtin", "llamacpp"),
                        help="builtin: specforge's decoder on the HF target; llamacpp: llama.cpp (xllamacpp wheel) "
                             "on the target's GGUF, configs 1,K,1,K+1 = EAGLE-3 with draft length K")
    parser.add_argument("--target-gguf", default=None,
                        help="with --engine llamacpp: the target GGUF (default: the offline default model's file)")
    parser.add_argument("--llamacpp-threads", type=int, default=1,
                        help="llama.cpp compute threads (1 is fastest on 2-vCPU machines: 2 threads collapse)")
    # Seed flags that configure an SGLang server; the built-in engine has no use for them.
    parser.add_argument("--port", type=int, default=None, help="accepted for the seed; unused (no server)")
    parser.add_argument("--tp-size", type=int, default=1, help="accepted for the seed; the built-in decoder uses one device")
    parser.add_argument("--mem-fraction-static", type=float, default=None, help="accepted for the seed; unused")
    parser.add_argument("--trust-remote-code", action="store_true", help="accepted for the seed; unused")


def _notes(args) -> None:
    """One line per seed flag that has no effect on the built-in engine (never ignored silently)."""
    if args.port is not None:
        logger.info("note: --port %s ignored: the built-in decoder runs in-process, no server is started.", args.port)
    if args.tp_size and args.tp_size > 1:
        logger.info("note: --tp-size %d ignored: the built-in decoder runs the target on one device "
                    "(--device %s).", args.tp_size, args.device)
    if args.mem_fraction_static is not None:
        logger.info("note: --mem-fraction-static %s ignored: the built-in decoder allocates KV caches on demand.",
                    args.mem_fraction_static)
    if args.trust_remote_code:
        logger.info("note: --trust-remote-code ignored: targets load through transformers' own model classes.")


def run(args) -> int:
    """Run the benchmark; returns 0."""
    from specforge.bench.runner import BenchOptions, parse_config, run_bench
    from specforge.errors import SpecforgeError
    from specforge.flags import check_min_draft_prob, target_from_args

    _notes(args)
    if args.max_new_tokens < 1:
        raise SpecforgeError("--max-new-tokens must be >= 1.")
    if args.temperature < 0:
        raise SpecforgeError("--temperature must be >= 0.")
    check_min_draft_prob(args.min_draft_prob)
    opts = BenchOptions(
        model_path=str(target_from_args(args)), draft_path=args.speculative_draft_model_path,
        configs=[parse_config(c) for c in args.config_list], benchmarks=list(args.benchmark_list),
        output=args.output, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
        system_prompt=args.system_prompt, device=args.device, dtype=args.dtype,
        assistant_model=args.assistant_model, baselines=list(args.baselines),
        prompt_lookup_num_tokens=args.prompt_lookup_num_tokens, seed=args.seed, plots=not args.no_plots,
        hybrid_lookup=args.hybrid_lookup, min_draft_prob=args.min_draft_prob, interleave=args.interleave,
    )
    if args.engine == "llamacpp":
        from specforge.bench.llamacpp import run_llamacpp_bench

        if args.assistant_model:
            raise SpecforgeError("--assistant-model is a built-in-engine baseline; drop it with --engine llamacpp.")
        if args.hybrid_lookup:
            raise SpecforgeError("--hybrid-lookup runs on the built-in decoder; drop it with --engine llamacpp.")
        if args.interleave:
            raise SpecforgeError("--interleave runs on the built-in decoder; drop it with --engine llamacpp.")
        run_llamacpp_bench(opts, args.target_gguf, args.llamacpp_threads)
        return 0
    run_bench(opts)
    return 0
