"""Converting a checkpoint of the paper's released size (512 codes), atlas and model card included.

    python benchmarks/bench_conversion.py --original-repo PATH [--num_codes 512]

Builds the original VQShape (github.com/YunshiWen/VQShape, needs einops) with the paper's hyper-parameters and random
weights, saves it as the original's Lightning checkpoint would (the `model.` prefix, the LitVQShape hyper-parameter
names of the committed tiny fixture), then times `conversion/convert_vqshape_original_to_hf.py`'s `convert` on it
and, separately, drawing the codebook atlas of the converted model.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from original_vqshape import build_original  # noqa: E402

from conversion.convert_vqshape_original_to_hf import convert  # noqa: E402
from modeling_vqshape import VQShapeConfig, VQShapeModel  # noqa: E402
from modeling_vqshape.hub import write_atlas  # noqa: E402


def hyper_parameters(config: VQShapeConfig) -> dict:
    """The LitVQShape argument names for `config` (see the fixture's `hyper_parameters`)."""
    return {
        "dim_embedding": config.d_model, "normalize_length": config.input_length, "patch_size": config.patch_length,
        "num_patch": config.num_patches, "num_token": config.num_tokens,
        "num_transformer_enc_heads": config.num_encoder_heads, "num_transformer_enc_layers": config.num_encoder_layers,
        "num_tokenizer_heads": config.num_tokenizer_heads, "num_tokenizer_layers": config.num_tokenizer_layers,
        "num_transformer_dec_heads": config.num_decoder_heads, "num_transformer_dec_layers": config.num_decoder_layers,
        "num_code": config.num_codes, "dim_code": config.code_dim, "codebook_type": "standard",
        "len_s": config.shape_length, "s_smooth_factor": config.shape_smoothing,
        "lambda_x": config.reconstruction_weight, "lambda_z": config.codebook_weight, "lambda_s": config.shape_weight,
        "lambda_dist": config.disentanglement_weight, "lambda_vq_commit": config.commitment_weight,
        "lambda_vq_entropy": config.entropy_weight, "entropy_gamma": config.entropy_gamma,
        "mask_ratio": config.mask_ratio,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original-repo", dest="original_repo", required=True)
    parser.add_argument("--num_codes", type=int, default=512)
    args = parser.parse_args()
    config = VQShapeConfig(num_codes=args.num_codes)  # the paper's configuration
    torch.manual_seed(0)
    original = build_original(config, args.original_repo)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "VQShape.ckpt"
        torch.save({"state_dict": {f"model.{key}": value for key, value in original.state_dict().items()},
                    "hyper_parameters": hyper_parameters(config), "pytorch-lightning_version": "2.2.0",
                    "global_step": 0, "epoch": 0}, checkpoint)
        start = time.perf_counter()
        output = convert(checkpoint, Path(folder) / "converted")
        converted = time.perf_counter() - start
        model = VQShapeModel.from_pretrained(output).eval()
        start = time.perf_counter()
        write_atlas(model, folder)
        atlas = time.perf_counter() - start
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads: {args.num_codes}-code checkpoint converted "
          f"(check, safetensors, atlas, card) in {converted:.1f} s; the atlas alone {atlas:.1f} s")


if __name__ == "__main__":
    main()
