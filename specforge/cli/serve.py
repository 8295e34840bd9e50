"""Serve the target as an OpenAI-compatible chat server (FastAPI + uvicorn) over the batched engine.

Routes: POST /v1/chat/completions (streaming and not), GET /v1/models, GET /health. Concurrent requests
are decoded together (dynamic batching, --batch-size rows); with --speculative-draft-model-path they go
through the built-in EAGLE-3 speculative decoder (--speculative-config batch,steps,topk,tokens), whose
greedy output equals the plain target's. `specforge regenerate --server-address-port HOST:PORT` uses it.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger("specforge.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, draft, engine and network flags."""
    from specforge.flags import add_drafting_flags, add_target_flag

    add_target_flag(parser, ("--model-path", "--target-model-path"))
    parser.add_argument("--served-model-name", default=None, help="name /v1/models reports (default: --model-path)")
    parser.add_argument("--speculative-draft-model-path", default=None,
                        help="EAGLE-3 draft dir (checkpoint or export) or a shipped draft's name: decode through "
                             "the speculative decoder")
    parser.add_argument("--speculative-config", default="4,3,1,4",
                        help="batch_size,num_steps,topk,num_verify_tokens of the speculative decoder")
    add_drafting_flags(parser, "with a draft")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=30000, help="port to listen on")
    parser.add_argument("--batch-size", type=int, default=8, help="rows decoded together (no draft)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto",
                        help="auto (bf16 where the CPU/GPU supports it, else fp32), float32, bfloat16, float16")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level")


def run(args: argparse.Namespace) -> int:
    """Load the model(s) and serve until interrupted."""
    import uvicorn

    from specforge.errors import SpecforgeError
    from specforge.flags import check_min_draft_prob, target_from_args
    from specforge.regen.server import create_app

    args.target_model_path = target_from_args(args)

    if not 0 < args.port < 65536:
        raise SpecforgeError(f"--port must be in 1..65535 (got {args.port}).")
    if args.batch_size < 1:
        raise SpecforgeError(f"--batch-size must be >= 1 (got {args.batch_size}).")
    if args.hybrid_lookup and not args.speculative_draft_model_path:
        raise SpecforgeError("--hybrid-lookup combines prompt lookup with a draft: pass --speculative-draft-model-path.")
    if args.speculative_draft_model_path:
        from specforge.regen.speculative import SpeculativeGenerator, parse_spec_config
        from specforge.shipped_drafts import resolve_draft

        parse_spec_config(args.speculative_config)  # fail before loading models
        check_min_draft_prob(args.min_draft_prob)
        args.speculative_draft_model_path = resolve_draft(args.speculative_draft_model_path,
                                                          "--speculative-draft-model-path")
        gen = SpeculativeGenerator.load(args.target_model_path, args.speculative_draft_model_path,
                                        args.speculative_config, device=args.device, dtype=args.dtype,
                                        hybrid_lookup=args.hybrid_lookup, min_draft_prob=args.min_draft_prob)
    else:
        from specforge.regen.embedded import EmbeddedGenerator

        gen = EmbeddedGenerator.load(args.target_model_path, device=args.device, dtype=args.dtype,
                                     batch_size=args.batch_size)
    name = args.served_model_name or args.target_model_path
    app = create_app(gen, name)
    logger.info("serving %s on http://%s:%d/v1", name, args.host, args.port)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    finally:
        gen.close()
    return 0
