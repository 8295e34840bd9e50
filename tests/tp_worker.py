"""Worker for the multi-process TP tests (run under torchrun; not collected by pytest).

``python -m torch.distributed.run --nproc_per_node 2 tests/tp_worker.py OUT MODEL_DIR...``: every rank
loads each model's shards through the tensor-parallel path, runs one EAGLE-3 target forward on fixed
inputs and saves ``OUT/rank<r>.pt`` = {model dir: {aux, last, logits, q_rows}}.
"""

from __future__ import annotations

import sys

import torch


def main(out: str, *model_dirs: str) -> None:
    from specforge.modeling.loading import load_tp_target
    from specforge.modeling.target import HFEagle3TargetModel
    from specforge.train import dist

    torch.set_num_threads(1)
    info = dist.init_distributed("cpu", 1.0, tp_size=dist.env_world().world_size)
    ids, att = tp_inputs()
    result = {}
    for d in model_dirs:
        model = load_tp_target(d, info.tp_group, dtype=torch.float32)
        target = HFEagle3TargetModel(model)
        o = target.generate_eagle3_data(ids, att)
        result[d] = {"aux": o.aux_hidden, "last": o.last_hidden, "logits": target.logits(o),
                     "q_rows": model.model.layers[0].self_attn.q_proj.weight.shape[0]}
    torch.save(result, f"{out}/rank{info.rank}.pt")
    dist.shutdown(info)


def tp_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed ``input_ids [2,10]`` and ``attention_mask [2,10]`` (row 1 right-padded after 7 tokens)."""
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 500, (2, 10), generator=g)
    att = torch.ones(2, 10, dtype=torch.long)
    att[1, 7:] = 0
    return ids, att


if __name__ == "__main__":
    main(*sys.argv[1:])
