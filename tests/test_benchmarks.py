"""Benchmarks that CI runs as smoke tests: they must keep running where there is no GPU to run them for real."""

import json
import sys

import pytest

from .conftest import REPO_ROOT, run_script


@pytest.mark.slow
def test_gpu_benchmark_smoke_test_runs_every_setting_on_cpu(tmp_path):
    output = tmp_path / "gpu.json"
    run_script([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_gpu.py"), "--smoke", "--output", str(output)],
               timeout=600)
    results = json.loads(output.read_text())
    assert results["device"].startswith("CPU")
    assert [row["setting"] for row in results["rows"]] == ["fp32", "bf16", "bf16 + compile"]
    for row in results["rows"]:
        assert row["steps_per_s"] > 0 and row["inference_tokens_per_s"] > 0 and row["training_peak_mib"] > 0
        assert row["inference_tokens_per_s"] == pytest.approx(row["inference_series_per_s"] * 4)  # 4 tokens a series
