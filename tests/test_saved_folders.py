"""Folders saved by an earlier version (tests/fixtures/saved_folders, written by make_saved_folders.py there) load
with today's code and give the outputs recorded when they were saved."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from modeling_vqshape import VQShapeForTextAlignment, VQShapeForTimeSeriesClassification

SAVED = Path(__file__).resolve().parent / "fixtures" / "saved_folders"


def test_saved_classifier_loads_with_identical_logits_and_label_names():
    recorded = load_file(str(SAVED / "classifier_outputs.safetensors"))
    model = VQShapeForTimeSeriesClassification.from_pretrained(SAVED / "classifier").eval()
    assert model.config.id2label == {0: "rest", 1: "walk", 2: "run"}
    with torch.no_grad():
        logits = model(recorded["past_values"]).logits
    torch.testing.assert_close(logits, recorded["logits"], atol=1e-5, rtol=1e-5)


def test_saved_text_aligned_model_loads_and_classifies_as_before_without_a_text_encoder():
    recorded = load_file(str(SAVED / "text_aligned_outputs.safetensors"))
    model = VQShapeForTextAlignment.from_pretrained(SAVED / "text_aligned").eval()
    with torch.no_grad():
        zero_shot = model.zero_shot_classify(recorded["past_values"])
        encoded = model.encode(recorded["past_values"])
    assert zero_shot.class_names == ["standing", "walking", "running", "badminton"]
    torch.testing.assert_close(zero_shot.logits, recorded["zero_shot_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encoded["series_embeddings"], recorded["series_embeddings"], atol=1e-5, rtol=1e-5)
