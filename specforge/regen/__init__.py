"""Regeneration of training data by the target: embedded batched engine, server client, `specforge serve`."""
