"""``specforge train``: build target, draft, data and TTT from the flags, then hand over to the loop.

Order matters for clear failures: every check that needs no model (flags, files, process layout,
backend name) runs before the target is loaded, and the draft/target compatibility check runs before
the (possibly long) dataset tokenisation.
"""

from __future__ import annotations

import logging
import os
from dataclasses import fields
from pathlib import Path

from specforge.errors import SpecforgeError
from specforge.train.config import LoopSettings, TrainRunConfig

logger = logging.getLogger(__name__)


def _check_files(args: TrainRunConfig) -> None:
    for flag, path in (("--train-data-path", args.train_data_path), ("--eval-data-path", args.eval_data_path),
                       ("--draft-model-config", args.draft_model_config)):
        if path and not os.path.isfile(path):
            raise SpecforgeError(f"{flag} {path}: file not found; check the path.")


def _resolve_init(args: TrainRunConfig) -> Path | None:
    """``--init-from``: the weights' directory (a path, or a shipped draft's name), checked before any model loads."""
    if not args.init_from:
        return None
    from specforge.shipped_drafts import resolve_draft

    init = Path(resolve_draft(args.init_from, "--init-from"))
    for name in ("model.safetensors", "config.json"):
        if not (init / name).is_file():
            raise SpecforgeError(f"--init-from {args.init_from}: {init / name} not found; pass a checkpoint dir "
                                 "(OUTPUT/epoch_<i> or step_<n>), an exported draft dir or a shipped draft's name.")
    return init


def _check_tp(args: TrainRunConfig, world_size: int, target_config) -> None:
    """``--tp-size`` must divide the torchrun world size and the target's heads, and name a registered
    TP target class (one clear line each, before any process group or model exists)."""
    if args.tp_size == 1:
        return
    from specforge.modeling import auto
    from specforge.modeling.target.base import check_tp_layout
    from specforge.train.dist import check_tp_size

    try:
        auto.AutoDistributedTargetModel._get_model_class(target_config)
    except SpecforgeError:
        raise SpecforgeError(
            f"--tp-size {args.tp_size}: no tensor-parallel target is registered for model type "
            f"'{getattr(target_config, 'model_type', '?')}' ({type(target_config).__name__}) in "
            "AutoDistributedTargetModel._model_mapping; register a DistributedTargetModel subclass "
            "(examples/custom_tp_target.py) or use --tp-size 1 (data parallel)."
        ) from None
    check_tp_layout(target_config, args.tp_size)
    check_tp_size(args.tp_size, world_size)


def _apply_mem_frac(args: TrainRunConfig, device: str) -> None:
    if args.mem_frac is None:
        return
    import torch

    if device.startswith("cuda"):
        torch.cuda.set_per_process_memory_fraction(args.mem_frac, torch.device(device))
        logger.info("CUDA memory capped at %.0f%% of %s", 100 * args.mem_frac, device)
    else:
        logger.info("--mem-frac %.2f applies to CUDA memory only; ignored on %s", args.mem_frac, device)


def run_training(args: TrainRunConfig):
    """Build everything from the run configuration and train; returns the last checkpoint path (or None)."""
    import torch

    from specforge.eagle3.config import aux_layer_ids
    from specforge.modeling.loading import (
        DEFAULT_TARGET,
        load_config,
        load_target_model,
        load_tokenizer,
        load_tp_target,
        resolve_device,
    )
    from specforge.modeling.target import HFEagle3TargetModel
    from specforge.train import dist
    from specforge.train.components import (
        build_cache,
        build_draft,
        build_draft_config,
        build_ttt,
        check_init_weights,
        init_draft_from,
        make_forward_fn,
        make_offline_forward_fn,
        open_hidden_states,
        resolve_attention_backend,
        resolve_train_dtype,
    )
    from specforge.train.trackers import build_tracker, check_tracker_available
    from specforge.train.trainer import TrainConfig, Trainer

    _check_files(args)
    init_dir = _resolve_init(args)
    resolve_attention_backend(args.draft_attention_backend)  # fail fast on an unknown name
    check_tracker_available(args.report_to)
    from specforge.train.checkpoint import guard_output_dir, resolve_resume_dir

    output_dir = args.output_dir
    assert output_dir is not None  # TrainRunConfig requires it
    guard_output_dir(output_dir, args.resume, args.overwrite, dist.env_world().is_main)
    resume_dir = resolve_resume_dir(args.resume, output_dir) if args.resume else None
    target_path = args.target_model_path or DEFAULT_TARGET
    world = dist.env_world()
    target_config = load_config(target_path)
    _check_tp(args, world.world_size, target_config)

    device = resolve_device(args.device)
    dtype = resolve_train_dtype(args.dtype, device)
    logger.info("compute dtype %s on %s (draft master weights fp32)", str(dtype).replace("torch.", ""), device)
    backend = resolve_attention_backend(args.draft_attention_backend, device)
    info = dist.init_distributed(device, args.dist_timeout, tp_size=args.tp_size)
    device = dist.rank_device(device, info)
    _apply_mem_frac(args, device)
    try:
        draft_config_file = args.draft_model_config or (str(init_dir / "config.json") if init_dir else None)
        draft_config = build_draft_config(draft_config_file, args.draft_vocab_size, target_config)
        if init_dir is not None:
            check_init_weights(init_dir, draft_config)

        tokenizer = load_tokenizer(target_path)
        if not info.is_main:  # rank 0 tokenises; the others then hit its cache
            dist.barrier(info)
        offline = bool(args.hidden_states_path)
        # a float8 store is dequantised to bf16, or to fp32 when training in fp32 (no extra rounding)
        cache = (open_hidden_states(str(args.hidden_states_path),
                                    torch.float32 if dtype == torch.float32 else torch.bfloat16) if offline
                 else build_cache(args.data_options(), target_path, draft_config, tokenizer))
        if info.is_main:
            dist.barrier(info)
        logger.info("dataset cache %s: %d train rows%s", cache.path, len(cache.train),
                    f", {len(cache.eval)} eval rows" if cache.eval is not None else "")

        layer_ids = aux_layer_ids(int(target_config.num_hidden_layers), draft_config)
        if offline:  # no target forward: only the embedding, final norm and lm_head are read
            target_lm = load_target_model(target_path, dtype=dtype, device=device, head_only=True)
        elif info.tp_size > 1:  # this rank's shards of the registered TP class, straight from safetensors
            target_lm = load_tp_target(target_path, info.tp_group, dtype=dtype, device=device)
        else:
            target_lm = load_target_model(target_path, dtype=dtype, device=device)
        target = HFEagle3TargetModel(target_lm, layer_ids=layer_ids)
        torch.manual_seed(args.seed)  # the draft's initial weights depend on --seed only
        draft = build_draft(draft_config, target_lm, cache, device, freeze_lm_head=args.freeze_lm_head)
        if init_dir is not None:
            init_draft_from(draft, init_dir, cache)
        wrap = dist.wrap_fsdp if args.fsdp else dist.wrap_ddp
        model = wrap(build_ttt(draft, args.ttt_length, backend), device, info)
        if offline:
            from specforge.data.hidden_states import check_store_fits

            check_store_fits(str(args.hidden_states_path), target)
        forward_fn = (make_offline_forward_fn if offline else make_forward_fn)(model, target, draft.t2d)

        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        cfg = TrainConfig(
            **{f.name: getattr(args, f.name) for f in fields(LoopSettings)},
            output_dir=output_dir, device=device, dtype=dtype, pad_token_id=pad_id,
            run_config={k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))},
        )
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        trackers = []
        if info.is_main:
            trackers.append(build_tracker(args.report_to, output_dir, cfg.run_config,
                                          args.wandb_project, args.wandb_name))
        collate = None
        if offline:
            from specforge.data.hidden_states import collate_hidden_states

            collate = collate_hidden_states
        trainer = Trainer(cfg, model, forward_fn, cache.train, cache.eval, draft=draft,
                          draft_config=draft_config, trackers=trackers, dist=info, collate=collate)
        if resume_dir is not None:
            trainer.resume_from(resume_dir)
        try:
            last = trainer.fit()
        finally:
            for t in trackers:
                t.finish()
        if info.is_main and last is not None:
            logger.info("done: %d steps; last checkpoint %s", trainer.global_step, last)
        return last
    finally:
        dist.shutdown(info)
