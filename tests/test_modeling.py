import pytest
import torch
from transformers import AutoModel, AutoModelForPreTraining, AutoModelForSequenceClassification

from modeling_vqshape import (
    VQShapeConfig,
    VQShapeForPreTraining,
    VQShapeForTimeSeriesClassification,
    VQShapeModel,
)
from modeling_vqshape.modeling_vqshape import disentanglement_loss, extract_subsequence


def test_base_model_output_shapes(tiny_config, series_batch):
    model = VQShapeModel(tiny_config).eval()
    multichannel = torch.stack([series_batch, series_batch.flip(-1), -series_batch], dim=-1)  # (4, 64, 3)
    out = model(multichannel, output_reconstruction=True, output_shapes=True)
    assert out.token_features.shape == (4, 3, 4, tiny_config.code_dim + 4)
    assert out.histogram.shape == (4, 3, 8) and out.histogram.dtype == torch.int64
    assert (out.histogram.sum(-1) == tiny_config.num_tokens).all()
    assert out.code_indices.shape == (4, 3, 4)
    assert out.last_hidden_state.shape == (4, 3, 4, 16)
    assert out.reconstruction.shape == (4, 64, 3)
    assert out.shapes.shape == (4, 3, 4, 16)
    # token features are [code, t, l, mu, sigma]
    torch.testing.assert_close(out.token_features[..., : tiny_config.code_dim], out.codes)
    torch.testing.assert_close(out.token_features[..., -4], out.shape_start)
    torch.testing.assert_close(out.token_features[..., -1], out.shape_scale)
    assert (out.shape_length >= tiny_config.min_shape_length).all() and (out.shape_scale > 0).all()
    # a univariate (batch, length) input is one channel
    univariate = model(series_batch, output_reconstruction=True)
    assert univariate.token_features.shape == (4, 1, 4, tiny_config.code_dim + 4)
    assert univariate.reconstruction.shape == (4, 64, 1)
    torch.testing.assert_close(univariate.token_features[:, 0], out.token_features[:, 0])


def test_channels_are_independent_series(tiny_config, series_batch):
    model = VQShapeModel(tiny_config).eval()
    multichannel = torch.stack([series_batch, -series_batch], dim=-1)
    together = model(multichannel).token_features
    alone = model(-series_batch).token_features
    torch.testing.assert_close(together[:, 1], alone[:, 0])


def test_tokens_path_skips_decoders(tiny_config, series_batch):
    model = VQShapeModel(tiny_config).eval()
    calls = []
    model.patch_decoder.register_forward_hook(lambda *args: calls.append("patch_decoder"))
    model.shape_decoder.register_forward_hook(lambda *args: calls.append("shape_decoder"))
    out = model(series_batch)
    assert calls == [] and out.reconstruction is None and out.shapes is None
    model(series_batch, output_reconstruction=True, output_shapes=True)
    assert sorted(calls) == ["patch_decoder", "shape_decoder"]


def test_code_indices_look_up_the_quantized_codes(tiny_config, series_batch):
    model = VQShapeModel(tiny_config).eval()
    out = model(series_batch)
    looked_up = model.codebook.weight[out.code_indices]
    torch.testing.assert_close(out.codes, looked_up, atol=1e-6, rtol=0)
    # and they are the nearest entries of the pre-quantisation vectors
    tokens = model.tokenize(model.patch_encoder.embed((series_batch - series_batch.mean(-1, keepdim=True))
                                                      / (series_batch.var(-1, keepdim=True) + 1e-5).sqrt()))
    nearest = torch.cdist(tokens.z_e.reshape(-1, tiny_config.code_dim), model.codebook.weight).argmin(-1)
    assert torch.equal(nearest, out.code_indices.reshape(-1))


def test_fresh_codebook_is_uniform_in_inverse_codebook_size(tiny_config):
    for config in (tiny_config, VQShapeConfig(num_codes=64, d_model=32, num_encoder_heads=4,
                                              num_tokenizer_heads=4, num_decoder_heads=4)):
        codebook = VQShapeModel(config).codebook.weight
        bound = 1.0 / config.num_codes
        assert codebook.abs().max() <= bound
        assert codebook.std() > bound / 4  # spread over the interval, not constant


def test_eval_is_deterministic_and_train_masks_patches(tiny_config, series_batch):
    model = VQShapeForPreTraining(tiny_config).eval()
    first, second = model(series_batch), model(series_batch)
    torch.testing.assert_close(first.loss, second.loss, rtol=0, atol=0)
    kept = []
    model.vqshape.patch_encoder.register_forward_pre_hook(lambda module, args: kept.append(args[0].shape[1]))
    model(series_batch)
    model.train()
    model(series_batch)
    num_masked = int(tiny_config.mask_ratio * tiny_config.num_patches)
    assert kept == [tiny_config.num_patches, tiny_config.num_patches - num_masked]


def test_pretraining_loss_is_the_weighted_sum_and_backpropagates(tiny_config, series_batch):
    model = VQShapeForPreTraining(tiny_config).train()
    out = model(series_batch)
    expected = (
        tiny_config.reconstruction_weight * out.reconstruction_loss
        + tiny_config.codebook_weight * out.codebook_loss
        + tiny_config.shape_weight * out.shape_loss
        + tiny_config.disentanglement_weight * out.disentanglement_loss
    )
    torch.testing.assert_close(out.loss, expected)
    assert torch.isfinite(out.loss)
    assert 1.0 <= out.perplexity <= tiny_config.num_codes and 0 < out.code_usage <= 1
    out.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    for name in ("vqshape.patch_encoder.input_projection.weight", "vqshape.codebook.weight",
                 "vqshape.shape_decoder.input_projection.weight", "vqshape.patch_decoder.cls_token"):
        assert grads[name] is not None and torch.isfinite(grads[name]).all() and grads[name].abs().sum() > 0


def test_extract_subsequence_reads_the_pointed_stretch():
    series = torch.arange(101, dtype=torch.float32)[None]  # value = position
    start, length = torch.tensor([[[0.2]]]), torch.tensor([[[0.5]]])
    stretch = extract_subsequence(series, start, length, 11)
    torch.testing.assert_close(stretch[0, 0], torch.linspace(20, 70, 11))


def test_disentanglement_loss_is_zero_for_distant_tokens_and_positive_for_close_ones():
    far = disentanglement_loss(torch.tensor([[[0.0], [0.9]]]), torch.tensor([[[0.02], [0.9]]]), 1 / 64, 0.2)
    close = disentanglement_loss(torch.tensor([[[0.5], [0.5]]]), torch.tensor([[[0.3], [0.3]]]), 1 / 64, 0.2)
    assert far == 0 and close > 0


def test_save_load_round_trip_is_identical_with_every_auto_class(tmp_path, tiny_config, series_batch):
    model = VQShapeForPreTraining(tiny_config).eval()
    model.save_pretrained(tmp_path)
    saved = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "modeling_vqshape.py",
            "configuration_vqshape.py", "processing_vqshape.py"} <= saved
    reloaded, info = VQShapeForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    reloaded.eval()
    before, after = model(series_batch), reloaded(series_batch)
    torch.testing.assert_close(before.loss, after.loss, rtol=0, atol=0)
    torch.testing.assert_close(reloaded.vqshape.codebook.weight, model.vqshape.codebook.weight, rtol=0, atol=0)
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(base, VQShapeModel)
    torch.testing.assert_close(base(series_batch).token_features, model.vqshape(series_batch).token_features,
                               rtol=0, atol=0)
    assert isinstance(AutoModelForPreTraining.from_pretrained(tmp_path), VQShapeForPreTraining)


def test_classification_head_shapes_loss_and_round_trip(tmp_path, tiny_config, series_batch):
    labels = torch.tensor([0, 1, 2, 1])
    for features, per_channel in (("tokens", 4 * (tiny_config.code_dim + 4)), ("histogram", 8)):
        config = VQShapeConfig(**{**tiny_config.to_diff_dict(), "classifier_features": features,
                                  "num_input_channels": 2,
                                  "id2label": {0: "walking", 1: "running", 2: "standing"}})
        model = VQShapeForTimeSeriesClassification(config).eval()
        inputs = torch.stack([series_batch, -series_batch], dim=-1)
        out = model(inputs, labels=labels)
        assert out.logits.shape == (4, 3) and out.features.shape == (4, 2 * per_channel)
        # the values, not only the shapes: a linear layer on the features, and the cross-entropy of those logits
        tokens = model.vqshape(inputs)
        frequencies = tokens.histogram.float() / tiny_config.num_tokens  # code frequencies, not counts
        expected_features = (tokens.token_features if features == "tokens" else frequencies).flatten(1)
        torch.testing.assert_close(out.features, expected_features)
        torch.testing.assert_close(out.logits, model.classifier(expected_features))
        torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
        model.save_pretrained(tmp_path / features)
        reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / features).eval()
        assert reloaded.config.id2label == {0: "walking", 1: "running", 2: "standing"}
        torch.testing.assert_close(reloaded(inputs).logits, out.logits, rtol=0, atol=0)
        with pytest.raises(ValueError, match="num_input_channels=2"):
            model(series_batch)


def test_frozen_backbone_trains_only_the_head(tiny_config, series_batch):
    config = VQShapeConfig(**{**tiny_config.to_diff_dict(), "freeze_backbone": True, "num_labels": 2})
    model = VQShapeForTimeSeriesClassification(config).train()
    assert not model.vqshape.training  # frozen features stay deterministic
    out = model(series_batch, labels=torch.tensor([0, 1, 0, 1]))
    out.loss.backward()
    assert all(p.grad is None for p in model.vqshape.parameters())
    assert model.classifier.weight.grad is not None


def test_classification_works_with_trainer(tmp_path, tiny_config, series_batch):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    config = VQShapeConfig(**{**tiny_config.to_diff_dict(), "num_labels": 2})
    model = VQShapeForTimeSeriesClassification(config)
    data = Dataset.from_dict({"past_values": series_batch.repeat(4, 1).tolist(), "labels": [0, 1, 0, 1] * 4})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3,
                             report_to=[], save_strategy="no", use_cpu=True, logging_steps=1)
    before = model.classifier.weight.detach().clone()
    result = Trainer(model=model, args=args, train_dataset=data).train()
    assert result.global_step == 3 and torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(before, model.classifier.weight.detach())


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.full((2, 64), float("nan")), "NaN or inf"),
        (torch.tensor([[float("inf")] * 64]), "NaN or inf"),
        (torch.zeros(2, 4), "shorter than one patch"),
        (torch.zeros(2, 64, 1, 1), "dimensions"),
        (torch.zeros(0, 64), "empty batch"),
        (torch.zeros(2, 128), "use VQShapeFeatureExtractor to resample"),
        (torch.zeros(2, 3, 64), "use VQShapeFeatureExtractor to resample"),
    ],
)
def test_bad_inputs_raise_clear_errors(tiny_config, bad, message):
    model = VQShapeModel(tiny_config).eval()
    with pytest.raises(ValueError, match=message):
        model(bad)


def test_integer_input_is_cast(tiny_config):
    model = VQShapeModel(tiny_config).eval()
    integers = torch.arange(2 * 64).reshape(2, 64) % 7
    torch.testing.assert_close(model(integers).token_features, model(integers.float()).token_features)
