"""Text-aligned VQShape, second step: classes from descriptions, hubness correction, and search by text."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modeling_vqshape import VQShapeConfig, VQShapeForPreTraining, VQShapeForTextAlignment
from modeling_vqshape.text_interpretation import hubness_corrected_logits

from .conftest import TINY
from .test_text_alignment import SMALL_BANK, encoder  # noqa: F401  encoder is a fixture

DESCRIPTIONS = {
    "resting": ["a flat, quiet signal with little motion", "the wrist barely moves"],
    "walking": ["a regular rhythm of moderate swings", "steady repeating steps"],
    "sprinting": ["large, fast and vigorous oscillations"],
}


@pytest.fixture(scope="module")
def model(encoder):  # noqa: F811
    torch.manual_seed(0)
    vqshape = VQShapeForPreTraining(VQShapeConfig(**TINY))
    model = VQShapeForTextAlignment.from_vqshape(vqshape, text_encoder=encoder, phrase_bank=SMALL_BANK,
                                                 num_heldout_paraphrases=1, projection_hidden_dim=32)
    return model.eval()


@pytest.fixture(scope="module")
def windows():
    """Twelve two-channel windows, (batch, time, channels): quiet, rhythmic and vigorous ones."""
    t = torch.linspace(0, 4, 64)
    generator = torch.Generator().manual_seed(1)
    rows = []
    for amplitude, frequency in [(0.05, 0.5), (1.0, 2.0), (4.0, 6.0)] * 4:
        signal = amplitude * torch.sin(2 * torch.pi * frequency * t) + 0.02 * torch.randn(64, generator=generator)
        rows.append(torch.stack([signal, signal.roll(5)], dim=-1))
    return torch.stack(rows)


def test_descriptions_are_averaged_per_class(model, encoder, windows):  # noqa: F811
    output = model.zero_shot_classify(windows, DESCRIPTIONS)
    assert output.class_names == list(DESCRIPTIONS)
    raw = torch.tensor(encoder.encode([text for texts in DESCRIPTIONS.values() for text in texts]))
    embedded = F.normalize(model.text_bank.centre(raw), dim=-1)
    prompts = F.normalize(torch.stack([embedded[0:2].mean(0), embedded[2:4].mean(0), embedded[4]]), dim=-1)
    series = model.encode(windows).series_embeddings
    torch.testing.assert_close(output.logits, model.logit_scale_value() * series @ prompts.t(), atol=1e-5, rtol=1e-5)


def test_stored_descriptions_survive_save_and_serve_without_a_text_encoder(model, windows, tmp_path):
    model.set_class_names(DESCRIPTIONS)
    expected = model.zero_shot_classify(windows)
    model.save_pretrained(tmp_path / "described")
    reloaded = VQShapeForTextAlignment.from_pretrained(tmp_path / "described").eval()
    assert reloaded.config.class_descriptions == list(DESCRIPTIONS.values())
    reloaded.text_bank.__dict__["_text_encoder"] = None
    reloaded.text_bank.text_model_name_or_path = str(tmp_path / "no-such-text-model")  # loading one would fail
    again = reloaded.zero_shot_classify(windows)  # the stored names and descriptions, no text encoder
    assert again.class_names == list(DESCRIPTIONS)
    torch.testing.assert_close(again.logits, expected.logits, atol=1e-5, rtol=1e-5)
    explanation = reloaded.explain(windows[:1], DESCRIPTIONS, top_k=2)
    assert explanation[0]["predicted_class"] in DESCRIPTIONS


def test_bad_descriptions_get_clear_errors(model, windows):
    with pytest.raises(ValueError, match="'walking' needs a non-empty list of non-empty descriptions"):
        model.zero_shot_classify(windows, {"resting": ["still"], "walking": []})
    with pytest.raises(ValueError, match="'1' is given twice"):
        model.zero_shot_classify(windows, {1: ["one"], "1": ["one again"]})
    with pytest.raises(ValueError, match=r"class_names has duplicates \['walking'\]"):
        model.zero_shot_classify(windows, ["walking", "walking"])


def test_hubness_corrections_follow_their_formulas(model, windows):
    names = list(DESCRIPTIONS)
    plain = model.zero_shot_classify(windows, DESCRIPTIONS)
    scale = model.logit_scale_value()
    similarity = plain.logits / scale
    reference = windows.flip(0)[:7]
    reference_similarity = model.encode(reference).series_embeddings @ model.embed_class_prompts(DESCRIPTIONS).t()
    inverted = model.zero_shot_classify(windows, DESCRIPTIONS, hubness="inverted_softmax", reference_values=reference)
    expected = scale * similarity - torch.logsumexp(scale * reference_similarity, dim=0)
    torch.testing.assert_close(inverted.logits, expected, atol=1e-4, rtol=1e-4)
    csls = model.zero_shot_classify(windows, DESCRIPTIONS, hubness="csls")  # the batch is its own reference
    nearest = similarity.topk(10, dim=0).values.mean(dim=0)
    torch.testing.assert_close(csls.logits, scale * (2 * similarity - nearest), atol=1e-4, rtol=1e-4)
    assert csls.class_names == names
    # a class that is near everything loses its lead under the inverted softmax
    hub = torch.tensor([[0.9, 0.5], [0.8, 0.6], [0.85, 0.7]])
    corrected = hubness_corrected_logits(hub, hub, "inverted_softmax", torch.tensor(10.0))
    assert (hub.argmax(dim=1) == 0).all() and corrected.argmax(dim=1).tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="hubness must be None or one of"):
        model.zero_shot_classify(windows, DESCRIPTIONS, hubness="mutual")


def test_search_ranks_series_by_a_text_query(model, windows):
    from modeling_vqshape import VQShapeFeatureExtractor

    results = model.search(["vigorous irregular bursts", "a slow regular rhythm"], windows, top_k=4)
    series = model.encode(windows).series_embeddings
    for result in results:
        query = model.embed_text([result["query"]])[0]
        expected = (series @ query).topk(4)
        assert result["indices"] == expected.indices.tolist()
        np.testing.assert_allclose(result["scores"], expected.values.numpy(), atol=1e-5)
        assert len(result["phrases"]) == 4 and all(len(row) == 2 for row in result["phrases"])
        assert all(isinstance(phrase, str) and phrase for row in result["phrases"] for phrase in row)
    # windows as a datasets.Dataset of (channels, time) rows, as build_geneactiv_dataset gives them
    datasets = pytest.importorskip("datasets")
    table = datasets.Dataset.from_dict({"past_values": windows.transpose(1, 2).numpy().tolist()})
    from_table = model.search("vigorous irregular bursts", table, top_k=4)[0]
    assert from_table["indices"] == results[0]["indices"]
    raw = model.search("vigorous irregular bursts", list(windows.transpose(1, 2).numpy()), top_k=4)[0]
    assert raw["indices"] == results[0]["indices"]
    assert VQShapeFeatureExtractor  # the raw path resamples with it
    # a per-row intensity calibration follows its rows through the batches and the re-encoded results
    thresholds = torch.tensor([[[-1.0, 0.5], [0.0, 1.5]]]).repeat(12, 1, 1)  # (12 series, 2 channels, 2)
    calibrated = model.search("vigorous, intense motion", windows, top_k=3, intensity_thresholds=thresholds,
                              batch_size=5)[0]
    query = model.embed_text(["vigorous, intense motion"])[0]
    expected = (model.encode(windows, thresholds).series_embeddings @ query).topk(3)
    assert calibrated["indices"] == expected.indices.tolist()
    np.testing.assert_allclose(calibrated["scores"], expected.values.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="texts must be non-empty queries"):
        model.search([""], windows)
    with pytest.raises(ValueError, match="no 'past_values' column"):
        model.search("a query", datasets.Dataset.from_dict({"x": [1, 2]}))
