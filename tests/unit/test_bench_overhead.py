"""The pieces `make bench-serve` measures server CPU per request with (loadtests/overhead.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from loadtests.overhead import model_cpu_per_item_s, tree_cpu_s, tree_pids, write_tiny_bundle
from shared.bundle import open_bundle
from shared.onnx import OnnxModel


def test_tiny_bundle_is_verified_and_passes_its_smoke_test(tmp_path: Path) -> None:
    bundle_dir = write_tiny_bundle(tmp_path)
    assert (tmp_path / "classify" / "aliases.json").read_text() == '{"production": "1"}'
    bundle = open_bundle(bundle_dir)  # checksums verified
    OnnxModel.from_bundle(bundle, "fp32", 1).smoke_test(bundle, "fp32")
    assert 0 < model_cpu_per_item_s(bundle_dir, "fp32", 1, 32) < 1e-3  # overhead-bound


def test_tree_cpu_counts_a_child_in_a_session_of_its_own(tmp_path: Path) -> None:
    burn = "import time\nt = time.process_time() + 0.3\nwhile time.process_time() < t: pass\n"
    child = subprocess.Popen([sys.executable, "-c", burn], start_new_session=True)
    try:
        assert child.pid in tree_pids({os.getpid()})
        before = tree_cpu_s({os.getpid()})
        deadline = time.process_time() + 0.2
        while time.process_time() < deadline:
            pass
        assert tree_cpu_s({os.getpid()}) - before >= 0.1
    finally:
        child.wait(timeout=30)
    assert tree_cpu_s({-12345}) == 0.0
    assert child.pid not in tree_pids({os.getpid()})  # exited
