"""The paper's classification protocol: frozen VQShape features -> a linear probe, against baselines.

For every dataset (a `TRAIN`/`TEST` pair):

1. `extract_features`: token features `(channels * num_tokens * (code_dim + 4))`, code histograms
   `(channels * num_codes)` and, as a reference, the feature extractor's resampled values `(channels * input_length)`,
   all flattened over channels, as the paper's linear probe does. The model runs once per split, in eval mode.
2. `fit_scaler`: tokens and raw values are standardised, histograms min-max scaled; the scaler is fitted on the
   training rows only and then applied to the other rows.
3. `select_and_evaluate`, for each seed: a stratified, seeded `validation_fraction` of TRAIN (whole recordings when the
   split has `groups`) is held out; a linear classifier with dropout on its input (`nn.Sequential(nn.Dropout(p),
   nn.Linear)`, AdamW) is trained on the rest for every weight decay x dropout of the grid; the setting with the best
   validation accuracy (ties: lower validation cross-entropy) is refitted on all of TRAIN (scaler refitted too) and
   scored on TEST.
4. `run_protocol` repeats this over seeds, datasets and feature kinds, adds MiniRocket and 1-NN DTW on the same
   splits (`baseline_predictions`), and `write_results` writes per-seed and summary CSVs and a markdown table
   (mean +- sample standard deviation over seeds).

Metrics (`classification_metrics`): accuracy, balanced accuracy and macro-F1, from the package's `evaluate` module
(`modeling_vqshape.tasks.metrics.CLASSIFICATION_METRIC`, scikit-learn's definitions), which also gives a per-class
report.
"""

import csv
import functools
import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..processing_vqshape import resample_series

WEIGHT_DECAYS = (0.0, 0.01, 0.1, 1.0, 10.0, 100.0)
DROPOUTS = (0.0, 0.2, 0.5, 0.8)
FEATURE_KINDS = ("tokens", "histogram", "raw")
BASELINES = ("minirocket", "dtw")
METHOD_NAMES = {
    "tokens": "VQShape tokens",
    "histogram": "VQShape histogram",
    "raw": "raw values",
    "minirocket": "MiniRocket",
    "dtw": "1-NN DTW",
}
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
# Human names of the classes of some bundled sets (aeon gives numbers), from the UCR/UEA archive descriptions.
CLASS_NAMES = {
    "GunPoint": {"1": "drawing a gun", "2": "pointing a finger"},
    "ItalyPowerDemand": {"1": "winter electricity demand", "2": "summer electricity demand"},
    "ArrowHead": {"0": "Avonlea arrowhead", "1": "Clovis arrowhead", "2": "mixed arrowhead"},
    "PickupGestureWiimoteZ": {
        "1": "picking up", "2": "shaking", "3": "moving to the right", "4": "moving to the left", "5": "moving up",
        "6": "moving down", "7": "a left-handed circle", "8": "a right-handed circle", "9": "moving toward the screen",
        "10": "moving away from the screen",
    },
    "BasicMotions": {name: name for name in ("standing", "walking", "running", "badminton")},
}


# ---- metrics ---------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def classification_metric():
    """The package's `evaluate` module (modeling_vqshape/tasks/metrics/vqshape_classification.py), loaded once,
    offline."""
    import evaluate

    from .metrics import CLASSIFICATION_METRIC

    return evaluate.load(CLASSIFICATION_METRIC)


def classification_metrics(labels, predictions) -> dict:
    """Accuracy, balanced accuracy and macro-F1 of `predictions` against `labels` (any label type), from the package's
    `evaluate` module (scikit-learn's definitions)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.dtype.kind not in "iu":  # names (or other values) are compared as text
        labels, predictions = labels.astype(str), predictions.astype(str)
    scores = classification_metric().compute(predictions=predictions.tolist(), references=labels.tolist())
    return {key: scores[key] for key in ("accuracy", "balanced_accuracy", "macro_f1")}


# ---- data ------------------------------------------------------------------------------------------------------------


@dataclass
class ClassificationSplit:
    """`series`: a list of `(channels, time)` float arrays (lengths may differ); `labels`: `(num_series,)` strings;
    `ids`: `(num_series,)` strings naming each series, by default its row number in the split as read (a subset keeps
    them: teacher outputs files are keyed by them); `groups`: `(num_series,)` strings naming the recording each series
    was cut from, or None (series that share one are held out together by `finetuning.validation_split`)."""

    series: list
    labels: np.ndarray
    ids: np.ndarray | None = None
    groups: np.ndarray | None = None

    def __len__(self):
        return len(self.series)

    @property
    def sample_ids(self) -> list:
        """The `ids` as a list of strings (row numbers when none were given)."""
        ids = self.ids if self.ids is not None else np.arange(len(self))
        return [str(value) for value in ids]

    def subset(self, max_series: int | None, seed: int = 0) -> "ClassificationSplit":
        """A stratified, seeded subset of at most `max_series` series (every class kept when possible)."""
        if max_series is None or max_series >= len(self):
            return self
        from sklearn.model_selection import train_test_split

        indices = np.arange(len(self))
        stratify = self.labels if np.unique(self.labels, return_counts=True)[1].min() >= 2 else None
        try:
            kept, _ = train_test_split(indices, train_size=max_series, stratify=stratify, random_state=seed)
        except ValueError:  # fewer series than classes
            kept, _ = train_test_split(indices, train_size=max_series, random_state=seed)
        kept = np.sort(kept)
        return ClassificationSplit([self.series[i] for i in kept], self.labels[kept], np.asarray(self.sample_ids)[kept],
                                   None if self.groups is None else self.groups[kept])


def _read_labelled_ts(path) -> ClassificationSplit:
    from aeon.datasets import load_from_ts_file

    series, labels = load_from_ts_file(str(path))
    return ClassificationSplit([np.asarray(item, dtype=np.float64) for item in series], np.asarray(labels).astype(str))


def _read_labelled_hf(split, series_column: str, label_column: str, name: str, group_column: str | None = None,
                      require_group: bool = False) -> ClassificationSplit:
    """Rows of a `datasets.Dataset`: a series `(time,)` or `(channels, time)` and a label (names kept for
    ClassLabel), and the `group_column` when the dataset has it (required when `require_group`)."""
    for column in (series_column, label_column, *([group_column] if require_group else [])):
        if column not in split.column_names:
            raise ValueError(f"dataset {name!r} has no column {column!r}; it has {split.column_names}.")
    labels = split[label_column]
    feature = split.features[label_column]
    if hasattr(feature, "int2str"):  # a ClassLabel column: keep the names
        labels = feature.int2str(labels)
    series = []
    for row, values in enumerate(split.with_format("numpy")[series_column]):
        values = np.asarray(values)
        if values.dtype == object:  # ragged numpy formatting: an array of per-channel arrays
            values = np.stack(values)
        if values.ndim not in (1, 2) or not np.issubdtype(values.dtype, np.number):
            raise ValueError(f"dataset {name!r} column {series_column!r} row {row}: expected a numeric (time,) or "
                             f"(channels, time) series, got shape {values.shape} and dtype {values.dtype}.")
        series.append(np.atleast_2d(values).astype(np.float64))
    groups = np.asarray(split[group_column]).astype(str) if group_column in split.column_names else None
    return ClassificationSplit(series, np.asarray(labels).astype(str), groups=groups)


def load_classification_dataset(spec: str, series_column: str = "past_values", label_column: str = "label",
                                group_column: str | None = "recording", require_group: bool = False) -> dict:
    """Labelled train and test splits, `{"train": ClassificationSplit, "test": ClassificationSplit}`.

    `spec` is a bundled aeon set (`"BasicMotions"`; see `data.BUNDLED_DATASETS`), a folder holding `Name_TRAIN.ts` and
    `Name_TEST.ts` (the UEA/UCR layout), the path of a `Name_TRAIN.ts` file, or a `datasets.DatasetDict` saved with
    `save_to_disk` whose `train` and `test` splits have a series column and a label column. A `DatasetDict` with a
    `group_column` (by default `recording`, which `build_geneactiv_dataset` writes; None reads none) gives each split
    its `groups`; with `require_group` a dataset whose train split lacks that column is refused (the `.ts` layouts
    have none).
    """
    from ..corpora.data import BUNDLED_DATASETS, bundled_data_dir

    path = Path(spec).expanduser()
    bundled = {name.lower(): name for name in BUNDLED_DATASETS}
    if not path.exists() and spec.lower() in bundled:
        path = bundled_data_dir() / bundled[spec.lower()]
    if path.is_file() and path.name.upper().endswith("_TRAIN.TS"):
        stem = path.name[: -len("_TRAIN.ts")]
        files = {"train": path, "test": path.with_name(f"{stem}_TEST.ts")}
    elif path.is_dir() and (path / "dataset_dict.json").exists():
        import datasets

        splits = datasets.load_from_disk(str(path))
        missing = {"train", "test"} - set(splits)
        if missing:
            raise ValueError(f"dataset {spec!r} has no {sorted(missing)} split(s); it has {sorted(splits)}.")
        return {name: _read_labelled_hf(splits[name], series_column, label_column, spec, group_column,
                                        require_group and name == "train") for name in ("train", "test")}
    elif path.is_dir():
        files = {split: next(iter(sorted(path.glob(f"*_{split.upper()}.ts"))), None) for split in ("train", "test")}
    else:
        raise ValueError(
            f"unknown dataset {spec!r}: not a bundled set ({', '.join(BUNDLED_DATASETS)}), nor a folder with "
            "Name_TRAIN.ts and Name_TEST.ts, nor a saved DatasetDict with train and test splits."
        )
    for split, file in files.items():
        if file is None or not Path(file).exists():
            raise ValueError(f"dataset {spec!r} has no {split.upper()} split (expected a *_{split.upper()}.ts file).")
    if require_group:
        raise ValueError(f"dataset {spec!r} is read from .ts files, which have no {group_column!r} column; groups "
                         "come from a saved DatasetDict (build_geneactiv_dataset writes 'recording').")
    return {split: _read_labelled_ts(file) for split, file in files.items()}


def load_labelled_rows(names, input_length: int, max_series: int | None = None, split: str = "train") -> tuple:
    """Univariate rows of the bundled sets `names` (keys of `CLASS_NAMES`), in their own units, resampled to
    `input_length`, with global label ids: `(past_values, labels, class names, source of each row)`. The first
    `max_series` series of each set are kept; every channel of a series becomes a row with its series' label."""
    from ..corpora.data import bundled_data_dir, prepare_series

    rows, labels, class_names, sources = [], [], [], []
    for name in names:
        data = load_classification_dataset(str(bundled_data_dir() / name))[split]
        ids = {key: len(class_names) + index for index, key in enumerate(CLASS_NAMES[name])}
        class_names += list(CLASS_NAMES[name].values())
        for series, label in list(zip(data.series, data.labels))[:max_series]:
            channels = prepare_series([series], input_length, normalize=False)
            rows.append(channels)
            labels += [ids[label]] * len(channels)
            sources += [name] * len(channels)
    if not rows:
        return np.zeros((0, input_length), np.float32), np.zeros(0, np.int64), class_names, sources
    return np.concatenate(rows), np.asarray(labels, dtype=np.int64), class_names, sources


def dataset_name(spec: str) -> str:
    """A short name for a dataset spec: the bundled name, or the folder / file stem."""
    path = Path(spec)
    name = path.name[: -len("_TRAIN.ts")] if path.name.upper().endswith("_TRAIN.TS") else path.name
    return name or spec


# ---- features --------------------------------------------------------------------------------------------------------


@torch.no_grad()
def extract_features(model, feature_extractor, series: list, batch_size: int = 64, device=None) -> dict:
    """Frozen VQShape features of `series` (a list of `(channels, time)` arrays), flattened over channels.

    Args:
        model: a `VQShapeModel` or any VQShape head (its backbone is used); it is run in eval mode.
        feature_extractor: the model's `VQShapeFeatureExtractor` (fills gaps, resamples to `input_length`).
    Returns:
        `{"tokens": (num_series, channels * num_tokens * (code_dim + 4)), "histogram": (num_series, channels *
        num_codes) counts, "raw": (num_series, channels * input_length) resampled values}`, float32 numpy arrays.
    """
    backbone = model.base_model  # VQShapeModel itself, or a head's `vqshape`
    was_training = backbone.training
    backbone.eval()
    device = device or next(backbone.parameters()).device
    parts = {kind: [] for kind in FEATURE_KINDS}
    try:
        for start in range(0, len(series), batch_size):
            past_values = torch.as_tensor(feature_extractor(list(series[start : start + batch_size]))["past_values"])
            if past_values.ndim == 2:  # univariate: "batch time -> batch time 1"
                past_values = past_values.unsqueeze(-1)
            outputs = backbone(past_values.to(device), return_dict=True)
            parts["tokens"].append(outputs.token_features.flatten(start_dim=1).float().cpu())
            parts["histogram"].append(outputs.histogram.flatten(start_dim=1).float().cpu())
            # "batch time channels -> batch (channels time)"
            parts["raw"].append(past_values.transpose(1, 2).flatten(start_dim=1).float())
    finally:
        backbone.train(was_training)
    return {kind: torch.cat(values).numpy() for kind, values in parts.items()}


def fit_scaler(kind: str, train_features: np.ndarray):
    """A scikit-learn scaler fitted on the training rows: min-max for histograms, standardisation otherwise."""
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    scaler = MinMaxScaler() if kind == "histogram" else StandardScaler()
    return scaler.fit(train_features)


# ---- the linear probe ------------------------------------------------------------------------------------------------


@dataclass
class LinearProbes:
    """Linear classifiers trained together, one per (weight_decay, dropout) of `settings`.

    `weight`: `(num_settings, num_features, num_classes)`; `bias`: `(num_settings, num_classes)`.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    settings: list

    @torch.no_grad()
    def logits(self, features: np.ndarray) -> torch.Tensor:
        """`(num_series, num_features)` -> `(num_settings, num_series, num_classes)` (dropout is off at test time)."""
        inputs = torch.as_tensor(features, dtype=torch.float32)
        return torch.einsum("nd,gdk->gnk", inputs, self.weight) + self.bias[:, None]

    def module(self, index: int = 0) -> nn.Sequential:
        """Setting `index` as the `nn.Sequential(nn.Dropout(p), nn.Linear)` it stands for."""
        _, dropout = self.settings[index]
        linear = nn.Linear(self.weight.shape[1], self.weight.shape[2])
        with torch.no_grad():
            linear.weight.copy_(self.weight[index].T)
            linear.bias.copy_(self.bias[index])
        return nn.Sequential(nn.Dropout(dropout), linear)


def train_linear_probes(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    settings,
    seed: int = 0,
    epochs: int = 300,
    learning_rate: float = 1e-3,
    batch_size: int = 256,
    distillation=None,
) -> LinearProbes:
    """Train `nn.Sequential(nn.Dropout(p), nn.Linear)` with `AdamW(lr, weight_decay)` for each `(weight_decay, p)` of
    `settings`, all at once.

    The settings are stacked into one `(num_settings, num_features, num_classes)` weight: Adam's state is elementwise
    and each setting's loss only reaches its own slice, so this is the same as training them one by one; AdamW's
    decoupled decay, `param *= 1 - lr * weight_decay`, is applied per setting before each step. Settings with the same
    dropout share the dropout masks of a step. Initialisation is `nn.Linear`'s, from `seed`; minibatches of
    `batch_size` are shuffled by `seed` (full batch when there are fewer rows).

    Args:
        features: `(num_series, num_features)`, already scaled.
        labels: `(num_series,)` integer class indices in `[0, num_classes)`.
        distillation: None (cross-entropy on the labels) or a `distillation.ProbeDistillation` of the same rows:
            every setting then trains on its loss, the labels' cross-entropy plus the teacher-weighted KD.
    """
    settings = [(float(weight_decay), float(dropout)) for weight_decay, dropout in settings]
    inputs = torch.as_tensor(features, dtype=torch.float32)
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    num_series, num_features = inputs.shape
    num_settings = len(settings)
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(num_features)  # nn.Linear's default initialisation
    weight = ((torch.rand(num_settings, num_features, num_classes, generator=generator) * 2 - 1)
              * bound).requires_grad_()
    bias = ((torch.rand(num_settings, num_classes, generator=generator) * 2 - 1) * bound).requires_grad_()
    decay = torch.tensor([weight_decay for weight_decay, _ in settings])
    # settings grouped by dropout rate: one mask per rate and step, and one matmul per rate
    groups = {}
    for index, (_, dropout) in enumerate(settings):
        groups.setdefault(dropout, []).append(index)
    groups = [(dropout, torch.tensor(indices)) for dropout, indices in groups.items()]
    optimizer = torch.optim.Adam([weight, bias], lr=learning_rate)
    for _ in range(epochs):
        order = torch.randperm(num_series, generator=generator)
        for start in range(0, num_series, batch_size):
            batch = order[start : start + batch_size]
            x, y = inputs[batch], targets[batch]
            logits = torch.empty(num_settings, len(batch), num_classes)
            for dropout, indices in groups:
                dropped = x
                if dropout > 0:  # nn.Dropout: zero with probability p, scale the rest by 1 / (1 - p)
                    mask = torch.rand(x.shape, generator=generator) >= dropout
                    dropped = x * mask / (1 - dropout)
                # (batch, num_features) x (settings, num_features, num_classes) -> (settings, batch, num_classes)
                logits[indices] = torch.einsum("nd,gdk->gnk", dropped, weight[indices]) + bias[indices, None]
            # sum over settings of each setting's mean loss: every setting gets exactly its own gradient
            if distillation is None:
                loss = F.cross_entropy(logits.reshape(-1, num_classes), y.repeat(num_settings), reduction="sum")
            else:
                loss = distillation.loss(logits, y, batch).sum()
            loss = loss / len(y)
            optimizer.zero_grad()
            loss.backward()
            with torch.no_grad():  # AdamW's decoupled weight decay, one value per setting
                weight.mul_((1 - learning_rate * decay)[:, None, None])
                bias.mul_((1 - learning_rate * decay)[:, None])
            optimizer.step()
    return LinearProbes(weight.detach(), bias.detach(), settings)


@dataclass
class ProbeResult:
    """One seed of the protocol on one feature kind: the selected setting, validation scores and test metrics."""

    weight_decay: float
    dropout: float
    validation_accuracy: float
    validation_scores: dict  # {(weight_decay, dropout): (accuracy, cross-entropy)}
    metrics: dict
    predictions: np.ndarray  # test label indices


def select_and_evaluate(
    kind: str,
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    seed: int,
    weight_decays=WEIGHT_DECAYS,
    dropouts=DROPOUTS,
    validation_fraction: float = 0.2,
    groups=None,
    **training,
) -> ProbeResult:
    """Select weight decay x dropout on a stratified, seeded validation share of TRAIN, refit on all of TRAIN, score
    on TEST. Scalers are fitted on the rows a classifier trains on (the validation and test rows are only
    transformed). Labels are integer class indices; `training` goes to `train_linear_probes`. With `groups` (the
    recording of each TRAIN series) the validation share holds whole recordings out (`finetuning.validation_split`).
    """
    from sklearn.model_selection import train_test_split

    from .finetuning import validation_split

    settings = list(itertools.product(weight_decays, dropouts))
    indices = np.arange(len(train_labels))
    if groups is not None:
        fit_rows, validation_rows = validation_split(train_labels, validation_fraction, seed, groups)
    else:
        try:  # stratified when every class has enough series for both parts
            fit_rows, validation_rows = train_test_split(indices, test_size=validation_fraction,
                                                         stratify=train_labels, random_state=seed)
        except ValueError:
            fit_rows, validation_rows = train_test_split(indices, test_size=validation_fraction, random_state=seed)
    scaler = fit_scaler(kind, train_features[fit_rows])
    probes = train_linear_probes(scaler.transform(train_features[fit_rows]), train_labels[fit_rows], num_classes,
                                 settings, seed=seed, **training)
    logits = probes.logits(scaler.transform(train_features[validation_rows]))
    validation_targets = torch.as_tensor(train_labels[validation_rows]).long()
    accuracy = (logits.argmax(-1) == validation_targets).float().mean(-1)
    cross_entropy = torch.stack([F.cross_entropy(setting_logits, validation_targets) for setting_logits in logits])
    # best validation accuracy; ties (frequent on small validation sets) go to the lower validation cross-entropy
    best = min(range(len(settings)), key=lambda index: (-accuracy[index].item(), cross_entropy[index].item()))
    weight_decay, dropout = settings[best]

    scaler = fit_scaler(kind, train_features)
    final = train_linear_probes(scaler.transform(train_features), train_labels, num_classes, [settings[best]],
                                seed=seed, **training)
    predictions = final.logits(scaler.transform(test_features))[0].argmax(-1).numpy()
    return ProbeResult(
        weight_decay=weight_decay,
        dropout=dropout,
        validation_accuracy=accuracy[best].item(),
        validation_scores={setting: (accuracy[i].item(), cross_entropy[i].item())
                           for i, setting in enumerate(settings)},
        metrics=classification_metrics(test_labels, predictions),
        predictions=predictions,
    )


# ---- baselines -------------------------------------------------------------------------------------------------------


def baseline_predictions(method: str, train: ClassificationSplit, test: ClassificationSplit, seed: int = 0,
                         length: int = 100) -> np.ndarray:
    """Test-set predictions (label names) of a baseline trained on `train`, all series resampled to `length` steps.

    `method`: `"minirocket"` (aeon's MiniRocketClassifier, 10,000 kernels and a ridge classifier, `random_state=seed`)
    or `"dtw"` (aeon's KNeighborsTimeSeriesClassifier, 1 neighbour, full-window dependent DTW; deterministic).
    """
    threads = torch.get_num_threads()
    try:
        return _baseline_predictions(method, train, test, seed, length)
    finally:
        # aeon/numba change torch's thread count; left so, the probes that follow run many times slower
        torch.set_num_threads(threads)


def _baseline_predictions(method, train, test, seed, length):
    train_values, test_values = resample_series(train.series, length), resample_series(test.series, length)
    if method == "minirocket":
        from aeon.classification.convolution_based import MiniRocketClassifier

        classifier = MiniRocketClassifier(random_state=seed)
    elif method == "dtw":
        from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

        classifier = KNeighborsTimeSeriesClassifier(distance="dtw", n_neighbors=1)
    else:
        raise ValueError(f"unknown baseline {method!r}; choose from {BASELINES}.")
    classifier.fit(train_values.astype(np.float64), train.labels)
    return np.asarray(classifier.predict(test_values.astype(np.float64))).astype(str)


# ---- the protocol ----------------------------------------------------------------------------------------------------


def run_protocol(
    model,
    feature_extractor,
    datasets: dict,
    seeds=(0, 1, 2, 3, 4),
    feature_kinds=FEATURE_KINDS,
    baselines=(),
    baseline_length: int = 100,
    feature_batch_size: int = 64,
    log=print,
    **probe,
) -> list:
    """The protocol over `datasets` (`{name: {"train": ClassificationSplit, "test": ClassificationSplit}}`).

    Returns one row per dataset, method and seed: `dataset`, `method`, `seed`, the three test metrics,
    `weight_decay`, `dropout` and `validation_accuracy` (probes only) and `seconds`. `probe` goes to
    `select_and_evaluate` (`weight_decays`, `dropouts`, `validation_fraction`, `epochs`, `learning_rate`,
    `batch_size`).
    1-NN DTW is deterministic: it runs once per dataset and its row is repeated for every seed.
    """
    rows = []
    for name, splits in datasets.items():
        train, test = splits["train"], splits["test"]
        classes = np.unique(train.labels)
        train_targets = np.searchsorted(classes, train.labels)
        unseen = ~np.isin(test.labels, classes)
        if unseen.any():
            raise ValueError(f"{name}: test labels {sorted(set(test.labels[unseen]))} never occur in the "
                             "training split.")
        test_targets = np.searchsorted(classes, test.labels)
        started = time.perf_counter()
        features = {split: extract_features(model, feature_extractor, part.series, feature_batch_size)
                    for split, part in (("train", train), ("test", test))}
        log(f"{name}: {len(train)} train / {len(test)} test series, {len(classes)} classes; features in "
            f"{time.perf_counter() - started:.1f}s: " + ", ".join(f"{kind} {features['train'][kind].shape[1]}"
                                                            for kind in feature_kinds))
        for kind in feature_kinds:
            for seed in seeds:
                started = time.perf_counter()
                result = select_and_evaluate(kind, features["train"][kind], train_targets, features["test"][kind],
                                             test_targets, len(classes), seed, groups=train.groups, **probe)
                rows.append({"dataset": name, "method": METHOD_NAMES[kind], "seed": seed, **result.metrics,
                             "weight_decay": result.weight_decay, "dropout": result.dropout,
                             "validation_accuracy": result.validation_accuracy,
                             "seconds": time.perf_counter() - started})
            log(_progress(rows[-len(seeds):]))
        for method in baselines:
            deterministic = None
            for seed in seeds:
                started = time.perf_counter()
                if deterministic is None:
                    predictions = baseline_predictions(method, train, test, seed, baseline_length)
                    metrics = classification_metrics(test.labels, predictions)
                    seconds = time.perf_counter() - started
                    if method == "dtw":
                        deterministic = (metrics, seconds)
                else:
                    metrics, seconds = deterministic
                rows.append({"dataset": name, "method": METHOD_NAMES[method], "seed": seed, **metrics,
                             "weight_decay": None, "dropout": None, "validation_accuracy": None, "seconds": seconds})
            log(_progress(rows[-len(seeds):]))
    return rows


def _progress(rows) -> str:
    accuracies = [row["accuracy"] for row in rows]
    return f"  {rows[0]['dataset']} {rows[0]['method']}: accuracy {_mean_std(accuracies)} over {len(rows)} seed(s)"


def _mean_std(values) -> str:
    values = np.asarray(values, dtype=float)
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.3f} ± {std:.3f}"


def summarize(rows) -> list:
    """Per dataset and method: mean and sample standard deviation over seeds of each metric, in first-seen order."""
    groups = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["method"]), []).append(row)
    summary = []
    for (dataset, method), group in groups.items():
        entry = {"dataset": dataset, "method": method, "seeds": len(group)}
        for metric in METRICS:
            values = np.asarray([row[metric] for row in group], dtype=float)
            entry[f"{metric}_mean"] = float(values.mean())
            entry[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def markdown_table(rows, metric: str = "accuracy") -> str:
    """Datasets as rows, methods as columns, `mean ± std` of `metric` over seeds; the best mean in bold."""
    summary = summarize(rows)
    datasets = list(dict.fromkeys(entry["dataset"] for entry in summary))
    methods = list(dict.fromkeys(entry["method"] for entry in summary))
    cells = {(entry["dataset"], entry["method"]): entry for entry in summary}
    lines = ["| dataset | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for dataset in datasets:
        means = [cells[(dataset, m)][f"{metric}_mean"] for m in methods if (dataset, m) in cells]
        best = max(means) if means else None
        row = []
        for method in methods:
            entry = cells.get((dataset, method))
            if entry is None:
                row.append("")
                continue
            text = f"{entry[f'{metric}_mean']:.3f} ± {entry[f'{metric}_std']:.3f}"
            row.append(f"**{text}**" if np.isclose(entry[f"{metric}_mean"], best) else text)
        lines.append(f"| {dataset} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def results_markdown(rows) -> str:
    """The accuracy table, then the balanced-accuracy and macro-F1 tables."""
    seeds = len({row["seed"] for row in rows})
    titles = {"accuracy": "Test accuracy", "balanced_accuracy": "Balanced accuracy", "macro_f1": "Macro-F1"}
    parts = [f"{titles[metric]}, mean ± std over {seeds} seed(s):\n\n{markdown_table(rows, metric)}"
             for metric in METRICS]
    return "\n\n".join(parts) + "\n"


def write_results(rows, output_dir) -> dict:
    """Write `results.csv` (one row per dataset, method and seed), `summary.csv` and `results.md` into `output_dir`;
    returns their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"results": output_dir / "results.csv", "summary": output_dir / "summary.csv",
             "markdown": output_dir / "results.md"}
    for key, table in (("results", rows), ("summary", summarize(rows))):
        with open(paths[key], "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    paths["markdown"].write_text(results_markdown(rows))
    return {key: str(path) for key, path in paths.items()}


__all__ = [
    "BASELINES",
    "CLASS_NAMES",
    "DROPOUTS",
    "FEATURE_KINDS",
    "METRICS",
    "WEIGHT_DECAYS",
    "ClassificationSplit",
    "LinearProbes",
    "ProbeResult",
    "baseline_predictions",
    "classification_metrics",
    "dataset_name",
    "extract_features",
    "fit_scaler",
    "load_classification_dataset",
    "load_labelled_rows",
    "markdown_table",
    "resample_series",
    "results_markdown",
    "run_protocol",
    "select_and_evaluate",
    "summarize",
    "train_linear_probes",
    "write_results",
]
