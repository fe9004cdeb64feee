"""The topology teacher's head: its convolution maps flattened (`feature_pooling="flatten"`, the default) or averaged
(`"mean"`, the head of folders saved before the option), measured on TRAIN alone.

    python benchmarks/bench_persistence_pooling.py

For each set, every series is resampled to 512 steps and turned into persistence images (`persistence_images`, the
teacher's defaults); `PersistenceImageForClassification` with each head is trained as
`examples/train_persistence_teacher.py` trains it (AdamW, learning rate 1e-3, weight decay 0.01, batches of 16, 30
epochs) on 4 of 5 stratified folds of TRAIN and scored on the fifth, for every fold. TEST is never read. The choice
was made on the sets of the distillation benchmark (BasicMotions, GunPoint, PickupGestureWiimoteZ) and confirmed on
ArrowHead and OSULeaf. Writes `results.md` into `--output_dir`.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from bench_distillation import load_script
from sklearn.model_selection import StratifiedKFold

from modeling_vqshape import PersistenceImageConfig, PersistenceImageForClassification
from modeling_vqshape.persistence import persistence_images
from modeling_vqshape.tasks.classification import load_classification_dataset
from modeling_vqshape.tasks.finetuning import labelled_tensors

POOLINGS = ("flatten", "mean")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="*",
                        default=["BasicMotions", "GunPoint", "PickupGestureWiimoteZ", "ArrowHead", "OSULeaf"])
    parser.add_argument("--num_folds", type=int, default=5)
    parser.add_argument("--num_train_epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="persistence-pooling-benchmark")
    return parser.parse_args(argv)


def fold_accuracy(images, labels, train_rows, test_rows, pooling: str, epochs: int, seed: int) -> float:
    """Accuracy on `test_rows` of a teacher with `pooling` trained on `train_rows`, as the training script trains."""
    torch.manual_seed(seed)
    config = PersistenceImageConfig(num_input_channels=images.shape[1], num_labels=int(labels.max()) + 1,
                                    feature_pooling=pooling)
    model = PersistenceImageForClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    train_rows = torch.as_tensor(train_rows)
    train_epoch = load_script("train_persistence_teacher").train_epoch  # the script's, as it trains the teacher
    for _ in range(epochs):
        order = train_rows[torch.randperm(len(train_rows), generator=generator)]
        train_epoch(model, optimizer, ((images[batch], labels[batch]) for batch in order.split(16)))
    with torch.no_grad():
        predictions = model.eval()(persistence_images=images[test_rows]).logits.argmax(-1)
    return (predictions == labels[test_rows]).float().mean().item()


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    lines = ["| dataset | series in TRAIN | " + " | ".join(POOLINGS) + " |", "|---" * (2 + len(POOLINGS)) + "|"]
    means = {pooling: [] for pooling in POOLINGS}
    for name in args.datasets:
        train = load_classification_dataset(name)["train"]
        past_values, labels = labelled_tensors(train, sorted(set(train.labels)), 512)
        images = persistence_images(past_values)
        folds = StratifiedKFold(min(args.num_folds, np.bincount(labels.numpy()).min()), shuffle=True,
                                random_state=args.seed).split(np.zeros(len(labels)), labels.numpy())
        scores = {pooling: [] for pooling in POOLINGS}
        for fold, (train_rows, test_rows) in enumerate(folds):
            for pooling in POOLINGS:
                scores[pooling].append(fold_accuracy(images, labels, train_rows, test_rows, pooling,
                                                     args.num_train_epochs, args.seed * 100 + fold))
        row = {pooling: float(np.mean(values)) for pooling, values in scores.items()}
        for pooling, value in row.items():
            means[pooling].append(value)
        lines.append(f"| {name} | {len(labels)} | " + " | ".join(f"{row[pooling]:.3f}" for pooling in POOLINGS) + " |")
        print(lines[-1], flush=True)
    lines.append("| mean | | " + " | ".join(f"{np.mean(means[pooling]):.3f}" for pooling in POOLINGS) + " |")
    markdown = (f"Cross-validated accuracy on TRAIN ({args.num_folds} stratified folds, {args.num_train_epochs} "
                f"epochs, seed {args.seed}), by head:\n\n" + "\n".join(lines) + "\n")
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    Path(args.output_dir, "results.md").write_text(markdown)
    print("\n" + markdown + f"\nWrote {args.output_dir} in {time.perf_counter() - started:.0f}s.")


if __name__ == "__main__":
    main()
