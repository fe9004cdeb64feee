"""Time-series corpora -> `datasets.Dataset` of fixed-length, instance-normalised univariate series for pre-training.

A corpus is named by one or more *specs*:

- `"bundled"`: the real classification sets that ship inside `aeon` (`BUNDLED_DATASETS`); no download. One of those
  names alone (`"GunPoint"`) selects that set only.
- a folder: the UEA/UCR archive layout (`Name/Name_TRAIN.ts`, `Name/Name_TEST.ts`, read with aeon's `.ts` reader), any
  `.csv`, `.parquet`, `.npy` or `.npz` files under it, or a dataset saved with `datasets.Dataset.save_to_disk`;
- a file: `.ts`, `.csv`, `.parquet`, `.npy` or `.npz`;
- with `column`, any other spec is a `datasets` dataset name or path (`datasets.load_dataset(spec, split=...)`).

Every series becomes `(channels, time)`; channels are split into univariate series; VQShapeFeatureExtractor fills NaNs
and resamples linearly to `input_length`; then each series is instance-normalised, (x - mean) / sqrt(var + 1e-5) with
the unbiased variance, as the original data loader does, because the reconstruction loss is measured in the input's
scale. Errors about unusable inputs are raised here, before any training starts.
"""

import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..modeling_vqshape import instance_normalize
from ..processing_vqshape import VQShapeFeatureExtractor

BUNDLED_DATASETS = (
    "ACSF1", "ArrowHead", "BasicMotions", "GunPoint", "ItalyPowerDemand", "JapaneseVowels", "OSULeaf",
    "PickupGestureWiimoteZ",
)
ARRAY_SUFFIXES = (".csv", ".parquet", ".npy", ".npz")
RECORDING_SUFFIXES = (".bin",)  # GENEActiv recordings (modeling_vqshape.corpora.geneactiv); pair with --window_length


def bundled_data_dir() -> Path:
    import aeon

    return Path(aeon.__file__).parent / "datasets" / "data"


# ---- readers: each returns a list of (channels, time) float arrays --------------------------------------------------


def read_ts_file(path) -> list:
    """Read one `.ts` file (equal or unequal length, uni- or multivariate) with aeon's reader."""
    from aeon.datasets import load_from_ts_file

    series, _ = load_from_ts_file(str(path))
    return [np.asarray(item, dtype=np.float64) for item in series]  # a 3-D array or a list of 2-D arrays


def _as_series_list(values, name: str) -> list:
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"{name} is not numeric (dtype {values.dtype}).")
    values = values.astype(np.float64)
    if values.ndim == 1:  # one series
        return [values[None]]
    if values.ndim == 2:  # (series, time)
        return [row[None] for row in values]
    if values.ndim == 3:  # (series, channels, time)
        return list(values)
    raise ValueError(f"{name} has shape {values.shape}; expected (time,), (series, time) or (series, channels, time).")


def read_array_file(path, column: str | None = None) -> list:
    """Read `.npy`/`.npz` arrays, or a `.csv`/`.parquet` table.

    Tables: each numeric column is one series along the rows (the original one-CSV-per-series layout and long
    recordings); a column whose cells are sequences holds one series per row. `column` (comma-separated) selects
    columns and must name numeric ones; without it non-numeric columns (timestamps, labels) are skipped.
    """
    import pandas as pd

    path = Path(path)
    if path.suffix == ".npy":
        return _as_series_list(np.load(path, allow_pickle=False), str(path))
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            key = column or arrays.files[0]
            if key not in arrays.files:
                raise ValueError(f"{path} has no array {key!r}; it has {arrays.files}.")
            return _as_series_list(arrays[key], f"{path}[{key}]")
    table = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    names = [name.strip() for name in column.split(",")] if column else list(table.columns)
    series = []
    for name in names:
        if name not in table.columns:
            raise ValueError(f"{path} has no column {name!r}; it has {list(table.columns)}.")
        values = table[name]
        if values.dtype == object and len(values) and isinstance(values.iloc[0], (list, tuple, np.ndarray)):
            for row, cell in enumerate(values):
                series.extend(_as_series_list(np.stack(cell) if len(cell) and np.ndim(cell[0]) else cell,
                                              f"{path} column {name!r} row {row}"))
        elif pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            series.append(values.to_numpy(dtype=np.float64)[None])
        elif column:
            raise ValueError(f"column {name!r} of {path} is not numeric (dtype {values.dtype}).")
    if not series:
        raise ValueError(f"{path} has no numeric column to read series from.")
    return series


def read_hf_dataset(dataset, column: str, name: str) -> list:
    """Series from the `column` of a `datasets.Dataset`: each row a sequence `(time,)` or `(channels, time)`."""
    if column not in dataset.column_names:
        raise ValueError(f"dataset {name!r} has no column {column!r}; it has {dataset.column_names}.")
    return [
        series
        for row, values in enumerate(dataset.with_format("numpy")[column])
        for series in _as_series_list(values, f"dataset {name!r} column {column!r} row {row}")
    ]


# ---- specs -> {source name: list of (channels, time) arrays} ------------------------------------------------------


def read_recording(path) -> list:
    """A GENEActiv `.bin` recording as one `(3, time)` array of x, y, z in g."""
    from .geneactiv import read_geneactiv

    return [read_geneactiv(path).values.astype(np.float64)]


def _ts_file_included(path: Path, ts_splits) -> bool:
    split = path.stem.rsplit("_", 1)[-1].upper()
    return split not in ("TRAIN", "TEST") or split in ts_splits


def _ts_source_name(path: Path) -> str:
    stem = path.stem
    return stem.rsplit("_", 1)[0] if stem.rsplit("_", 1)[-1].upper() in ("TRAIN", "TEST") else stem


def resolve_sources(specs, column: str | None = None, ts_splits=("TRAIN",), hf_split: str = "train") -> list:
    """Check corpus specs (see the module docstring) and list `(source name, reader)` pairs without reading any
    series: each `reader()` returns the `(channels, time)` arrays of one file or dataset. Unusable specs (an unknown
    name, a folder without a usable file) raise here.

    `ts_splits` chooses which of `Name_TRAIN.ts` / `Name_TEST.ts` are read (by default only the training splits, so
    that the test splits stay unseen for downstream evaluation); `.ts` files without such a suffix are always read.
    """
    import datasets

    if isinstance(specs, str):
        specs = [specs]
    ts_splits = {split.upper() for split in ts_splits}
    bundled = {name.lower(): name for name in BUNDLED_DATASETS}
    readers = []
    for spec in specs:
        path = Path(spec).expanduser()
        if spec == "bundled" or spec.lower() in bundled and not path.exists():
            for name in BUNDLED_DATASETS if spec == "bundled" else [bundled[spec.lower()]]:
                for file in sorted((bundled_data_dir() / name).glob(f"{name}_*.ts")):
                    if file.stem in (f"{name}_{split}" for split in ts_splits):
                        readers.append((name, partial(read_ts_file, file)))
        elif path.is_dir() and any((path / marker).exists() for marker in ("dataset_info.json", "state.json")):
            dataset = datasets.load_from_disk(str(path))
            readers.append((path.name, partial(read_hf_dataset, dataset, column or "past_values", str(path))))
        elif path.is_dir():
            files = sorted(file for file in path.rglob("*") if file.is_file() and not file.name.startswith("."))
            ts_files = [file for file in files if file.suffix == ".ts" and _ts_file_included(file, ts_splits)]
            array_files = [file for file in files if file.suffix in ARRAY_SUFFIXES]
            recordings = [file for file in files if file.suffix in RECORDING_SUFFIXES]
            if not ts_files and not array_files and not recordings:
                raise ValueError(
                    f"folder {path} has no usable file: expected .ts files (UEA/UCR layout Name/Name_TRAIN.ts, "
                    f"splits {sorted(ts_splits)}), {', '.join(ARRAY_SUFFIXES)} files or GENEActiv .bin files."
                )
            readers += [(file.stem, partial(read_recording, file)) for file in recordings]
            readers += [(_ts_source_name(file), partial(read_ts_file, file)) for file in ts_files]
            readers += [(file.stem, partial(read_array_file, file, column)) for file in array_files]
        elif path.is_file():
            if path.suffix == ".ts":
                readers.append((_ts_source_name(path), partial(read_ts_file, path)))
            elif path.suffix in ARRAY_SUFFIXES:
                readers.append((path.stem, partial(read_array_file, path, column)))
            elif path.suffix in RECORDING_SUFFIXES:
                readers.append((path.stem, partial(read_recording, path)))
            else:
                raise ValueError(
                    f"file {path} has an unsupported type; use .ts, {', '.join(ARRAY_SUFFIXES + RECORDING_SUFFIXES)}."
                )
        elif column:
            try:
                dataset = datasets.load_dataset(spec, split=hf_split)
            except Exception as error:  # the datasets library raises many types for a missing dataset
                raise ValueError(f"unknown dataset {spec!r}: datasets.load_dataset failed ({error}).") from error
            readers.append((spec.replace("/", "__"), partial(read_hf_dataset, dataset, column, spec)))
        else:
            raise ValueError(
                f"unknown dataset {spec!r}: not a bundled set ({', '.join(BUNDLED_DATASETS)}), not an existing file or "
                "folder; for a Hugging Face `datasets` dataset also give the column that holds the series."
            )
    return readers


def load_sources(specs, column: str | None = None, ts_splits=("TRAIN",), hf_split: str = "train") -> dict:
    """Read every source of `resolve_sources` into `{source name: [(channels, time) arrays]}`."""
    sources = {}
    for name, reader in resolve_sources(specs, column, ts_splits, hf_split):
        sources.setdefault(name, []).extend(reader())
    return sources


# ---- series -> model-ready rows --------------------------------------------------------------------------------------


def split_channels(series: list, window_length: int | None = None) -> list:
    """`(channels, time)` arrays -> 1-D arrays, one per channel (and per window of `window_length`, when given);
    channels with fewer than two valid values are dropped."""
    univariate = []
    for item in series:
        for channel in np.atleast_2d(item):
            valid = np.flatnonzero(~np.isnan(channel))
            if valid.size < 2:
                continue
            channel = channel[valid[0] : valid[-1] + 1]  # trailing NaNs pad unequal-length series
            if window_length and channel.shape[0] > window_length:
                univariate.extend(channel[start : start + window_length]
                                  for start in range(0, channel.shape[0] - 1, window_length))
            else:
                univariate.append(channel)
    return [channel for channel in univariate if np.count_nonzero(~np.isnan(channel)) >= 2]


def prepare_series(series: list, input_length: int, window_length: int | None = None,
                   normalize: bool = True) -> np.ndarray:
    """`(channels, time)` arrays -> `(num_series, input_length)` float32: channels split, NaNs filled, resampled,
    instance-normalised (unless `normalize=False`: the raw scale is kept, VQShape normalises each series itself)."""
    univariate = split_channels(series, window_length)
    if not univariate:
        return np.zeros((0, input_length), dtype=np.float32)
    past_values = VQShapeFeatureExtractor(input_length=input_length)(univariate, return_tensors="np")["past_values"]
    if not normalize:
        return past_values.astype(np.float32)
    # the model's own normalisation, in float64 as the original loader computes it, stored as float32
    return instance_normalize(torch.from_numpy(past_values.astype(np.float64)))[0].numpy().astype(np.float32)


def build_pretraining_dataset(
    sources: dict,
    input_length: int,
    validation_split: float = 0.1,
    balance: bool = False,
    max_series_per_source: int | None = None,
    window_length: int | None = None,
    seed: int = 0,
    normalize: bool = True,
):
    """Build `DatasetDict(train, validation)` with columns `past_values` (`input_length` float32) and `source`.

    The split is per source and depends only on `seed`, so every source is seen in validation. `max_series_per_source`
    subsamples large sources' training series; `balance` then repeats each source's training series, as the original
    `--balance_datasets` does, up to about the size of the largest source (validation is never repeated).
    Series are instance-normalised, as the original loader does; `normalize=False` keeps them in their own units (the
    model normalises each series itself; the text alignment reads the scale for its intensity attribute).
    """
    import datasets

    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must lie in [0, 1), got {validation_split}.")
    rng = np.random.default_rng(seed)
    parts = {"train": [], "validation": []}
    for name in sorted(sources):
        values = prepare_series(sources[name], input_length, window_length, normalize=normalize)
        if len(values) == 0:
            raise ValueError(f"source {name!r} has no usable series (every channel is empty or all NaN).")
        order = rng.permutation(len(values))
        num_validation = int(round(validation_split * len(values)))
        if validation_split > 0 and len(values) >= 2:
            num_validation = min(max(num_validation, 1), len(values) - 1)
        train = order[num_validation:]
        if max_series_per_source is not None:
            train = train[:max_series_per_source]
        parts["train"].append((name, values[np.sort(train)]))
        parts["validation"].append((name, values[np.sort(order[:num_validation])]))
    if balance:
        largest = max(len(values) for _, values in parts["train"])
        parts["train"] = [(name, np.tile(values, (-(-largest // len(values)), 1))) for name, values in parts["train"]]

    features = datasets.Features(
        {"past_values": datasets.List(datasets.Value("float32"), length=input_length),
         "source": datasets.Value("string")}
    )

    def to_dataset(items):
        values = np.concatenate([values for _, values in items]) if items else np.zeros((0, input_length), np.float32)
        names = [name for name, part in items for _ in range(len(part))]
        return datasets.Dataset.from_dict({"past_values": values, "source": names}, features=features)

    return datasets.DatasetDict({split: to_dataset(items) for split, items in parts.items()}).with_format("torch")


def load_pretraining_dataset(specs=("bundled",), input_length: int = 512, column: str | None = None,
                             ts_splits=("TRAIN",), **kwargs):
    """`load_sources` then `build_pretraining_dataset`: specs -> `DatasetDict(train, validation)`."""
    return build_pretraining_dataset(load_sources(specs, column, ts_splits), input_length, **kwargs)


def _in_validation(key: str, validation_split: float, seed: int) -> bool:
    """A fixed, seeded share of the rows goes to validation, decided row by row (no pass over the corpus needed)."""
    return zlib.crc32(f"{seed}:{key}".encode()) % 1_000_000 < validation_split * 1_000_000


def _stream_rows(shards, input_length: int, window_length, validation_split: float, seed: int, split: str):
    for name, position, reader in shards:  # one shard per file or dataset, read when reached
        values = prepare_series(reader(), input_length, window_length)
        for index, row in enumerate(values):
            if _in_validation(f"{name}:{position}:{index}", validation_split, seed) == (split == "validation"):
                yield {"past_values": row, "source": name}


def stream_pretraining_dataset(specs=("bundled",), input_length: int = 512, column: str | None = None,
                               ts_splits=("TRAIN",), validation_split: float = 0.1, balance: bool = False,
                               window_length: int | None = None, seed: int = 0, shuffle_buffer_size: int = 10_000):
    """Like `load_pretraining_dataset`, for corpora that do not fit in memory: `IterableDatasetDict(train,
    validation)` whose rows are read file by file as they are consumed.

    Every file or dataset is a shard (so `datasets` can spread them over workers and nodes). A row goes to validation
    by a seeded hash of its source, file and position, so the split is deterministic without a pass over the data.
    Training rows are shuffled through a buffer of `shuffle_buffer_size` rows, anew each epoch (`set_epoch`).
    `balance` interleaves the sources, repeating the smaller ones until the largest is exhausted, as the paper's
    oversampling does. Specs are checked up front; a file's content is checked when the file is reached.
    """
    import datasets

    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must lie in [0, 1), got {validation_split}.")
    readers = resolve_sources(specs, column, ts_splits)
    positions = {}
    shards = []
    for name, reader in readers:
        positions[name] = positions.get(name, -1) + 1
        shards.append((name, positions[name], reader))
    features = datasets.Features(
        {"past_values": datasets.List(datasets.Value("float32"), length=input_length),
         "source": datasets.Value("string")}
    )

    def stream(split, selected):
        return datasets.IterableDataset.from_generator(
            _stream_rows, features=features,
            gen_kwargs={"shards": selected, "input_length": input_length, "window_length": window_length,
                        "validation_split": validation_split, "seed": seed, "split": split},
        )

    if balance:
        names = sorted(positions)
        train = datasets.interleave_datasets(
            [stream("train", [shard for shard in shards if shard[0] == name]) for name in names],
            seed=seed, stopping_strategy="all_exhausted",
        )
    else:
        train = stream("train", shards)
    return datasets.IterableDatasetDict({
        "train": train.shuffle(seed=seed, buffer_size=shuffle_buffer_size).with_format("torch"),
        "validation": stream("validation", shards).with_format("torch"),
    })


def describe(dataset_dict) -> dict:
    """Series per source and split, for logs and the model card."""
    return {
        split: {str(name): int(count)
                for name, count in zip(*np.unique(np.asarray(part["source"]), return_counts=True))}
        for split, part in dataset_dict.items()
    }


__all__ = [
    "BUNDLED_DATASETS",
    "build_pretraining_dataset",
    "describe",
    "load_pretraining_dataset",
    "load_sources",
    "prepare_series",
    "read_array_file",
    "read_hf_dataset",
    "read_ts_file",
    "resolve_sources",
    "split_channels",
    "stream_pretraining_dataset",
]
