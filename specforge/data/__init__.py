"""Data stages: raw chat presets, chat templates, tokenisation + loss masks, the dataset cache, batching.

Heavy imports (datasets, transformers) happen inside the modules that need them; see
:mod:`specforge.data.cache` for the cache API the trainer uses.
"""
