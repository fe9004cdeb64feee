"""Teachers, students and weightings of `examples/distill.py`, on bundled sets and a synthetic GENEActiv protocol.

    python benchmarks/bench_distillation.py --model_name_or_path vqshape-pretrained

For each task and seed (5 by default), in one run:

- two teachers, cross-fitted on the same 5 folds of TRAIN (`teachers.cross_fit`: each TRAIN series scored by a model
  that never saw its fold, and for each fold, by models fitted without it) and given to the students as outputs
  files, as teachers from another framework would be: a raw-series teacher, MiniRocket features (aeon, 10,000
  kernels) read by a logistic regression, and the topology teacher, `examples/train_persistence_teacher.py` (trained
  on `DatasetDict`s of the rows each fit may see); TEST is scored by each fitted on all of TRAIN;
- the student alone: `examples/finetune.py` with its defaults (the cross-validated probe on frozen features) and
  with two stages (`--num_train_epochs 10`: the whole model after a probe chosen on validation rows);
- `examples/distill.py` with its defaults: the student from each teacher alone and from both with `equal` and
  `confidence` (the cross-validated probe, taught), and from both with `equal` and `mtkd_rl` in two stages (10 epochs,
  `mtkd_rl`'s default: its agent learns from the training steps; its default reward, the head's improvement).

The scripts run as `main(argv)`, with `--seed S`, in this process, or with `--jobs N` in N processes, one task-seed
unit (a dataset's teachers and the students of its tasks) at a time in each; the rows come out in the same order.
Each unit's rows are written to `--output_dir`'s `units/` as it finishes, and a later run with the same settings
takes them from there instead of running the unit again: a run cut short goes on where it stopped.
`--teachers_only` scores the two teachers and trains no student.
The tasks are the `--datasets` (bundled sets by default) and, unless `--no_geneactiv`, a GENEActiv-style protocol
built from SYNTHETIC recordings (`synthetic_geneactiv.py`: `.bin` files written with the package's writer, labelled by
an annotation table): the 14 activities as a 14-class task, and the same windows scored as 7 classes, where the
teachers are the 14-class ones and the student distils through `--label_map`. Writes `results.csv`, `summary.csv` and
`results.md` (accuracy and macro-F1 with their spread over seeds, the mean over tasks, the seconds per training step
of each weighting and the teachers' mean weights) into `--output_dir`.
"""

import argparse
import functools
import hashlib
import importlib.util
import json
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from bench_classification import mean_over_datasets

from modeling_vqshape.sharing.loading import load_vqshape
from modeling_vqshape.tasks.classification import (
    classification_metrics,
    load_classification_dataset,
    markdown_table,
    resample_series,
    write_results,
)
from modeling_vqshape.tasks.teachers import (
    MIN_CROSS_FIT_FOLDS,
    cross_fit,
    map_labels,
    read_label_map,
    save_teacher_outputs,
    training_teachers,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DATASETS = ("BasicMotions", "GunPoint", "PickupGestureWiimoteZ")
RAW, TOPOLOGY = "MiniRocket (raw series)", "persistence images"
TEACHER_FOLDS = 5  # the teachers' cross-fitting, which the taught students' cross-validation takes
ALONE = "student alone"
TWO_STAGES = "two stages"  # the whole model trained after the probe (--two_stage_epochs; mtkd_rl's default)
ALONE_RECIPES = {ALONE: False, f"{ALONE}, {TWO_STAGES}": True}  # method -> two stages?
EQUAL_TWO_STAGES = f"student from both, equal, {TWO_STAGES}"  # what mtkd_rl's time per step is compared with
STUDENTS = {  # method -> (teachers, weighting, two stages?), examples/distill.py
    f"student from {RAW}": ((RAW,), "equal", False),
    f"student from {TOPOLOGY}": ((TOPOLOGY,), "equal", False),
    "student from both, equal": ((RAW, TOPOLOGY), "equal", False),
    "student from both, confidence": ((RAW, TOPOLOGY), "confidence", False),
    EQUAL_TWO_STAGES: ((RAW, TOPOLOGY), "equal", True),
    f"student from both, mtkd_rl, {TWO_STAGES}": ((RAW, TOPOLOGY), "mtkd_rl", True),
}

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_name_or_path", default="vqshape-pretrained", help="The student's VQShape checkpoint.")
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--no_geneactiv", action="store_true", help="Leave out the synthetic GENEActiv protocol.")
    parser.add_argument("--geneactiv_subjects", type=int, nargs=2, default=(4, 3), metavar=("TRAIN", "TEST"))
    parser.add_argument("--geneactiv_bout_seconds", type=float, default=24.0,
                        help="Seconds of each activity per subject (4-second windows); quick runs: 8.")
    parser.add_argument("--num_seeds", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="These seeds instead of 0 to --num_seeds - 1 (more seeds for an earlier run).")
    parser.add_argument("--num_threads", type=int, default=1, help="CPU threads of every script.")
    parser.add_argument("--teachers_only", action="store_true",
                        help="Train and score the two teachers only, without the students (minutes, not hours).")
    parser.add_argument("--jobs", type=int, default=1,
                        help="Task-seed units run at once, each in its own process (with --num_threads each).")
    parser.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                        help="Only these students (and the students alone), by their names in the tables "
                             "(default: all); quick runs.")
    parser.add_argument("--two_stage_epochs", type=int, default=10,
                        help="Of the two-stage students (--num_train_epochs of finetune.py and distill.py).")
    parser.add_argument("--teacher_epochs", type=int, default=None,
                        help="Of the topology teacher (default: train_persistence_teacher.py's).")
    parser.add_argument("--script_args", nargs=argparse.REMAINDER, default=[],
                        help="Passed on to finetune.py and distill.py (quick runs); last.")
    parser.add_argument("--output_dir", default="distillation-benchmark")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.methods or ()) - set(STUDENTS))
    if unknown:
        parser.error(f"--methods: unknown students {unknown}; choose among {list(STUDENTS)}.")
    if not args.no_geneactiv and args.geneactiv_subjects[0] < MIN_CROSS_FIT_FOLDS:
        parser.error(f"--geneactiv_subjects: the teachers are cross-fitted by subject, on {MIN_CROSS_FIT_FOLDS} "
                     f"training subjects or more; got {args.geneactiv_subjects[0]}.")
    args.seeds = args.seeds or list(range(args.num_seeds))
    return args


@functools.cache
def load_script(name: str):
    """`examples/<name>.py` as a module, so that its `main(argv)` runs in this process (loaded once per process)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def raw_series_teacher(dataset: str, seed: int, folder: Path, length: int = 100):
    """MiniRocket features and a logistic regression, written as outputs files into `folder`: `raw-train.npz` holds
    TRAIN's logits cross-fitted (`teachers.cross_fit`, 5 folds; whole recordings for windows): each series scored by
    a model that never saw its fold, and for each fold the logits of models fitted without it; `raw-test.npz` the
    logits of the model fitted on all of TRAIN. Logits are its decision values (finite, where
    log-probabilities may be -inf), columns the sorted classes of TRAIN."""
    from aeon.transformations.collection.convolution_based import MiniRocket
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    threads = torch.get_num_threads()
    splits = load_classification_dataset(dataset)
    train, test = splits["train"], splits["test"]
    label_names = sorted(set(train.labels))
    transform = MiniRocket(random_state=seed).fit(resample_series(train.series, length))
    features = {name: transform.transform(resample_series(split.series, length)) for name, split in splits.items()}

    def fitted(rows):
        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        return classifier.fit(features["train"][rows], train.labels[rows])

    def fit_predict(fit_rows, scored_rows):
        return class_logits(fitted(fit_rows).decision_function(features["train"][scored_rows]))

    outputs = cross_fit(fit_predict, train.labels, TEACHER_FOLDS, seed, teacher_groups(train))
    test_logits = class_logits(fitted(np.arange(len(train))).decision_function(features["test"]))
    torch.set_num_threads(threads)  # aeon/numba change torch's thread count
    save_teacher_outputs(folder / "raw-train.npz", train.sample_ids, label_names=label_names, **outputs)
    save_teacher_outputs(folder / "raw-test.npz", test.sample_ids, test_logits, label_names)


def topology_teacher(dataset: str, seed: int, folder: Path, argv: list):
    """`examples/train_persistence_teacher.py` (`argv`: its options) on all of TRAIN, saved in `folder / "topology"`
    (what TEST is scored with), and cross-fitted as `raw_series_teacher` is, on the same folds: each model trained on a
    `DatasetDict` of the rows it may see (`folder / "fits"`, removed after), its logits on the rows it scores written
    to `topology-train.npz`."""
    import shutil

    import datasets

    persistence = load_script("train_persistence_teacher")
    persistence.main(["--dataset", dataset, "--seed", str(seed), "--output_dir", str(folder / "topology"), *argv])
    train = load_classification_dataset(dataset)["train"]
    label_names = sorted(set(train.labels))

    def subset(rows):
        columns = {"past_values": [train.series[row].tolist() for row in rows], "label": train.labels[rows].tolist()}
        if train.groups is not None:
            columns["recording"] = train.groups[rows].tolist()
        return datasets.Dataset.from_dict(columns)

    def fit_predict(fit_rows, scored_rows):
        fit = folder / "fits"
        datasets.DatasetDict({"train": subset(fit_rows), "test": subset(scored_rows)}).save_to_disk(str(fit / "data"))
        persistence.main(["--dataset", str(fit / "data"), "--seed", str(seed), "--output_dir", str(fit / "model"),
                          *argv])
        scored = load_classification_dataset(str(fit / "data"))["test"]
        (outputs,) = training_teachers([str(fit / "model")], scored, label_names, input_length=None)  # its own
        shutil.rmtree(fit)
        return outputs.logits.numpy()

    outputs = cross_fit(fit_predict, train.labels, TEACHER_FOLDS, seed, teacher_groups(train))
    save_teacher_outputs(folder / "topology-train.npz", train.sample_ids, label_names=label_names, **outputs)


def teacher_groups(train):
    """The recording of each TRAIN window (held out whole by the teachers' folds), or None: series without
    recordings, or a single recording (nothing to hold out whole)."""
    groups = train.groups
    return None if groups is None or len(set(groups)) < 2 else groups


def class_logits(decision) -> np.ndarray:
    """A logistic regression's decision values as logits `(num_samples, num_classes)`: two classes give one column,
    the log-odds of the second, which is the logits `(0, log-odds)`."""
    decision = np.asarray(decision)
    return np.stack([np.zeros_like(decision), decision], axis=1) if decision.ndim == 1 else decision


def teacher_metrics(teacher: str, dataset: str, label_map: dict | None, input_length: int) -> dict:
    """A teacher's test metrics on the task's classes: its logits over TEST (a folder runs over it, an outputs file of
    TEST is read), merged onto the coarse classes by `label_map`, against TEST's (mapped) labels."""
    splits = load_classification_dataset(dataset)
    labels = {name: map_labels(split.labels, label_map) for name, split in splits.items()}
    label_names = sorted(set(labels["train"]))
    (outputs,) = training_teachers([teacher], splits["test"], label_names, input_length, label_map=label_map)
    predictions = np.asarray(label_names)[outputs.logits.argmax(-1).numpy()]
    return classification_metrics(labels["test"], predictions)


def run_script(script, argv: list, folder: Path) -> dict:
    """`script.main(argv + ["--output_dir", folder])`; its `eval_results.json` and the seconds it took."""
    started = time.perf_counter()
    script.main([*argv, "--output_dir", str(folder)])
    return {**json.loads((folder / "eval_results.json").read_text()), "seconds": time.perf_counter() - started}


def row(task: str, method: str, seed: int, results: dict, **extra) -> dict:
    return {"dataset": task, "method": method, "seed": seed,
            **{key: results[key] for key in ("accuracy", "balanced_accuracy", "macro_f1")},
            "seconds_per_step": results.get("seconds_per_step"),
            "mean_teacher_weights": json.dumps(results.get("mean_teacher_weights")),
            "selected_epoch": results.get("selected_epoch"), "probe_taught": results.get("probe_taught"),
            "validation_accuracy": (results.get("validation") or {}).get("accuracy"), **extra}


def tasks(args, folder: Path) -> list:
    """`(task name, teachers' dataset, student-alone dataset, label map)` of every task."""
    found = [(name, name, name, None) for name in args.datasets]
    if not args.no_geneactiv:
        from synthetic_geneactiv import write_protocol

        protocol = write_protocol(folder / "geneactiv", *args.geneactiv_subjects, args.geneactiv_bout_seconds)
        found += [("GENEActiv 14 (synthetic)", protocol["fine"], protocol["fine"], None),
                  ("GENEActiv 7 (synthetic)", protocol["fine"], protocol["coarse"], protocol["label_map"])]
    return found


def cost_and_weights(rows) -> str:
    """Per two-teacher student: the teachers' mean weights (over its training steps; for the probe alone, those it was
    taught with) and, where it took training steps, the mean seconds per step and its ratio to the two-stage `equal`
    student's (the ratio taken within each task and seed, then averaged)."""
    both = [entry for entry in rows if entry["method"].startswith("student from both")]
    equal = {(entry["dataset"], entry["seed"]): entry["seconds_per_step"]
             for entry in both if entry["method"] == EQUAL_TWO_STAGES}
    lines = [f"| student from both | seconds per step | x equal, two stages | mean weights ({RAW}, {TOPOLOGY}) |",
             "|---|---|---|---|"]
    for method in dict.fromkeys(entry["method"] for entry in both):
        group = [entry for entry in both if entry["method"] == method]
        weights = np.mean([json.loads(entry["mean_teacher_weights"]) for entry in group], axis=0)
        cost = "| - | -"  # the cross-validated probe alone: no training steps
        if group[0]["seconds_per_step"] is not None:
            ratio = np.mean([entry["seconds_per_step"] / equal[(entry["dataset"], entry["seed"])] for entry in group])
            cost = f"| {np.mean([entry['seconds_per_step'] for entry in group]):.4f} | {ratio:.2f}"
        lines.append(f"| {method.removeprefix('student from both, ')} {cost} | {weights[0]:.2f}, {weights[1]:.2f} |")
    return "\n".join(lines)

def run_unit(args, unit: list, seed: int, folder: Path, input_length: int) -> list:
    """The rows of one seed of the tasks in `unit`, which share their teachers' dataset (the 14- and 7-class tasks):
    both teachers once, then for each task the teachers' test metrics, the student alone and every student."""
    finetune, distill = load_script("finetune"), load_script("distill")
    dataset = unit[0][1]
    common = ["--seed", str(seed), "--num_threads", str(args.num_threads)]
    work = folder / f"{hashlib.sha1(dataset.encode()).hexdigest()[:12]}-{seed}"
    work.mkdir(parents=True)
    raw_series_teacher(dataset, seed, work)
    epochs = [] if args.teacher_epochs is None else ["--num_train_epochs", str(args.teacher_epochs)]
    topology_teacher(dataset, seed, work, ["--num_threads", str(args.num_threads), *epochs])
    raw = {split: str(work / f"raw-{split}.npz") for split in ("train", "test")}
    teachers = {RAW: raw["train"], TOPOLOGY: str(work / "topology-train.npz")}
    rows = []
    for task, _, alone_dataset, label_map_path in unit:
        label_map = read_label_map(label_map_path)
        for name, test_outputs in ((RAW, raw["test"]), (TOPOLOGY, str(work / "topology"))):
            rows.append(row(task, f"teacher: {name}", seed, teacher_metrics(test_outputs, dataset, label_map,
                                                                              input_length)))
        if args.teachers_only:
            continue
        student = ["--student_model_name_or_path", args.model_name_or_path, "--dataset", dataset, *common]
        if label_map_path:
            student += ["--label_map", label_map_path]
        # the students' recipes without teachers: finetune.py's default (the cross-validated probe) and two stages
        stages = {False: [], True: ["--num_train_epochs", str(args.two_stage_epochs)]}
        for method, two_stages in ALONE_RECIPES.items():
            alone = run_script(finetune, ["--model_name_or_path", args.model_name_or_path, "--dataset", alone_dataset,
                                          *common, *stages[two_stages], *args.script_args], work / "alone")
            rows.append(row(task, method, seed, alone, seconds=alone["seconds"]))
        for method, (names, weighting, two_stages) in STUDENTS.items():
            if args.methods is not None and method not in args.methods:
                continue
            argv = [*student, *(part for name in names for part in ("--teacher", teachers[name])), "--weighting",
                    weighting, *stages[two_stages], *args.script_args]
            results = run_script(distill, argv, work / "student")
            rows.append(row(task, method, seed, results, seconds=results["seconds"]))
        print(f"{task} seed {seed}: " + ", ".join(f"{entry['method']} {entry['accuracy']:.3f}"
                                                  for entry in rows if entry["dataset"] == task), flush=True)
    return rows


def unit_settings(args) -> dict:
    """What a unit's rows depend on besides its tasks and seed: every option but where and how many run at once."""
    return {key: value for key, value in vars(args).items() if key not in ("jobs", "output_dir", "num_seeds", "seeds")}


def unit_file(args, unit: list, seed: int) -> Path:
    """Where the rows of `unit` at `seed` are kept (`units/`, named by its tasks and seed)."""
    name = hashlib.sha1(json.dumps([[task[0] for task in unit], seed]).encode()).hexdigest()[:12]
    return Path(args.output_dir, "units", f"{name}.json")


def finished_unit(args, unit: list, seed: int) -> list | None:
    """The rows an earlier run wrote for `unit` at `seed` with the same settings, or None."""
    path = unit_file(args, unit, seed)
    if not path.exists():
        return None
    kept = json.loads(path.read_text())
    return kept["rows"] if kept["settings"] == json.loads(json.dumps(unit_settings(args))) else None


def keep_unit(args, unit: list, seed: int, rows: list):
    """Write the rows of a finished unit with the settings that made them (to a temporary name, then renamed)."""
    path = unit_file(args, unit, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"settings": unit_settings(args), "rows": rows}, default=float))
    temporary.replace(path)


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    input_length = load_vqshape(args.model_name_or_path, with_feature_extractor=True)[1].input_length
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        found = tasks(args, folder)
        units = [[task for task in found if task[1] == dataset] for dataset in dict.fromkeys(task[1] for task in found)]
        # units of two tasks first: the longest start first, so that no process is left alone with one at the end
        work = [(unit, seed) for unit in sorted(units, key=len, reverse=True) for seed in args.seeds]
        results = [finished_unit(args, unit, seed) for unit, seed in work]
        left = [index for index, rows in enumerate(results) if rows is None]
        if len(left) < len(work):
            print(f"{len(work) - len(left)} of {len(work)} task-seed units taken from {args.output_dir}/units.")
        if args.jobs == 1:
            for index in left:
                results[index] = run_unit(args, *work[index], folder, input_length)
                keep_unit(args, *work[index], results[index])
        else:  # fresh interpreters: a forked one would inherit torch's and numba's thread pools mid-state
            with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(run_unit, args, *work[index], folder, input_length): index for index in left}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    keep_unit(args, *work[futures[future]], results[futures[future]])
    order = {task[0]: index for index, task in enumerate(found)}  # tasks in order, then seeds, as one process runs
    rows = sorted((entry for unit_rows in results for entry in unit_rows),
                  key=lambda entry: (order[entry["dataset"]], entry["seed"]))
    columns = dict.fromkeys(key for entry in rows for key in entry)
    write_results([{key: entry.get(key) for key in columns} for entry in rows], args.output_dir)
    seeds = f"mean ± std over {len(args.seeds)} seed(s)"
    markdown = "\n\n".join([
        f"Test accuracy, {seeds}:\n\n{markdown_table(rows, 'accuracy')}",
        f"Macro-F1, {seeds}:\n\n{markdown_table(rows, 'macro_f1')}",
        f"Test accuracy, mean over tasks:\n\n{mean_over_datasets(rows)}",
        f"Macro-F1, mean over tasks:\n\n{mean_over_datasets(rows, 'macro_f1')}",
    ] + ([] if args.teachers_only else [
        f"Time per training step and teacher weights of the two-teacher students:\n\n{cost_and_weights(rows)}"])
    ) + "\n"
    Path(args.output_dir, "results.md").write_text(markdown)
    print("\n" + markdown)
    print(f"Wrote {args.output_dir} in {time.perf_counter() - started:.0f}s.")
    return rows


if __name__ == "__main__":
    main()
