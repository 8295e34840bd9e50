"""Command-line flags of ``specforge train`` (the seed's flags plus the trainer's own).

Every flag has an effect; flags that cannot apply in the current process (e.g. ``--tp-size 4`` on a
single process) are rejected by :func:`validate_args` with one clear line.
"""

from __future__ import annotations

import argparse
import math

from specforge.errors import SpecforgeError

REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register every ``specforge train`` flag on ``parser``."""
    m = parser.add_argument_group("models")
    m.add_argument("--target-model-path", default=None,
                   help="target model: local HF directory or repo id; None = the offline HuggingFaceTB/SmolLM2-135M-Instruct")
    m.add_argument("--model-path", default=None,
                   help="seed alias of --target-model-path (the SGLang target path); must match it when both are given")
    m.add_argument("--draft-model-config", default=None,
                   help="draft config.json (architectures[0] picks the draft class); None = derived from the target config")
    m.add_argument("--draft-vocab-size", type=int, default=None,
                   help="draft vocabulary size, overriding the config's draft_vocab_size; None = the config's, else min(32000, target vocab)")
    m.add_argument("--draft-attention-backend", default="auto",
                   help="attention backend of the TTT unroll (eager, the memory-lean default, flex_attention; "
                        "'auto' = the memory-lean choice: sdpa on CPU, flex_attention on CUDA)")
    m.add_argument("--ttt-length", type=int, default=7, help="training-time-test unroll length K (loss weights 0.8^i)")
    m.add_argument("--freeze-lm-head", action="store_true",
                   help="initialise the draft lm_head from the target's rows of the draft vocab (and its final norm "
                        "from the target's) and keep the lm_head frozen: less work per step")

    d = parser.add_argument_group("data")
    d.add_argument("--train-data-path", required=False, default=None, help="training conversations JSONL")
    d.add_argument("--eval-data-path", default=None, help="evaluation conversations JSONL (optional)")
    d.add_argument("--hidden-states-path", default=None,
                   help="train offline from a store written by `specforge prepare-hidden-states` (no target forward "
                        "in the loop; replaces --train-data-path/--eval-data-path)")
    d.add_argument("--chat-template", default="auto",
                   help="registered chat template name; auto = the tokenizer's own chat template")
    d.add_argument("--max-length", type=int, default=2048, help="truncate tokenised samples to this many tokens")
    d.add_argument("--cache-dir", default="./cache", help="dataset cache root (hashed sub-directories)")
    d.add_argument("--num-proc", type=int, default=1, help="worker processes for tokenising the dataset cache")

    t = parser.add_argument_group("optimisation")
    t.add_argument("--output-dir", required=False, default=None, help="where epoch_<i>/ and step_<n>/ checkpoints go")
    t.add_argument("--num-epochs", type=int, default=1, help="passes over the training set")
    t.add_argument("--batch-size", type=int, default=1, help="samples per micro-batch per process (padded)")
    t.add_argument("--accumulation-steps", type=int, default=1, help="micro-batches per optimizer step")
    t.add_argument("--learning-rate", type=float, default=1e-4, help="peak AdamW learning rate")
    t.add_argument("--total-steps", type=int, default=None,
                   help="optimizer steps of the LR schedule; training also stops there; None = epochs x steps per epoch")
    t.add_argument("--warmup-ratio", type=float, default=0.02, help="fraction of the schedule spent in linear warmup")
    t.add_argument("--max-grad-norm", type=float, default=0.5, help="gradient-norm clip (0 disables)")
    t.add_argument("--seed", type=int, default=0, help="seed for draft init and data shuffling")

    c = parser.add_argument_group("checkpoints, evaluation, logging")
    c.add_argument("--save-interval", type=int, default=0,
                   help="also save step_<n>/ every N optimizer steps (0: only epoch_<i>/)")
    c.add_argument("--eval-interval", type=int, default=0,
                   help="evaluate every N optimizer steps (0: only at epoch end); needs --eval-data-path")
    c.add_argument("--log-interval", type=int, default=1, help="log metrics every N optimizer steps")
    c.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the latest checkpoint in --output-dir, or from the given checkpoint dir")
    c.add_argument("--overwrite", action="store_true",
                   help="delete the run already in --output-dir (checkpoints, metrics) and start over")
    c.add_argument("--report-to", default="none", choices=REPORT_TO, help="experiment tracker")
    c.add_argument("--wandb-project", default=None, help="wandb/mlflow project (experiment) name")
    c.add_argument("--wandb-name", default=None, help="wandb/mlflow run name")

    r = parser.add_argument_group("runtime")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--dtype", default="auto",
                   help="compute dtype of the target and the draft's autocast: auto (bf16 on CUDA and on CPUs with native bf16, "
                        "i.e. avx512_bf16/amx_bf16; else fp32), float32, bfloat16, float16; draft master weights stay fp32")
    r.add_argument("--tp-size", type=int, default=1,
                   help="tensor-parallel size of the target: the torchrun world splits into world/tp data-parallel groups of tp "
                        "ranks that share one sharded target forward; needs a registered TP target class (Llama, Qwen2, Qwen3 built in)")
    r.add_argument("--fsdp", action="store_true",
                   help="shard the draft (weights, gradients, AdamW state) over the torchrun ranks with FSDP2 "
                        "fully_shard instead of replicating it under DDP; for multi-layer or wide drafts")
    r.add_argument("--mem-frac", type=float, default=None,
                   help="upper bound on the fraction of CUDA memory this process may use (CUDA only)")
    r.add_argument("--dist-timeout", type=float, default=30,
                   help="torch.distributed process-group timeout in minutes (multi-process runs)")


def validate_args(args: argparse.Namespace) -> None:
    """Reject inconsistent or out-of-range values with one clear line (no side effects)."""
    if args.model_path and args.target_model_path and args.model_path != args.target_model_path:
        raise SpecforgeError(
            f"--model-path ({args.model_path}) differs from --target-model-path ({args.target_model_path}); "
            "they name the same target, pass one of them."
        )
    if args.train_data_path is None and not getattr(args, "hidden_states_path", None):
        raise SpecforgeError("--train-data-path is required (a conversations JSONL file), or --hidden-states-path.")
    if getattr(args, "hidden_states_path", None) and (args.train_data_path or args.eval_data_path):
        raise SpecforgeError("--hidden-states-path replaces --train-data-path/--eval-data-path (the store holds "
                             "its rows); pass one or the other.")
    if args.output_dir is None:
        raise SpecforgeError("--output-dir is required (where checkpoints are written).")
    positive = {"--num-epochs": args.num_epochs, "--batch-size": args.batch_size,
                "--accumulation-steps": args.accumulation_steps, "--ttt-length": args.ttt_length,
                "--max-length": args.max_length, "--tp-size": args.tp_size, "--num-proc": args.num_proc,
                "--log-interval": args.log_interval}
    for flag, value in positive.items():
        if value < 1:
            raise SpecforgeError(f"{flag} must be >= 1 (got {value}).")
    if args.total_steps is not None and args.total_steps < 1:
        raise SpecforgeError(f"--total-steps must be >= 1 (got {args.total_steps}).")
    if args.draft_vocab_size is not None and args.draft_vocab_size < 1:
        raise SpecforgeError(f"--draft-vocab-size must be >= 1 (got {args.draft_vocab_size}).")
    for flag, value in (("--save-interval", args.save_interval), ("--eval-interval", args.eval_interval)):
        if value < 0:
            raise SpecforgeError(f"{flag} must be >= 0 (got {value}).")
    for flag, value in (("--learning-rate", args.learning_rate), ("--warmup-ratio", args.warmup_ratio),
                        ("--max-grad-norm", args.max_grad_norm), ("--mem-frac", args.mem_frac),
                        ("--dist-timeout", args.dist_timeout)):
        if value is not None and not math.isfinite(value):
            raise SpecforgeError(f"{flag} must be a finite number (got {value}).")
    if not 0.0 <= args.warmup_ratio < 1.0:
        raise SpecforgeError(f"--warmup-ratio must be in [0, 1) (got {args.warmup_ratio}).")
    if args.learning_rate <= 0:
        raise SpecforgeError(f"--learning-rate must be > 0 (got {args.learning_rate}).")
    if args.max_grad_norm < 0:
        raise SpecforgeError(f"--max-grad-norm must be >= 0 (got {args.max_grad_norm}).")
    if args.mem_frac is not None and not 0.0 < args.mem_frac <= 1.0:
        raise SpecforgeError(f"--mem-frac must be in (0, 1] (got {args.mem_frac}).")
    if args.dist_timeout <= 0:
        raise SpecforgeError(f"--dist-timeout must be > 0 minutes (got {args.dist_timeout}).")
    if args.overwrite and args.resume:
        raise SpecforgeError("--overwrite deletes the run that --resume would continue; pass one of them.")
    if args.eval_interval and not args.eval_data_path:
        raise SpecforgeError("--eval-interval needs --eval-data-path (there is nothing to evaluate on).")
