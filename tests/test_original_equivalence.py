"""The converted original checkpoint reproduces the outputs the original code recorded (tests/fixtures/original_tiny,
copied from the project's shared fixtures; see its README for how they were produced and the tolerances)."""

import hashlib
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conversion.convert_vqshape_original_to_hf import (
    ConversionError,
    build_model,
    compare_with_reference,
    convert,
    convert_config,
    load_original_checkpoint,
    tolerance_ratio,
)
from modeling_vqshape import VQShapeForPreTraining, VQShapeModel

from .conftest import ORIGINAL_TINY, REPO_ROOT

CHECKPOINT = ORIGINAL_TINY / "VQShape.ckpt"
REFERENCE = ORIGINAL_TINY / "reference_outputs.safetensors"


@pytest.fixture(scope="module")
def reference():
    return load_file(str(REFERENCE))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("converted") / "vqshape-tiny"
    convert(CHECKPOINT, output_dir, reference_outputs=REFERENCE)
    return output_dir


def test_fixture_files_are_the_recorded_ones():
    digests = {
        "VQShape.ckpt": "d915366af978ebfc4100fa97c1f9c07ac0686da884582b7d88692af3cd177111",
        "reference_outputs.safetensors": "414ac8028787051fe519ce90035e576f9a1128e8c93170a79fffbd6ad06ee229",
    }
    for name, digest in digests.items():
        assert hashlib.sha256((ORIGINAL_TINY / name).read_bytes()).hexdigest() == digest


def test_converted_folder_is_complete(converted):
    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= names
    assert not any(name.endswith(".tmp") for name in names)


def test_tokens_and_attributes_match_the_original(converted, reference):
    model = VQShapeModel.from_pretrained(converted).eval()
    x = reference["input.x"]
    with torch.no_grad():
        out = model(x, output_reconstruction=True, output_shapes=True)
    assert torch.equal(out.code_indices[:, 0], reference["tokenize.code_idx"])
    assert torch.equal(out.histogram[:, 0], reference["tokenize.histogram"])
    close = dict(atol=1e-5, rtol=0)
    torch.testing.assert_close(out.token_features[:, 0], reference["tokenize.token"], **close)
    torch.testing.assert_close(out.codes[:, 0], reference["tokenize.code"], **close)
    torch.testing.assert_close(out.shape_start[:, 0, :, None], reference["tokenize.t_pred"], **close)
    torch.testing.assert_close(out.shape_length[:, 0, :, None], reference["tokenize.l_pred"], **close)
    torch.testing.assert_close(out.shape_offset[:, 0, :, None], reference["tokenize.mu_pred"], **close)
    torch.testing.assert_close(out.shape_scale[:, 0, :, None], reference["tokenize.sigma_pred"], **close)
    # series and shapes live in the input's scale (up to ~500): per-row tolerance 1e-5*|ref| + 1e-4*s
    assert tolerance_ratio(out.reconstruction[..., 0], reference["tokenize.x_pred"], x, 1e-4) <= 1
    assert tolerance_ratio(out.shapes[:, 0], reference["tokenize.s_pred"], x, 1e-4) <= 1


def test_eval_losses_match_the_original(converted, reference):
    model = VQShapeForPreTraining.from_pretrained(converted).eval()
    x = reference["input.x"]
    with torch.no_grad():
        out = model(x)
    for ours, key in (
        (out.reconstruction_loss, "evaluate.ts_loss"),
        (out.codebook_loss, "evaluate.vq_loss"),
        (out.shape_loss, "evaluate.shape_loss"),
        (out.disentanglement_loss, "evaluate.dist_loss"),
    ):
        torch.testing.assert_close(ours.reshape(1), reference[key], rtol=1e-4, atol=0)
    assert tolerance_ratio(out.target_shapes[:, 0], reference["evaluate.s_true"], x, 1e-3) <= 1
    expected = out.reconstruction_loss + out.codebook_loss + out.shape_loss + out.disentanglement_loss  # lambdas 1
    torch.testing.assert_close(out.loss, expected)


def test_reference_check_catches_a_wrong_weight(reference):
    model, _ = build_model(load_original_checkpoint(CHECKPOINT))
    with torch.no_grad():
        model.attribute_decoder.offset_head[2].bias += 1e-3
    with pytest.raises(ConversionError, match="differs from the original"):
        compare_with_reference(model, reference)


def test_legacy_hyperparameters_take_the_encoders_tokenizer_shape():
    hyper_parameters = dict(load_original_checkpoint(CHECKPOINT)["hyper_parameters"])
    hyper_parameters.update(num_transformer_enc_heads=4, num_transformer_enc_layers=3)
    del hyper_parameters["num_tokenizer_heads"], hyper_parameters["num_tokenizer_layers"]
    config = convert_config(hyper_parameters)
    assert (config.num_tokenizer_heads, config.num_tokenizer_layers) == (4, 3)


@pytest.mark.slow
def test_command_line(tmp_path):
    output_dir = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "conversion.convert_vqshape_original_to_hf", "--checkpoint", str(CHECKPOINT),
         "--output_dir", str(output_dir), "--reference_outputs", str(REFERENCE)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert (output_dir / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    "make_bad_file, message",
    [
        (lambda path: path.write_bytes(CHECKPOINT.read_bytes()[: len(CHECKPOINT.read_bytes()) // 2]), "not a readable"),
        (lambda path: path.write_bytes(b"\x00garbage" * 100), "not a readable"),
        (lambda path: torch.save({"weights": torch.zeros(2)}, path), "no 'state_dict'"),
        (lambda path: torch.save({"state_dict": {"model.x": torch.zeros(2)}, "hyper_parameters": {}}, path), "lack"),
    ],
    ids=["truncated", "corrupt", "foreign", "not-vqshape"],
)
def test_bad_checkpoints_fail_clearly_and_leave_nothing(tmp_path, make_bad_file, message):
    bad = tmp_path / "bad.ckpt"
    make_bad_file(bad)
    output_dir = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "conversion.convert_vqshape_original_to_hf", "--checkpoint", str(bad),
         "--output_dir", str(output_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ckpt"]


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path):
    bad = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"payload": ConversionError("x")}}, bad)
    with pytest.raises(ConversionError, match="weights_only"):
        load_original_checkpoint(bad)
