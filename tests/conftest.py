import os

# huggingface_hub reads these when imported: set them before anything imports it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ORIGINAL_TINY = FIXTURES / "original_tiny"

TINY = dict(
    input_length=64,
    num_patches=8,
    patch_length=8,
    d_model=16,
    num_encoder_layers=2,
    num_encoder_heads=2,
    num_tokenizer_layers=2,
    num_tokenizer_heads=2,
    num_decoder_layers=2,
    num_decoder_heads=2,
    num_tokens=4,
    num_codes=8,
    code_dim=4,
    shape_length=16,
)


@pytest.fixture
def tiny_config():
    from modeling_vqshape import VQShapeConfig

    return VQShapeConfig(**TINY)


@pytest.fixture
def series_batch():
    """Four univariate series of 64 steps with distinct shapes, (batch_size, sequence_length)."""
    t = torch.linspace(0, 1, 64)
    generator = torch.Generator().manual_seed(0)
    return torch.stack(
        [
            torch.sin(2 * torch.pi * 3 * t),
            torch.where(t < 0.5, -1.0, 2.0),
            5 * t - 1,
            torch.randn(64, generator=generator) * 10 + 3,
        ]
    )
