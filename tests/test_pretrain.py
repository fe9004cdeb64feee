"""examples/pretrain.py end to end, on a tiny config: output loads, loss goes down, resume is exact, DDP matches."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import TWO_CPU_RANKS, run_script

pytestmark = pytest.mark.slow  # every test here runs examples/pretrain.py as a program

pytest.importorskip("accelerate")
pytest.importorskip("datasets")
pytest.importorskip("aeon")

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(REPO_ROOT / "examples" / "pretrain.py")
TINY = ("input_length=64,num_patches=8,patch_length=8,d_model=16,num_encoder_layers=1,num_encoder_heads=2,"
        "num_tokenizer_layers=1,num_tokenizer_heads=2,num_decoder_layers=1,num_decoder_heads=2,num_tokens=4,"
        "num_codes=8,code_dim=4,shape_length=16")
# GunPoint_TRAIN: 45 training series; batch 8 with drop_last gives 5 steps per epoch
COMMON = ["--data", "GunPoint", "--no-balance_datasets", "--report_to", "none", "--num_warmup_steps", "2",
          "--logging_steps", "1", "--eval_steps", "0"]


def run(args, output_dir, launcher=(), overrides="", timeout=240):
    command = [sys.executable, *launcher, SCRIPT, *COMMON, "--config_overrides", TINY + overrides,
               "--output_dir", str(output_dir), *args]
    result = run_script(command, timeout=timeout)
    return result.stdout + result.stderr


def results(output_dir):
    with open(os.path.join(output_dir, "training_results.json")) as handle:
        return json.load(handle)


def weights(output_dir):
    from safetensors.torch import load_file

    return load_file(os.path.join(output_dir, "model.safetensors"))


def test_pretrain_end_to_end_loads_and_loss_goes_down(tmp_path):
    from transformers import AutoFeatureExtractor, AutoModel

    import modeling_vqshape  # noqa: F401  (registers the Auto classes)

    output = run(["--max_train_steps", "40", "--per_device_train_batch_size", "16", "--learning_rate", "3e-3",
                  "--num_warmup_steps", "4"], tmp_path)
    assert "Model saved to" in output and "AutoModel.from_pretrained" in output
    history = results(tmp_path)
    before, after = history["validation_step_0"]["loss"], history["validation_final"]["loss"]
    assert after < 0.9 * before, (before, after)
    assert f"validation loss: step 0 {before:.4f} -> step 40 {after:.4f}" in output
    model = AutoModel.from_pretrained(tmp_path)
    features = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert model.config.d_model == 16 and features.input_length == 64
    outputs = model(**features(torch.randn(2, 100).numpy()))
    assert outputs.code_indices.shape[-1] == 4
    card = (tmp_path / "README.md").read_text()
    assert "GunPoint" in card and "validation_final" in card


def test_resume_gives_the_same_weights_and_ignores_partial_checkpoints(tmp_path):
    # 4 + 4 steps cross an epoch boundary; dropout and patch masking stay on: their RNG is restored too
    args = ["--max_train_steps", "8", "--per_device_train_batch_size", "8", "--checkpointing_steps", "4",
            "--eval_steps", "3"]
    run(args, tmp_path / "straight")
    resumed = tmp_path / "resumed" / "checkpoints"
    resumed.mkdir(parents=True)
    shutil.copytree(tmp_path / "straight" / "checkpoints" / "checkpoint-4", resumed / "checkpoint-4")
    # an interrupted save_state: half-written folders, one even under the final name but without its marker
    shutil.copytree(resumed / "checkpoint-4", resumed / "checkpoint-6")
    os.remove(resumed / "checkpoint-6" / "checkpoint_complete.json")
    (resumed / ".partial-checkpoint-7").mkdir()
    output = run(args + ["--resume_from_checkpoint", "latest"], tmp_path / "resumed")
    assert f"Resuming from {resumed / 'checkpoint-4'}" in output
    straight, again = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert straight.keys() == again.keys()
    # the scripts' codebook recipe: its k-means flag and usage statistics are buffers, resumed with the weights
    buffers = {"vqshape.codebook.initialized", "vqshape.codebook.usage", "vqshape.codebook.reseeded_codes"}
    assert buffers <= set(straight)
    for key in straight:
        torch.testing.assert_close(again[key], straight[key], rtol=1e-5, atol=1e-6, msg=key)


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    deterministic = ",dropout=0,mask_ratio=0"
    run(["--max_train_steps", "4", "--per_device_train_batch_size", "8"], tmp_path / "ddp", TWO_CPU_RANKS,
        deterministic)
    run(["--max_train_steps", "4", "--per_device_train_batch_size", "16"], tmp_path / "single", (), deterministic)
    ddp, single = results(tmp_path / "ddp"), results(tmp_path / "single")
    assert (ddp["processes"], ddp["global_batch_size"]) == (2, single["global_batch_size"])
    # batch-level terms (code-usage entropy, disentanglement) differ slightly between one batch of 16 and two of 8
    for key in ("validation_step_0", "validation_final"):
        assert ddp[key]["loss"] == pytest.approx(single[key]["loss"], rel=2e-2)
    assert sorted(os.listdir(tmp_path / "ddp")) == sorted(os.listdir(tmp_path / "single"))


def test_new_models_get_the_codebook_recipe(tmp_path):
    from modeling_vqshape.configuration_vqshape import DIVERSE_CODEBOOK, ORIGINAL_CODEBOOK

    args = ["--max_train_steps", "1", "--per_device_train_batch_size", "8"]
    run(args + ["--config_name", "paper"], tmp_path / "paper")
    run(args + ["--codebook_recipe", "original"], tmp_path / "original")
    paper = json.loads((tmp_path / "paper" / "config.json").read_text())
    original = json.loads((tmp_path / "original" / "config.json").read_text())
    assert {key: paper[key] for key in DIVERSE_CODEBOOK} == DIVERSE_CODEBOOK
    assert paper["num_codes"] == 8  # the tiny overrides still apply
    assert {key: original[key] for key in ORIGINAL_CODEBOOK} == ORIGINAL_CODEBOOK
    assert "vqshape.codebook.usage" in weights(tmp_path / "paper")
    assert not any("usage" in key or "initialized" in key for key in weights(tmp_path / "original"))


def test_reseeding_events_are_logged(tmp_path):
    # a code below 0.9 of the uniform share, with a short usage average, dies within a step or two
    output = run(["--max_train_steps", "4", "--per_device_train_batch_size", "8"], tmp_path,
                 overrides=",dead_code_threshold=0.9,usage_ema_decay=0.5")
    events = [line for line in output.splitlines() if "dead codes (" in line]
    assert events and all(line.startswith("step ") and "re-seeded" in line for line in events), output[-2000:]
    total = int(events[-1].split("(")[-1].split()[0])
    assert total == int(weights(tmp_path)["vqshape.codebook.reseeded_codes"]) > 0


def test_cpu_threads_use_the_cores_unless_chosen(tmp_path):
    # `accelerate launch` sets OMP_NUM_THREADS=1 (run_script does too): the script still uses every core of the
    # machine; --num_threads chooses; outside the launcher OMP_NUM_THREADS is the user's choice and is kept
    cores = len(os.sched_getaffinity(0))
    one_rank = ["-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision",
                "no", "--dynamo_backend", "no"]
    args = ["--max_train_steps", "1", "--per_device_train_batch_size", "8"]
    assert f"CPU threads per process: {cores}" in run(args, tmp_path / "launched", one_rank)
    assert "CPU threads per process: 1\n" in run(args + ["--num_threads", "1"], tmp_path / "chosen", one_rank)
    assert "CPU threads per process: 1\n" in run(args, tmp_path / "plain")


def test_streaming_trains_resumes_exactly_and_needs_a_step_budget(tmp_path):
    # the corpus read file by file as an IterableDataset; 3 + 3 steps resume at the same place in the stream
    args = ["--streaming", "--shuffle_buffer_size", "16", "--max_train_steps", "6", "--per_device_train_batch_size",
            "8", "--checkpointing_steps", "3"]
    output = run(args, tmp_path / "straight")
    assert "Model saved to" in output
    resumed = tmp_path / "resumed" / "checkpoints"
    resumed.mkdir(parents=True)
    shutil.copytree(tmp_path / "straight" / "checkpoints" / "checkpoint-3", resumed / "checkpoint-3")
    run(args + ["--resume_from_checkpoint", "latest"], tmp_path / "resumed")
    straight, again = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    for key in straight:
        torch.testing.assert_close(again[key], straight[key], rtol=1e-5, atol=1e-6, msg=key)
    history = results(tmp_path / "straight")
    assert history["series"] == {"streamed": ["GunPoint"]}
    assert history["validation_final"]["loss"] < history["validation_step_0"]["loss"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    refused = subprocess.run([sys.executable, SCRIPT, "--streaming", "--max_train_steps", "0"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "--streaming reads a corpus of unknown length" in refused.stderr


def test_torch_compile_flag_compiles_trains_and_saves_a_plain_model(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    # compiling on one thread, beside the other test worker, can take minutes
    run(["--max_train_steps", "3", "--per_device_train_batch_size", "8", "--torch_compile"], tmp_path / "out",
        timeout=480)
    assert any((tmp_path / "inductor").rglob("*.py")), "inductor generated no code: the model was not compiled"
    saved = weights(tmp_path / "out")
    assert not any(key.startswith("_orig_mod") for key in saved)  # unwrapped before saving
    from modeling_vqshape import VQShapeForPreTraining

    model = VQShapeForPreTraining.from_pretrained(tmp_path / "out")
    assert torch.equal(model.state_dict()["vqshape.codebook.weight"], saved["vqshape.codebook.weight"])
