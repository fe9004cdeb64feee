"""The fine-tuning recipe of `examples/finetune.py`: what a classifier needs besides its model.

- `select_linear_head`: the first stage (a linear probe, as in "linear probing then fine-tuning", Kumar et al.,
  ICLR 2022): on frozen features of the training rows, every candidate feature set x weight decay x dropout is
  trained (`classification.train_linear_probes`) and the validation rows pick one, or k-fold cross-validation over
  all of TRAIN does (`cross_validation_folds`) and the choice is refitted on all of it, with the heads of other
  candidates that improve the out-of-fold logits averaged in (`ensemble_selection`, `combine_heads`: still one
  linear head); the classifier starts from it.
- `add_dataset_arguments`, `labelled_splits`: the dataset options the classifier scripts share, and their TRAIN
  and TEST splits (subsets, sorted label names).
- `probe_initialised_classifier`: a `VQShapeForTimeSeriesClassification` with its label names, started from the
  linear head of `select_linear_head` (the first stage of `finetune.py` and of the student of `distill.py`).
- `classification_dataloaders`: their train, validation (carved from TRAIN) and test dataloaders.
- `labelled_tensors`: a labelled split -> `(past_values, labels)` tensors, every series resampled to the model's
  `input_length` (the length rule: see docs/classification.md).
- `validation_split`: a stratified, seeded share of TRAIN held out to pick the epoch (whole recordings, where the
  dataset names them); TEST is read once, at the end.
- `fit_feature_scaler`: the head's standardisation statistics from the training rows (model state, saved with the
  weights and used by the pipeline and the demo).
- `parameter_groups`: AdamW groups with separate learning rates for the head and the backbone.
- `evaluate_classifier`: accuracy, macro-F1, cross-entropy and the mean top probability over every process's rows.
- `BestEpoch`: keeps the weights of the epoch with the best validation accuracy (ties: lower cross-entropy).
"""

import argparse
import copy
import itertools
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..configuration_vqshape import CLASSIFIER_FEATURE_PARTS, classifier_feature_parts
from ..processing_vqshape import VQShapeFeatureExtractor
from .classification import DROPOUTS, WEIGHT_DECAYS, classification_metrics, train_linear_probes

# the feature sets the first stage chooses from, in order of preference on ties
FEATURE_CANDIDATES = ("combined", "tokens+statistics", "embedding+statistics", "statistics", "reconstruction",
                      "embedding+windows+statistics", "embedding+embedding_max+windows+windows_max+statistics")


def add_dataset_arguments(parser):
    """The dataset options of the classifier scripts: `--dataset` (what `load_classification_dataset` reads), its
    columns, `--validation_fraction`, `--group_column` (the recording of each series, held out whole) and the
    stratified subsets `--max_train_samples`, `--max_eval_samples`."""
    parser.add_argument("--dataset", default="BasicMotions")
    parser.add_argument("--series_column", default="past_values")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--validation_fraction", type=float, default=0.2, help="Stratified share of TRAIN.")
    parser.add_argument("--group_column", default=None,
                        help="Column naming the recording of each series (default: 'recording' when the dataset has "
                             "it): the validation split holds whole recordings out; 'none' splits by series.")
    parser.add_argument("--max_train_samples", type=int, default=None, help="Stratified subset of TRAIN.")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="Stratified subset of TEST.")


def add_training_arguments(parser):
    """The training options `finetune.py` and `distill.py` share: batch sizes, learning rates (head, backbone), weight
    decay, epochs after the first stage, candidate feature sets of the first stage, calibration, threads and seed."""
    parser.add_argument("--classifier_features", nargs="+", default=list(FEATURE_CANDIDATES),
                        help="Candidate feature sets for the validation to choose from: tokens, histogram, embedding, "
                             "statistics, reconstruction, windows, embedding_max, windows_max joined by '+', or "
                             "combined (the first four).")
    parser.add_argument("--per_device_train_batch_size", type=int, default=16)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="The head's, after the linear probe.")
    parser.add_argument("--backbone_learning_rate", type=float, default=1e-4)
    parser.add_argument("--weight_decay", type=float, default=0.01, help="The backbone's (the head's is chosen).")
    parser.add_argument("--num_train_epochs", type=int, default=0,
                        help="Of the whole model after the probe; 0: the cross-validated probe alone (finetune.py's "
                             "default; distill.py's too, but 10 with --weighting mtkd_rl).")
    parser.add_argument("--probe_folds", type=int, default=10,
                        help="Without a second stage (--num_train_epochs 0, the default): the head is chosen by this "
                             "many folds of cross-validation over TRAIN (distill.py with cross-fitted teachers: "
                             "their folds), then trained on all of it; 0: by the validation rows, trained on the "
                             "others (also where a class has a single row).")
    parser.add_argument("--probe_ensemble", type=_heads_added, default=10,
                        help="With cross-validation: up to this many greedy additions of other candidates' heads "
                             "that raise the out-of-fold accuracy (or, at equal accuracy, lower the cross-entropy), "
                             "averaged into one linear head; 0: one head.")
    parser.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=True,
                        help="Fit a temperature to the held-out rows (out of fold, or the validation rows) and fold "
                             "it into the head (calibration.py); predictions do not change, probabilities do.")
    parser.add_argument("--num_threads", type=int, default=None, help="CPU threads per process (default: cores).")
    parser.add_argument("--seed", type=int, default=0)


def _heads_added(value: str) -> int:
    """`--probe_ensemble`'s type: 0 or more."""
    count = int(value)
    if count < 0:
        raise argparse.ArgumentTypeError(f"--probe_ensemble is how many heads may be added to the chosen one: 0 (one "
                                         f"head) or more, got {count}.")
    return count


def labelled_splits(args, label_map: dict | None = None, known_classes=()) -> tuple:
    """`(train, test, label_names)` of `args.dataset` (`add_dataset_arguments`): the seeded subsets of TRAIN and TEST
    and the sorted class names of TRAIN; refuses test labels that TRAIN never has. With `label_map` {fine class:
    coarse label} both splits carry the coarse labels (`teachers.map_labels`); a map naming a class that neither
    split nor `known_classes` (the teachers') has is refused (`teachers.check_label_map`)."""
    from dataclasses import replace

    from .classification import load_classification_dataset
    from .teachers import check_label_map, map_labels

    group_column = getattr(args, "group_column", None)  # None: "recording" where the dataset has it
    splits = load_classification_dataset(
        args.dataset, args.series_column, args.label_column,
        None if group_column == "none" else group_column or "recording",
        require_group=group_column not in (None, "none"))
    if label_map:
        check_label_map(label_map, [*splits["train"].labels, *splits["test"].labels, *known_classes])
        splits = {name: replace(split, labels=map_labels(split.labels, label_map)) for name, split in splits.items()}
    train = splits["train"].subset(args.max_train_samples, args.seed)
    test = splits["test"].subset(args.max_eval_samples, args.seed)
    label_names = sorted({str(label) for label in train.labels})
    unseen = sorted(set(test.labels) - set(label_names))
    if unseen:
        raise ValueError(f"{args.dataset}: test labels {unseen} never occur in the training split.")
    return train, test, label_names


def classification_dataloaders(args, input_length: int, with_rows: bool = False, label_map: dict | None = None,
                               known_classes=()) -> tuple:
    """The dataloaders of the classifier scripts (options: `add_dataset_arguments`, `add_training_arguments`; the
    labels mapped by `label_map`, see `labelled_splits`):
    `((train, validation, test), label_names, train_split, (past_values, labels, rows))`. `past_values`, `labels`
    are TRAIN's tensors at `input_length`, `rows` its (train rows, validation rows) (`validation_split`); train
    batches are `(past_values, labels)`, with `with_rows` also the TRAIN row of each series (what teachers are looked
    up by); validation (carved from TRAIN) and test batches are `(past_values, labels)`."""
    from torch.utils.data import DataLoader, TensorDataset

    train, test, label_names = labelled_splits(args, label_map, known_classes)
    past_values, labels = labelled_tensors(train, label_names, input_length)
    rows = validation_split(labels.numpy(), args.validation_fraction, args.seed, groups=train.groups)
    train_rows, validation_rows = (torch.as_tensor(part) for part in rows)
    train_data = [past_values[train_rows], labels[train_rows]] + ([train_rows] if with_rows else [])
    train_dataloader = DataLoader(TensorDataset(*train_data), batch_size=args.per_device_train_batch_size,
                                  shuffle=True, generator=torch.Generator().manual_seed(args.seed))
    validation_dataloader = DataLoader(TensorDataset(past_values[validation_rows], labels[validation_rows]),
                                       batch_size=args.per_device_eval_batch_size)
    test_dataloader = DataLoader(TensorDataset(*labelled_tensors(test, label_names, input_length)),
                                 batch_size=args.per_device_eval_batch_size)
    return ((train_dataloader, validation_dataloader, test_dataloader), label_names, train,
            (past_values, labels, rows))


def labelled_tensors(split, label_names, input_length: int) -> tuple:
    """`(past_values (num_series, input_length, channels), labels (num_series,))` of a `ClassificationSplit`, every
    channel resampled to `input_length` by the feature extractor, labels as indices into the sorted `label_names`."""
    past_values = torch.as_tensor(VQShapeFeatureExtractor(input_length=input_length)(split.series)["past_values"])
    if past_values.ndim == 2:  # univariate: "batch time -> batch time 1"
        past_values = past_values.unsqueeze(-1)
    labels = torch.as_tensor(np.searchsorted(np.asarray(label_names), split.labels))
    return past_values, labels


def validation_split(labels, fraction: float, seed: int = 0, groups=None) -> tuple:
    """Indices `(train, validation)` of a stratified, seeded `fraction` of `labels` (at least one row per class when
    every class has two; a plain seeded split otherwise).

    With `groups` (the recording of each row: windows of one recording are near copies, and a validation row whose
    recording also trains would flatter the model), whole groups are held out: the folds of a seeded
    `StratifiedGroupKFold` with `round(1 / fraction)` folds (fewer when there are fewer groups, or a largest class
    with fewer rows), of which the one that leaves every class in training and holds out the share nearest
    `fraction` is the validation split (ties: the first, in the seeded order). With recordings of unequal length the
    share is only near `fraction`. A single group cannot be held out whole; its rows are then split as without
    groups."""
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    labels = np.asarray(labels)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must lie in (0, 1), got {fraction}.")
    if groups is not None and len(groups) != len(labels):
        raise ValueError(f"{len(groups)} groups for {len(labels)} rows: give one group per row.")
    classes, counts = np.unique(labels, return_counts=True)
    folds = min(max(2, int(round(1 / fraction))), len(set(groups)) if groups is not None else 0, counts.max())
    if folds >= 2:
        splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
        candidates = list(splitter.split(np.zeros(len(labels)), labels, np.asarray(groups)))
        keeps_classes = [len(np.unique(labels[train])) == len(classes) for train, _ in candidates]
        order = sorted(range(folds), key=lambda fold: (not keeps_classes[fold],
                                                       abs(len(candidates[fold][1]) - fraction * len(labels)), fold))
        train, validation = candidates[order[0]]
        return np.sort(train), np.sort(validation)
    indices = np.arange(len(labels))
    size = max(int(round(fraction * len(labels))), len(classes) if counts.min() >= 2 else 1)
    if size >= len(labels):
        raise ValueError(f"{len(labels)} training series are too few to hold out a validation split.")
    stratify = labels if counts.min() >= 2 and size >= len(classes) else None
    train, validation = train_test_split(indices, test_size=size, stratify=stratify, random_state=seed)
    return np.sort(train), np.sort(validation)


@torch.no_grad()
def frozen_feature_parts(backbone, past_values: torch.Tensor, batch_size: int = 64,
                         parts=CLASSIFIER_FEATURE_PARTS) -> dict:
    """The `parts` (default: every part a head can read, `CLASSIFIER_FEATURE_PARTS`) of `past_values`, from the
    `VQShapeModel` `backbone` in eval mode: `{part: (num_series, num_channels, size)}` float32 tensors on the CPU. The
    patch decoder runs, and the windows are tokenized (10 more passes of the encoder at scales 2 and 4, once for both
    window parts), only for the parts that need them."""
    from ..modeling_vqshape import VQShapeForTimeSeriesClassification

    config = backbone.config
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    values = {part: [] for part in parts}
    try:
        for batch in past_values.split(batch_size):
            batch = batch.to(device)
            outputs = backbone(batch, output_reconstruction="reconstruction" in parts, return_dict=True)
            windows = VQShapeForTimeSeriesClassification.window_parts(backbone, batch, parts,
                                                                      config.classifier_window_scales)
            for part in parts:
                values[part].append(VQShapeForTimeSeriesClassification.feature_parts(
                    outputs, [part], config.classifier_reconstruction_steps, windows).float().cpu())
    finally:
        backbone.train(was_training)
    return {part: torch.cat(tensors) for part, tensors in values.items()}


def standardise(features: torch.Tensor) -> tuple:
    """`(mean, std)` of each column of `features` (population std; 1 where a column never varies, the rule of the
    head's `VQShapeFeatureScaler`, so that a probe scaled here is the head the scaler will feed)."""
    from ..modeling_vqshape import VQShapeFeatureScaler

    return features.mean(0), VQShapeFeatureScaler.usable_std(features.std(0, unbiased=False))


@dataclass
class LinearHead:
    """The first stage's choice: what the head reads, its regularisation, scaler statistics and weights, and the
    logits of the chosen setting on the rows it was judged on (the validation rows, or every row out of fold)."""

    classifier_features: str
    weight_decay: float
    dropout: float
    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor  # (num_labels, num_features), as nn.Linear's
    bias: torch.Tensor
    validation_accuracy: float
    validation_loss: float
    taught: bool = False  # trained on the teachers' distillation loss as well as the labels
    held_out_logits: torch.Tensor | None = None  # (num_held_out_rows, num_labels): what calibration is fitted on
    held_out_labels: torch.Tensor | None = None  # (num_held_out_rows,)
    setting_logits: torch.Tensor | None = None  # (settings, num_held_out_rows, num_labels): every setting of the grid
    folds: int = 0  # 0: one validation split chose; k: k-fold cross-validation chose, and the head saw every row
    members: list = field(default_factory=list)  # the heads averaged: features, setting, taught, folds, share
    admission: dict | None = None  # the nested scores that admitted the teachers or kept them out (`merit_admission`)

    @property
    def scores(self) -> dict:
        """`{"accuracy", "macro_f1", "loss"}` of the chosen setting on the rows it was judged on (`BestEpoch`'s)."""
        predictions = self.held_out_logits.argmax(-1).numpy()
        return {"accuracy": self.validation_accuracy, "loss": self.validation_loss,
                "macro_f1": classification_metrics(self.held_out_labels.numpy(), predictions)["macro_f1"]}

    @torch.no_grad()
    def apply(self, model):
        """Give a `VQShapeForTimeSeriesClassification` built for `classifier_features` these statistics and
        weights."""
        model.feature_scaler.set_statistics(self.mean, self.std)
        model.classifier.weight.copy_(self.weight)
        model.classifier.bias.copy_(self.bias)


def cross_validation_folds(labels, folds: int, seed: int = 0, groups=None) -> list:
    """`[(train, held out), ...]` index arrays of a seeded stratified k-fold split of `labels` (`StratifiedGroupKFold`
    with `groups`, the recording of each row: a recording is held out whole), with k = `folds`, or fewer where a class
    has fewer rows (or, with groups, lies in fewer recordings), so that every class can stay in every fold's training
    rows. An empty list where not even 2 folds fit (a class with one row, or in one recording)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = np.asarray(labels)
    classes = np.unique(labels)
    if groups is not None:
        groups = np.asarray(groups)
        k = min([folds] + [len(set(groups[labels == label])) for label in classes])
    else:
        k = min([folds] + [int((labels == label).sum()) for label in classes])
    if k < 2:
        return []
    splitter = (StratifiedGroupKFold if groups is not None else StratifiedKFold)(k, shuffle=True, random_state=seed)
    return [(np.sort(train), np.sort(held_out))
            for train, held_out in splitter.split(np.zeros(len(labels)), labels, groups)]


def select_linear_head(parts: dict, labels, train_rows, validation_rows, num_classes: int, seed: int = 0,
                       candidates=FEATURE_CANDIDATES, weight_decays=WEIGHT_DECAYS, dropouts=DROPOUTS,
                       distillation=None, folds: int = 0, groups=None, ensemble: int = 0, **training) -> LinearHead:
    """Train a linear head on the standardised `train_rows` of each candidate feature set, for every weight decay x
    dropout (`classification.train_linear_probes`, `training` its options), and keep the one with the best accuracy
    on `validation_rows` (ties: lower cross-entropy, then the earlier candidate). `parts`: `frozen_feature_parts`;
    `distillation`: None, or a `distillation.ProbeDistillation` over every row of `parts`: each candidate is then also
    trained on its loss over `train_rows`, and the validation labels choose between the heads taught by the teachers
    and those of the labels alone (`LinearHead.taught`).

    With `folds` k >= 2 the choice is made by k-fold cross-validation over `train_rows` and `validation_rows` together
    (`cross_validation_folds`, by recording with `groups`, one per row of `parts`): every row is scored once, by the
    heads trained without its fold (standardised with their own rows' statistics), and the out-of-fold accuracy
    chooses (ties: cross-entropy); the chosen setting is then trained on all those rows. Where not even 2 folds fit
    (a class with one row), the validation rows choose as without `folds`. The label heads are judged as the student
    alone's; cross-fitted teachers (`distillation.folds`) bring their own folds for the taught heads, each taught by
    the teachers fitted without it (`ProbeDistillation.for_fold`), so that no teacher that saw the held-out rows
    shapes the heads judged on them; the refit on all rows learns from their out-of-fold logits
    (`_judging_schemes`). Either way every row is scored once, and the held-out logits are kept in row order.

    With cross-validation and `ensemble` n > 0, the best head of each candidate (and teaching) may join the chosen one:
    greedy ensemble selection with replacement (`ensemble_selection`, Caruana et al., ICML 2004) on their out-of-fold
    logits, up to n additions; taught heads join only where the ensemble over all heads beats that of the label
    heads alone (`teachers_on_merit`). Each member is trained on all the rows; the logits averaged over members are one
    linear head on the union of their features (`combine_heads`), returned like a single one, with the members in
    `LinearHead.members`."""
    labels = torch.as_tensor(np.asarray(labels)).long()
    settings = list(itertools.product(weight_decays, dropouts))
    rows = np.sort(np.concatenate([np.asarray(train_rows), np.asarray(validation_rows)]))
    schemes = _judging_schemes(distillation, rows, labels, train_rows, validation_rows, folds, seed, groups)
    members = []  # the best setting of each candidate and teaching: (head, its teaching, its features)
    for candidate in candidates:
        # "series channels features -> series (channels features)", the head's layout
        features = torch.cat([parts[part] for part in classifier_feature_parts(candidate)], dim=-1).flatten(1)
        for teaching, splits, split_teachings in schemes:
            logits, scored = [], np.concatenate([part for _, part in splits])
            for (fit_rows, scored_rows), split_teaching in zip(splits, split_teachings):
                mean, std = standardise(features[fit_rows])
                probes = _trained_grid(features, labels, fit_rows, mean, std, num_classes, settings, seed,
                                       split_teaching, training)
                logits.append(probes.logits(((features[scored_rows] - mean) / std).numpy()))
            order = np.argsort(scored, kind="stable")  # by row, whatever the folds: every scheme scores the same rows
            logits, targets = torch.cat(logits, dim=1)[:, order], labels[scored[order]]  # (settings, rows, labels)
            index, accuracy, loss = _best_setting(logits, targets)
            # the weights of the last split: the only one, or a fold's, replaced by the refit below
            best = LinearHead(candidate, *settings[index], mean, std, probes.weight[index].T.clone(),
                              probes.bias[index].clone(), accuracy, loss, taught=teaching is not None,
                              held_out_logits=logits[index].clone(), held_out_labels=targets.clone(),
                              setting_logits=logits, folds=len(splits) if len(splits) > 1 else 0)
            members.append((best, teaching, features))
    cross_validated = len(schemes[0][1]) > 1
    # the label heads' folds, as positions among the held-out rows: what the teachers' admission is nested over
    outer = [np.searchsorted(rows, held_out) for _, held_out in schemes[0][1]] if cross_validated else []
    counts, admission = merit_admission([head for head, _, _ in members], ensemble if cross_validated else 0, outer)
    if cross_validated:  # refit the chosen settings on every row
        for head, teaching, features in (members[index] for index in counts):
            head.mean, head.std = standardise(features[rows])
            probes = _trained_grid(features, labels, rows, head.mean, head.std, num_classes,
                                   [(head.weight_decay, head.dropout)], seed, teaching, training)
            head.weight, head.bias = probes.weight[0].T.clone(), probes.bias[0].clone()
    head = combine_heads([(members[index][0], count) for index, count in counts.items()], parts)
    head.admission = admission
    return head


def ensemble_selection(heads: list, steps: int) -> dict:
    """`{index of a head: times chosen}`: greedy ensemble selection with replacement (Caruana, Niculescu-Mizil,
    Crew and Ksikes, "Ensemble Selection from Libraries of Models", ICML 2004) over `heads` (`LinearHead`s judged on
    the same held-out rows). It starts from the best head (accuracy, then lower cross-entropy, then the earlier one)
    and, up to `steps` times, adds the head whose addition gives the averaged held-out logits the best accuracy (ties:
    cross-entropy, then the earlier head), while that beats the ensemble without it."""
    scores = [(head.validation_accuracy, -head.validation_loss) for head in heads]
    counts = {max(range(len(heads)), key=lambda index: (scores[index], -index)): 1}
    current = scores[next(iter(counts))]
    for _ in range(steps):
        # (score, -index): the earlier head on ties
        score, negated = max((_ensemble_scores(heads, {**counts, index: counts.get(index, 0) + 1}), -index)
                             for index in range(len(heads)))
        if score <= current:
            break
        counts[-negated] = counts.get(-negated, 0) + 1
        current = score
    return counts


def combine_heads(weighted_heads: list, parts: dict) -> LinearHead:
    """One `LinearHead` whose logits are the average of those of `weighted_heads` (`[(LinearHead, times chosen), ...]`,
    heads standardised with the statistics of the same rows), weighted by the times chosen: a linear head on the union
    of their feature parts (in the head's layout, per channel), each member's weights in its own parts' columns, and
    their out-of-fold logits averaged the same way. A single head is returned as it is. The ensemble keeps the first
    member's weight decay and dropout; `LinearHead.members` lists every member."""
    heads = [head for head, _ in weighted_heads]
    total = sum(count for _, count in weighted_heads)
    members = [{"classifier_features": head.classifier_features, "weight_decay": head.weight_decay,
                "dropout": head.dropout, "taught": head.taught, "folds": head.folds, "share": count / total}
               for head, count in weighted_heads]
    if len(heads) == 1:
        heads[0].members = members
        return heads[0]
    union = classifier_feature_parts("+".join(head.classifier_features for head in heads))
    sizes = [parts[part].shape[-1] for part in union]
    columns = torch.arange(parts[union[0]].shape[1] * sum(sizes)).view(-1, sum(sizes))  # channels x per channel
    per_part = dict(zip(union, columns.split(sizes, dim=1)))
    first = heads[0]
    mean, std = torch.zeros(columns.numel()), torch.ones(columns.numel())
    weight = torch.zeros(first.weight.shape[0], columns.numel())
    bias, held_out_logits = torch.zeros_like(first.bias), torch.zeros_like(first.held_out_logits)
    for head, count in weighted_heads:
        # this member's columns in the union, in its own layout ("channels parts -> (channels parts)")
        index = torch.cat([per_part[part] for part in classifier_feature_parts(head.classifier_features)], 1).flatten()
        mean[index], std[index] = head.mean, head.std  # the same rows' statistics wherever members share a part
        weight[:, index] += head.weight * count / total
        bias += head.bias * count / total
        held_out_logits += head.held_out_logits * count / total
    targets = first.held_out_labels
    return LinearHead("+".join(union), first.weight_decay, first.dropout, mean, std, weight, bias,
                      *_held_out_scores(held_out_logits, targets), taught=any(head.taught for head in heads),
                      held_out_logits=held_out_logits, held_out_labels=targets, folds=first.folds, members=members)


def _judging_schemes(distillation, rows, labels, train_rows, validation_rows, folds, seed, groups) -> list:
    """`[(teaching, [(train rows, held-out rows), ...], [teaching of each split]), ...]`: how the heads of the labels
    alone (teaching None) and, with `distillation`, the taught heads are judged. The label heads: `folds`-fold
    cross-validation over `rows` (by recording with `groups`), or the one validation split where not even 2 folds fit,
    as for the student alone. The taught heads: the same splits taught by the teachers' logits over TRAIN, or, with
    cross-fitted teachers (`distillation.folds`) and cross-validation, the teachers' own folds, each taught by the
    teachers fitted without it (`ProbeDistillation.for_fold`). Every scheme holds out the same rows."""
    splits = cross_validation_folds(labels[rows].numpy(), folds, seed,
                                    None if groups is None else np.asarray(groups)[rows]) if folds >= 2 else []
    splits = [(rows[train], rows[held_out]) for train, held_out in splits] or [(np.asarray(train_rows),
                                                                               np.asarray(validation_rows))]
    schemes = [(None, splits, [None] * len(splits))]
    if distillation is None:
        return schemes
    if len(splits) > 1 and distillation.folds is not None:
        fold_of = distillation.folds[rows]
        present = np.unique(fold_of)
        if len(present) >= 2:
            return schemes + [(distillation, [(rows[fold_of != fold], rows[fold_of == fold]) for fold in present],
                               [distillation.for_fold(int(fold), labels) for fold in present])]
        warnings.warn(f"the rows lie in {len(present)} of the cross-fitted teachers' folds: the taught heads are "
                      "judged on the labels' folds, taught by the teachers' logits over TRAIN, which saw the rows "
                      "those folds hold out.")
    return schemes + [(distillation, splits, [distillation] * len(splits))]


def teachers_on_merit(heads: list, steps: int, folds=()) -> dict:
    """`{index of a head: times chosen}`: the ensemble (`ensemble_selection`, `steps` additions) of the heads of the
    labels alone, unless the one over every head, the taught (`LinearHead.taught`) among them, beats it on the
    held-out rows (accuracy, then cross-entropy). Greedy selection from the single best head can stall where a taught
    head leads and no addition mends its errors, below what the label heads reach together. So the teachers join only
    where they raise what the label heads give; otherwise the choice is the student alone's.

    With `folds` (arrays of positions among the held-out rows, at least 2), that rule must also earn its place by
    nested cross-validation: for each fold, every head's setting (`LinearHead.setting_logits`) and both choices are
    made again on the other folds' rows and scored on the fold's, and the teachers join only where the rule that may
    admit them beats, over all rows, the one that never does (accuracy, then cross-entropy). The held-out rows that
    chose among dozens of heads and settings also judged the choice; a small edge there is what that choice alone
    gives, and the nested scores do not count it."""
    return merit_admission(heads, steps, folds)[0]


def merit_admission(heads: list, steps: int, folds=()) -> tuple:
    """`(counts, scores)`: `teachers_on_merit`'s choice and, where nested cross-validation judged the admission,
    `{"with_teachers": {"accuracy", "cross_entropy"}, "label_heads": {...}}`, the nested scores of the rule that may
    admit the teachers and of the label heads' ensemble (the teachers join where the first is higher); else None."""
    choice = _merit_choice(heads, steps)
    if not any(heads[index].taught for index in choice) or len(folds) < 2:
        return choice, None
    admitting = _nested_scores(heads, steps, folds, _merit_choice)
    alone = _nested_scores(heads, steps, folds, _label_heads_choice)
    scores = {name: {"accuracy": round(accuracy, 6), "cross_entropy": round(-negated, 6)}
              for name, (accuracy, negated) in (("with_teachers", admitting), ("label_heads", alone))}
    return (choice if admitting > alone else _label_heads_choice(heads, steps)), scores


def _label_heads_choice(heads: list, steps: int) -> dict:
    """`ensemble_selection` over the heads of the labels alone, as indices of `heads`."""
    untaught = [index for index, head in enumerate(heads) if not head.taught]
    return {untaught[index]: count
            for index, count in ensemble_selection([heads[index] for index in untaught], steps).items()}


def _merit_choice(heads: list, steps: int) -> dict:
    """The label heads' ensemble, or the one over every head where it beats that on the held-out rows."""
    alone = _label_heads_choice(heads, steps)
    if all(not head.taught for head in heads):
        return alone
    pooled = ensemble_selection(heads, steps)
    return pooled if _ensemble_scores(heads, pooled) > _ensemble_scores(heads, alone) else alone


def _nested_scores(heads: list, steps: int, folds: list, choose) -> tuple:
    """`(accuracy, -cross-entropy)` of the rule `choose(heads, steps) -> counts` by nested cross-validation over the
    held-out rows: each of `folds` is scored by the ensemble that `choose` makes of the heads judged on the other
    rows, each at the setting of its grid that is best there (`_best_setting`, as `select_linear_head` chooses)."""
    targets = heads[0].held_out_labels
    logits = torch.zeros_like(heads[0].held_out_logits)
    for held_out in folds:
        inner = np.setdiff1d(np.arange(len(targets)), held_out)
        chosen = []  # (the head judged on the inner rows, the logits of its setting there over every row)
        for head in heads:
            grid = head.held_out_logits[None] if head.setting_logits is None else head.setting_logits
            best, accuracy, loss = _best_setting(grid[:, inner], targets[inner])
            chosen.append((replace(head, validation_accuracy=accuracy, validation_loss=loss,
                                   held_out_logits=grid[best][inner], held_out_labels=targets[inner]), grid[best]))
        counts = choose([inner_head for inner_head, _ in chosen], steps)
        logits[held_out] = sum(chosen[index][1][held_out] * count
                               for index, count in counts.items()) / sum(counts.values())
    accuracy, loss = _held_out_scores(logits, targets)
    return accuracy, -loss


def _best_setting(logits: torch.Tensor, targets: torch.Tensor) -> tuple:
    """`(index, accuracy, cross-entropy)` of the setting whose held-out `logits` (settings, rows, labels) score best
    on `targets`: accuracy, then lower cross-entropy, then the earlier setting. How a head's setting is chosen."""
    scores = [_held_out_scores(setting, targets) for setting in logits]
    index = max(range(len(scores)), key=lambda index: (scores[index][0], -scores[index][1], -index))
    return index, *scores[index]


def _ensemble_scores(heads: list, counts: dict) -> tuple:
    """`(accuracy, -cross-entropy)` on the held-out rows of the held-out logits of `heads` averaged by `counts`."""
    logits = sum(heads[index].held_out_logits * count for index, count in counts.items()) / sum(counts.values())
    accuracy, loss = _held_out_scores(logits, heads[0].held_out_labels)
    return accuracy, -loss


def _held_out_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple:
    """`(accuracy, cross-entropy)` of `logits` on the held-out rows' `targets`: what the first stage judges heads by."""
    return (logits.argmax(-1) == targets).float().mean().item(), F.cross_entropy(logits, targets).item()


def _trained_grid(features, labels, rows, mean, std, num_classes, settings, seed, teaching, training):
    """Every setting trained on `rows` of `features` standardised by `mean`, `std` (and taught on them by `teaching`,
    a `ProbeDistillation` over all rows, if given): a `classification.LinearProbes`."""
    return train_linear_probes(((features[rows] - mean) / std).numpy(), labels[rows].numpy(), num_classes, settings,
                               seed=seed, distillation=None if teaching is None else teaching.subset(rows), **training)


def probe_initialised_classifier(model_name_or_path, past_values, labels, rows, label_names, seed: int = 0,
                                 candidates=FEATURE_CANDIDATES, distillation=None, folds: int = 0, groups=None,
                                 ensemble: int = 0, **model_kwargs) -> tuple:
    """`(model, head)`: the first stage (`select_linear_head` on the frozen features of `past_values`, `rows` =
    (train rows, validation rows), taught by `distillation` if given, chosen by `folds`-fold cross-validation over
    both and refitted on both if `folds` >= 2, `groups` the recording of each row, with up to `ensemble` heads of
    other candidates averaged in) and a
    `VQShapeForTimeSeriesClassification` from `model_name_or_path` that reads the chosen features with the label names
    `label_names` and starts from that head (`model_kwargs`: other config values, e.g. `freeze_backbone`)."""
    from ..modeling_vqshape import VQShapeForTimeSeriesClassification, VQShapeModel

    needed = {part for candidate in candidates for part in classifier_feature_parts(candidate)}
    parts = frozen_feature_parts(VQShapeModel.from_pretrained(model_name_or_path), past_values,
                                 parts=[part for part in CLASSIFIER_FEATURE_PARTS if part in needed])
    head = select_linear_head(parts, labels, *rows, num_classes=len(label_names), seed=seed, candidates=candidates,
                              distillation=distillation, folds=folds, groups=groups, ensemble=ensemble)
    model = VQShapeForTimeSeriesClassification.from_pretrained(
        model_name_or_path, num_labels=len(label_names), num_input_channels=past_values.shape[-1],
        id2label=dict(enumerate(label_names)), label2id={name: index for index, name in enumerate(label_names)},
        classifier_features=head.classifier_features, classifier_dropout=head.dropout, **model_kwargs,
    )
    head.apply(model)
    return model, head


def scripted_first_stage(args, model_name_or_path, past_values, labels, rows, label_names, groups=None,
                         distillation=None, freeze_backbone: bool = False) -> tuple:
    """`(model, head, judged)`: the classifier scripts' first stage (`probe_initialised_classifier`) from their
    options (`add_training_arguments`). Without a second stage (`--num_train_epochs 0`) the head is chosen by
    `--probe_folds`-fold cross-validation over TRAIN (`groups`: the recording of each row), trained on all of it, and
    the backbone stays frozen; with one, the validation rows choose it. `judged` names the rows that chose, for the
    log."""
    second_stage = bool(args.num_train_epochs)
    model, head = probe_initialised_classifier(model_name_or_path, past_values, labels, rows, label_names,
                                               seed=args.seed, candidates=args.classifier_features,
                                               distillation=distillation, folds=0 if second_stage else args.probe_folds,
                                               groups=groups, ensemble=args.probe_ensemble,
                                               freeze_backbone=freeze_backbone or not second_stage)
    return model, head, f"{head.folds}-fold cross-validation" if head.folds else "validation"


@torch.no_grad()
def fit_feature_scaler(model, dataloader, accelerator=None) -> tuple:
    """Set a classifier's `feature_scaler` to the mean and standard deviation of its input over `dataloader` of
    `(past_values, labels)` (the training rows; the backbone in eval mode; every process's rows when `accelerator` is
    given), e.g. before training the head under `transformers.Trainer`. Returns `(mean, std)`."""
    unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
    was_training = unwrapped.training
    unwrapped.eval()
    rows = []
    try:
        for past_values, _ in dataloader:
            features = unwrapped.head_input(past_values)
            rows.append(accelerator.gather_for_metrics(features) if accelerator is not None else features)
    finally:
        unwrapped.train(was_training)
    if not rows:
        raise ValueError("no training rows to fit the feature scaler on.")
    mean, std = standardise(torch.cat(rows).double())
    unwrapped.feature_scaler.set_statistics(mean.float(), std.float())
    return unwrapped.feature_scaler.mean.clone(), unwrapped.feature_scaler.std.clone()


def parameter_groups(model, learning_rate: float, backbone_learning_rate: float | None, weight_decay: float) -> list:
    """AdamW groups: the head (scaler has no parameters; linear layer) at `learning_rate`, the backbone at
    `backbone_learning_rate` (default: the same); frozen parameters are left out."""
    head, backbone = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (backbone if name.startswith("vqshape.") else head).append(parameter)
    groups = [{"params": head, "lr": learning_rate, "weight_decay": weight_decay}]
    if backbone:
        groups.append({"params": backbone, "weight_decay": weight_decay,
                       "lr": learning_rate if backbone_learning_rate is None else backbone_learning_rate})
    return groups


@torch.no_grad()
def evaluate_classifier(model, dataloader, accelerator) -> dict:
    """`{"accuracy", "balanced_accuracy", "macro_f1", "loss", "mean_top_probability", "predictions", "labels",
    "logits"}` over every process's rows
    (`gather_for_metrics`: no duplicated padding rows), in eval mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for past_values, batch_labels in dataloader:
        batch_logits = model(past_values=past_values).logits
        batch_logits, batch_labels = accelerator.gather_for_metrics((batch_logits, batch_labels))
        logits.append(batch_logits.float().cpu())
        labels.append(batch_labels.cpu())
    model.train(was_training)
    logits, labels = torch.cat(logits), torch.cat(labels)
    probabilities = logits.softmax(-1)
    predictions = probabilities.argmax(-1)
    return {**classification_metrics(labels.numpy(), predictions.numpy()),
            "loss": F.cross_entropy(logits, labels).item(),
            "mean_top_probability": probabilities.max(-1).values.mean().item(),
            "predictions": predictions.numpy(), "labels": labels.numpy(), "logits": logits}


def split_metrics(model, dataloader, accelerator) -> dict:
    """Accuracy, balanced accuracy and macro-F1 (`classification_metrics`; the same on class indices as on their
    names), the mean top probability and the cross-entropy (how well the probabilities fit the labels) of a classifier
    on `dataloader` (the TEST split, read once at the end), over every process's rows."""
    scores = evaluate_classifier(model, dataloader, accelerator)
    return {**{key: scores[key] for key in ("accuracy", "balanced_accuracy", "macro_f1", "mean_top_probability")},
            "cross_entropy": scores["loss"]}


def first_stage_scores(head, model, validation_dataloader, accelerator) -> dict:
    """The probe's scores as epoch 0 of `BestEpoch`: out of fold where cross-validation chose it and all of TRAIN
    trained it (`head.folds`), else on the validation rows."""
    return head.scores if head.folds else evaluate_classifier(model, validation_dataloader, accelerator)


def calibrate_kept(model, head, validation_dataloader, accelerator) -> dict:
    """The temperature of the kept classifier, fitted on the rows that judged it: the probe's out-of-fold logits
    after cross-validation (`head.folds`; the probe alone is kept then), else the validation rows as `model` scores
    them now (`calibration.calibrate_on_validation`). Folded into the head; returns what `calibrate` returns."""
    from .calibration import calibrate, calibrate_on_validation

    if head.folds:
        return calibrate(accelerator.unwrap_model(model), head.held_out_logits, head.held_out_labels)
    return calibrate_on_validation(model, validation_dataloader, accelerator)


class BestEpoch:
    """The epoch with the best validation accuracy (ties: lower validation cross-entropy; then the earlier one), and a
    copy of its weights, which `restore` puts back."""

    def __init__(self):
        self.epoch, self.metrics, self.state = None, None, None

    def update(self, epoch: int, metrics: dict, model) -> bool:
        key = (metrics["accuracy"], -metrics["loss"])
        if self.metrics is not None and key <= (self.metrics["accuracy"], -self.metrics["loss"]):
            return False
        self.epoch, self.metrics = epoch, {k: metrics[k] for k in ("accuracy", "macro_f1", "loss")}
        self.state = copy.deepcopy({name: tensor.detach().cpu() for name, tensor in model.state_dict().items()})
        return True

    def restore(self, model):
        model.load_state_dict(self.state)


__all__ = [
    "FEATURE_CANDIDATES",
    "BestEpoch",
    "LinearHead",
    "classification_dataloaders",
    "combine_heads",
    "cross_validation_folds",
    "ensemble_selection",
    "add_dataset_arguments",
    "add_training_arguments",
    "calibrate_kept",
    "first_stage_scores",
    "frozen_feature_parts",
    "select_linear_head",
    "merit_admission",
    "teachers_on_merit",
    "split_metrics",
    "standardise",
    "evaluate_classifier",
    "fit_feature_scaler",
    "labelled_splits",
    "labelled_tensors",
    "parameter_groups",
    "probe_initialised_classifier",
    "validation_split",
]
