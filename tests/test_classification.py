"""The classification protocol (modeling_vqshape.tasks.classification, examples/classify.py) and fine-tuning
(examples/finetune.py), on the tiny config and small subsets of the bundled sets."""

import csv
import itertools
import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from .conftest import REPO_ROOT, TINY, TWO_CPU_RANKS, run_script

pytest.importorskip("aeon")
pytest.importorskip("sklearn")

from modeling_vqshape import VQShapeConfig, VQShapeForPreTraining, VQShapeForTimeSeriesClassification  # noqa: E402
from modeling_vqshape.tasks.classification import (  # noqa: E402
    CLASS_NAMES,
    classification_metrics,
    extract_features,
    fit_scaler,
    load_classification_dataset,
    load_labelled_rows,
    select_and_evaluate,
    train_linear_probes,
)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "tiny"
    VQShapeForPreTraining(VQShapeConfig(**TINY)).save_pretrained(folder)
    return folder


def test_metrics_match_sklearn():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    labels = np.array(["a", "a", "a", "b", "b", "c", "c", "c", "c"])
    predictions = np.array(["a", "b", "a", "b", "c", "c", "c", "a", "c"])
    metrics = classification_metrics(labels, predictions)
    assert metrics == pytest.approx({
        "accuracy": accuracy_score(labels, predictions),
        "balanced_accuracy": balanced_accuracy_score(labels, predictions),
        "macro_f1": f1_score(labels, predictions, average="macro"),
    })
    assert metrics["accuracy"] == pytest.approx(6 / 9)
    assert metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)


@pytest.mark.parametrize("case", ["random names", "random integers", "one class", "a class never predicted",
                                  "a predicted class never true"])
def test_evaluate_module_equals_scikit_learn(case):
    import evaluate
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_recall_fscore_support

    from modeling_vqshape.tasks.metrics import CLASSIFICATION_METRIC

    rng = np.random.default_rng(len(case))
    references = rng.integers(0, 4, 50)
    predictions = np.where(rng.random(50) < 0.6, references, rng.integers(0, 4, 50))
    if case == "random names":
        names = np.array(["standing", "walking", "running", "badminton"])
        references, predictions = names[references], names[predictions]
    elif case == "one class":
        references, predictions = np.zeros(10, int), np.zeros(10, int)
    elif case == "a class never predicted":
        predictions = np.where(predictions == 3, 0, predictions)
    elif case == "a predicted class never true":
        references = np.where(references == 3, 0, references)
    metric = evaluate.load(CLASSIFICATION_METRIC)
    for start in range(0, len(references), 16):  # batches, as a training loop adds them
        metric.add_batch(predictions=predictions[start: start + 16], references=references[start: start + 16])
    scores = metric.compute()
    labels = sorted(set(references.tolist()) | set(predictions.tolist()))
    assert scores["accuracy"] == accuracy_score(references, predictions)
    assert scores["balanced_accuracy"] == balanced_accuracy_score(references, predictions)
    assert scores["macro_f1"] == f1_score(references, predictions, average="macro", zero_division=0)
    precision, recall, f1, support = precision_recall_fscore_support(references, predictions, labels=labels,
                                                                     zero_division=0)
    assert list(scores["per_class"]) == labels
    for index, label in enumerate(labels):
        assert scores["per_class"][label] == {"precision": precision[index], "recall": recall[index],
                                              "f1": f1[index], "support": support[index]}
    # the package's helper returns the same three numbers
    assert classification_metrics(references, predictions) == {key: scores[key] for key in
                                                                ("accuracy", "balanced_accuracy", "macro_f1")}


def test_scalers_are_fitted_on_the_training_rows_only():
    rng = np.random.default_rng(0)
    train, test = rng.normal(3, 2, (20, 5)), rng.normal(-50, 9, (7, 5))
    scaler = fit_scaler("tokens", train)
    np.testing.assert_allclose(scaler.mean_, train.mean(0))
    np.testing.assert_allclose(scaler.transform(train).mean(0), 0, atol=1e-12)
    assert abs(scaler.transform(test).mean()) > 5  # test rows are transformed with the train statistics
    counts = rng.integers(0, 5, (20, 6)).astype(float)
    minmax = fit_scaler("histogram", counts)
    np.testing.assert_allclose(minmax.data_min_, counts.min(0))
    np.testing.assert_allclose(minmax.data_max_, counts.max(0))
    assert fit_scaler("raw", train).__class__ is scaler.__class__


def test_batched_probes_match_one_adamw_classifier_per_setting():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(30, 7)).astype(np.float32)
    labels = rng.integers(0, 3, 30)
    settings = [(0.0, 0.0), (0.1, 0.0), (10.0, 0.0)]
    start = train_linear_probes(features, labels, 3, settings, seed=1, epochs=0)
    trained = train_linear_probes(features, labels, 3, settings, seed=1, epochs=25, learning_rate=1e-2)
    inputs, targets = torch.from_numpy(features), torch.from_numpy(labels)
    for index, (weight_decay, _) in enumerate(settings):
        module = start.module(index)  # nn.Sequential(nn.Dropout(0), nn.Linear) from the same initialisation
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2, weight_decay=weight_decay)
        for _ in range(25):
            optimizer.zero_grad()
            nn.functional.cross_entropy(module(inputs), targets).backward()
            optimizer.step()
        torch.testing.assert_close(trained.logits(features)[index], module(inputs), rtol=1e-4, atol=1e-5)
    assert isinstance(trained.module(2)[0], nn.Dropout) and isinstance(trained.module(2)[1], nn.Linear)


def test_dropout_probes_train_and_differ_by_setting():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    features = (rng.normal(size=(40, 10)) + labels[:, None] * 2).astype(np.float32)
    probes = train_linear_probes(features, labels, 2, list(itertools.product([0.0, 100.0], [0.0, 0.8])),
                                 epochs=100, learning_rate=1e-2)
    accuracy = (probes.logits(features).argmax(-1) == torch.from_numpy(labels)).float().mean(-1)
    assert accuracy[0] == 1.0
    norms = probes.weight.flatten(1).norm(dim=1)
    assert norms[2] < 0.2 * norms[0]  # weight decay 100 shrinks the weights


def test_selection_uses_validation_only_and_picks_its_best_setting():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 12)
    features = (rng.normal(size=(36, 8)) + np.eye(3)[labels] @ rng.normal(size=(3, 8))).astype(np.float32)
    test_labels = np.repeat([0, 1, 2], 4)
    test_features = (rng.normal(size=(12, 8))).astype(np.float32)
    kwargs = dict(weight_decays=(0.0, 1.0, 100.0), dropouts=(0.0, 0.5), epochs=40, learning_rate=1e-2)
    result = select_and_evaluate("tokens", features, labels, test_features, test_labels, 3, seed=3, **kwargs)
    scores = result.validation_scores
    assert len(scores) == 6
    best = min(scores, key=lambda setting: (-scores[setting][0], scores[setting][1]))
    assert (result.weight_decay, result.dropout) == best
    assert result.validation_accuracy == scores[best][0]
    # the test rows play no part in the selection
    other = select_and_evaluate("tokens", features, labels, test_features * -5 + 3, test_labels[::-1], 3, seed=3,
                                **kwargs)
    assert other.validation_scores == scores and (other.weight_decay, other.dropout) == best
    assert set(result.metrics) == {"accuracy", "balanced_accuracy", "macro_f1"}


def test_load_classification_dataset_reads_bundled_folders_files_and_saved_datasets(tmp_path):
    import datasets

    from modeling_vqshape.corpora.data import bundled_data_dir

    splits = load_classification_dataset("BasicMotions")
    assert len(splits["train"]) == 40 and splits["train"].series[0].shape == (6, 100)
    assert set(splits["test"].labels) == {"badminton", "running", "standing", "walking"}
    folder = load_classification_dataset(str(bundled_data_dir() / "GunPoint"))
    file = load_classification_dataset(str(bundled_data_dir() / "GunPoint" / "GunPoint_TRAIN.ts"))
    assert len(folder["test"]) == len(file["test"]) == 150
    vowels = load_classification_dataset("japanesevowels")["train"]
    assert len({item.shape[1] for item in vowels.series}) > 1  # unequal lengths stay as they are
    subset = vowels.subset(18)
    assert len(subset) == 18 and len(set(subset.labels)) == 9

    label = datasets.ClassLabel(names=["low", "high"])
    features = datasets.Features({"past_values": datasets.List(datasets.List(datasets.Value("float32"))),
                                  "label": label})
    rows = {"past_values": [np.random.randn(2, 30).tolist() for _ in range(4)], "label": [0, 1, 1, 0]}
    datasets.DatasetDict({split: datasets.Dataset.from_dict(rows, features=features)
                          for split in ("train", "test")}).save_to_disk(tmp_path / "saved")
    saved = load_classification_dataset(str(tmp_path / "saved"))
    assert list(saved["train"].labels) == ["low", "high", "high", "low"] and saved["test"].series[0].shape == (2, 30)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_classification_dataset("NoSuchSet")


def test_labelled_rows_keep_their_units_and_get_global_class_ids():
    past_values, labels, class_names, sources = load_labelled_rows(["GunPoint", "BasicMotions"], 32, max_series=5)
    assert class_names == list(CLASS_NAMES["GunPoint"].values()) + list(CLASS_NAMES["BasicMotions"].values())
    # GunPoint: 5 univariate series; BasicMotions: 5 series of 6 channels, a row each with its series' label
    assert past_values.shape == (5 + 30, 32) and past_values.dtype == np.float32
    assert sources == ["GunPoint"] * 5 + ["BasicMotions"] * 30
    train = load_classification_dataset("BasicMotions")["train"]
    ids = {name: 2 + index for index, name in enumerate(CLASS_NAMES["BasicMotions"])}
    np.testing.assert_array_equal(labels[5:], np.repeat([ids[label] for label in train.labels[:5]], 6))
    assert set(labels[:5]) <= {0, 1}
    assert abs(past_values[5:].std(axis=1).mean() - 1) > 0.1  # in their own units, not instance-normalised
    empty = load_labelled_rows([], 32)
    assert empty[0].shape == (0, 32) and empty[1].shape == (0,) and empty[2:] == ([], [])


def test_features_are_flattened_over_channels_and_deterministic(tiny_config):
    from modeling_vqshape import VQShapeFeatureExtractor

    model = VQShapeForTimeSeriesClassification(tiny_config).train()  # a head: its backbone is used, in eval mode
    extractor = VQShapeFeatureExtractor(input_length=tiny_config.input_length)
    series = [np.random.randn(3, length) for length in (20, 50, 90)]
    features = extract_features(model, extractor, series, batch_size=2)
    assert features["tokens"].shape == (3, 3 * tiny_config.num_tokens * tiny_config.token_dim)
    assert features["histogram"].shape == (3, 3 * tiny_config.num_codes)
    assert features["raw"].shape == (3, 3 * tiny_config.input_length)
    np.testing.assert_array_equal(features["histogram"].reshape(3, 3, -1).sum(-1), tiny_config.num_tokens)
    np.testing.assert_allclose(extract_features(model, extractor, series)["tokens"], features["tokens"], atol=1e-6)
    assert model.training  # the caller's mode is restored


@pytest.mark.slow
def test_classify_script_end_to_end_writes_csv_and_markdown(tiny_checkpoint, tmp_path):
    output_dir = tmp_path / "results"
    result = run_script([
        sys.executable, str(REPO_ROOT / "examples" / "classify.py"), "--model_name_or_path", str(tiny_checkpoint),
        "--datasets", "BasicMotions", "JapaneseVowels", "--baselines", "--num_seeds", "2", "--epochs", "10",
        "--max_train_samples", "18", "--max_test_samples", "9", "--baseline_length", "24", "--output_dir",
        str(output_dir),
    ])
    # run_script starts it with one thread; aeon's baselines change the count, and left so, the probes crawl
    assert "(torch threads: 1)" in result.stdout
    methods = ["VQShape tokens", "VQShape histogram", "raw values", "MiniRocket", "1-NN DTW"]
    with open(output_dir / "results.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [(row["dataset"], row["method"], row["seed"]) for row in table] == [
        (dataset, method, str(seed)) for dataset in ("BasicMotions", "JapaneseVowels") for method in methods
        for seed in (0, 1)]
    for row in table:
        assert 0.0 <= float(row["accuracy"]) <= 1.0
        if row["method"].startswith("VQShape") or row["method"] == "raw values":
            assert float(row["weight_decay"]) in (0, 0.01, 0.1, 1, 10, 100)
            assert float(row["dropout"]) in (0, 0.2, 0.5, 0.8)
    dtw = [row["accuracy"] for row in table if row["method"] == "1-NN DTW" and row["dataset"] == "BasicMotions"]
    assert len(set(dtw)) == 1  # deterministic
    with open(output_dir / "summary.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2 * len(methods)
    markdown = (output_dir / "results.md").read_text()
    assert "| dataset | " + " | ".join(methods) + " |" in markdown
    assert "| BasicMotions |" in markdown and "| JapaneseVowels |" in markdown and " ± " in markdown
    assert "Balanced accuracy" in markdown and "Macro-F1" in markdown


def test_classification_head_round_trip_keeps_label_names_and_logits(tmp_path):
    from transformers import AutoModelForSequenceClassification

    names = {0: "standing", 1: "walking", 2: "running"}
    config = VQShapeConfig(**TINY, num_labels=3, id2label=names, label2id={v: k for k, v in names.items()},
                           num_input_channels=2, classifier_features="histogram")
    torch.manual_seed(0)
    model = VQShapeForTimeSeriesClassification(config).eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, VQShapeForTimeSeriesClassification)
    assert reloaded.config.id2label == names and reloaded.config.label2id == {v: k for k, v in names.items()}
    past_values = torch.randn(5, TINY["input_length"], 2)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(past_values).logits, model(past_values).logits, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize(("launcher", "stages"), [((), []), (TWO_CPU_RANKS, []),
                                                  (TWO_CPU_RANKS, ["--num_train_epochs", "1"])],
                         ids=["one_process", "two_ranks", "two_ranks_two_stages"])
def test_finetune_script_saves_a_head_that_reloads_with_named_classes(tiny_checkpoint, tmp_path, launcher, stages):
    from transformers import AutoFeatureExtractor, AutoModelForSequenceClassification

    output_dir = tmp_path / "finetuned"
    # evaluation batches of 3: on two ranks the 8 test series end in a padded batch, which must count once
    command = [sys.executable, *launcher, str(REPO_ROOT / "examples" / "finetune.py"), "--model_name_or_path",
               str(tiny_checkpoint), "--dataset", "BasicMotions", "--max_train_samples", "12",
               "--max_eval_samples", "8",
               *stages, "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "3",
               "--classifier_features", "tokens", "--output_dir", str(output_dir)]
    result = run_script(command)
    assert "Model saved to" in result.stdout

    model = AutoModelForSequenceClassification.from_pretrained(output_dir).eval()
    names = ["badminton", "running", "standing", "walking"]
    assert model.config.id2label == dict(enumerate(names))
    assert model.config.num_input_channels == 6 and model.config.classifier_features == "tokens"
    # the reloaded head predicts what the script measured on the same test subset
    test = load_classification_dataset("BasicMotions")["test"].subset(8, seed=0)
    inputs = AutoFeatureExtractor.from_pretrained(output_dir)(test.series)
    with torch.no_grad():
        probabilities = model(**inputs).logits.softmax(-1)
    predicted = [model.config.id2label[i] for i in probabilities.argmax(-1).tolist()]
    reported = json.loads((output_dir / "eval_results.json").read_text())
    assert reported["dataset"] == "BasicMotions"
    # the saved head carries the temperature: its probabilities are the ones the script reported
    assert reported["calibration"]["temperature"] > 0
    assert reported["mean_top_probability"] == pytest.approx(probabilities.max(-1).values.mean().item(), rel=1e-5)
    for metric, value in classification_metrics(test.labels, predicted).items():
        assert reported[metric] == pytest.approx(value)
    card = (output_dir / "README.md").read_text()
    assert "model-index" in card and "BasicMotions" in card
