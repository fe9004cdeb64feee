import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoFeatureExtractor

from modeling_vqshape import VQShapeConfig, VQShapeFeatureExtractor, VQShapeModel


def test_layouts():
    extractor = VQShapeFeatureExtractor(input_length=32)
    assert extractor(np.arange(10.0))["past_values"].shape == (1, 32)
    assert extractor(np.ones((3, 50)))["past_values"].shape == (3, 32)
    batch = extractor(torch.randn(2, 3, 40))["past_values"]
    assert batch.shape == (2, 32, 3) and batch.dtype == torch.float32
    ragged = extractor([np.arange(10.0), np.arange(100.0), [1, 2, 3]])["past_values"]
    assert ragged.shape == (3, 32)
    multichannel = extractor([np.zeros((2, 10)), np.ones((2, 70))])["past_values"]
    assert multichannel.shape == (2, 32, 2)
    assert extractor(np.ones((2, 50)), return_tensors="np")["past_values"].shape == (2, 32)


def test_resampling_is_linear_like_the_original_loader():
    series = np.sin(np.linspace(0, 7, 77)).astype(np.float32)
    ours = VQShapeFeatureExtractor(input_length=128)(series)["past_values"][0]
    expected = F.interpolate(torch.from_numpy(series).view(1, 1, -1), 128, mode="linear")[0, 0]
    torch.testing.assert_close(ours, expected)
    ramp = VQShapeFeatureExtractor(input_length=5)(np.arange(5.0))["past_values"][0]
    torch.testing.assert_close(ramp, torch.arange(5.0))  # same length: unchanged


def test_gaps_are_interpolated_and_edges_extended():
    series = np.array([np.nan, 1.0, np.nan, np.nan, 4.0, np.nan])
    out = VQShapeFeatureExtractor(input_length=6)(series)["past_values"][0]
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0, 2.0, 3.0, 4.0, 4.0]))


@pytest.mark.parametrize(
    "bad, message",
    [
        ([], "empty"),
        (np.full(10, np.nan), "no valid value"),
        (np.array([1.0, np.inf, 2.0]), "inf"),
        (np.array([1.0]), "at least 2"),
        (np.zeros((1, 2, 3, 4)), "got shape"),
        ([np.zeros((2, 5)), np.zeros((3, 5))], "channels"),
        ([np.zeros(5), np.zeros((2, 5))], "ranks"),
        ("a string", "numpy array"),
        ([np.array(["a", "b"])], "not numeric"),
    ],
)
def test_bad_inputs(bad, message):
    with pytest.raises(ValueError, match=message):
        VQShapeFeatureExtractor(input_length=16)(bad)


def test_feeds_the_model_and_round_trips(tmp_path, tiny_config):
    extractor = VQShapeFeatureExtractor(input_length=tiny_config.input_length)
    model = VQShapeModel(tiny_config).eval()
    inputs = extractor([np.sin(np.linspace(0, 5, n)) for n in (30, 64, 200)])
    assert model(**inputs).histogram.shape == (3, 1, tiny_config.num_codes)
    model.save_pretrained(tmp_path)
    loaded = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert isinstance(loaded, VQShapeFeatureExtractor) and loaded.input_length == tiny_config.input_length
    with pytest.raises(ValueError, match="input_length"):
        VQShapeFeatureExtractor(input_length=1)
    assert VQShapeConfig().input_length == VQShapeFeatureExtractor().input_length


def test_resample_series_keeps_channels_first_and_matches_the_feature_extractor():
    from modeling_vqshape.processing_vqshape import resample_series

    rng = np.random.default_rng(0)
    windows = rng.normal(size=(3, 2, 50))  # (batch, channels, time)
    resampled = resample_series(windows, 64)
    assert resampled.shape == (3, 2, 64) and resampled.dtype == np.float32
    expected = VQShapeFeatureExtractor(input_length=64)(windows, return_tensors="np")["past_values"]  # (3, 64, 2)
    np.testing.assert_array_equal(resampled, expected.transpose(0, 2, 1))
    np.testing.assert_array_equal(resample_series(list(windows), 64), resampled)  # a list of (channels, time) too
    # linear with align_corners False: upsampling keeps the first sample
    np.testing.assert_allclose(resampled[:, :, 0], windows[:, :, 0], rtol=1e-6)
