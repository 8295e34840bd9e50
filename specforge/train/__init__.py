"""The online EAGLE-3 trainer behind ``specforge train``.

Modules: ``args`` (flags), ``run`` (builds target/draft/data/TTT from the flags), ``trainer`` (the one
loop), ``schedule`` (warmup + cosine), ``batching`` (deterministic padding-aware order), ``checkpoint``
(``epoch_<i>/``, ``step_<n>/``, resume), ``dist`` (the only owner of torch.distributed process groups),
``trackers`` (metrics JSONL, tensorboard/wandb/mlflow), ``plot`` (end-of-run PNG).
"""
