"""The fast paths give the model's outputs: ONNX export, torch.compile and bf16 autocast."""

import copy
import importlib.util

import numpy as np
import pytest
import torch

from modeling_vqshape import VQShapeConfig, VQShapeForPreTraining, VQShapeModel
from modeling_vqshape.tasks.precision import autocast_agreement

from .conftest import TINY

needs_onnxruntime = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None,
    reason="onnxruntime and onnxscript are not installed (pip install -e '.[dev]' installs them)",
)


def trained_like(config, seed=0):
    """A tiny model whose codebook entries are spread out like a trained one's (the initial +-1/K table puts every
    code vector nearly equidistant from all entries, which no precision comparison should be judged on)."""
    torch.manual_seed(seed)
    model = VQShapeModel(config).eval()
    with torch.no_grad():
        model.codebook.weight.normal_()
    return model


def one_series_chunks(monkeypatch, config):
    """Make CPU inference encode one series at a time."""
    import modeling_vqshape.modeling_vqshape as modeling

    monkeypatch.setattr(modeling, "CPU_CHUNK_BYTES", 4 * config.ffn_dim * config.num_tokens)


def test_cpu_inference_in_chunks_equals_one_pass(tiny_config, series_batch, monkeypatch):
    model = trained_like(tiny_config)
    past_values = torch.stack([series_batch, -series_batch, series_batch**2], dim=-1)  # 12 series
    with torch.no_grad():
        expected = model(past_values, output_reconstruction=True)
        one_series_chunks(monkeypatch, tiny_config)
        calls = []
        model.tokenizer.register_forward_hook(lambda module, args, output: calls.append(len(output)))
        received = model(past_values, output_reconstruction=True)
    assert calls == [1] * 12
    torch.testing.assert_close(received.code_indices, expected.code_indices)
    torch.testing.assert_close(received.token_features, expected.token_features, atol=1e-6, rtol=0)
    torch.testing.assert_close(received.reconstruction, expected.reconstruction, atol=1e-5, rtol=1e-5)


def test_shape_decoder_layouts_compute_the_same_function(tiny_config, monkeypatch):
    """The channels-last 2-D convolutions (eager, and compiled on CPU) and the plain 1-D ones (compiled on CUDA) give
    the same shapes and gradients."""
    import modeling_vqshape.modeling_vqshape as modeling

    decoder = trained_like(tiny_config).shape_decoder
    codes = torch.randn(2, tiny_config.num_tokens, tiny_config.code_dim, requires_grad=True)

    def shapes_and_gradients():
        decoder.zero_grad(set_to_none=True)
        codes.grad = None
        shapes = decoder(codes)
        (shapes * torch.linspace(-1, 1, shapes.shape[-1])).sum().backward()
        return shapes.detach(), codes.grad.clone(), [p.grad.clone() for p in decoder.parameters()]

    channels_last = shapes_and_gradients()
    assert modeling.shape_decoder_layout(codes.device) == "channels_last"
    monkeypatch.setattr(modeling, "shape_decoder_layout", lambda device: "plain")
    plain = shapes_and_gradients()
    torch.testing.assert_close(plain[0], channels_last[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain[1], channels_last[1], atol=1e-5, rtol=1e-4)
    for received, expected in zip(plain[2], channels_last[2]):
        torch.testing.assert_close(received, expected, atol=1e-5, rtol=1e-4)


def test_tokenizer_inference_path_computes_the_decoder(tiny_config):
    """Eval mode runs the decoder layers' own weights without nn.TransformerDecoder: same function, less work."""
    model = trained_like(tiny_config)
    encoded = torch.randn(3, tiny_config.num_patches, tiny_config.d_model)
    with torch.no_grad():
        expected = model.tokenizer.decoder(model.tokenizer.query_tokens.expand(3, -1, -1), encoded)
        torch.testing.assert_close(model.tokenizer(encoded), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@needs_onnxruntime
def test_onnx_export_matches_pytorch_with_a_dynamic_batch(tiny_config, series_batch, tmp_path, monkeypatch):
    from modeling_vqshape.sharing.export_onnx import check_onnx, export_tokens_onnx, main, onnx_session

    model = trained_like(tiny_config)
    one_series_chunks(monkeypatch, tiny_config)  # eager CPU inference in chunks must not fix the exported batch size
    path = export_tokens_onnx(model, tmp_path / "tokens.onnx", num_channels=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.onnx"]  # no temporary file left
    past_values = torch.stack([series_batch, 2 - series_batch], dim=-1)  # (4, 64, 2): a batch size not exported
    token_features, code_indices, histogram = onnx_session(path).run(None, {"past_values": past_values.numpy()})
    with torch.no_grad():
        expected = model(past_values)
    np.testing.assert_array_equal(code_indices, expected.code_indices.numpy())
    np.testing.assert_array_equal(histogram, expected.histogram.numpy())
    np.testing.assert_allclose(token_features, expected.token_features.numpy(), atol=1e-4, rtol=0)
    single = onnx_session(path).run(None, {"past_values": past_values[:1].numpy()})
    np.testing.assert_array_equal(single[1], expected.code_indices[:1].numpy())
    # the check refuses a graph that disagrees with the model: rows moved, same tokens under other indices
    with torch.no_grad():
        model.codebook.weight.copy_(model.codebook.weight.roll(1, dims=0))
    with pytest.raises(RuntimeError, match="code_indices differ"):
        check_onnx(model, path, past_values)
    # the command line writes a checked file from a saved folder (any head)
    head = VQShapeForPreTraining(tiny_config)
    head.save_pretrained(tmp_path / "saved")
    main(["--model", str(tmp_path / "saved"), "--output", str(tmp_path / "cli.onnx")])
    assert (tmp_path / "cli.onnx").stat().st_size > 10_000


def test_bf16_autocast_agreement_is_measured(tiny_config):
    model = trained_like(tiny_config)
    generator = torch.Generator().manual_seed(1)
    series = torch.randn(64, tiny_config.input_length, generator=generator).cumsum(-1)
    agreement = autocast_agreement(model, series, dtype=torch.bfloat16, batch_size=32)
    assert agreement["num_tokens"] == 64 * tiny_config.num_tokens
    assert agreement["identical_codes"] >= 0.9
    assert 0 < agreement["max_attribute_error"] < 0.1  # bf16 keeps 8 bits of mantissa: different, but close
    assert agreement["mean_attribute_error"] <= agreement["max_attribute_error"]


def test_codebook_search_stays_float32_under_autocast(tiny_config, series_batch):
    model = trained_like(tiny_config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = model.tokenize(model.patch_encoder.embed(series_batch))
    assert tokens.distances.dtype == torch.float32 and tokens.z_e.dtype == torch.float32
    z_e = tokens.z_e.reshape(-1, tiny_config.code_dim)
    expected = torch.cdist(z_e, model.codebook.weight).argmin(dim=1)
    torch.testing.assert_close(tokens.code_indices.reshape(-1), expected)
    # a model cast to bf16 keeps its dtype downstream of the codebook
    out = model.to(torch.bfloat16)(series_batch.to(torch.bfloat16), output_reconstruction=True)
    assert out.reconstruction.dtype == torch.bfloat16


@pytest.mark.slow
def test_compiled_model_equals_eager_without_graph_breaks(tiny_config, series_batch):
    import torch._dynamo

    model = trained_like(tiny_config)
    explanation = torch._dynamo.explain(model)(series_batch)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model, fullgraph=True)
    expected, received = model(series_batch), compiled(series_batch)
    torch.testing.assert_close(received.code_indices, expected.code_indices)
    torch.testing.assert_close(received.token_features, expected.token_features, atol=1e-5, rtol=1e-5)
    # the training step: loss and gradients of the compiled pre-training head equal eager's
    torch.manual_seed(0)
    # no random patch draws and no dropout, so that both runs compute the same function
    head = VQShapeForPreTraining(VQShapeConfig(**TINY, mask_ratio=0.0, dropout=0.0)).train()
    eager_loss = head(series_batch).loss
    eager_loss.backward()
    eager_grads = [p.grad.clone() for p in head.parameters() if p.grad is not None]
    head.zero_grad(set_to_none=True)
    compiled_head = torch.compile(head, fullgraph=True)
    compiled_loss = compiled_head(series_batch).loss
    compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss, atol=1e-5, rtol=1e-4)
    compiled_grads = [p.grad for p in head.parameters() if p.grad is not None]
    assert len(compiled_grads) == len(eager_grads)
    # fused kernels sum in another order: compare the whole gradient (a near-zero bias gradient, a sum of terms that
    # cancel, differs in relative terms by more than the rest)
    expected, received = torch.cat([g.flatten() for g in eager_grads]), torch.cat([g.flatten() for g in compiled_grads])
    assert (received - expected).norm() <= 1e-4 * expected.norm()


@pytest.mark.slow
def test_diverse_codebook_compiles_its_tokens_path_without_graph_breaks(series_batch):
    """The recipe the scripts use: its inference has no break; in training only the codebook's data-dependent upkeep
    (k-means once, dead-code re-seeding) runs eagerly, and the compiled step still trains like eager."""
    import torch._dynamo

    from modeling_vqshape.configuration_vqshape import DIVERSE_CODEBOOK

    config = VQShapeConfig(**TINY, **DIVERSE_CODEBOOK, mask_ratio=0.0, dropout=0.0)
    torch.manual_seed(0)
    head = VQShapeForPreTraining(config).train()
    eager_loss = head(series_batch).loss  # initialises the codebook with k-means
    model = head.vqshape.eval()
    assert torch._dynamo.explain(model)(series_batch).graph_break_count == 0
    head.train()
    explanation = torch._dynamo.explain(head)(series_batch)
    assert all("disable" in str(reason.reason) for reason in explanation.break_reasons), explanation.break_reasons
    assert torch.isfinite(eager_loss)
    # from the same state and random draws (a re-seed draws), the compiled step gives eager's loss
    state = copy.deepcopy(head.state_dict())
    torch.manual_seed(1)
    eager_loss = head(series_batch).loss
    head.load_state_dict(state)
    torch.manual_seed(1)
    torch.testing.assert_close(torch.compile(head)(series_batch).loss, eager_loss, atol=1e-5, rtol=1e-4)
