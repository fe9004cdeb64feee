"""The paper's classification protocol on frozen VQShape features, with baselines from the same run.

    python examples/classify.py --model_name_or_path vqshape-pretrained \
        --datasets BasicMotions JapaneseVowels GunPoint --baselines

For every dataset: token and histogram features (flattened over channels) from the model; tokens standardised and
histograms min-max scaled on TRAIN; a linear classifier with dropout on its input, weight decay x dropout selected on a
stratified, seeded 20% of TRAIN, refitted on all of TRAIN and scored on TEST; mean +- std over 5 seeds. "raw values"
is the same probe on the feature extractor's resampled series. `--baselines` adds MiniRocket and 1-NN DTW (aeon) on
the same splits, series resampled to `--baseline_length` steps. Writes `results.csv` (per seed), `summary.csv` and
`results.md` into `--output_dir` and prints the table. See `modeling_vqshape.tasks.classification`.
"""

import argparse
import time

import torch
from accelerate import Accelerator

from modeling_vqshape.sharing.loading import load_vqshape
from modeling_vqshape.tasks.classification import (
    BASELINES,
    DROPOUTS,
    FEATURE_KINDS,
    WEIGHT_DECAYS,
    dataset_name,
    load_classification_dataset,
    results_markdown,
    run_protocol,
    write_results,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Linear-probe classification protocol on VQShape features.")
    parser.add_argument("--model_name_or_path", required=True,
                        help="A (converted or pre-trained) VQShape folder or Hub id.")
    parser.add_argument("--datasets", nargs="+", default=["BasicMotions", "JapaneseVowels", "GunPoint"],
                        help="Bundled aeon sets, folders with Name_TRAIN.ts/Name_TEST.ts, or saved DatasetDicts.")
    parser.add_argument("--series_column", default="past_values", help="Series column of saved DatasetDicts.")
    parser.add_argument("--label_column", default="label", help="Label column of saved DatasetDicts.")
    parser.add_argument("--features", nargs="+", default=list(FEATURE_KINDS), choices=FEATURE_KINDS)
    parser.add_argument("--baselines", nargs="*", default=None, choices=BASELINES,
                        help="Add baselines: alone, all of them (minirocket, dtw); or name some.")
    parser.add_argument("--baseline_length", type=int, default=100, help="Baselines resample every series to this.")
    parser.add_argument("--num_seeds", type=int, default=5)
    parser.add_argument("--weight_decays", nargs="+", type=float, default=list(WEIGHT_DECAYS))
    parser.add_argument("--dropouts", nargs="+", type=float, default=list(DROPOUTS))
    parser.add_argument("--validation_fraction", type=float, default=0.2)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--probe_batch_size", type=int, default=256)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=64, help="Batch for feature extraction.")
    parser.add_argument("--max_train_samples", type=int, default=None, help="Stratified subset of TRAIN (quick runs).")
    parser.add_argument("--max_test_samples", type=int, default=None, help="Stratified subset of TEST (quick runs).")
    parser.add_argument("--output_dir", default="classification-results")
    args = parser.parse_args(argv)
    if args.baselines == []:  # `--baselines` alone: all of them
        args.baselines = list(BASELINES)
    return args


def get_datasets(args):
    datasets = {}
    for spec in args.datasets:
        splits = load_classification_dataset(spec, args.series_column, args.label_column)
        datasets[dataset_name(spec)] = {"train": splits["train"].subset(args.max_train_samples),
                                        "test": splits["test"].subset(args.max_test_samples)}
    return datasets


def main(argv=None):
    args = parse_args(argv)
    accelerator = Accelerator()  # the device; the protocol itself runs in the main process only
    if not accelerator.is_main_process:
        return None
    started = time.perf_counter()
    model, feature_extractor = load_vqshape(args.model_name_or_path, with_feature_extractor=True,
                                              device=accelerator.device)
    datasets = get_datasets(args)
    rows = run_protocol(
        model, feature_extractor, datasets, seeds=range(args.num_seeds), feature_kinds=args.features,
        baselines=args.baselines or (), baseline_length=args.baseline_length,
        feature_batch_size=args.per_device_eval_batch_size, weight_decays=args.weight_decays, dropouts=args.dropouts,
        validation_fraction=args.validation_fraction, epochs=args.epochs, learning_rate=args.learning_rate,
        batch_size=args.probe_batch_size,
    )
    paths = write_results(rows, args.output_dir)
    print("\n" + results_markdown(rows))
    print(f"Wrote {', '.join(paths.values())} in {time.perf_counter() - started:.0f}s "
          f"(torch threads: {torch.get_num_threads()}).")
    return rows


if __name__ == "__main__":
    main()
