"""The ``specforge bench`` stage: benchmark prompt sets, baselines, records, tables and plots."""
