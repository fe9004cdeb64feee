"""Convert an original VQShape Lightning checkpoint (github.com/YunshiWen/VQShape, `LitVQShape`) to a Hugging Face
folder: `config.json`, `model.safetensors`, `preprocessor_config.json`, the modeling files and a model card.

    python -m conversion.convert_vqshape_original_to_hf --checkpoint PATH/VQShape.ckpt --output_dir DIR \
        [--reference_outputs reference_outputs.safetensors] [--push_to_hub REPO_ID]

The checkpoint is read with `torch.load(weights_only=True)`: neither lightning nor wandb is needed and no arbitrary
object is unpickled. Weights are renamed by an explicit table and loaded with `strict=True`; the converted model is
checked (every tensor copied bit for bit, finite outputs of the right shapes, and, when given, the original's
recorded outputs at the fixture's tolerances) before anything is written. Nothing is left behind on failure.
"""

import argparse
import math
import pickle
import re
import sys
import zipfile
from pathlib import Path

import torch

from modeling_vqshape import VQShapeConfig, VQShapeForPreTraining, VQShapeModel
from modeling_vqshape.saving_vqshape import atomic_write
from modeling_vqshape.sharing.hub import publish, save_model_folder

# Original key (after the Lightning `model.` prefix) -> converted key of VQShapeModel.
ORIGINAL_TO_CONVERTED_KEY_MAPPING = {
    r"^encoder\.pos_embed\.positional_embeddings\.weight$": "patch_encoder.position_embeddings.weight",
    r"^encoder\.input_project\.": "patch_encoder.input_projection.",
    r"^encoder\.transformer\.layers\.": "patch_encoder.encoder.layers.",
    r"^codebook\.embedding\.weight$": "codebook.weight",
    r"^tokenizer\.tokens$": "tokenizer.query_tokens",
    r"^tokenizer\.transformer\.layers\.": "tokenizer.decoder.layers.",
    r"^attr_decoder\.z_head\.layers\.": "attribute_decoder.code_head.",
    r"^attr_decoder\.tl_mean_head\.layers\.": "attribute_decoder.start_length_head.",
    r"^attr_decoder\.mu_head\.layers\.": "attribute_decoder.offset_head.",
    r"^attr_decoder\.sigma_head\.layers\.": "attribute_decoder.scale_head.",
    r"^attr_encoder\.project\.": "attribute_encoder.projection.",
    r"^decoder\.cls_token$": "patch_decoder.cls_token",
    r"^decoder\.transformer\.layers\.": "patch_decoder.decoder.layers.",
    r"^decoder\.out_layer\.": "patch_decoder.output_projection.",
    r"^shape_decoder\.layers\.0\.": "shape_decoder.input_projection.",
    r"^shape_decoder\.layers\.2\.block\.": "shape_decoder.residual_in.block.",
    r"^shape_decoder\.layers\.4\.conv\.": "shape_decoder.upsample_in.conv.",
    r"^shape_decoder\.layers\.5\.block\.": "shape_decoder.residual_out.block.",
    r"^shape_decoder\.layers\.5\.channel_up\.": "shape_decoder.residual_out.skip.",
    r"^shape_decoder\.layers\.7\.conv\.": "shape_decoder.upsample_out.conv.",
    r"^shape_decoder\.layers\.9\.": "shape_decoder.output_conv.",
}

# Original hyper-parameter -> VQShapeConfig argument.
ORIGINAL_TO_CONFIG = {
    "normalize_length": "input_length",
    "num_patch": "num_patches",
    "patch_size": "patch_length",
    "dim_embedding": "d_model",
    "num_transformer_enc_layers": "num_encoder_layers",
    "num_transformer_enc_heads": "num_encoder_heads",
    "num_tokenizer_layers": "num_tokenizer_layers",
    "num_tokenizer_heads": "num_tokenizer_heads",
    "num_transformer_dec_layers": "num_decoder_layers",
    "num_transformer_dec_heads": "num_decoder_heads",
    "num_token": "num_tokens",
    "num_code": "num_codes",
    "dim_code": "code_dim",
    "len_s": "shape_length",
    "s_smooth_factor": "shape_smoothing",
    "lambda_x": "reconstruction_weight",
    "lambda_z": "codebook_weight",
    "lambda_s": "shape_weight",
    "lambda_dist": "disentanglement_weight",
    "lambda_vq_commit": "commitment_weight",
    "lambda_vq_entropy": "entropy_weight",
    "entropy_gamma": "entropy_gamma",
    "mask_ratio": "mask_ratio",
}
# Older checkpoints have no tokenizer keys: their tokenizer was built with the encoder's heads and layers.
LEGACY_FALLBACKS = {"num_tokenizer_layers": "num_transformer_enc_layers",
                    "num_tokenizer_heads": "num_transformer_enc_heads"}


class ConversionError(Exception):
    """The checkpoint cannot be converted; the message says why."""


def _attribute_dict_stub(module_name: str):
    # Lightning versions that pickled hyper-parameters as AttributeDict (a plain dict subclass): a stand-in with the
    # same qualified name lets weights_only loading accept it without importing lightning.
    return type("AttributeDict", (dict,), {"__module__": module_name})


SAFE_GLOBALS = [
    _attribute_dict_stub("lightning.fabric.utilities.data"),
    _attribute_dict_stub("pytorch_lightning.utilities.parsing"),
    _attribute_dict_stub("lightning_fabric.utilities.data"),
]


def load_original_checkpoint(path) -> dict:
    """Read a Lightning checkpoint with weights_only loading; any failure becomes one ConversionError."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such checkpoint file.")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(
            f"{path}: not a readable VQShape Lightning checkpoint (corrupt, truncated, or holding objects that "
            f"weights_only loading refuses): {first_line}"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ConversionError(f"{path}: not a Lightning checkpoint (no 'state_dict' dictionary at the top level).")
    if not isinstance(checkpoint.get("hyper_parameters"), dict):
        raise ConversionError(
            f"{path}: the checkpoint has no 'hyper_parameters'; it was not saved by the original LitVQShape."
        )
    return checkpoint


def convert_config(hyper_parameters: dict) -> VQShapeConfig:
    """Map the original argument namespace to a VQShapeConfig."""
    codebook_type = hyper_parameters.get("codebook_type", "standard")
    if codebook_type != "standard":
        raise ConversionError(
            f"codebook_type {codebook_type!r} is not supported; only the original's 'standard' Euclidean codebook is."
        )
    values = {}
    for original, converted in ORIGINAL_TO_CONFIG.items():
        key = original if original in hyper_parameters else LEGACY_FALLBACKS.get(original)
        if key is None or key not in hyper_parameters:
            raise ConversionError(
                f"the checkpoint's hyper_parameters lack {original!r}; it does not come from the original LitVQShape."
            )
        values[converted] = hyper_parameters[key]
    try:
        return VQShapeConfig(**values)
    except ValueError as error:
        raise ConversionError(f"the checkpoint's hyper-parameters are not a valid VQShape: {error}") from None


def convert_old_keys_to_new_keys(state_dict: dict) -> dict:
    """Rename every tensor of the original state dict by ORIGINAL_TO_CONVERTED_KEY_MAPPING."""
    converted = {}
    for key, tensor in state_dict.items():
        if not key.startswith("model."):
            raise ConversionError(f"unexpected key {key!r}: the LightningModule's weights all start with 'model.'.")
        name = key[len("model."):]
        for pattern, replacement in ORIGINAL_TO_CONVERTED_KEY_MAPPING.items():
            if re.match(pattern, name):
                converted[re.sub(pattern, replacement, name)] = tensor
                break
        else:
            raise ConversionError(f"no conversion rule for the original key {key!r}.")
    return converted


def build_model(checkpoint: dict) -> tuple[VQShapeModel, dict]:
    """The converted model, loaded with strict=True, and the converted state dict it was loaded from."""
    config = convert_config(checkpoint["hyper_parameters"])
    state_dict = convert_old_keys_to_new_keys(checkpoint["state_dict"])
    model = VQShapeModel(config)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise ConversionError(f"the checkpoint's weights do not fit the converted architecture: {error}") from None
    return model.eval(), state_dict


def tolerance_ratio(actual, expected, series, scale_share):
    """Largest |diff| / (1e-5*|ref| + scale_share*s), s being each row's sqrt(unbiased var + 1e-5): the fixture's
    per-row tolerance for values in the input's scale; at most 1 passes."""
    row_scale = (series.var(dim=-1, keepdim=True) + 1e-5).sqrt()
    while row_scale.dim() < expected.dim():
        row_scale = row_scale.unsqueeze(-1)
    return ((actual - expected).abs() / (1e-5 * expected.abs() + scale_share * row_scale)).max().item()


def compare_with_reference(model: VQShapeModel, reference: dict) -> dict:
    """Run the converted model on the recorded input and compare with the original's outputs at the tolerances of
    the reference fixture; raise ConversionError on a mismatch. Returns the largest deviation of each quantity
    (absolute for attributes, relative for losses, as a share of the per-row tolerance for series and shapes)."""
    x = reference["input.x"]
    with torch.no_grad():
        out = model(x, output_reconstruction=True, output_shapes=True)
        pretraining = VQShapeForPreTraining(model.config)
        pretraining.vqshape = model
        losses = pretraining.eval()(x)
    report = {}
    if not torch.equal(out.code_indices[:, 0], reference["tokenize.code_idx"]):
        raise ConversionError("code indices differ from the original's.")
    if not torch.equal(out.histogram[:, 0], reference["tokenize.histogram"]):
        raise ConversionError("code histograms differ from the original's.")
    attributes = {
        "tokenize.token": out.token_features[:, 0],
        "tokenize.code": out.codes[:, 0],
        "tokenize.t_pred": out.shape_start[:, 0, :, None],
        "tokenize.l_pred": out.shape_length[:, 0, :, None],
        "tokenize.mu_pred": out.shape_offset[:, 0, :, None],
        "tokenize.sigma_pred": out.shape_scale[:, 0, :, None],
    }
    for key, value in attributes.items():
        report[key] = (value - reference[key]).abs().max().item()
        if report[key] > 1e-5:
            raise ConversionError(f"{key} differs from the original's by {report[key]:.3g} (> 1e-5).")
    scaled = {
        "tokenize.x_pred": (out.reconstruction[..., 0], 1e-4),
        "tokenize.s_pred": (out.shapes[:, 0], 1e-4),
        "evaluate.s_true": (losses.target_shapes[:, 0], 1e-3),
    }
    for key, (value, scale_share) in scaled.items():
        report[key] = tolerance_ratio(value, reference[key], x, scale_share)
        if report[key] > 1:
            raise ConversionError(
                f"{key} differs from the original's by {report[key]:.3g} times the per-row tolerance."
            )
    for key, value in {
        "evaluate.ts_loss": losses.reconstruction_loss,
        "evaluate.vq_loss": losses.codebook_loss,
        "evaluate.shape_loss": losses.shape_loss,
        "evaluate.dist_loss": losses.disentanglement_loss,
    }.items():
        expected = reference[key].reshape(())
        report[key] = ((value - expected).abs() / expected.abs().clamp(min=1e-12)).item()
        if report[key] > 1e-4:
            raise ConversionError(f"{key} differs from the original's by a relative {report[key]:.3g} (> 1e-4).")
    return report


def check_converted_model(model: VQShapeModel, state_dict: dict):
    """Every converted tensor is the original's bit for bit, and a forward pass gives finite, well-shaped outputs."""
    loaded = model.state_dict()
    for key, tensor in state_dict.items():
        if not torch.equal(loaded[key], tensor):
            raise ConversionError(f"{key} changed while loading.")
    config = model.config
    probe = torch.sin(torch.linspace(0, 6 * math.pi, config.input_length)).repeat(2, 1)
    probe[1] = probe[1] * 3 + torch.linspace(-1, 1, config.input_length)
    with torch.no_grad():
        out = model(probe, output_reconstruction=True, output_shapes=True)
    for name in ("token_features", "reconstruction", "shapes"):
        if not torch.isfinite(getattr(out, name)).all():
            raise ConversionError(f"the converted model produces non-finite {name}.")
    if not (out.histogram.sum(dim=-1) == config.num_tokens).all():
        raise ConversionError("the converted model's histograms do not count every token.")


def convert(checkpoint_path, output_dir, reference_outputs=None, push_to_hub=None, private=False) -> Path:
    """Convert, check, then write the folder all at once (`atomic_write`: a temporary sibling renamed at the end)."""
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ConversionError(f"{output_dir} exists and is not empty; choose a new --output_dir.")
    checkpoint = load_original_checkpoint(checkpoint_path)
    model, state_dict = build_model(checkpoint)
    check_converted_model(model, state_dict)
    report = None
    if reference_outputs is not None:
        from safetensors.torch import load_file

        report = compare_with_reference(model, load_file(str(reference_outputs)))

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(output_dir) as staging:  # the hub module's save step: weights, feature extractor, atlas, card
        save_model_folder(
            model,
            staging,
            description=(
                f"Converted from the original VQShape checkpoint `{Path(checkpoint_path).name}` "
                f"(Lightning {checkpoint.get('pytorch-lightning_version', 'unknown')}, "
                f"global step {checkpoint.get('global_step', 'unknown')}) with "
                "`conversion/convert_vqshape_original_to_hf.py`."
            ),
            extra={"conversion_check": report} if report else None,
        )
    if push_to_hub:
        publish(output_dir, push_to_hub, private=private, commit_message="Add converted VQShape checkpoint")
    return output_dir


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="the original VQShape.ckpt")
    # underscores, as every script of the package; the dashed spelling of earlier versions is still accepted
    parser.add_argument("--output_dir", "--output-dir", required=True, help="a new folder for the converted model")
    parser.add_argument("--reference_outputs", "--reference-outputs",
                        help="outputs recorded from the original code, to compare against")
    parser.add_argument("--push_to_hub", "--push-to-hub", metavar="REPO_ID",
                        help="also upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        output_dir = convert(args.checkpoint, args.output_dir, args.reference_outputs, args.push_to_hub, args.private)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Converted model written to {output_dir}")
    print(f"Load it with: AutoModel.from_pretrained({str(output_dir)!r}, trust_remote_code=True)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
