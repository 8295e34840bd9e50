"""Exporting a default (and a custom-ids) draft writes the same bytes as before the EAGLE-3 code moved."""

from __future__ import annotations

import json

from export_golden import GOLDEN, hashes


def test_export_is_byte_identical_to_golden(tmp_path, one_torch_thread):
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))
    got = hashes(tmp_path)
    assert got == want
