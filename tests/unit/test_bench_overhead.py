"""The pieces `make bench-serve` measures server CPU per request with (loadtests/overhead.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from loadtests.overhead import group_cpu_s, group_pids, model_cpu_per_item_s, write_tiny_bundle
from shared.bundle import open_bundle
from shared.onnx import OnnxModel


def test_tiny_bundle_is_verified_and_passes_its_smoke_test(tmp_path: Path) -> None:
    bundle_dir = write_tiny_bundle(tmp_path)
    assert (tmp_path / "classify" / "aliases.json").read_text() == '{"production": "1"}'
    bundle = open_bundle(bundle_dir)  # checksums verified
    OnnxModel.from_bundle(bundle, "fp32", 1).smoke_test(bundle, "fp32")
    assert 0 < model_cpu_per_item_s(bundle_dir, "fp32", 1, 32) < 1e-3  # overhead-bound


def test_group_cpu_counts_this_process_group_as_it_works() -> None:
    group = {os.getpgrp()}
    assert os.getpid() in group_pids(group)
    before = group_cpu_s(group)
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    assert group_cpu_s(group) - before >= 0.1
    assert group_cpu_s({-12345}) == 0.0
