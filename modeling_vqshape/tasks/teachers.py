"""Teachers from anywhere, for `distillation.py`: a saved classifier, or outputs computed elsewhere.

A teacher gives, for a batch, `TeacherBatch(logits, features)`: logits `(batch_size, num_labels)` in the student's
label order and features `(batch_size, feature_dim)` or None. Two kinds:

- `ModelTeacher`: any `AutoModelForSequenceClassification` folder or Hub id (VQShape or not) that takes
  `past_values`; its classes are read from `config.id2label`.
- `OutputsTeacher`: a file of per-sample logits (and features, if wanted) of the TRAIN split, keyed by sample id, so
  that a teacher trained in another framework can serve. The layout (`save_teacher_outputs` writes it; anything that
  writes the same arrays works):
  - `.safetensors`: tensors `logits` `(num_samples, num_classes)` and optionally `features` `(num_samples, dim)`;
    metadata `sample_ids` and `label_names`, JSON lists of strings (row order, class order of the logits columns).
  - `.npz` (read with `allow_pickle=False`): arrays `logits`, optionally `features`, and `sample_ids`, `label_names`
    as unicode string arrays (`np.array([...], dtype=str)`, not object arrays).
  - Either may also hold a **cross-fitted** teacher (`cross_fit` computes one): `folds` `(num_samples,)`, the fold of
    each sample (0 to F - 1), and `fold_logits` `(F, num_samples, num_classes)`, where `fold_logits[f]` scores every
    sample outside fold `f` with a model fitted without fold `f` and without the sample's own fold (rows of fold `f`
    are not read). `logits` are then the out-of-fold ones (a model fitted without the sample's fold). The student's
    cross-validation takes these folds, and a head judged on fold `f` learns from `fold_logits[f]`: no teacher that
    saw the held-out rows teaches it.

Both check the teacher's classes against the student's labels by name and refuse clearly on a mismatch; a
`label_map` {teacher class: student label} maps a finer teacher onto coarser labels (its probabilities are summed,
i.e. logits merged by logsumexp). An outputs file that lacks some of the requested samples, or repeats one, is refused.
`read_label_map` reads such a map from a JSON file or inline JSON, `teacher_label_names` gives a teacher's classes
without loading its weights, and `check_label_map` refuses a map naming classes that neither the data nor any teacher
has (a misspelt class would otherwise pass through unmapped).

    teacher = load_teacher("lab/vqshape-geneactiv", label_names)                    # a classifier
    teacher = load_teacher("raw_teacher.npz", label_names, sample_ids=train_ids)    # outputs computed elsewhere
    logits, features = teacher(past_values=batch_values, sample_index=batch_rows)
"""

import json
import os
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

OUTPUT_SUFFIXES = (".safetensors", ".npz")
MIN_CROSS_FIT_FOLDS = 3  # fold_logits[f] of a row of fold g come from a model fitted without f and g


class TeacherBatch(NamedTuple):
    """A teacher's answer for a batch: `logits` `(batch_size, num_labels)` in the student's label order, `features`
    `(batch_size, feature_dim)` or None."""

    logits: torch.Tensor
    features: torch.Tensor | None


# ---- classes by name -------------------------------------------------------------------------------------------------


def label_alignment(teacher_label_names: Sequence, label_names: Sequence, label_map: dict | None = None,
                    teacher: str = "teacher") -> torch.Tensor:
    """For each of the teacher's classes, the index of the student label it stands for, `(num_teacher_classes,)`.

    Without `label_map` the two sets of names must be equal (any order); with it, every teacher class must map to a
    student label and every label must receive at least one class. Raises ValueError naming what is missing or extra.
    """
    teacher_label_names = [str(name) for name in teacher_label_names]
    label_names = [str(name) for name in label_names]
    if len(set(teacher_label_names)) != len(teacher_label_names):
        raise ValueError(f"{teacher}: its class names repeat: {teacher_label_names}.")
    mapping = {str(key): str(value) for key, value in (label_map or {}).items()}
    mapped = [mapping.get(name, name) for name in teacher_label_names]
    unknown = sorted(set(mapped) - set(label_names))
    uncovered = sorted(set(label_names) - set(mapped))
    if unknown or uncovered:
        default_names = all(name == f"LABEL_{index}" for index, name in enumerate(teacher_label_names))
        hint = (" The teacher saved no class names (config.id2label is the default LABEL_i): save it with id2label."
                if default_names else " Pass a label map {teacher class: label} if they are the same classes.")
        raise ValueError(f"{teacher}: its classes do not match the labels by name. Teacher classes"
                         f"{' (mapped)' if mapping else ''}: {sorted(set(mapped))}; labels: {label_names}; "
                         f"not among the labels: {unknown}; labels the teacher lacks: {uncovered}.{hint}")
    index = {name: position for position, name in enumerate(label_names)}
    return torch.tensor([index[name] for name in mapped], dtype=torch.long)


def read_label_map(value) -> dict | None:
    """A label map {fine class: coarse label} from `value`: a path to a JSON file, or inline JSON (None stays None).
    Raises ValueError unless it is a JSON object of strings to strings."""
    if value is None:
        return None
    text = os.fspath(value)
    source = text
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as file:
            text = file.read()
    try:
        label_map = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"label map {source!r}: neither a JSON file nor inline JSON ({error}).") from None
    if not isinstance(label_map, dict) or not all(isinstance(key, str) and isinstance(target, str)
                                                  for key, target in label_map.items()):
        raise ValueError(f"label map {source!r}: a JSON object {{fine class: coarse label}} of strings.")
    return label_map


def check_label_map(label_map: dict, known_classes) -> None:
    """Refuse a label map whose keys are not all among `known_classes` (the classes of the data and of the
    teachers), naming the unknown ones and the known ones."""
    known = sorted({str(name) for name in known_classes})
    unknown = sorted(set(label_map) - set(known))
    if unknown:
        raise ValueError(f"the label map names classes that neither the dataset nor any teacher has: {unknown}; "
                         f"known classes: {known}.")


def map_labels(labels, label_map: dict | None) -> np.ndarray:
    """`labels` `(num_series,)` with every class of `label_map` replaced by its coarse label (others unchanged)."""
    labels = np.asarray([str(label) for label in labels])
    if not label_map:
        return labels
    return np.asarray([label_map.get(label, label) for label in labels])


def align_logits(logits: torch.Tensor, alignment: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Teacher logits `(batch_size, num_teacher_classes)` -> `(batch_size, num_labels)` in the student's order; the
    classes mapped onto one label are merged by logsumexp (their probabilities add up)."""
    alignment = alignment.to(logits.device)
    if len(alignment) == num_labels:  # a permutation
        return logits[:, torch.argsort(alignment)]
    return torch.stack([logits[:, alignment == label].logsumexp(-1) for label in range(num_labels)], dim=-1)


# ---- a saved classifier ----------------------------------------------------------------------------------------------


class ModelTeacher:
    """A frozen sequence classifier (any `PreTrainedModel` whose forward takes `past_values` and returns `logits`).

    Features: the output's `features` when it has them (VQShape classifiers: the head's input), otherwise the last
    of its `hidden_states` averaged over every axis but the batch and the hidden one, otherwise None.
    """

    def __init__(self, model, label_names: Sequence, label_map: dict | None = None, name: str | None = None):
        self.model = model.eval().requires_grad_(False)
        self.name = name or getattr(model, "name_or_path", None) or type(model).__name__
        id2label = model.config.id2label
        self.teacher_label_names = [id2label[index] for index in sorted(id2label, key=int)]
        if len(self.teacher_label_names) != model.config.num_labels:
            raise ValueError(f"{self.name}: config.id2label has {len(self.teacher_label_names)} names for "
                             f"{model.config.num_labels} labels.")
        self.label_names = [str(name) for name in label_names]
        self.alignment = label_alignment(self.teacher_label_names, self.label_names, label_map, self.name)

    def to(self, device):
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, past_values: torch.Tensor, sample_index=None) -> TeacherBatch:
        """`past_values` as the teacher's config expects them (its own `input_length` and channels)."""
        device = next(self.model.parameters()).device
        outputs = self.model(past_values=past_values.to(device), output_hidden_states=True, return_dict=True)
        features = getattr(outputs, "features", None)
        hidden_states = getattr(outputs, "hidden_states", None)
        if features is None and hidden_states:
            last = hidden_states[-1]
            features = last.reshape(last.shape[0], -1, last.shape[-1]).mean(1)
        logits = align_logits(outputs.logits, self.alignment, len(self.label_names))
        return TeacherBatch(logits, features)


# ---- outputs computed elsewhere --------------------------------------------------------------------------------------


def save_teacher_outputs(path, sample_ids: Sequence, logits, label_names: Sequence, features=None, folds=None,
                         fold_logits=None):
    """Write a teacher outputs file (`.safetensors` or `.npz`, by the suffix of `path`): `logits` `(num_samples,
    num_classes)`, optional `features` `(num_samples, dim)`, the `sample_ids` of the rows and the `label_names` of the
    columns; for a cross-fitted teacher also `folds` `(num_samples,)` and `fold_logits` `(F, num_samples,
    num_classes)` (`cross_fit`'s; the module's docstring says what they hold)."""
    path = os.fspath(path)
    if not path.endswith(OUTPUT_SUFFIXES):
        raise ValueError(f"{path}: a teacher outputs file ends in one of {OUTPUT_SUFFIXES}.")
    sample_ids, label_names = [str(value) for value in sample_ids], [str(value) for value in label_names]
    arrays = {"logits": np.asarray(logits, dtype=np.float32)}
    if features is not None:
        arrays["features"] = np.asarray(features, dtype=np.float32)
    if folds is not None:
        arrays["folds"] = np.asarray(folds, dtype=np.int64)
    if fold_logits is not None:
        arrays["fold_logits"] = np.asarray(fold_logits, dtype=np.float32)
    _check_outputs(path, arrays, sample_ids, label_names)
    from ..saving_vqshape import atomic_write

    with atomic_write(path) as temporary:  # the temporary keeps the suffix: np.savez adds none
        if path.endswith(".safetensors"):
            from safetensors.numpy import save_file

            save_file(arrays, str(temporary),
                      metadata={"sample_ids": json.dumps(sample_ids), "label_names": json.dumps(label_names)})
        else:  # unicode string arrays: np.load reads them back with allow_pickle=False
            names = {"sample_ids": np.array(sample_ids, dtype=str), "label_names": np.array(label_names, dtype=str)}
            np.savez(temporary, **arrays, **names)


def read_teacher_outputs(path) -> dict:
    """`{"sample_ids", "label_names", "logits", "features"}` of a teacher outputs file, as written by
    `save_teacher_outputs` (`features` None when absent). No pickle is ever loaded."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="numpy") as file:
            metadata = file.metadata() or {}
            arrays = {key: file.get_tensor(key) for key in file.keys()}
        missing = [key for key in ("sample_ids", "label_names") if key not in metadata]
        if missing:
            raise ValueError(f"{path}: its metadata lacks {missing} (JSON lists of strings).")
        sample_ids, label_names = json.loads(metadata["sample_ids"]), json.loads(metadata["label_names"])
    elif path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as file:
            arrays = {key: file[key] for key in file.files}
        missing = [key for key in ("sample_ids", "label_names") if key not in arrays]
        if missing:
            raise ValueError(f"{path}: it lacks the arrays {missing} (unicode string arrays).")
        sample_ids, label_names = arrays.pop("sample_ids").tolist(), arrays.pop("label_names").tolist()
    else:
        raise ValueError(f"{path}: a teacher outputs file ends in one of {OUTPUT_SUFFIXES}.")
    if "logits" not in arrays:
        raise ValueError(f"{path}: it has no `logits` array.")
    sample_ids, label_names = [str(value) for value in sample_ids], [str(value) for value in label_names]
    _check_outputs(path, arrays, sample_ids, label_names)
    return {"sample_ids": sample_ids, "label_names": label_names, "logits": arrays["logits"],
            "features": arrays.get("features"), "folds": arrays.get("folds"), "fold_logits": arrays.get("fold_logits")}


def _check_outputs(path, arrays, sample_ids, label_names):
    logits = arrays["logits"]
    if logits.ndim != 2 or logits.shape != (len(sample_ids), len(label_names)):
        raise ValueError(f"{path}: logits of shape {tuple(logits.shape)} for {len(sample_ids)} samples and "
                         f"{len(label_names)} classes.")
    features = arrays.get("features")
    if features is not None and (features.ndim != 2 or features.shape[0] != len(sample_ids)):
        raise ValueError(f"{path}: features of shape {tuple(features.shape)} for {len(sample_ids)} samples.")
    if ("folds" in arrays) != ("fold_logits" in arrays):
        raise ValueError(f"{path}: a cross-fitted teacher has both `folds` and `fold_logits`, or neither.")
    if "folds" in arrays:
        folds, fold_logits = arrays["folds"], arrays["fold_logits"]
        if folds.shape != (len(sample_ids),) or not np.issubdtype(folds.dtype, np.integer):
            raise ValueError(f"{path}: folds must be integers, one per sample; got shape {tuple(folds.shape)} and "
                             f"dtype {folds.dtype} for {len(sample_ids)} samples.")
        count = int(folds.max()) + 1 if len(folds) else 0
        if len(folds) and (folds.min() < 0 or len(np.unique(folds)) != count or count < MIN_CROSS_FIT_FOLDS):
            raise ValueError(f"{path}: folds must number the samples' folds 0 to F - 1 (F >= {MIN_CROSS_FIT_FOLDS}: "
                             "a model fitted without two folds needs a third), each used; got "
                             f"{sorted(np.unique(folds).tolist())}.")
        if fold_logits.shape != (count, *logits.shape):
            raise ValueError(f"{path}: fold_logits of shape {tuple(fold_logits.shape)} for {count} folds and logits "
                             f"of shape {tuple(logits.shape)}; expected {(count, *logits.shape)}.")
    for key in ("logits", "features", "fold_logits"):  # a log-probability of 0 is -inf: the KD loss turns NaN
        values = arrays.get(key)
        if values is not None and not np.isfinite(values).all():
            raise ValueError(f"{path}: {key} hold {int((~np.isfinite(values)).sum())} non-finite value(s); write "
                             "finite ones (e.g. a classifier's decision values, or log-probabilities clipped at a "
                             "floor such as log(1e-8)).")
    if len(set(sample_ids)) != len(sample_ids):
        repeated = sorted(value for value, count in Counter(sample_ids).items() if count > 1)
        raise ValueError(f"{path}: sample ids repeat: {repeated[:5]}{' ...' if len(repeated) > 5 else ''}.")


class OutputsTeacher:
    """Precomputed logits (and features) of the samples `sample_ids`, rows in that order; a batch is looked up by
    `sample_index`, positions into `sample_ids` (the student's TRAIN rows). A cross-fitted teacher also has `folds`
    `(num_samples,)` and `fold_logits` `(F, num_samples, num_labels)` (else None)."""

    def __init__(self, logits: torch.Tensor, features: torch.Tensor | None, label_names: Sequence, name: str,
                 folds: np.ndarray | None = None, fold_logits: torch.Tensor | None = None):
        self.logits, self.features, self.name = logits, features, name
        self.folds, self.fold_logits = folds, fold_logits
        self.label_names = [str(value) for value in label_names]

    @classmethod
    def from_file(cls, path, sample_ids: Sequence, label_names: Sequence, label_map: dict | None = None):
        """Read `path` (`read_teacher_outputs`), keep the rows of `sample_ids` in that order and align the columns to
        `label_names`; refuses an id that the file lacks and classes that do not match by name."""
        name = os.fspath(path)
        outputs = read_teacher_outputs(path)
        rows = {sample_id: row for row, sample_id in enumerate(outputs["sample_ids"])}
        wanted = [str(value) for value in sample_ids]
        missing = [value for value in wanted if value not in rows]
        if missing:
            raise ValueError(f"{name}: {len(missing)} of the {len(wanted)} training samples have no teacher outputs "
                             f"(e.g. {missing[:5]}); the file must cover every sample of the TRAIN split.")
        alignment = label_alignment(outputs["label_names"], label_names, label_map, name)
        order = torch.tensor([rows[value] for value in wanted], dtype=torch.long)
        logits = align_logits(torch.from_numpy(outputs["logits"]).float()[order], alignment, len(label_names))
        features = outputs["features"]
        features = torch.from_numpy(features).float()[order] if features is not None else None
        folds, fold_logits = outputs["folds"], outputs["fold_logits"]
        if folds is not None:
            folds = folds[order.numpy()]
            fold_logits = torch.stack([align_logits(torch.from_numpy(part).float()[order], alignment, len(label_names))
                                       for part in fold_logits])
        return cls(logits, features, label_names, name, folds, fold_logits)

    def __call__(self, past_values=None, sample_index=None) -> TeacherBatch:
        if sample_index is None:
            raise ValueError(f"{self.name}: a teacher read from a file needs the batch's `sample_index`.")
        sample_index = torch.as_tensor(sample_index, dtype=torch.long).cpu()
        device = past_values.device if past_values is not None else self.logits.device
        features = self.features[sample_index].to(device) if self.features is not None else None
        return TeacherBatch(self.logits[sample_index].to(device), features)


def load_teacher(name_or_path, label_names: Sequence, sample_ids: Sequence | None = None,
                 label_map: dict | None = None, **model_kwargs):
    """A teacher from `name_or_path`: an outputs file (a path ending in `.safetensors` or `.npz`; `sample_ids` are
    the TRAIN samples, in the student's row order) or a saved classifier folder / Hub id, loaded with
    `AutoModelForSequenceClassification.from_pretrained(name_or_path, **model_kwargs)`. Its classes must match
    `label_names` by name (after `label_map`)."""
    path = os.fspath(name_or_path)
    if path.endswith(OUTPUT_SUFFIXES):
        if sample_ids is None:
            raise ValueError(f"{path}: a teacher outputs file needs the `sample_ids` of the training samples.")
        return OutputsTeacher.from_file(path, sample_ids, label_names, label_map)
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, **model_kwargs)
    return ModelTeacher(model, label_names, label_map, name=path)


def teacher_label_names(name_or_path, **model_kwargs) -> list:
    """The class names of a teacher (`load_teacher`'s `name_or_path`), read from an outputs file or from a saved
    classifier's `config.id2label`, without loading its weights."""
    path = os.fspath(name_or_path)
    if path.endswith(OUTPUT_SUFFIXES):
        return read_teacher_outputs(path)["label_names"]
    from transformers import AutoConfig

    id2label = AutoConfig.from_pretrained(path, **model_kwargs).id2label
    return [str(id2label[index]) for index in sorted(id2label, key=int)]


@torch.no_grad()
def precompute(teacher: ModelTeacher, past_values: torch.Tensor, batch_size: int = 64) -> OutputsTeacher:
    """A frozen classifier's outputs on every row of `past_values` `(num_samples, sequence_length, channels)`, kept
    as an `OutputsTeacher` whose rows are those of `past_values` (so that training looks a batch up by its
    `sample_index` and runs no teacher)."""
    batches = [teacher(batch) for batch in past_values.split(batch_size)]
    logits = torch.cat([batch.logits.float().cpu() for batch in batches])
    has_features = all(batch.features is not None for batch in batches)
    features = torch.cat([batch.features.float().cpu() for batch in batches]) if has_features else None
    return OutputsTeacher(logits, features, teacher.label_names, teacher.name)


def training_teachers(names, split, label_names: Sequence, input_length: int, batch_size: int = 64,
                      label_map: dict | None = None, **model_kwargs) -> list:
    """The teachers `names` (folders, Hub ids or outputs files; `load_teacher`) as `OutputsTeacher`s over the rows
    of `split` (a `ClassificationSplit` of TRAIN): an outputs file is read by `split.sample_ids`; a classifier runs
    once over the split, each series resampled to the teacher's own `config.input_length` (else `input_length`)."""
    from .finetuning import labelled_tensors

    teachers, inputs = [], {}
    for name in names:
        teacher = load_teacher(name, label_names, sample_ids=split.sample_ids, label_map=label_map, **model_kwargs)
        if isinstance(teacher, ModelTeacher):
            length = getattr(teacher.model.config, "input_length", None) or input_length
            if length not in inputs:
                inputs[length] = labelled_tensors(split, label_names, length)[0]
            teacher = precompute(teacher, inputs[length], batch_size)
        teachers.append(teacher)
    return teachers


# ---- cross-fitting ---------------------------------------------------------------------------------------------------


def cross_fit(fit_predict, labels, folds: int = 5, seed: int = 0, groups=None) -> dict:
    """A teacher's outputs over TRAIN, cross-fitted: `{"folds", "logits", "fold_logits"}` for `save_teacher_outputs`.

    `fit_predict(fit_rows, scored_rows)` fits the teacher on the rows `fit_rows` of TRAIN (index arrays into
    `labels`) and returns its logits `(len(scored_rows), num_classes)` on `scored_rows`. The rows are split into
    `folds` stratified, seeded folds (whole recordings with `groups`; `finetuning.cross_validation_folds`); `logits`
    score every row by the model fitted without its fold (F fits) and `fold_logits[f]` every row outside fold `f` by
    the model fitted without fold `f` and without the row's fold (F (F - 1) / 2 fits, one per pair of folds; rows of
    fold `f` are left at 0): F (F + 1) / 2 fits in all. So when the student holds out fold `f`, its teachers have
    seen nothing of it. It needs 3 folds or more (fewer where a class has fewer rows or recordings is refused).
    """
    from .finetuning import cross_validation_folds

    labels = np.asarray(labels)
    splits = cross_validation_folds(labels, folds, seed, groups)
    if len(splits) < MIN_CROSS_FIT_FOLDS:
        raise ValueError(f"cross-fitting needs {MIN_CROSS_FIT_FOLDS} folds or more (a model fitted without two folds "
                         f"needs a third), with every class in each; got {len(splits)} (folds={folds}, and the rarest "
                         "class's rows or recordings bound it).")
    fold_of = np.empty(len(labels), dtype=np.int64)
    for index, (_, held_out) in enumerate(splits):
        fold_of[held_out] = index
    logits, fold_logits = None, None
    for first in range(len(splits)):
        scored = splits[first][1]
        values = np.asarray(fit_predict(splits[first][0], scored), dtype=np.float32)
        if logits is None:
            logits = np.zeros((len(labels), values.shape[1]), dtype=np.float32)
            fold_logits = np.zeros((len(splits), *logits.shape), dtype=np.float32)
        logits[scored] = values
        for second in range(first + 1, len(splits)):  # fitted without both folds: scores each for the other's
            fit = np.flatnonzero((fold_of != first) & (fold_of != second))
            both = np.flatnonzero((fold_of == first) | (fold_of == second))
            values = np.asarray(fit_predict(fit, both), dtype=np.float32)
            in_first = fold_of[both] == first
            fold_logits[second, both[in_first]] = values[in_first]
            fold_logits[first, both[~in_first]] = values[~in_first]
    return {"folds": fold_of, "logits": logits, "fold_logits": fold_logits}


def teacher_folds(teachers: Sequence, groups=None) -> tuple:
    """`(folds (num_samples,), fold_logits (F, num_samples, num_teachers, num_labels))` of `teachers`
    (`OutputsTeacher`s over the same rows) when some are cross-fitted, else `(None, None)`. The cross-fitted ones
    must share their folds; a teacher that is not cross-fitted gives its logits to every fold. With `groups` (the
    recording of each row) folds that split a recording are refused: its windows are near copies."""
    fitted = [teacher for teacher in teachers if teacher.folds is not None]
    if not fitted:
        return None, None
    folds, count = fitted[0].folds, fitted[0].fold_logits.shape[0]
    for teacher in fitted[1:]:
        if teacher.fold_logits.shape[0] != count or not np.array_equal(teacher.folds, folds):
            raise ValueError(f"the cross-fitted teachers {fitted[0].name} and {teacher.name} have different folds; "
                             "cross-fit every teacher on the same folds (the same `cross_fit` folds, seed and groups).")
    if groups is not None:
        groups = np.asarray(groups).astype(str)
        pairs = np.unique(np.stack([groups, folds.astype(str)], axis=1), axis=0)  # (recording, fold) pairs
        names, times = np.unique(pairs[:, 0], return_counts=True)
        split = names[times > 1].tolist()
        if split:
            raise ValueError(f"{fitted[0].name}: its folds split recordings across folds ({split[:5]}); cross-fit "
                             "it by recording (`cross_fit(..., groups=...)`).")
    fold_logits = torch.stack([teacher.fold_logits if teacher.folds is not None
                               else teacher.logits.expand(count, *teacher.logits.shape) for teacher in teachers], dim=2)
    return folds, fold_logits


__all__ = [
    "MIN_CROSS_FIT_FOLDS",
    "OUTPUT_SUFFIXES",
    "ModelTeacher",
    "OutputsTeacher",
    "TeacherBatch",
    "align_logits",
    "check_label_map",
    "cross_fit",
    "label_alignment",
    "load_teacher",
    "map_labels",
    "precompute",
    "read_label_map",
    "read_teacher_outputs",
    "save_teacher_outputs",
    "teacher_folds",
    "teacher_label_names",
    "training_teachers",
]
