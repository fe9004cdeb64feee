"""The fine-tuning recipe (modeling_vqshape.tasks.finetuning, examples/finetune.py): the head's features and their
scaler, the linear-probe first stage, epoch selection by validation rows only, Trainer, and the scaler as saved
state."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from modeling_vqshape import VQShapeConfig, VQShapeForPreTraining, VQShapeForTimeSeriesClassification
from modeling_vqshape.tasks.finetuning import (
    FEATURE_CANDIDATES,
    BestEpoch,
    classification_dataloaders,
    cross_validation_folds,
    fit_feature_scaler,
    frozen_feature_parts,
    select_linear_head,
    validation_split,
)

from .conftest import REPO_ROOT, TINY, run_script
from .test_hub import hub, online  # noqa: F401  (fixtures: the local Hub stand-in)
from .test_loading import PACKAGE_OR_REMOTE

pytest.importorskip("sklearn")


def toy_problem(num_series: int = 64, seed: int = 0):
    """Two classes of 2-channel series: quiet noise around 0 against loud noise around 3 (level and amplitude)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_series) % 2
    noise = torch.randn(num_series, TINY["input_length"], 2, generator=generator)
    past_values = noise * (1 + 4 * labels[:, None, None]) + 3 * labels[:, None, None]
    return past_values, labels


def classifier(**overrides):
    torch.manual_seed(0)
    config = VQShapeConfig(**{**TINY, "num_input_channels": 2, "num_labels": 2, **overrides})
    return VQShapeForTimeSeriesClassification(config)


def zoomed_window_embedding(backbone, past_values, scales, pooling="mean"):
    """The `windows` part written out (`windows_max` with `pooling="max"`): for each scale k, every window of
    input_length / k steps starting at a multiple of half that, stretched to input_length, tokenized alone; hidden
    states averaged over tokens, then averaged (or their largest value taken) over windows."""
    length = past_values.shape[1]
    per_scale = []
    for scale in scales:
        size = length // scale
        starts = range(0, length - size + 1, size // 2)
        assert len(starts) == 2 * scale - 1
        embeddings = []
        for start in starts:
            window = past_values[:, start:start + size].transpose(1, 2)  # batch channels size
            stretched = torch.nn.functional.interpolate(window, size=length, mode="linear", align_corners=True)
            embeddings.append(backbone(stretched.transpose(1, 2)).last_hidden_state.mean(2))
        embeddings = torch.stack(embeddings)
        per_scale.append(embeddings.mean(0) if pooling == "mean" else embeddings.max(0).values)
    return torch.cat(per_scale, -1)


@pytest.mark.parametrize("features", ["tokens", "histogram", "embedding", "statistics", "reconstruction", "windows",
                                      "combined", "statistics+tokens", "combined+reconstruction",
                                      "embedding+windows+statistics", "embedding_max", "windows_max",
                                      "embedding+embedding_max+windows+windows_max+statistics"])
def test_features_are_the_named_parts_per_channel(features):
    model = classifier(classifier_features=features, classifier_reconstruction_steps=8,
                       classifier_window_scales=[2, 4]).eval()
    past_values, _ = toy_problem(4)
    with torch.no_grad():
        output = model(past_values)
        base = model.vqshape(past_values, output_reconstruction=True)
        windows = zoomed_window_embedding(model.vqshape, past_values, [2, 4])
        window_maxima = zoomed_window_embedding(model.vqshape, past_values, [2, 4], pooling="max")
    sizes = {"tokens": TINY["num_tokens"] * (TINY["code_dim"] + 4), "histogram": TINY["num_codes"],
             "embedding": TINY["d_model"], "statistics": 2, "reconstruction": 8, "windows": 2 * TINY["d_model"],
             "embedding_max": TINY["d_model"], "windows_max": 2 * TINY["d_model"]}
    parts = model.config.classifier_feature_parts
    assert output.features.shape == (4, 2 * sum(sizes[part] for part in parts))
    per_channel = output.features.reshape(4, 2, -1)
    stretch = TINY["input_length"] // 8
    # the series rebuilt from the tokens, each of 8 equal stretches averaged: "batch time channels -> batch channels 8"
    rebuilt = torch.stack([base.reconstruction[:, i * stretch:(i + 1) * stretch].mean(1) for i in range(8)], -1)
    expected = {"tokens": base.token_features.flatten(2), "histogram": base.histogram / TINY["num_tokens"],
                "embedding": base.last_hidden_state.mean(2),
                "statistics": torch.stack([base.loc, base.scale.log()], -1), "reconstruction": rebuilt,
                "windows": windows, "embedding_max": base.last_hidden_state.max(2).values, "windows_max": window_maxima}
    torch.testing.assert_close(per_channel, torch.cat([expected[part].float() for part in parts], -1))


def test_combined_keeps_the_four_parts_it_has_always_named():
    """Heads saved as "combined" before the reconstruction part existed keep their size."""
    config = VQShapeConfig(**TINY, classifier_features="combined")
    assert config.classifier_feature_parts == ("tokens", "histogram", "embedding", "statistics")
    assert VQShapeConfig(**TINY, classifier_features="reconstruction+combined").classifier_feature_parts == (
        "tokens", "histogram", "embedding", "statistics", "reconstruction")


def test_unknown_feature_part_is_refused():
    with pytest.raises(ValueError, match="classifier_features"):
        VQShapeConfig(**TINY, classifier_features="tokens+colour")


def test_reconstruction_steps_must_divide_the_input_length():
    with pytest.raises(ValueError, match="classifier_reconstruction_steps.*divide"):
        VQShapeConfig(**{**TINY, "classifier_reconstruction_steps": TINY["input_length"] - 1})


@pytest.mark.parametrize("scales", [[], [1], [2, 2], [TINY["input_length"]], 2, [2.0]])
def test_window_scales_must_be_distinct_integers_that_cut_the_series(scales):
    with pytest.raises(ValueError, match="classifier_window_scales"):
        VQShapeConfig(**TINY, classifier_features="embedding+windows", classifier_window_scales=scales)


@pytest.mark.parametrize("scales", [[1], [TINY["input_length"]], [2, 2]])
def test_window_embedding_refuses_scales_that_cut_no_window(scales):
    model = classifier().eval()
    past_values, _ = toy_problem(2)
    with pytest.raises(ValueError, match="classifier_window_scales"):
        model.vqshape.window_embedding(past_values, scales)


def test_window_embedding_refuses_an_unknown_pooling():
    model = classifier().eval()
    past_values, _ = toy_problem(2)
    with pytest.raises(ValueError, match="'mean' or 'max'"):
        model.vqshape.window_embedding(past_values, [2], pooling="median")
    with pytest.raises(ValueError, match="each once"):
        model.vqshape.window_embedding(past_values, [2], pooling=("mean", "mean"))
    mean, largest = model.vqshape.window_embedding(past_values, [2], pooling=("mean", "max"))
    torch.testing.assert_close(mean, model.vqshape.window_embedding(past_values, [2]))
    torch.testing.assert_close(largest, model.vqshape.window_embedding(past_values, [2], pooling="max"))
    with pytest.raises(TypeError, match="window_parts"):
        model.feature_parts(model.vqshape(past_values), ["windows"], 8, mean)


@pytest.mark.parametrize("part", ["windows", "windows_max"])
def test_default_window_scales_do_not_refuse_a_short_model_that_never_reads_them(part):
    short = dict(input_length=4, num_patches=1, patch_length=4, num_tokens=1, classifier_reconstruction_steps=1)
    assert VQShapeConfig(**short).classifier_window_scales == [2, 4]
    with pytest.raises(ValueError, match="at most input_length // 2 = 2"):
        VQShapeConfig(**short, classifier_features=part)


def test_window_tokenization_leaves_the_codebook_alone_in_training_mode():
    """The windows run the encoder and tokenizer only: a training-mode pass over them (the whole model fine-tuned)
    neither counts their codes nor re-seeds dead codes from them."""
    model = classifier(classifier_features="windows", codebook_update="ema", dead_code_threshold=0.5).train()
    past_values, _ = toy_problem(8)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    windows = model.vqshape.window_embedding(past_values, [2, 4])
    assert windows.requires_grad  # trained with the rest of the model
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    model(past_values)  # the whole series' forward does update the codebook's statistics
    assert any(not torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())


def test_window_scales_survive_the_config_round_trip(tmp_path):
    VQShapeConfig(**TINY, classifier_features="windows", classifier_window_scales=(3, 8)).save_pretrained(tmp_path)
    config = VQShapeConfig.from_pretrained(tmp_path)
    assert config.classifier_window_scales == [3, 8]
    assert config.classifier_feature_sizes == {"windows": 2 * TINY["d_model"]}


def test_the_head_learns_a_toy_problem_within_a_few_steps():
    model = classifier(classifier_features="combined", freeze_backbone=True)
    past_values, labels = toy_problem(256)
    fit_feature_scaler(model, [(past_values, labels)])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(20):
        loss = model(past_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test_values, test_labels = toy_problem(seed=1)
    with torch.no_grad():
        accuracy = (model.eval()(test_values).logits.argmax(-1) == test_labels).float().mean().item()
    assert accuracy >= 0.9  # chance is 0.5


def test_feature_scaler_standardises_the_training_rows():
    model = classifier(classifier_features="statistics+embedding")
    past_values, labels = toy_problem()
    fit_feature_scaler(model, [(past_values[:32], labels[:32]), (past_values[32:], labels[32:])])
    with torch.no_grad():
        features = model.eval()(past_values).features
    scaled = model.feature_scaler(features)
    torch.testing.assert_close(scaled.mean(0), torch.zeros(scaled.shape[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(scaled.std(0, unbiased=False), torch.ones(scaled.shape[1]), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="shape"):
        model.feature_scaler.set_statistics(torch.zeros(3), torch.ones(3))


def test_validation_split_is_stratified_seeded_and_disjoint():
    labels = np.array(["a"] * 20 + ["b"] * 10 + ["c"] * 5)
    train, validation = validation_split(labels, 0.2, seed=3)
    assert len(validation) == 7 and not set(train) & set(validation) and len(train) + len(validation) == 35
    assert sorted(np.unique(labels[validation], return_counts=True)[1]) == [1, 2, 4]
    again = validation_split(labels, 0.2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, validation), again))
    assert not np.array_equal(validation, validation_split(labels, 0.2, seed=4)[1])


def test_validation_split_with_groups_holds_whole_recordings_out():
    labels = np.array(["a", "b", "c"] * 20)
    groups = np.repeat([f"subject{i}" for i in range(6)], 10)  # six recordings, every class in each
    train, validation = validation_split(labels, 0.2, seed=0, groups=groups)
    assert not set(groups[train]) & set(groups[validation]) and len(train) + len(validation) == 60
    assert len(set(groups[validation])) == 1 and set(labels[validation]) == {"a", "b", "c"}
    assert any(not np.array_equal(validation, validation_split(labels, 0.2, seed=s, groups=groups)[1])
               for s in range(1, 4))  # seeded
    two = np.repeat(["first", "second"], 30)  # fewer recordings than folds: one of them is held out
    assert len(set(two[validation_split(labels, 0.2, seed=0, groups=two)[1]])) == 1
    one = np.full(60, "only")  # a single recording cannot be held out whole: rows are split as without groups
    assert all(np.array_equal(a, b) for a, b in zip(validation_split(labels, 0.2, seed=0, groups=one),
                                                    validation_split(labels, 0.2, seed=0)))
    with pytest.raises(ValueError, match="one group per row"):
        validation_split(labels, 0.2, groups=groups[:-1])


def test_grouped_validation_holds_out_a_share_near_the_fraction_and_keeps_every_class_in_training():
    labels = np.array(["a", "b"] * 240)
    groups = np.array(["long"] * 400 + ["r1"] * 40 + ["r2"] * 40)  # one recording much longer than the others
    for seed in range(5):
        train, validation = validation_split(labels, 0.2, seed=seed, groups=groups)
        assert set(groups[validation]) <= {"r1", "r2"} and len(validation) == 40
    labels = np.array(list("aabbccd")).repeat(4)  # one recording per activity: class d lives in a single recording
    groups = np.arange(7).repeat(4).astype(str)
    for seed in range(5):
        train, validation = validation_split(labels, 0.2, seed=seed, groups=groups)
        assert set(labels[train]) == set("abcd") and not set(groups[train]) & set(groups[validation])
    few = np.array(["a", "b", "a", "b"])  # two rows per class cannot fill five folds: two folds
    train, validation = validation_split(few, 0.2, seed=0, groups=np.array(["1", "2", "3", "4"]))
    assert len(train) == len(validation) == 2


def test_the_classifier_scripts_hold_out_whole_recordings_of_a_windowed_dataset(tmp_path):
    from types import SimpleNamespace

    from datasets import Dataset, DatasetDict

    rng = np.random.default_rng(0)

    def split(num_recordings):
        return Dataset.from_dict({"past_values": rng.normal(size=(num_recordings * 8, 2, 32)).tolist(),
                                  "label": ["still", "moving"] * (num_recordings * 4),
                                  "recording": np.repeat([f"r{i}" for i in range(num_recordings)], 8).tolist()})

    DatasetDict(train=split(5), test=split(2)).save_to_disk(tmp_path / "windows")
    args = SimpleNamespace(dataset=str(tmp_path / "windows"), series_column="past_values", label_column="label",
                           group_column=None, validation_fraction=0.2, max_train_samples=None, max_eval_samples=None,
                           seed=0, per_device_train_batch_size=4, per_device_eval_batch_size=4)
    _, _, train, (_, _, (train_rows, validation_rows)) = classification_dataloaders(args, 32)
    assert not set(train.groups[train_rows]) & set(train.groups[validation_rows])
    assert len(validation_rows) == 8  # one whole recording of five
    args.group_column = "none"  # opts out: split by series
    _, _, train, (_, _, (train_rows, validation_rows)) = classification_dataloaders(args, 32)
    assert train.groups is None and len(set(np.repeat(range(5), 8)[validation_rows].tolist())) > 1
    args.group_column = None
    for refused in ({"group_column": "subject"}, {"dataset": "BasicMotions", "group_column": "recording"}):
        with pytest.raises(ValueError, match="subject|no 'recording' column"):
            classification_dataloaders(SimpleNamespace(**{**vars(args), **refused}), 32)


def test_best_epoch_keeps_the_best_accuracy_then_the_lower_loss():
    model = classifier()
    best = BestEpoch()
    for epoch, (accuracy, loss) in enumerate([(0.5, 1.0), (0.75, 0.9), (0.75, 0.5), (0.75, 0.7), (0.5, 0.1)]):
        with torch.no_grad():
            model.classifier.bias.fill_(epoch)
        best.update(epoch, {"accuracy": accuracy, "macro_f1": accuracy, "loss": loss}, model)
    assert best.epoch == 2
    best.restore(model)
    assert torch.equal(model.classifier.bias, torch.full((2,), 2.0))


FIRST_STAGE = dict(num_classes=2, candidates=["tokens", "statistics"], weight_decays=[0.0, 0.1], dropouts=[0.0],
                   epochs=50)


def test_frozen_feature_parts_computes_only_the_parts_asked_for(monkeypatch):
    model = classifier().eval()
    past_values, _ = toy_problem(8)
    every = frozen_feature_parts(model.vqshape, past_values, batch_size=4)
    assert list(every) == ["tokens", "histogram", "embedding", "statistics", "reconstruction", "windows",
                           "embedding_max", "windows_max"]
    torch.testing.assert_close(every["windows"], zoomed_window_embedding(model.vqshape, past_values, [2, 4]))
    torch.testing.assert_close(every["windows_max"],
                               zoomed_window_embedding(model.vqshape, past_values, [2, 4], pooling="max"))
    assert not torch.allclose(every["windows_max"], every["windows"])

    tokenized = []
    tokenizer_forward = model.vqshape.tokenizer.forward
    monkeypatch.setattr(model.vqshape.tokenizer, "forward",
                        lambda *args, **kwargs: tokenized.append(1) or tokenizer_forward(*args, **kwargs))
    both = frozen_feature_parts(model.vqshape, past_values, batch_size=8, parts=["windows", "windows_max"])
    # the series, then one pass per scale: both window parts come from one tokenization of the windows (not 1 + 2 x 2)
    assert len(tokenized) == 1 + 2
    for part, values in both.items():
        torch.testing.assert_close(values, every[part])

    def no_windows(*args, **kwargs):
        raise AssertionError("the windows were tokenized for a part nobody asked for")

    monkeypatch.setattr(model.vqshape, "window_embedding", no_windows)
    some = frozen_feature_parts(model.vqshape, past_values, batch_size=4, parts=["tokens", "statistics"])
    assert list(some) == ["tokens", "statistics"]
    for part, values in some.items():
        assert torch.equal(values, every[part]), part


def informative_statistics():
    """`(past_values, labels, parts, rows)` of the toy problem, whose statistics carry the classes while its token
    features are replaced by noise, and a validation split of its rows."""
    model = classifier(classifier_features="combined").eval()
    past_values, labels = toy_problem()
    parts = frozen_feature_parts(model.vqshape, past_values, batch_size=16)
    parts["tokens"] = torch.randn(parts["tokens"].shape, generator=torch.Generator().manual_seed(0))
    return past_values, labels, parts, validation_split(labels.numpy(), 0.25, seed=0)


def test_first_stage_picks_the_informative_features_and_gives_the_probe_to_the_model():
    past_values, labels, parts, rows = informative_statistics()
    head = select_linear_head(parts, labels, *rows, **FIRST_STAGE)
    assert head.classifier_features == "statistics" and head.validation_accuracy == 1.0
    chosen = classifier(classifier_features="statistics", classifier_dropout=head.dropout).eval()
    head.apply(chosen)
    with torch.no_grad():
        logits = chosen(past_values).logits
    expected = ((parts["statistics"].flatten(1) - head.mean) / head.std) @ head.weight.T + head.bias
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert (logits[rows[1]].argmax(-1) == labels[rows[1]]).all()


def test_cross_validation_folds_are_stratified_disjoint_and_hold_recordings_out_whole():
    labels = np.repeat([0, 1, 2], [6, 9, 12])
    folds = cross_validation_folds(labels, 10, seed=0)
    assert len(folds) == 6  # the smallest class has 6 rows
    held_out = np.concatenate([part for _, part in folds])
    assert sorted(held_out) == list(range(len(labels)))  # every row scored exactly once
    for train, part in folds:
        assert not set(train) & set(part) and len(train) + len(part) == len(labels)
        assert len(np.unique(labels[part])) == 3  # stratified: every class in every fold
    groups = np.arange(len(labels)) % 9  # 9 recordings of 3 windows, every class in 6 or more of them
    grouped = cross_validation_folds(labels, 5, seed=0, groups=groups)
    assert len(grouped) == 5
    for train, part in grouped:
        assert not set(groups[train]) & set(groups[part])
    assert cross_validation_folds(np.array([0, 0, 0, 1]), 10) == []  # a class of one row: no fold fits
    # a class in 2 of the 9 recordings: 2 folds, so that it can stay in training; one recording: no fold fits
    few = np.where(groups < 2, 2, np.arange(len(labels)) % 2)
    assert len(cross_validation_folds(few, 5, seed=0, groups=groups)) == 2
    assert cross_validation_folds(labels, 5, groups=np.zeros(len(labels))) == []


def test_cross_validated_first_stage_scores_every_row_out_of_fold_and_refits_on_all_of_them():
    from modeling_vqshape.tasks.classification import train_linear_probes
    from modeling_vqshape.tasks.finetuning import standardise

    _, labels, parts, rows = informative_statistics()
    head = select_linear_head(parts, labels, *rows, folds=4, **FIRST_STAGE)
    assert head.folds == 4 and head.classifier_features == "statistics"
    # every TRAIN row judged once, by heads that never saw it
    assert len(head.held_out_logits) == len(labels) and sorted(head.held_out_labels.tolist()) == sorted(labels.tolist())
    assert head.validation_accuracy == (head.held_out_logits.argmax(-1) == head.held_out_labels).float().mean().item()
    # the chosen setting refitted on every row, standardised with all their statistics
    features = parts["statistics"].flatten(1)
    mean, std = standardise(features)
    refit = train_linear_probes(((features - mean) / std).numpy(), labels.numpy(), 2,
                                [(head.weight_decay, head.dropout)], seed=0, epochs=50)
    torch.testing.assert_close(head.weight, refit.weight[0].T)
    torch.testing.assert_close(head.mean, mean)
    single = select_linear_head(parts, labels, *rows, **FIRST_STAGE)  # one validation split: trained on its rows
    assert single.folds == 0 and len(single.held_out_labels) == len(rows[1])
    assert not torch.allclose(single.mean, mean)


def halves_of_the_signal():
    """`(past_values, labels, parts, rows)`: the toy problem's series and the tiny model's parts, with its tokens
    and statistics replaced so that each holds half of what tells the classes apart (the class is the sign of the sum
    of one token feature of channel 1 and one statistic of channel 0): either part alone is right on about 3 rows in
    4, the two heads averaged on nearly every row."""
    model = classifier(classifier_features="combined").eval()
    past_values, _ = toy_problem(96)
    parts = frozen_feature_parts(model.vqshape, past_values, batch_size=32, parts=["tokens", "statistics"])
    generator = torch.Generator().manual_seed(1)
    for part in parts:  # constant columns: standardised to 0
        parts[part] = torch.zeros(parts[part].shape)
    a, b = torch.randn(2, len(past_values), generator=generator)
    parts["tokens"][:, 1, 0], parts["statistics"][:, 0, 1] = a, b
    labels = (a + b > 0).long()
    return past_values, labels, parts, validation_split(labels.numpy(), 0.25, seed=0)


def test_cross_validated_first_stage_averages_the_heads_that_raise_the_out_of_fold_accuracy():
    past_values, labels, parts, rows = halves_of_the_signal()
    single = {candidate: select_linear_head(parts, labels, *rows, folds=4, **{**FIRST_STAGE, "candidates": [candidate]})
              for candidate in FIRST_STAGE["candidates"]}
    head = select_linear_head(parts, labels, *rows, folds=4, ensemble=10, **FIRST_STAGE)
    assert head.classifier_features == "tokens+statistics"  # the union of the members' parts, in the head's layout
    assert [member["classifier_features"] for member in head.members] == ["statistics", "tokens"]  # best one first
    assert sum(member["share"] for member in head.members) == pytest.approx(1.0)
    assert head.validation_accuracy > max(one.validation_accuracy for one in single.values())
    # one linear head whose logits are the members' (each refitted on every row) averaged by their shares
    union = torch.cat([parts["tokens"], parts["statistics"]], dim=-1).flatten(1)
    logits = ((union - head.mean) / head.std) @ head.weight.T + head.bias
    expected = sum(member["share"] * (((parts[name].flatten(1) - single[name].mean) / single[name].std)
                                      @ single[name].weight.T + single[name].bias)
                   for member in head.members for name in [member["classifier_features"]])
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(head.held_out_logits, sum(
        member["share"] * single[member["classifier_features"]].held_out_logits for member in head.members))
    assert head.validation_accuracy == (head.held_out_logits.argmax(-1) == head.held_out_labels).float().mean().item()
    # the classifier built for the union reads its parts in the same layout
    model = classifier(classifier_features=head.classifier_features, classifier_dropout=head.dropout).eval()
    head.apply(model)
    model_parts = frozen_feature_parts(model.vqshape, past_values, parts=["tokens", "statistics"])
    with torch.no_grad():
        torch.testing.assert_close(model(past_values).logits, ((torch.cat(list(model_parts.values()), -1).flatten(1)
                                                                 - head.mean) / head.std) @ head.weight.T + head.bias,
                                   atol=1e-4, rtol=1e-4)
    # without the ensemble, or with one validation split, the single best head as before
    alone = select_linear_head(parts, labels, *rows, folds=4, **FIRST_STAGE)
    best = max(single.values(), key=lambda one: (one.validation_accuracy, -one.validation_loss))
    assert alone.classifier_features == best.classifier_features and len(alone.members) == 1
    torch.testing.assert_close(alone.weight, best.weight)
    assert len(select_linear_head(parts, labels, *rows, ensemble=10, **FIRST_STAGE).members) == 1


def test_combined_heads_give_the_members_logits_averaged_by_their_counts():
    """Members with overlapping parts ("combined" among them), on several channels, chosen unequally often: the one
    head on the union of their parts gives exactly their logits averaged, every column carrying signal."""
    from modeling_vqshape.configuration_vqshape import classifier_feature_parts
    from modeling_vqshape.tasks.finetuning import LinearHead, combine_heads, standardise

    generator = torch.Generator().manual_seed(0)
    sizes = {"tokens": 5, "histogram": 4, "embedding": 3, "statistics": 2, "reconstruction": 4, "windows": 6,
             "embedding_max": 3, "windows_max": 6}
    parts = {part: 3 * torch.randn(20, 3, size, generator=generator) + 1 for part, size in sizes.items()}
    targets = torch.arange(20) % 4

    def member(candidate):
        features = torch.cat([parts[part] for part in classifier_feature_parts(candidate)], -1).flatten(1)
        mean, std = standardise(features)
        return LinearHead(candidate, 0.1, 0.2, mean, std, torch.randn(4, features.shape[1], generator=generator),
                          torch.randn(4, generator=generator), 0.5, 1.0,
                          held_out_logits=torch.randn(20, 4, generator=generator), held_out_labels=targets), features

    members = [member(candidate) for candidate in ("combined", "tokens+statistics", "reconstruction+statistics",
                                                     "embedding+windows+statistics",
                                                     "embedding+embedding_max+windows+windows_max+statistics")]
    counts = [3, 1, 2, 1, 2]
    head = combine_heads([(one, count) for (one, _), count in zip(members, counts)], parts)
    assert head.classifier_features == ("tokens+histogram+embedding+statistics+reconstruction+windows+embedding_max+"
                                        "windows_max")
    assert [entry["share"] for entry in head.members] == [3 / 9, 1 / 9, 2 / 9, 1 / 9, 2 / 9]
    union = torch.cat([parts[part] for part in classifier_feature_parts(head.classifier_features)], -1).flatten(1)
    logits = ((union - head.mean) / head.std) @ head.weight.T + head.bias
    expected = sum(count * (((features - one.mean) / one.std) @ one.weight.T + one.bias)
                   for (one, features), count in zip(members, counts)) / sum(counts)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(head.held_out_logits, sum(
        count * one.held_out_logits for (one, _), count in zip(members, counts)) / sum(counts))
    assert head.weight_decay == 0.1 and head.dropout == 0.2  # the first member's


def test_finetune_refuses_a_negative_ensemble_size(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("finetune_script", REPO_ROOT / "examples" / "finetune.py")
    finetune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(finetune)
    with pytest.raises(SystemExit):
        finetune.parse_args(["--model_name_or_path", "tiny", "--probe_ensemble", "-1"])
    assert "--probe_ensemble is how many heads may be added" in capsys.readouterr().err
    assert finetune.parse_args(["--model_name_or_path", "tiny"]).probe_ensemble == 10


def test_ensemble_selection_adds_a_head_only_while_it_beats_the_ensemble_without_it():
    from modeling_vqshape.tasks.finetuning import LinearHead, ensemble_selection

    targets = torch.tensor([0, 0, 1, 1])

    def head(logits):
        logits = torch.tensor(logits)
        return LinearHead("statistics", 0.0, 0.0, None, None, None, None,
                          (logits.argmax(-1) == targets).float().mean().item(),
                          torch.nn.functional.cross_entropy(logits, targets).item(),
                          held_out_logits=logits, held_out_labels=targets)

    right_on_three = head([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    mends_the_fourth = head([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 6.0]])  # right on two rows only
    useless = head([[0.0, 0.0]] * 4)
    heads = [useless, right_on_three, mends_the_fourth]
    counts = ensemble_selection(heads, 10)
    assert set(counts) == {1, 2}  # the useless head never joins; the others may join more than once (lower loss)
    averaged = sum(heads[index].held_out_logits * count for index, count in counts.items())
    assert (averaged.argmax(-1) == targets).all()
    assert ensemble_selection([useless, right_on_three, mends_the_fourth], 0) == {1: 1}
    assert ensemble_selection([right_on_three, useless], 10) == {0: 1}  # nothing beats it: no addition


def test_trainer_finetunes_the_head(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = classifier(classifier_features="statistics+embedding", freeze_backbone=True)
    past_values, labels = toy_problem(128)
    fit_feature_scaler(model, [(past_values, labels)])
    backbone = {name: tensor.clone() for name, tensor in model.vqshape.state_dict().items()}
    dataset = [{"past_values": values, "labels": label} for values, label in zip(past_values, labels)]
    arguments = TrainingArguments(output_dir=str(tmp_path), max_steps=24, learning_rate=1e-2,
                                  per_device_train_batch_size=16, report_to=[], save_strategy="no", use_cpu=True,
                                  logging_steps=5, seed=0)
    trainer = Trainer(model=model, args=arguments, train_dataset=dataset)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0]
    test_values, test_labels = toy_problem(seed=1)
    with torch.no_grad():
        predicted = model.eval()(test_values).logits.argmax(-1)
    assert (predicted == test_labels).float().mean() >= 0.9
    for name, tensor in model.vqshape.state_dict().items():  # the frozen backbone did not move
        assert torch.equal(tensor, backbone[name]), name


def test_feature_scaler_survives_save_and_reload_with_identical_logits(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = classifier(classifier_features="combined+reconstruction+windows").eval()
    past_values, labels = toy_problem()
    mean, std = fit_feature_scaler(model, [(past_values, labels)])
    model.save_pretrained(tmp_path / "saved")
    assert "feature_scaler.std" in load_file(str(tmp_path / "saved" / "model.safetensors"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    assert torch.equal(reloaded.feature_scaler.mean, mean) and torch.equal(reloaded.feature_scaler.std, std)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(past_values).logits, model(past_values).logits, rtol=0, atol=0)


HUB_LOADER = PACKAGE_OR_REMOTE + textwrap.dedent(
    """
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(source, trust_remote_code=mode == "remote").eval()
    inputs = load_file(expected_path)["past_values"]
    with torch.no_grad():
        save_file({"logits": model(inputs).logits, "std": model.feature_scaler.std}, expected_path + ".out")
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["package", "remote"])
def test_feature_scaler_survives_the_hub_with_identical_logits(hub, tmp_path, mode):  # noqa: F811
    from modeling_vqshape.sharing.hub import publish

    model = classifier(classifier_features="combined+reconstruction+windows").eval()
    past_values, labels = toy_problem()
    fit_feature_scaler(model, [(past_values, labels)])
    publish(model, f"lab/vqshape-scaled-{mode}", endpoint=hub.endpoint, token="hf_stand_in")
    save_file({"past_values": past_values}, str(tmp_path / "inputs.safetensors"))
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_CACHE", "PYTHONPATH")}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="0",
               HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_DISABLE_XET="1", NO_PROXY="127.0.0.1",
               no_proxy="127.0.0.1", **({"PYTHONPATH": str(REPO_ROOT)} if mode == "package" else {}))
    result = subprocess.run([sys.executable, "-c", HUB_LOADER, mode, f"lab/vqshape-scaled-{mode}",
                             str(tmp_path / "inputs.safetensors")], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    loaded = load_file(str(tmp_path / "inputs.safetensors.out"))
    assert torch.equal(loaded["std"], model.feature_scaler.std)
    with torch.no_grad():
        torch.testing.assert_close(loaded["logits"], model(past_values).logits, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("stages", [[], ["--num_train_epochs", "3"]], ids=["cross-validated head", "two stages"])
def test_test_labels_cannot_change_what_is_selected(tmp_path, stages):
    """The same run with the TEST labels shuffled keeps the same features, epoch, temperature and weights: with the
    defaults (the head chosen by cross-validation over TRAIN, no second stage) and with a second stage."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

    past_values, labels = toy_problem(48)
    test_values, test_labels = toy_problem(24, seed=1)
    features = Features({"past_values": List(List(Value("float32"))), "label": ClassLabel(names=["quiet", "loud"])})

    def split(values, targets):  # (channels, time) rows
        return Dataset.from_dict({"past_values": values.transpose(1, 2).tolist(), "label": targets.tolist()},
                                 features=features)

    torch.manual_seed(0)
    VQShapeForPreTraining(VQShapeConfig(**TINY)).save_pretrained(tmp_path / "tiny")
    shuffled = test_labels[torch.randperm(len(test_labels), generator=torch.Generator().manual_seed(0))]
    results = {}
    for name, targets in (("true", test_labels), ("shuffled", shuffled)):
        DatasetDict(train=split(past_values, labels), test=split(test_values, targets)).save_to_disk(tmp_path / name)
        output_dir = tmp_path / f"classifier-{name}"
        run_script([sys.executable, str(REPO_ROOT / "examples" / "finetune.py"), "--model_name_or_path",
                    str(tmp_path / "tiny"), "--dataset", str(tmp_path / name), *stages,
                    "--per_device_train_batch_size", "8", "--output_dir", str(output_dir)])
        results[name] = (json.loads((output_dir / "eval_results.json").read_text()),
                         json.loads((output_dir / "config.json").read_text()),
                         load_file(str(output_dir / "model.safetensors")))
    (true, true_config, true_weights), (other, other_config, other_weights) = results["true"], results["shuffled"]
    assert true["selected_epoch"] == other["selected_epoch"] and true["validation"] == other["validation"]
    # the temperature folded into the head comes from the validation rows too
    assert true["calibration"] == other["calibration"] and true["calibration"]["temperature"] > 0
    # the fit lowers the held-out cross-entropy, except where every held-out row is right: there the smoothed targets
    # it is fitted to keep the temperature finite, which costs a little of that (tiny) cross-entropy
    assert (true["calibration"]["validation_loss_after"] <= true["calibration"]["validation_loss_before"]
            or true["validation"]["accuracy"] == 1.0)
    assert true_config["classifier_features"] == other_config["classifier_features"]
    assert true_weights.keys() == other_weights.keys()
    for key, tensor in true_weights.items():
        assert torch.equal(tensor, other_weights[key]), key
    assert true["accuracy"] != other["accuracy"]  # the test split itself did change
    card = (tmp_path / "classifier-true" / "README.md").read_text()
    if stages:
        assert '"probe_folds": 0' in card and '"freeze_backbone": false' in card
    else:  # every TRAIN row judged out of fold (48 rows, 2 classes: 10 folds), the probe kept with a frozen backbone
        assert true["selected_epoch"] == 0 and '"probe_folds": 10' in card and true_config["freeze_backbone"]


def load_benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_classification",
                                                  REPO_ROOT / "benchmarks" / "bench_classification.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_means_over_datasets_weigh_each_dataset_once():
    bench = load_benchmark()
    rows = [{"dataset": "A", "method": "m", "accuracy": 1.0}, {"dataset": "A", "method": "m", "accuracy": 0.5},
            {"dataset": "B", "method": "m", "accuracy": 0.25}, {"dataset": "A", "method": "n", "accuracy": 0.1}]
    # m: (mean of A's seeds 0.75 + B's 0.25) / 2, not the mean of its three rows
    assert bench.mean_over_datasets(rows).splitlines()[2:] == ["| m | 0.500 |", "| n | 0.100 |"]


@pytest.mark.slow
def test_classification_benchmark_runs_every_method_and_reports_the_fine_tuned_runs(tmp_path):
    import csv

    torch.manual_seed(0)
    VQShapeForPreTraining(VQShapeConfig(**TINY)).save_pretrained(tmp_path / "tiny")
    output = tmp_path / "bench"
    run_script([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_classification.py"), "--model_name_or_path",
                str(tmp_path / "tiny"), "--datasets", "ItalyPowerDemand", "--num_seeds", "1", "--max_train_samples",
                "16", "--max_test_samples", "10", "--probe_epochs", "2", "--output_dir", str(output),
                "--finetune_args", "--num_train_epochs", "1"], timeout=600)
    with open(output / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["method"] for row in rows] == ["fine-tuned (defaults)", "VQShape tokens", "VQShape histogram",
                                               "raw values", "MiniRocket", "1-NN DTW"]
    finetuned = rows[0]
    assert finetuned["classifier_features"] in FEATURE_CANDIDATES
    assert int(finetuned["selected_epoch"]) in (0, 1)
    assert float(finetuned["temperature"]) > 0  # calibrated (a number, not "none"), reported per seed
    # 10 test series: every accuracy is a multiple of 0.1
    for row in rows:
        assert float(row["accuracy"]) * 10 == pytest.approx(round(float(row["accuracy"]) * 10))
    markdown = (output / "results.md").read_text()
    assert "mean over datasets" in markdown
    assert f"| {float(finetuned['temperature']):.2f} |" in markdown
    assert f"| fine-tuned (defaults) | {float(finetuned['accuracy']):.3f} |" in markdown


def test_subsets_keep_the_row_numbers_as_sample_ids():
    from modeling_vqshape.tasks.classification import ClassificationSplit

    split = ClassificationSplit([np.full((1, 5), float(i)) for i in range(12)], np.array(["a", "b"] * 6))
    assert split.sample_ids == [str(i) for i in range(12)]
    subset = split.subset(6, seed=0)
    assert [str(int(series[0, 0])) for series in subset.series] == subset.sample_ids  # the rows they came from
    nested = subset.subset(4, seed=1)  # a subset of a subset still names rows of the split as read
    assert set(nested.sample_ids) <= set(subset.sample_ids)
    assert [str(int(series[0, 0])) for series in nested.series] == nested.sample_ids
