"""modeling_vqshape.corpora.data: corpora -> fixed-length, instance-normalised univariate series."""

import shutil

import numpy as np
import pytest
import torch

datasets = pytest.importorskip("datasets")
pytest.importorskip("aeon")

from modeling_vqshape.corpora.data import (  # noqa: E402
    BUNDLED_DATASETS,
    build_pretraining_dataset,
    bundled_data_dir,
    describe,
    load_pretraining_dataset,
    load_sources,
)

LENGTH = 64


def test_bundled_sets_ship_with_aeon():
    for name in BUNDLED_DATASETS:
        assert (bundled_data_dir() / name / f"{name}_TRAIN.ts").exists(), name


def test_gunpoint_rows_are_normalised_fixed_length_float32():
    data = load_pretraining_dataset(["GunPoint"], input_length=LENGTH, validation_split=0.2)
    assert set(data) == {"train", "validation"}
    assert data["train"].column_names == ["past_values", "source"]
    assert (len(data["train"]), len(data["validation"])) == (40, 10)  # GunPoint_TRAIN has 50 series
    values = data["train"][:]["past_values"].numpy()
    assert values.shape == (40, LENGTH) and values.dtype == np.float32
    np.testing.assert_allclose(values.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(values.std(1, ddof=1), 1, atol=1e-3)


def test_normalize_false_keeps_the_units_and_the_same_split():
    raw = load_pretraining_dataset(["BasicMotions"], input_length=LENGTH, normalize=False)
    normalised = load_pretraining_dataset(["BasicMotions"], input_length=LENGTH)
    raw_values = raw["train"][:]["past_values"].numpy().astype(np.float64)
    assert raw_values.std(1).max() > 5 and raw_values.std(1).min() < 0.2  # accelerometer and gyroscope units
    mean, std = raw_values.mean(1, keepdims=True), np.sqrt(raw_values.var(1, ddof=1, keepdims=True) + 1e-5)
    np.testing.assert_allclose((raw_values - mean) / std, normalised["train"][:]["past_values"].numpy(), atol=1e-4)


def test_split_is_deterministic_and_depends_on_seed():
    sources = load_sources(["ArrowHead"])
    first = build_pretraining_dataset(sources, LENGTH, seed=0)["validation"][:]["past_values"]
    again = build_pretraining_dataset(sources, LENGTH, seed=0)["validation"][:]["past_values"]
    other = build_pretraining_dataset(sources, LENGTH, seed=1)["validation"][:]["past_values"]
    assert (first == again).all()
    assert not (first == other).all()


def test_multivariate_is_split_into_channels_and_unequal_lengths_are_resampled():
    data = load_pretraining_dataset(["BasicMotions", "JapaneseVowels"], input_length=LENGTH, validation_split=0)
    counts = describe(data)["train"]
    assert counts == {"BasicMotions": 40 * 6, "JapaneseVowels": 270 * 12}


def test_balancing_oversamples_small_sources_only_in_train():
    data = load_pretraining_dataset(["GunPoint", "OSULeaf"], input_length=LENGTH, balance=True)
    counts = describe(data)
    assert counts["validation"] == {"GunPoint": 5, "OSULeaf": 20}
    assert counts["train"]["OSULeaf"] == 180 and 180 <= counts["train"]["GunPoint"] < 180 + 45


def test_uea_folder_layout_reads_train_splits_by_default(tmp_path):
    shutil.copytree(bundled_data_dir() / "GunPoint", tmp_path / "GunPoint")
    train_only = load_sources([str(tmp_path)])
    both = load_sources([str(tmp_path)], ts_splits=("TRAIN", "TEST"))
    assert len(train_only["GunPoint"]) == 50 and len(both["GunPoint"]) == 200


def test_csv_parquet_numpy_files_with_nans(tmp_path):
    import pandas as pd

    rng = np.random.default_rng(0)
    table = pd.DataFrame({"time": pd.date_range("2024", periods=100, freq="h"), "a": rng.normal(size=100),
                          "b": rng.normal(size=100)})
    table.loc[10:15, "a"] = np.nan
    table.to_csv(tmp_path / "recording.csv", index=False)
    table.to_parquet(tmp_path / "recording2.parquet")
    np.save(tmp_path / "batch.npy", rng.normal(size=(3, 2, 50)))
    np.savez(tmp_path / "more.npz", x=rng.normal(size=(4, 30)))
    sources = load_sources([str(tmp_path)])
    assert {name: len(series) for name, series in sources.items()} == {"recording": 2, "recording2": 2, "batch": 3,
                                                                       "more": 4}
    data = build_pretraining_dataset(sources, LENGTH, validation_split=0, window_length=50)
    assert describe(data)["train"] == {"recording": 4, "recording2": 4, "batch": 6, "more": 4}
    assert np.isfinite(data["train"][:]["past_values"].numpy()).all()
    assert len(load_sources([str(tmp_path / "recording.csv")], column="b")["recording"]) == 1


def test_datasets_dataset_on_disk_with_column(tmp_path):
    rng = np.random.default_rng(0)
    lengths = [40, 70, 55]
    datasets.Dataset.from_dict({"target": [rng.normal(size=n).tolist() for n in lengths]}).save_to_disk(tmp_path / "d")
    sources = load_sources([str(tmp_path / "d")], column="target")
    assert [series.shape for series in sources["d"]] == [(1, n) for n in lengths]


def test_errors_name_the_culprit(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("nothing here")
    with pytest.raises(ValueError, match="empty.*no usable file"):
        load_sources([str(tmp_path / "empty")])
    with pytest.raises(ValueError, match="unknown dataset 'NoSuchSet'"):
        load_sources(["NoSuchSet"])
    with pytest.raises(ValueError, match="unknown dataset 'no-such-user/no-such-set'"):
        load_sources(["no-such-user/no-such-set"], column="target")
    import pandas as pd

    pd.DataFrame({"label": ["a", "b", "c"], "x": [1.0, 2.0, 3.0]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match="column 'label'.*not numeric"):
        load_sources([str(tmp_path / "t.csv")], column="label")


def test_geneactiv_bin_recordings_are_read_and_windowed(tmp_path):
    from modeling_vqshape.corpora.geneactiv import write_geneactiv_bin

    raw = (np.sin(np.linspace(0, 40, 600))[None] * np.array([[500], [-300], [100]])).astype(int)
    write_geneactiv_bin(tmp_path / "wrist.bin", raw)
    sources = load_sources([str(tmp_path)])
    assert list(sources) == ["wrist"] and sources["wrist"][0].shape == (3, 600)
    splits = build_pretraining_dataset(sources, input_length=32, window_length=200, validation_split=0.0)
    assert len(splits["train"]) == 3 * 3  # 3 channels x 3 windows of 200 samples


def test_streaming_reads_the_same_rows_with_a_seeded_split():
    from modeling_vqshape.corpora.data import stream_pretraining_dataset

    streamed = stream_pretraining_dataset(["GunPoint", "ItalyPowerDemand"], input_length=LENGTH, seed=3)
    rows = {split: [row["past_values"] for row in part] for split, part in streamed.items()}
    eager = load_pretraining_dataset(["GunPoint", "ItalyPowerDemand"], input_length=LENGTH)
    assert len(rows["train"]) + len(rows["validation"]) == len(eager["train"]) + len(eager["validation"])
    assert 0 < len(rows["validation"]) < 0.25 * len(rows["train"])
    again = stream_pretraining_dataset(["GunPoint", "ItalyPowerDemand"], input_length=LENGTH, seed=3)
    assert all(torch.equal(a, b)
               for a, b in zip(rows["validation"], (row["past_values"] for row in again["validation"])))
    balanced = stream_pretraining_dataset(["GunPoint", "ItalyPowerDemand"], input_length=LENGTH, balance=True)
    sources = [row["source"] for row in balanced["train"]]
    assert abs(sources.count("GunPoint") - sources.count("ItalyPowerDemand")) <= 1  # small set repeated
    with pytest.raises(ValueError, match="unknown dataset 'NoSuchSet'"):
        stream_pretraining_dataset(["NoSuchSet"], input_length=LENGTH)
