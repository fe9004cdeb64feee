"""Converting a checkpoint of the paper's released size (512 codes), atlas and model card included.

    python benchmarks/bench_conversion.py --original_repo PATH [--num_codes 512]

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

from conversion.convert_vqshape_original_to_hf import ORIGINAL_TO_CONFIG, convert  # noqa: E402
from modeling_vqshape import VQShapeConfig, VQShapeModel  # noqa: E402
from modeling_vqshape.sharing.hub import write_atlas  # noqa: E402


def hyper_parameters(config: VQShapeConfig) -> dict:
    """The LitVQShape argument names for `config`: the converter's own mapping, read backwards."""
    return {original: getattr(config, converted) for original, converted in ORIGINAL_TO_CONFIG.items()} | {
        "codebook_type": "standard"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original_repo", "--original-repo", required=True)
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
