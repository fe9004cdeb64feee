"""Every classifier of the package against the baselines, on every bundled set, in one run.

    python benchmarks/bench_classification.py --model_name_or_path vqshape-pretrained

For each dataset and seed (3 by default): `examples/finetune.py` with its defaults (run as a program, `--seed S`), the
linear probes of the paper's protocol on frozen tokens and histograms, the same probe on the raw resampled values,
MiniRocket and 1-NN DTW (`modeling_vqshape.tasks.classification.run_protocol`). Writes `results.csv` (a row per dataset,
method and seed), `summary.csv` and `results.md` (accuracy and macro-F1 tables, the mean over datasets, and the
fine-tuned classifier's mean top probability and what its validation chose) into `--output_dir`.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from modeling_vqshape.corpora.data import BUNDLED_DATASETS
from modeling_vqshape.sharing.loading import load_vqshape
from modeling_vqshape.tasks.classification import (
    BASELINES,
    FEATURE_KINDS,
    load_classification_dataset,
    markdown_table,
    run_protocol,
    write_results,
)

FINETUNE = Path(__file__).resolve().parent.parent / "examples" / "finetune.py"
FINETUNED = "fine-tuned (defaults)"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_name_or_path", default="vqshape-pretrained")
    parser.add_argument("--datasets", nargs="+", default=list(BUNDLED_DATASETS))
    parser.add_argument("--num_seeds", type=int, default=3)
    parser.add_argument("--finetune_args", nargs=argparse.REMAINDER, default=[],
                        help="Passed on to examples/finetune.py (quick runs); last on the command line.")
    parser.add_argument("--probe_epochs", type=int, default=300)
    parser.add_argument("--max_train_samples", type=int, default=None, help="Stratified subset of TRAIN (quick runs).")
    parser.add_argument("--max_test_samples", type=int, default=None, help="Stratified subset of TEST (quick runs).")
    parser.add_argument("--output_dir", default="classification-benchmark")
    return parser.parse_args(argv)


def finetuned_row(args, dataset: str, seed: int, folder: Path) -> dict:
    """One run of `examples/finetune.py` with its defaults, as a row of the protocol's results."""
    command = [sys.executable, str(FINETUNE), "--model_name_or_path", args.model_name_or_path, "--dataset", dataset,
               "--seed", str(seed), "--output_dir", str(folder)]
    for flag, value in (("--max_train_samples", args.max_train_samples), ("--max_eval_samples", args.max_test_samples)):
        if value is not None:
            command += [flag, str(value)]
    started = time.perf_counter()
    completed = subprocess.run(command + list(args.finetune_args), capture_output=True, text=True)
    if completed.returncode:
        raise RuntimeError(f"examples/finetune.py failed on {dataset} (seed {seed}):\n{completed.stderr[-3000:]}")
    results = json.loads((folder / "eval_results.json").read_text())
    training = json.loads((folder / "config.json").read_text())
    return {"dataset": dataset, "method": FINETUNED, "seed": seed,
            **{key: results[key] for key in ("accuracy", "balanced_accuracy", "macro_f1")},
            "weight_decay": None, "dropout": training["classifier_dropout"],
            "validation_accuracy": results["validation"]["accuracy"], "seconds": time.perf_counter() - started,
            "mean_top_probability": results["mean_top_probability"], "cross_entropy": results["cross_entropy"],
            "selected_epoch": results["selected_epoch"],
            # the first stage's heads, averaged into the one the classifier reads
            "classifier_features": " & ".join(sorted(member["classifier_features"]
                                                     for member in results["probe_members"])),
            "temperature": (results.get("calibration") or {}).get("temperature")}


def mean_over_datasets(rows, metric: str = "accuracy") -> str:
    """A line per method: its mean over datasets of the per-dataset mean over seeds."""
    per_method = {}
    for row in rows:
        per_method.setdefault(row["method"], {}).setdefault(row["dataset"], []).append(row[metric])
    lines = ["| method | mean over datasets |", "|---|---|"]
    for method, datasets in per_method.items():
        lines.append(f"| {method} | {np.mean([np.mean(values) for values in datasets.values()]):.3f} |")
    return "\n".join(lines)


def finetuned_details(rows) -> str:
    """Per dataset: mean top probability and cross-entropy on TEST, what TRAIN chose (features, epoch, temperature)
    and the accuracy it was judged by (out of fold, or on the validation rows), over seeds."""
    lines = ["| dataset | mean top probability | test cross-entropy | features chosen | epoch kept | temperature | "
             "accuracy judged on TRAIN |", "|---|---|---|---|---|---|---|"]
    groups = {}
    for row in rows:
        if row["method"] == FINETUNED:
            groups.setdefault(row["dataset"], []).append(row)
    for dataset, group in groups.items():
        features = ", ".join(sorted({row["classifier_features"] for row in group}))
        epochs = "/".join(str(row["selected_epoch"]) for row in group)
        temperatures = "/".join("none" if row.get("temperature") is None else f"{row['temperature']:.2f}"
                                for row in group)
        lines.append(f"| {dataset} | {np.mean([row['mean_top_probability'] for row in group]):.2f} | "
                     f"{np.mean([row['cross_entropy'] for row in group]):.3f} | {features} | "
                     f"{epochs} | {temperatures} | {np.mean([row['validation_accuracy'] for row in group]):.3f} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    seeds = range(args.num_seeds)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for dataset in args.datasets:
            for seed in seeds:
                rows.append(finetuned_row(args, dataset, seed, Path(folder) / f"{dataset}-{seed}"))
                print(f"{dataset} seed {seed}: fine-tuned accuracy {rows[-1]['accuracy']:.3f} "
                      f"({rows[-1]['seconds']:.0f}s)", flush=True)
    model, feature_extractor = load_vqshape(args.model_name_or_path, with_feature_extractor=True)
    datasets = {}
    for name in args.datasets:
        splits = load_classification_dataset(name)
        datasets[name] = {"train": splits["train"].subset(args.max_train_samples),
                          "test": splits["test"].subset(args.max_test_samples)}
    rows += run_protocol(model, feature_extractor, datasets, seeds=seeds, feature_kinds=FEATURE_KINDS,
                         baselines=BASELINES, epochs=args.probe_epochs)
    columns = dict.fromkeys(key for row in rows for key in row)  # the fine-tuned rows have a few more
    write_results([{key: row.get(key) for key in columns} for row in rows], args.output_dir)
    markdown = "\n\n".join([
        f"Test accuracy, mean ± std over {args.num_seeds} seed(s):\n\n{markdown_table(rows, 'accuracy')}",
        f"Macro-F1, mean ± std over {args.num_seeds} seed(s):\n\n{markdown_table(rows, 'macro_f1')}",
        f"Test accuracy, mean over datasets:\n\n{mean_over_datasets(rows)}",
        f"The fine-tuned classifier:\n\n{finetuned_details(rows)}",
    ]) + "\n"
    Path(args.output_dir, "results.md").write_text(markdown)
    print("\n" + markdown)
    print(f"Wrote {args.output_dir} in {time.perf_counter() - started:.0f}s.")
    return rows


if __name__ == "__main__":
    main()
