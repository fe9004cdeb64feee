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
    assert [(row["codebook"], row["setting"]) for row in results["rows"]] == [
        ("original", "fp32"), ("original", "bf16"), ("original", "bf16 + compile")]
    for row in results["rows"]:
        assert row["steps_per_s"] > 0 and row["inference_tokens_per_s"] > 0 and row["training_peak_mib"] > 0
        assert row["inference_tokens_per_s"] == pytest.approx(row["inference_series_per_s"] * 4)  # 4 tokens a series


@pytest.mark.slow
def test_gpu_benchmark_smoke_test_with_the_scripts_recipe_and_the_bf16_agreement(tmp_path):
    import torch

    from modeling_vqshape import VQShapeConfig, VQShapeModel

    from .conftest import TINY

    torch.manual_seed(0)
    VQShapeModel(VQShapeConfig(**TINY)).save_pretrained(tmp_path / "model")
    output = tmp_path / "gpu.json"
    run_script([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_gpu.py"), "--smoke", "--settings", "fp32",
                "--codebook_recipe", "diverse", "--agreement-model", str(tmp_path / "model"), "--output", str(output)],
               timeout=600)
    results = json.loads(output.read_text())
    assert [(row["codebook"], row["setting"]) for row in results["rows"]] == [("diverse", "fp32")]
    agreement = results["bf16_agreement"]
    assert agreement["num_tokens"] > 0 and 0.0 <= agreement["identical_codes"] <= 1.0
    assert agreement["mean_attribute_error"] <= agreement["max_attribute_error"]


@pytest.mark.slow
def test_training_profile_shows_the_step_and_that_rand_draws_dropouts_masks():
    """`bench_training.py --profile`: the step's operators, and the check behind the docs' claim that dropout's masks
    are `torch.rand(float64) < keep` from the same generator."""
    result = run_script([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_training.py"), "--profile",
                         "--batch_size", "2", "--warmup", "0"], timeout=600)
    assert "aten::bernoulli_" in result.stdout and "ns a draw" in result.stdout
    assert "same masks from the same seed: True" in result.stdout
