"""The persistence-image teacher (modeling_vqshape.persistence, PersistenceImageForClassification): diagrams of a
hand-checkable series, images against the persistence-image formula, a save/reload round trip with identical logits
through AutoModelForSequenceClassification, and its use as a distillation teacher."""

import numpy as np
import pytest
import torch

pytest.importorskip("gudhi")

from modeling_vqshape import PersistenceImageConfig, PersistenceImageForClassification  # noqa: E402
from modeling_vqshape.persistence import persistence_image, persistence_images, sublevel_diagram  # noqa: E402
from modeling_vqshape.tasks.teachers import load_teacher  # noqa: E402

SMALL = dict(resolution=8, hidden_size=8)


def test_sublevel_diagram_of_a_hand_checked_series():
    # minima 0 (step 0), 1 (step 2), 0.5 (step 4): the component born at 1 merges into the older one at 2, the one
    # born at 0.5 at 3; the one born at the global minimum 0 never dies and is given the maximum 3
    diagram = sublevel_diagram([0.0, 2.0, 1.0, 3.0, 0.5])
    np.testing.assert_array_equal(diagram, [[0.0, 3.0], [0.5, 3.0], [1.0, 2.0]])
    np.testing.assert_array_equal(sublevel_diagram([1.0, 2.0, 3.0]), [[1.0, 3.0]])  # monotone: one component
    assert sublevel_diagram([2.0, 2.0, 2.0]).shape == (0, 2)  # constant: nothing persists
    with pytest.raises(ValueError, match="finite"):
        sublevel_diagram([0.0, np.nan])


def test_persistence_image_is_the_weighted_gaussian_sum():
    diagram = np.array([[0.0, 2.0], [1.0, 1.5]])  # (birth, death): persistences 2 and 0.5
    resolution, bandwidth = 9, 0.4
    image = persistence_image(diagram, resolution, bandwidth, birth_range=(-3.0, 3.0), max_persistence=6.0)
    births, persistences = np.linspace(-3, 3, resolution), np.linspace(0, 6, resolution)
    expected = np.zeros((resolution, resolution))
    for birth, death in diagram:
        persistence = death - birth
        kernel = np.exp(-((births[None, :] - birth) ** 2 + (persistences[:, None] - persistence) ** 2)
                        / (2 * bandwidth**2)) / (2 * np.pi * bandwidth**2)
        expected += persistence * kernel  # the linear ramp: weight = persistence
    np.testing.assert_allclose(image, expected, rtol=1e-5, atol=1e-7)
    # the brightest pixel sits on the most persistent point: birth 0 (column 4), persistence 2 (nearest row 3)
    assert np.unravel_index(image.argmax(), image.shape) == (3, 4)


def test_images_are_per_channel_and_ignore_level_and_scale():
    t = torch.linspace(0, 1, 50)
    channels = torch.stack([torch.sin(2 * torch.pi * 3 * t), t, torch.zeros_like(t)], dim=-1)  # (time, channels)
    images = persistence_images(channels.unsqueeze(0), resolution=8)
    assert images.shape == (1, 3, 8, 8) and images.dtype == torch.float32
    assert images[0, 2].abs().sum() == 0 and images[0, 0].sum() > 0  # a constant channel has no topology
    torch.testing.assert_close(persistence_images(5 * channels.unsqueeze(0) + 3, resolution=8), images)
    torch.testing.assert_close(persistence_images(channels[:, 0].unsqueeze(0), resolution=8), images[:, :1])


def test_invalid_config_is_refused():
    with pytest.raises(ValueError, match="bandwidth"):
        PersistenceImageConfig(bandwidth=0)
    with pytest.raises(ValueError, match="birth_range"):
        PersistenceImageConfig(birth_range=(1.0, -1.0))


def test_classifier_round_trip_through_auto_class_with_identical_logits(tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(0)
    config = PersistenceImageConfig(num_input_channels=2, num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, **SMALL)
    model = PersistenceImageForClassification(config).eval()
    past_values = torch.randn(4, 40, 2, generator=torch.Generator().manual_seed(0))
    outputs = model(past_values=past_values, labels=torch.tensor([0, 1, 2, 0]))
    assert outputs.logits.shape == (4, 3) and outputs.features.shape == (4, 8)
    outputs.loss.backward()
    assert model.classifier.weight.grad is not None
    torch.testing.assert_close(model(persistence_images=model.images(past_values)).logits, outputs.logits)
    with pytest.raises(ValueError, match="expects"):
        model(past_values=torch.randn(2, 40, 3))

    model.save_pretrained(tmp_path / "pi")
    assert AutoConfig.from_pretrained(tmp_path / "pi").model_type == "vqshape_persistence_image"
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pi").eval()
    assert isinstance(reloaded, PersistenceImageForClassification)
    assert reloaded.config.id2label == {0: "a", 1: "b", 2: "c"} and reloaded.config.resolution == 8
    with torch.no_grad():
        torch.testing.assert_close(reloaded(past_values=past_values).logits, outputs.logits, rtol=0, atol=0)

    teacher = load_teacher(tmp_path / "pi", label_names=["c", "a", "b"])  # a distillation teacher, classes by name
    answer = teacher(past_values)
    torch.testing.assert_close(answer.logits, outputs.logits[:, [2, 0, 1]].detach())
    torch.testing.assert_close(answer.features, outputs.features.detach())


def test_folder_saved_before_feature_pooling_loads_mean_pooled_with_identical_logits(tmp_path):
    import json

    from transformers import AutoModelForSequenceClassification

    assert PersistenceImageConfig().feature_pooling == "flatten"  # new models keep where on the image things are
    torch.manual_seed(0)
    old = PersistenceImageForClassification(PersistenceImageConfig(num_labels=2, feature_pooling="mean", **SMALL))
    old.eval().save_pretrained(tmp_path / "old")
    config_file = tmp_path / "old" / "config.json"
    saved = json.loads(config_file.read_text())
    del saved["feature_pooling"]  # as an earlier version wrote it
    config_file.write_text(json.dumps(saved))
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "old").eval()
    assert reloaded.config.feature_pooling == "mean" and not hasattr(reloaded, "projection")
    past_values = torch.randn(3, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(past_values=past_values).logits, old(past_values=past_values).logits,
                                   rtol=0, atol=0)
    with pytest.raises(ValueError, match="feature_pooling"):
        PersistenceImageConfig(feature_pooling="max")


def test_flattened_features_learn_where_on_the_image_a_point_is():
    # one persistent point per 16x16 image; the class is its place, persistence row 4 or row 10 (same parity, away
    # from the borders, so the convolutions see the same pattern either way): flattened maps tell the classes apart,
    # averaged maps cannot (their features are identical for both classes)
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (64,), generator=generator)
    rows = torch.where(labels == 0, 4, 10)
    columns = 4 + 2 * torch.randint(0, 4, (64,), generator=generator)
    images = torch.zeros(64, 1, 16, 16)
    images[torch.arange(64), 0, rows, columns] = 2.0
    accuracies = {}
    for pooling in ("flatten", "mean"):
        torch.manual_seed(0)
        model = PersistenceImageForClassification(PersistenceImageConfig(num_labels=2, resolution=16, hidden_size=8,
                                                                         feature_pooling=pooling))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(60):
            loss = model(persistence_images=images, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        with torch.no_grad():
            predictions = model.eval()(persistence_images=images).logits.argmax(-1)
        accuracies[pooling] = (predictions == labels).float().mean().item()
    assert accuracies["flatten"] >= 0.95 and accuracies["mean"] <= 0.6, accuracies


def test_pooling_benchmark_scores_both_heads_on_train_folds(tmp_path):
    import sys

    from .conftest import REPO_ROOT

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import bench_persistence_pooling

    bench_persistence_pooling.main(["--datasets", "GunPoint", "--num_folds", "2", "--num_train_epochs", "1",
                                    "--output_dir", str(tmp_path)])
    lines = (tmp_path / "results.md").read_text().splitlines()
    assert "| dataset | series in TRAIN | flatten | mean |" in lines
    row = next(line for line in lines if line.startswith("| GunPoint |")).split(" | ")
    assert row[1] == "50" and all(0.0 <= float(value.strip(" |")) <= 1.0 for value in row[2:])
