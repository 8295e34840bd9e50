"""Command-line flags of ``specforge train`` (the seed's flags plus the trainer's own).

Every flag has an effect; values that cannot apply (e.g. ``--tp-size 4`` on a single process) are rejected by
:class:`specforge.train.config.TrainRunConfig` (built from these flags) with one clear line.
"""

from __future__ import annotations

import argparse

from specforge.eagle3.config import DEFAULT_DRAFT_VOCAB_CAP
from specforge.flags import add_target_flag
from specforge.train.config import TrainRunConfig
from specforge.train.trackers import TRACKERS

REPORT_TO = ("none", *TRACKERS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register every ``specforge train`` flag on ``parser``."""
    m = parser.add_argument_group("models")
    add_target_flag(m)
    m.add_argument("--draft-model-config",
                   help="draft config.json (architectures[0] picks the draft class); None = derived from the target config")
    m.add_argument("--draft-vocab-size", type=int,
                   help=f"draft vocabulary size, overriding the config's draft_vocab_size; None = the config's, else min({DEFAULT_DRAFT_VOCAB_CAP}, target vocab)")
    m.add_argument("--draft-attention-backend",
                   help="attention backend of the TTT unroll (eager, the memory-lean default, flex_attention; "
                        "'auto' = the memory-lean choice: sdpa on CPU, flex_attention on CUDA)")
    m.add_argument("--ttt-length", type=int, help="training-time-test unroll length K (loss weights 0.8^i)")
    m.add_argument("--init-from",
                   help="start the draft from these weights (a checkpoint dir such as OUTPUT/epoch_0, an exported draft "
                        "dir, or a shipped draft's name) with a fresh optimizer and schedule: warm-start on new data. "
                        "The draft keeps their config and vocab mapping (their config.json is the default "
                        "--draft-model-config)")
    m.add_argument("--freeze-lm-head", action="store_true",
                   help="initialise the draft lm_head from the target's rows of the draft vocab (and its final norm "
                        "from the target's) and keep the lm_head frozen: less work per step")

    d = parser.add_argument_group("data")
    d.add_argument("--train-data-path", required=False, help="training conversations JSONL")
    d.add_argument("--eval-data-path", help="evaluation conversations JSONL (optional)")
    d.add_argument("--hidden-states-path",
                   help="train offline from a store written by `specforge prepare-hidden-states` (no target forward "
                        "in the loop; replaces --train-data-path/--eval-data-path)")
    d.add_argument("--chat-template",
                   help="registered chat template name; auto = the tokenizer's own chat template")
    d.add_argument("--max-length", type=int, help="truncate tokenised samples to this many tokens")
    d.add_argument("--cache-dir", help="dataset cache root (hashed sub-directories)")
    d.add_argument("--num-proc", type=int, help="worker processes for tokenising the dataset cache")

    t = parser.add_argument_group("optimisation")
    t.add_argument("--output-dir", required=False, help="where epoch_<i>/ and step_<n>/ checkpoints go")
    t.add_argument("--num-epochs", type=int, help="passes over the training set")
    t.add_argument("--batch-size", type=int, help="samples per micro-batch per process (padded)")
    t.add_argument("--accumulation-steps", type=int, help="micro-batches per optimizer step")
    t.add_argument("--learning-rate", type=float, help="peak AdamW learning rate")
    t.add_argument("--total-steps", type=int,
                   help="optimizer steps of the LR schedule; training also stops there; None = epochs x steps per epoch")
    t.add_argument("--warmup-ratio", type=float, help="fraction of the schedule spent in linear warmup")
    t.add_argument("--max-grad-norm", type=float, help="gradient-norm clip (0 disables)")
    t.add_argument("--seed", type=int, help="seed for draft init and data shuffling")

    c = parser.add_argument_group("checkpoints, evaluation, logging")
    c.add_argument("--save-interval", type=int,
                   help="also save step_<n>/ every N optimizer steps (0: only epoch_<i>/)")
    c.add_argument("--eval-interval", type=int,
                   help="evaluate every N optimizer steps (0: only at epoch end); needs --eval-data-path")
    c.add_argument("--log-interval", type=int, help="log metrics every N optimizer steps")
    c.add_argument("--resume", nargs="?", const="latest",
                   help="continue from the latest checkpoint in --output-dir, or from the given checkpoint dir")
    c.add_argument("--overwrite", action="store_true",
                   help="delete the run already in --output-dir (checkpoints, metrics) and start over")
    c.add_argument("--report-to", choices=REPORT_TO, help="experiment tracker")
    c.add_argument("--wandb-project", help="wandb/mlflow project (experiment) name")
    c.add_argument("--wandb-name", help="wandb/mlflow run name")

    r = parser.add_argument_group("runtime")
    r.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--dtype",
                   help="compute dtype of the target and the draft's autocast: auto (bf16 on CUDA and on CPUs with native bf16, "
                        "i.e. avx512_bf16/amx_bf16; else fp32), float32, bfloat16, float16; draft master weights stay fp32")
    r.add_argument("--tp-size", type=int,
                   help="tensor-parallel size of the target: the torchrun world splits into world/tp data-parallel groups of tp "
                        "ranks that share one sharded target forward; needs a registered TP target class (Llama, Qwen2, Qwen3 built in)")
    r.add_argument("--fsdp", action="store_true",
                   help="shard the draft (weights, gradients, AdamW state) over the torchrun ranks with FSDP2 "
                        "fully_shard instead of replicating it under DDP; for multi-layer or wide drafts")
    r.add_argument("--mem-frac", type=float,
                   help="upper bound on the fraction of CUDA memory this process may use (CUDA only)")
    r.add_argument("--dist-timeout", type=float,
                   help="torch.distributed process-group timeout in minutes (multi-process runs)")
    # defaults are defined once, on the run configuration the CLI builds from these flags
    parser.set_defaults(**TrainRunConfig.defaults())
