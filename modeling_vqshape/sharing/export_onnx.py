"""Export VQShape's tokens/histogram path to ONNX, with a dynamic batch size, and check it with onnxruntime.

    python -m modeling_vqshape.sharing.export_onnx --model vqshape-pretrained --output vqshape-tokens.onnx

The graph takes `past_values` `(batch_size, input_length, num_channels)` float32, already resampled to the model's
`input_length` (`VQShapeFeatureExtractor` does that), and returns what `VQShapeModel` returns without its decoders:
`token_features` `(batch_size, num_channels, num_tokens, code_dim + 4)`, `code_indices` and `histogram` (int64). The
export is checked against PyTorch on the same inputs before the file is moved into place: codes identical, token
features within `--atol`.
"""

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..modeling_vqshape import VQShapeModel, VQShapePreTrainedModel
from ..saving_vqshape import atomic_write

OUTPUT_NAMES = ("token_features", "code_indices", "histogram")


class VQShapeTokensGraph(nn.Module):
    """`VQShapeModel`'s tokens path as a module with tensor outputs, the form exporters take."""

    def __init__(self, model: VQShapeModel):
        super().__init__()
        self.model = model

    def forward(self, past_values: torch.Tensor):
        output = self.model(past_values, return_dict=True)
        return output.token_features, output.code_indices, output.histogram


def export_tokens_onnx(model: VQShapePreTrainedModel, output: str | os.PathLike, num_channels: int = 1,
                       atol: float = 1e-4, check_batch_size: int = 5) -> Path:
    """Export the tokens path of `model` to `output` and check it with onnxruntime.

    Args:
        model: a VQShape model or head; its `VQShapeModel` is exported, in eval mode.
        output: the `.onnx` file to write; written to a temporary file first and moved into place once checked.
        num_channels: the channel count of the exported graph (the batch size is dynamic).
        atol: the largest allowed difference of token features between onnxruntime and PyTorch.
        check_batch_size: the batch size of the check, different from the export's to test the dynamic axis.
    Returns:
        The path written.
    """
    graph = VQShapeTokensGraph(model.base_model).eval()  # the VQShapeModel of any head (base_model_prefix)
    config = graph.model.config
    example = torch.randn(2, config.input_length, num_channels)
    batch = torch.export.Dim("batch_size", min=1)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(output) as temporary:  # moved into place once checked
        with torch.no_grad():
            program = torch.onnx.export(
                graph, (example,), input_names=["past_values"], output_names=list(OUTPUT_NAMES),
                dynamic_shapes={"past_values": {0: batch}}, dynamo=True, external_data=False, verbose=False,
            )
        program.save(str(temporary))
        check_onnx(graph.model, str(temporary),
                   torch.randn(check_batch_size, config.input_length, num_channels) * 3 + 1, atol=atol)
    return output


def onnx_session(path: str | os.PathLike):
    """An onnxruntime CPU session for `path`."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError("Running the ONNX model needs onnxruntime: pip install onnxruntime") from error
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_onnx(model: VQShapeModel, path: str | os.PathLike, past_values: torch.Tensor, atol: float = 1e-4) -> dict:
    """Run the ONNX file and the PyTorch model on `past_values`; raise if codes or histograms differ or token
    features differ by more than `atol`. Returns the largest token-feature difference and the inputs' batch size."""
    with torch.no_grad():
        expected = VQShapeTokensGraph(model).eval()(past_values)
    received = onnx_session(path).run(list(OUTPUT_NAMES), {"past_values": past_values.numpy().astype(np.float32)})
    for name, want, got in zip(OUTPUT_NAMES[1:], expected[1:], received[1:]):
        if not np.array_equal(want.numpy(), got):
            raise RuntimeError(f"The ONNX model's {name} differ from PyTorch's on the same input.")
    difference = float(np.abs(expected[0].numpy() - received[0]).max())
    if difference > atol:
        raise RuntimeError(f"The ONNX model's token features differ from PyTorch's by {difference:.2e} > {atol}.")
    return {"max_token_feature_difference": difference, "batch_size": past_values.shape[0]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="A saved VQShape folder or Hub id (any head).")
    parser.add_argument("--output", required=True, help="The .onnx file to write.")
    parser.add_argument("--num_channels", type=int, default=1, help="Channels per series of the exported graph.")
    parser.add_argument("--atol", type=float, default=1e-4, help="Allowed token-feature difference in the check.")
    args = parser.parse_args(argv)
    from transformers import AutoModel

    model = AutoModel.from_pretrained(args.model)
    path = export_tokens_onnx(model, args.output, num_channels=args.num_channels, atol=args.atol)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); onnxruntime agrees with PyTorch (codes identical, "
          f"token features within {args.atol})")


if __name__ == "__main__":
    main()
