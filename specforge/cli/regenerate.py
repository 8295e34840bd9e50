"""Regenerate the assistant turns of a conversations file with the target (the seed's generate_data_by_target.py).

Every user turn is re-answered in order (turn k sees the regenerated answers of turns < k); rows keep their
id. Without --server-address-port the target runs embedded (batched, KV cache, bf16 where supported); with
it, any OpenAI-compatible chat server (SGLang, vLLM, llama.cpp, `specforge serve`) is used. Output:
OUTPUT_DIR/shard_00000.jsonl ... (completed rows only), error.jsonl (failed rows), run.json; --resume
continues an interrupted run without losing or repeating a row.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger("specforge.regenerate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The seed's flags plus sampling, retry and embedded-engine options."""
    from specforge.flags import add_target_flag

    add_target_flag(parser, ("--model-name", "--model-path", "--target-model-path"),
                    help="target model: loaded embedded, or the model name sent to the servers")
    parser.add_argument("--raw-data-file", required=True, help="conversations JSONL (prepare-data's output)")
    parser.add_argument("--output-dir", required=True, help="directory for shard_*.jsonl, error.jsonl, run.json")
    parser.add_argument("--server-address-port", nargs="*", default=[], metavar="HOST:PORT",
                        help="OpenAI-compatible servers, used together (least-loaded); none = embedded target")
    parser.add_argument("--max-concurrency", type=int, default=None,
                        help="rows in flight in total (default: 32 with servers, 2 x --batch-size embedded)")
    parser.add_argument("--num-per-shard", type=int, default=1000, help="rows per output shard")
    parser.add_argument("--max-tokens", type=int, default=512, help="new tokens per answer (cut answers are marked)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (recommended)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (temperature > 0)")
    parser.add_argument("--system-prompt", default=None,
                        help="system message for every conversation (replaces the rows' own system turns)")
    parser.add_argument("--num-samples", type=int, default=1,
                        help="answers per row; > 1 writes one row per sample with a 'sample' index")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output-dir")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per server request")
    parser.add_argument("--max-retries", type=int, default=3,
                        help="retries of a server request on timeouts, connection errors, 429 and 5xx")
    parser.add_argument("--batch-size", type=int, default=8, help="embedded: rows decoded together")
    parser.add_argument("--device", default="auto", help="embedded: auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto",
                        help="embedded: auto (bf16 where the CPU/GPU supports it, else fp32), float32, bfloat16, float16")
    parser.add_argument("--threads", type=int, default=None,
                        help="embedded: CPU threads for torch (default: torch's choice); on a machine shared with "
                             "other jobs, 1 avoids the collapse of multi-threaded kernels under oversubscription")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (temperature > 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Regenerate and print the closing summary."""
    from specforge.flags import target_from_args
    from specforge.regen.run import RegenOptions, regenerate

    opts = RegenOptions(
        model_name=str(target_from_args(args)), raw_data_file=args.raw_data_file, output_dir=args.output_dir,
        servers=list(args.server_address_port or []), max_concurrency=args.max_concurrency,
        num_per_shard=args.num_per_shard, max_tokens=args.max_tokens, temperature=args.temperature,
        top_p=args.top_p, system_prompt=args.system_prompt, num_samples=args.num_samples, resume=args.resume,
        timeout=args.timeout, max_retries=args.max_retries, batch_size=args.batch_size, device=args.device,
        dtype=args.dtype, seed=args.seed, threads=args.threads, progress=not args.no_progress,
    )
    stats = regenerate(opts)
    print(stats.line(args.output_dir))
    return 0
