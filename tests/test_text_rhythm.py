"""Channel-level words of the text-aligned VQShape: rhythm (from each channel's autocorrelation, with cycles and Hz)
and which named channel moves most."""

import math

import pytest
import torch

from modeling_vqshape import VQShapeConfig, VQShapeFeatureExtractor, VQShapeForPreTraining, VQShapeForTextAlignment
from modeling_vqshape.configuration_vqshape_text import PHRASE_BANK, VQShapeTextConfig
from modeling_vqshape.text_captions import RHYTHM_VALUES, autocorrelation, rhythm_features, rhythm_labels, rhythm_words

from .conftest import TINY
from .test_text_alignment import SMALL_BANK, encoder  # noqa: F401  encoder is a fixture

CHANNELS = ["accelerometer", "gyroscope"]
LENGTH = TINY["input_length"]


def rhythm_examples(length=256):
    """A clean sine (8 cycles), white noise, a linear trend and a sine buried in noise, `(4, length)`."""
    t = torch.arange(length, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    sine = torch.sin(2 * math.pi * t / (length / 8))
    noise = torch.randn(length, generator=generator)
    noisy_sine = sine + 0.9 * torch.randn(length, generator=generator)
    return torch.stack([sine, noise, t / length, noisy_sine])


def test_rhythm_rules():
    values = rhythm_examples()
    correlation = autocorrelation(values[:1])
    centred = values[0].double() - values[0].double().mean()
    lag = 10  # the unbiased estimate at one lag, by hand
    expected = (centred[:-lag] * centred[lag:]).mean() / (centred * centred).mean()
    assert float(correlation[0, lag]) == pytest.approx(float(expected), abs=1e-5)
    regularity, cycles = rhythm_features(values)
    assert [RHYTHM_VALUES[int(v)] for v in rhythm_labels(regularity)] == ["regular", "none", "none", "irregular"]
    assert float(cycles[0]) == pytest.approx(8.0) and float(regularity[0]) > 0.95
    assert float(regularity[1]) < 0.25 and float(cycles[2]) >= 0  # noise: weak peaks; a trend: no rhythm
    assert rhythm_words(regularity[0], cycles[0], 4.0) == "a regular rhythm (8.0 cycles per window, 2 Hz)"
    assert rhythm_words(regularity[0], cycles[0]) == "a regular rhythm (8.0 cycles per window)"
    assert rhythm_words(regularity[1], cycles[1], 4.0) == "no rhythm"
    constant = rhythm_features(torch.ones(1, 64))
    assert float(constant[0]) == 0 and float(constant[1]) == 0


@pytest.fixture(scope="module")
def named(encoder):  # noqa: F811
    torch.manual_seed(0)
    vqshape = VQShapeForPreTraining(VQShapeConfig(**TINY))
    return VQShapeForTextAlignment.from_vqshape(vqshape, text_encoder=encoder, phrase_bank=SMALL_BANK,
                                                num_heldout_paraphrases=1, projection_hidden_dim=32,
                                                channel_names=CHANNELS).eval()


def two_channel_series(count=48, seed=2):
    """`(count, LENGTH, 2)`: rhythmic or noisy channels over two orders of magnitude of amplitude, the second channel
    in units 100 times the first's."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(LENGTH, dtype=torch.float32)
    rows = []
    for index in range(count):
        cycles = 3 + index % 5
        channels = [torch.sin(2 * math.pi * cycles * t / LENGTH) if (index + c) % 2 else
                    torch.randn(LENGTH, generator=generator) for c in range(2)]
        amplitude = torch.logspace(-1, 1, count)[torch.randperm(count, generator=generator)[:2]]
        rows.append(torch.stack(channels, dim=-1) * amplitude * torch.tensor([1.0, 100.0]))
    return torch.stack(rows)


def test_the_bank_names_each_channel_and_the_series_says_which_moves_most(named):
    templates = PHRASE_BANK["channel"]["moves most"][:3]
    channel_phrases = [phrase for phrase in named.phrases if phrase.attribute == 7]
    assert [phrase.text for phrase in channel_phrases] == [t.format(n) for n in CHANNELS for t in templates]
    assert [phrase.value for phrase in channel_phrases] == [0, 0, 0, 1, 1, 1]
    assert [phrase.heldout for phrase in channel_phrases] == [False, False, True] * 2
    series = two_channel_series()
    named.calibrate_intensity(series)
    loud_gyroscope = series[:1].clone()
    loud_gyroscope[..., 0] *= 0.01 / loud_gyroscope[..., 0].std()  # a still accelerometer
    loud_gyroscope[..., 1] *= 1000.0 / loud_gyroscope[..., 1].std()  # a vigorous gyroscope
    encoded = named.encode(torch.cat([loud_gyroscope, loud_gyroscope[..., [1, 0]] / torch.tensor([100.0, 0.01])]))
    assert encoded.channel.tolist() == [1, 0]  # relative to each channel's own calibration
    assert encoded.intensity.tolist() == [[0, 2], [2, 0]]
    assert encoded.rhythm.shape == (2, 2) and encoded.regularity.shape == (2, 2)
    explanation = named.explain(loud_gyroscope, ["resting", "walking"], sampling_rate=LENGTH / 4.0)[0]
    assert explanation["moves_most"] in [template.format(name) for template in templates[:1] for name in CHANNELS]
    named.intensity_thresholds = None
    assert named.encode(series[:2]).channel is None  # no calibration: unknown


def test_explanations_give_the_rhythm_in_cycles_and_hertz(named):
    t = torch.arange(LENGTH, dtype=torch.float32)
    sine = torch.sin(2 * math.pi * 8 * t / LENGTH)
    series = torch.stack([sine, sine], dim=-1)[None]
    encoded = named.encode(series)
    assert encoded.cycles[0].tolist() == [8.0, 8.0]
    tokens = named.explain(series, ["resting", "walking"], window_seconds=4.0)[0]["tokens"]
    rhythm_phrases = {text for texts in PHRASE_BANK["rhythm"].values() for text in texts}
    for token in tokens:
        rhythm = token["phrase"].split("; ")[-1]
        assert rhythm.split(" (")[0] in rhythm_phrases
        if "(" in rhythm:
            assert rhythm.endswith("(8.0 cycles per window, 2 Hz)")
    inputs = VQShapeFeatureExtractor(LENGTH, sampling_rate=50)(torch.randn(1, 2, 200))
    assert inputs["window_seconds"].tolist() == [4.0]


@pytest.mark.slow  # 60 training steps
def test_rhythm_and_channel_words_train_and_survive_save_and_load(named, tmp_path):
    model = VQShapeForTextAlignment(VQShapeTextConfig(**{**named.config.to_dict(), **named.state_dict_for_config()}))
    model.load_state_dict(named.state_dict())
    series = two_channel_series(seed=3)
    model.calibrate_intensity(series)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    first = model(series)
    assert first.rhythm_text_loss is not None and first.channel_text_loss is not None
    weighted = (first.code_text_loss + first.token_text_loss + first.intensity_text_loss + first.rhythm_text_loss
                + first.channel_text_loss)
    torch.testing.assert_close(first.loss, weighted)
    losses = []
    for _ in range(60):
        out = model(series)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append((out.rhythm_text_loss.item(), out.channel_text_loss.item()))
    assert losses[-1][0] < losses[0][0] and losses[-1][1] < losses[0][1]
    model.eval()
    # the trained heads name the rule values through held-out paraphrases
    encoded = model.encode(series)
    for attribute, embeddings, values in (("rhythm", encoded.rhythm_embeddings.reshape(-1, 384),
                                           encoded.rhythm.reshape(-1)),
                                          ("channel", encoded.channel_embeddings, encoded.channel)):
        heldout = model.text_bank.phrase_indices(attribute, heldout=True)
        predicted = torch.tensor([model.phrases[i].value for i in heldout])[
            (embeddings @ model.text_bank.phrase_embeddings[heldout].t()).argmax(dim=-1)]
        majority = torch.bincount(values).max() / len(values)
        assert (predicted == values).float().mean() > majority
    model.save_pretrained(tmp_path / "named")
    reloaded = VQShapeForTextAlignment.from_pretrained(tmp_path / "named").eval()
    assert reloaded.config.channel_names == CHANNELS and reloaded.intensity_thresholds == model.intensity_thresholds
    again = reloaded.encode(series)
    torch.testing.assert_close(again.series_embeddings, encoded.series_embeddings)
    assert again.channel.tolist() == encoded.channel.tolist()


def test_bad_channel_names_and_rates_are_refused(named):
    for names, message in ((["x"], "at least two distinct"), (["x", "x"], "at least two distinct"),
                           ("xyz", "list of names")):
        with pytest.raises(ValueError, match=message):
            VQShapeTextConfig(vqshape_config=TINY, channel_names=names)
    with pytest.raises(ValueError, match="names 2"):
        named.calibrate_intensity(torch.randn(20, LENGTH, 3) * torch.logspace(-1, 1, 20)[:, None, None])
    for rate in (0, -5.0, float("nan"), True):
        with pytest.raises(ValueError, match="sampling_rate must be a positive"):
            VQShapeFeatureExtractor(LENGTH, sampling_rate=rate)
        with pytest.raises(ValueError, match="sampling_rate must be a positive"):
            named.explain(torch.randn(1, LENGTH, 2), ["a", "b"], sampling_rate=rate)
    with pytest.raises(ValueError, match="window_seconds must be one positive duration"):
        named.explain(torch.randn(1, LENGTH, 2), ["a", "b"], window_seconds=-1.0)
    with pytest.raises(ValueError, match="window_seconds must be one positive duration or one per series"):
        named.explain(torch.randn(3, LENGTH, 2), ["a", "b"], window_seconds=[1.0, 2.0])
    with pytest.raises(ValueError, match="not both"):
        named.explain(torch.randn(1, LENGTH, 2), ["a", "b"], sampling_rate=10, window_seconds=4.0)
    # comparing channels needs each channel's own calibration
    with pytest.raises(ValueError, match="per_channel=True"):
        named.calibrate_intensity(two_channel_series(), per_channel=False)
    for bad in ([[1.0, 0.5]], [[0.0, float("inf")]], "low-high", [[0.0, 1.0, 2.0]]):
        with pytest.raises(ValueError, match="increasing"):
            named.intensity_thresholds = bad


def test_a_shared_calibration_says_nothing_about_which_channel_moves_most(named):
    series = two_channel_series()
    shared = torch.tensor([[-2.0, 2.0]]).expand(len(series), 2)  # one pair per row, for every channel
    assert named.encode(series, shared).channel is None
    per_channel = shared[:, None].expand(len(series), 2, 2)
    assert named.encode(series, per_channel).channel is not None
    # the hubness reference set takes its own calibration
    output = named.zero_shot_classify(series[:4], ["a", "b"], intensity_thresholds=per_channel[:4],
                                      hubness="inverted_softmax", reference_values=series,
                                      reference_thresholds=per_channel)
    assert output.logits.shape == (4, 2)


def test_per_channel_calibrations_give_every_row_its_channels_terciles():
    from modeling_vqshape.text_calibration import intensity_thresholds, per_channel_calibrations

    series = two_channel_series(seed=4)
    series[..., 1] = 3.0  # a constant channel: no usable spread
    calibrations = per_channel_calibrations(series)
    assert calibrations.shape == (len(series), 2, 2)
    scale = (series[..., 0].double().var(dim=-1) + 1e-5).sqrt()  # as instance normalisation computes it
    torch.testing.assert_close(calibrations[5, 0], intensity_thresholds(scale), atol=1e-4, rtol=0)
    assert torch.isnan(calibrations[:, 1]).all() and torch.equal(calibrations[0, 0], calibrations[-1, 0])


def test_heads_without_a_known_value_still_reach_the_loss(named):
    """A batch with no calibrated channel leaves the intensity and channel heads in the loss with zero gradient, so
    that DDP (which follows the outputs' graph) gets a gradient for every head it saw used."""
    model = VQShapeForTextAlignment(VQShapeTextConfig(**{**named.config.to_dict(), **named.state_dict_for_config()}))
    model.load_state_dict(named.state_dict())
    model.train()
    unknown = torch.full((4, 2, 2), float("nan"))
    out = model(two_channel_series()[:4], intensity_thresholds=unknown)
    assert out.intensity_text_loss is None and out.channel_text_loss is None
    out.loss.backward()
    for head in (model.intensity_projection, model.channel_projection):
        assert head[0].weight.grad is not None and not head[0].weight.grad.any()
