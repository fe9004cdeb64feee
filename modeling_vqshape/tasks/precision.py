"""Reduced-precision inference: how far the tokens under autocast are from float32's.

    with torch.autocast("cpu", dtype=torch.bfloat16):   # or "cuda"
        tokens = model(past_values)

The nearest-code search always runs in float32 (a bf16 distance would change which entry is nearest), so what
autocast changes is the encoder's output. `autocast_agreement` measures that on the user's own series.
"""

import torch

from ..modeling_vqshape import VQShapeModel


@torch.no_grad()
def autocast_agreement(model: VQShapeModel, past_values: torch.Tensor, dtype: torch.dtype = torch.bfloat16,
                       batch_size: int = 256) -> dict:
    """Tokens of `model` under `torch.autocast(dtype)` against float32 on the same series.

    Args:
        model: a `VQShapeModel` (e.g. `head.vqshape`), evaluated as it is (call `.eval()` first).
        past_values: `(num_series, input_length)` or `(num_series, input_length, num_channels)`.
        dtype: the autocast dtype, `torch.bfloat16` or `torch.float16`.
    Returns:
        `identical_codes`: share of tokens given the same code; `max_attribute_error` and `mean_attribute_error`: the
        absolute difference of start, length (shares of the series), offset and scale (normalised units);
        `num_tokens`: how many tokens were compared.
    """
    device = model.device
    same = total = 0
    largest, summed, count = 0.0, 0.0, 0
    for begin in range(0, len(past_values), batch_size):
        batch = past_values[begin: begin + batch_size].to(device)
        exact = model(batch)
        with torch.autocast(device_type=device.type, dtype=dtype):
            reduced = model(batch)
        same += int((exact.code_indices == reduced.code_indices).sum())
        total += exact.code_indices.numel()
        code_dim = model.config.code_dim
        error = (exact.token_features[..., code_dim:] - reduced.token_features[..., code_dim:].float()).abs()
        largest = max(largest, float(error.max()))
        summed += float(error.sum())
        count += error.numel()
    return {"identical_codes": same / total, "max_attribute_error": largest, "mean_attribute_error": summed / count,
            "num_tokens": total}
