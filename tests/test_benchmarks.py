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
                "--codebook_recipe", "diverse", "--agreement_model", str(tmp_path / "model"), "--output", str(output)],
               timeout=600)
    results = json.loads(output.read_text())
    assert [(row["codebook"], row["setting"]) for row in results["rows"]] == [("diverse", "fp32")]
    agreement = results["bf16_agreement"]
    # a known count: 4 tokens for every channel of every series of the bundled TEST splits
    from modeling_vqshape.corpora.data import BUNDLED_DATASETS
    from modeling_vqshape.tasks.classification import load_classification_dataset

    channels = sum(len(item) for name in BUNDLED_DATASETS for item in load_classification_dataset(name)["test"].series)
    assert agreement["num_tokens"] == 4 * channels
    assert 0.0 <= agreement["identical_codes"] <= 1.0
    assert agreement["mean_attribute_error"] <= agreement["max_attribute_error"]


def test_autocast_agreement_of_float32_with_itself_is_exact():
    """The benchmarks' agreement measure on a case whose answer is known: float32 "autocast" changes nothing."""
    import torch

    from modeling_vqshape import VQShapeConfig, VQShapeModel
    from modeling_vqshape.tasks.precision import autocast_agreement

    from .conftest import TINY

    torch.manual_seed(0)
    model = VQShapeModel(VQShapeConfig(**TINY)).eval()
    past_values = torch.randn(5, TINY["input_length"], 2)
    assert autocast_agreement(model, past_values, dtype=torch.float32, batch_size=2) == {
        "identical_codes": 1.0, "max_attribute_error": 0.0, "mean_attribute_error": 0.0, "num_tokens": 5 * 2 * 4}


def test_ablation_overrides_reach_the_script_as_the_variant_says():
    """bench_codebook passes each variant to examples/pretrain.py as --config_overrides text: the script's parser
    reads back exactly the variant's options, booleans included."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from bench_codebook import VARIANTS, overrides_text, spread

    from modeling_vqshape import VQShapeConfig
    from modeling_vqshape.tasks.training import parse_overrides

    for variant, options in VARIANTS.items():
        assert parse_overrides(overrides_text(options), VQShapeConfig()) == options, variant
    assert spread([0.5]) == "0.500" and spread([1, 2, 3]) == "2.000 (1.000-3.000)"


@pytest.mark.slow
def test_training_profile_shows_the_step_and_that_rand_draws_dropouts_masks():
    """`bench_training.py --profile`: the step's operators, and the check behind the docs' claim that dropout's masks
    are `torch.rand(float64) < keep` from the same generator."""
    result = run_script([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_training.py"), "--profile",
                         "--batch_size", "2", "--warmup", "0"], timeout=600)
    assert "aten::bernoulli_" in result.stdout and "ns a draw" in result.stdout
    assert "same masks from the same seed: True" in result.stdout


@pytest.mark.slow
def test_codebook_ablation_trains_each_variant_with_its_options_and_tabulates_it(tmp_path):
    """`bench_codebook.py` on two variants for two steps: each run's saved config holds its options on top of the
    original recipe, and the results hold every measure for the table."""
    from modeling_vqshape.configuration_vqshape import DIVERSE_CODEBOOK

    output = tmp_path / "ablation"
    run_script([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_codebook.py"), "--variants", "loss weights x2",
                "chosen", "--seeds", "0", "--extra_seeds", "--steps", "2", "--no_probe", "--output_dir", str(output)],
               timeout=600)
    weights = json.loads((output / "loss-weights-x2-seed0" / "config.json").read_text())
    assert (weights["reconstruction_weight"], weights["codebook_weight"], weights["code_lookup"]) == (2.0, 2.0,
                                                                                                     "euclidean")
    chosen = json.loads((output / "chosen-seed0" / "config.json").read_text())
    assert {key: chosen[key] for key in DIVERSE_CODEBOOK} == DIVERSE_CODEBOOK
    results = json.loads((output / "results.json").read_text())["results"]
    assert list(results) == ["loss weights x2", "chosen"]
    for (run,) in results.values():
        assert run["seed"] == 0 and 0 < run["test_codes_used"] <= 1 and run["reconstruction_loss"] > 0
        assert run["num_shape_values"] == len(run["shape_values"])
        # a share of whole codes, and a perplexity between 1 and the number of codes used
        used = run["test_codes_used"] * chosen["num_codes"]
        assert used == pytest.approx(round(used)) and 1.0 <= run["test_perplexity"] <= used + 1e-6
    assert "| loss weights x2 | 0 |" in (output / "results.md").read_text()


def test_flags_are_spelled_with_underscores_and_the_old_dashes_still_work():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from bench_codebook import parse_args as codebook_arguments
    from bench_gpu import parse_args as gpu_arguments

    from conversion.convert_vqshape_original_to_hf import parse_args as converter_arguments

    assert gpu_arguments(["--original-repo", "x", "--agreement-model", "m"]) == gpu_arguments(
        ["--original_repo", "x", "--agreement_model", "m"])
    assert codebook_arguments(["--no-probe"]) == codebook_arguments(["--no_probe"])
    converter = ["--checkpoint", "c.ckpt"]
    assert converter_arguments(converter + ["--output-dir", "d", "--reference-outputs", "r", "--push-to-hub", "a/b"]) \
        == converter_arguments(converter + ["--output_dir", "d", "--reference_outputs", "r", "--push_to_hub", "a/b"])
