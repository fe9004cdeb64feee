"""Train the persistence-image teacher (`PersistenceImageForClassification`) with accelerate, and save it with its
label names, ready for `examples/distill.py --teacher`.

    pip install "vqshape[tda]"
    accelerate launch examples/train_persistence_teacher.py --dataset BasicMotions --output_dir pi-basicmotions

Every channel of a series is resampled to `--input_length`, standardised, and turned into the persistence image of its
sublevel-set filtration (0-dimensional persistence, GUDHI; `modeling_vqshape.persistence`); a small CNN reads the
images. The dataset is any that `finetune.py` accepts (`load_classification_dataset`). A stratified
`--validation_fraction` of TRAIN (whole recordings where the dataset names them) picks the epoch whose weights are kept;
the test split is read once, at the end. Test accuracy and macro-F1 go to `eval_results.json`.
"""

import argparse
import json
import os

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, TensorDataset

from modeling_vqshape import PersistenceImageConfig, PersistenceImageForClassification
from modeling_vqshape.persistence import persistence_images
from modeling_vqshape.tasks.classification import dataset_name
from modeling_vqshape.tasks.finetuning import (
    BestEpoch,
    add_dataset_arguments,
    evaluate_classifier,
    labelled_splits,
    labelled_tensors,
    split_metrics,
    validation_split,
)
from modeling_vqshape.tasks.training import add_hub_arguments, check_hub_arguments, finish, set_cpu_threads

PERSISTENCE_SUMMARY = (
    "A persistence-image classifier: each channel of a series becomes the persistence image of its sublevel-set "
    "filtration (0-dimensional persistence, GUDHI), read by a small CNN; the topology teacher of multi-teacher "
    'distillation (Jeon et al., "Topological Persistence Guided Knowledge Distillation for Wearable Sensor Data", '
    "2024).")


PERSISTENCE_CITATION = """@article{jeon2024topological,
  title   = {Topological Persistence Guided Knowledge Distillation for Wearable Sensor Data},
  author  = {Jeon, Eun Som and Choi, Hongjun and Shukla, Ankita and Wang, Yuan and Lee, Hyunglae and
             Buman, Matthew P. and Turaga, Pavan},
  journal = {Engineering Applications of Artificial Intelligence},
  year    = {2024}
}"""


def persistence_usage(source: str) -> str:
    """The card's "How to load" section."""
    return (
        "## How to load\n\n"
        "With the `vqshape` package and its `tda` extra installed (`pip install \"vqshape[tda]\"`), or with "
        "`trust_remote_code=True` and `gudhi` installed:\n\n"
        "```python\nimport modeling_vqshape  # noqa: F401\n"
        "from transformers import AutoModelForSequenceClassification\n\n"
        f'model = AutoModelForSequenceClassification.from_pretrained("{source}")\n'
        "logits = model(past_values=past_values).logits  # (batch, config.input_length, channels), resampled\n```\n\n"
        f"As a teacher: `accelerate launch examples/distill.py --teacher {source} ...`."
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train a persistence-image classifier (a topology teacher).")
    add_dataset_arguments(parser)
    parser.add_argument("--input_length", type=int, default=512, help="Every series is resampled to this length.")
    parser.add_argument("--resolution", type=int, default=16, help="Pixels per side of each persistence image.")
    parser.add_argument("--bandwidth", type=float, default=0.25, help="Of the Gaussian kernel (standardised units).")
    parser.add_argument("--hidden_size", type=int, default=32)
    parser.add_argument("--classifier_dropout", type=float, default=0.1)
    parser.add_argument("--output_dir", default="persistence-teacher")
    parser.add_argument("--per_device_train_batch_size", type=int, default=16)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--num_train_epochs", type=int, default=30)
    parser.add_argument("--num_threads", type=int, default=None, help="CPU threads per process (default: cores).")
    parser.add_argument("--seed", type=int, default=0)
    add_hub_arguments(parser)
    args = parser.parse_args(argv)
    check_hub_arguments(parser, args, "lab/persistence-teacher")
    return args


def get_dataloaders(args, config):
    """Train dataloader of `(persistence images, labels)` (computed once), validation and test dataloaders of
    `(past_values, labels)` (the model computes their images), and the label names."""
    train, test, label_names = labelled_splits(args)
    past_values, labels = labelled_tensors(train, label_names, args.input_length)
    train_rows, validation_rows = validation_split(labels.numpy(), args.validation_fraction, args.seed, train.groups)
    images = persistence_images(past_values[train_rows], **config.image_kwargs)
    train_dataloader = DataLoader(TensorDataset(images, labels[train_rows]), shuffle=True,
                                  batch_size=args.per_device_train_batch_size,
                                  generator=torch.Generator().manual_seed(args.seed))
    validation_dataloader = DataLoader(TensorDataset(past_values[validation_rows], labels[validation_rows]),
                                       batch_size=args.per_device_eval_batch_size)
    test_dataloader = DataLoader(TensorDataset(*labelled_tensors(test, label_names, args.input_length)),
                                 batch_size=args.per_device_eval_batch_size)
    return (train_dataloader, validation_dataloader, test_dataloader), label_names, past_values.shape[-1]


def train_epoch(model, optimizer, batches, backward=torch.Tensor.backward):
    """One epoch of the teacher's training: a step of `optimizer` on the classification loss of each batch of
    `(persistence images, labels)` in `batches`, back-propagated by `backward` (the accelerator's, in `main`).
    `benchmarks/bench_persistence_pooling.py` trains its heads with it too."""
    model.train()
    for images, labels in batches:
        backward(model(persistence_images=images, labels=labels).loss)
        optimizer.step()
        optimizer.zero_grad()


def main(argv=None):
    args = parse_args(argv)
    accelerator = Accelerator()
    set_cpu_threads(accelerator, args.num_threads)
    set_seed(args.seed)
    config = PersistenceImageConfig(input_length=args.input_length, resolution=args.resolution,
                                    bandwidth=args.bandwidth, hidden_size=args.hidden_size,
                                    classifier_dropout=args.classifier_dropout)
    with accelerator.main_process_first():
        dataloaders, label_names, num_channels = get_dataloaders(args, config)
    config.num_input_channels = num_channels
    config.num_labels = len(label_names)
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: index for index, name in enumerate(label_names)}
    model = PersistenceImageForClassification(config)
    accelerator.print(f"{dataset_name(args.dataset)}: {len(label_names)} classes {label_names}, {num_channels} "
                      f"channel(s), {config.resolution}x{config.resolution} persistence images")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    model, optimizer, *dataloaders = accelerator.prepare(model, optimizer, *dataloaders)
    train_dataloader, validation_dataloader, test_dataloader = dataloaders

    best = BestEpoch()
    for epoch in range(1, args.num_train_epochs + 1):
        train_epoch(model, optimizer, train_dataloader, accelerator.backward)
        # the validation rows pick the epoch; the test rows are never looked at here
        best.update(epoch, evaluate_classifier(model, validation_dataloader, accelerator),
                    accelerator.unwrap_model(model))
    best.restore(accelerator.unwrap_model(model))

    metrics = split_metrics(model, test_dataloader, accelerator)
    accelerator.print(f"epoch {best.epoch} kept (validation accuracy {best.metrics['accuracy']:.3f}); test: "
                      f"{json.dumps(metrics)}")
    name = dataset_name(args.dataset)
    training = {"dataset": name, "labels": label_names, "epochs": args.num_train_epochs, "selected_epoch": best.epoch,
                "validation": best.metrics, "learning_rate": args.learning_rate, "weight_decay": args.weight_decay,
                "seed": args.seed}
    source = args.hub_model_id or args.output_dir
    card = dict(summary=PERSISTENCE_SUMMARY, usage=persistence_usage(source), citation=PERSISTENCE_CITATION,
                tags=["time-series", "time-series-classification", "persistence-image", "topological-data-analysis"],
                repo_id=os.path.basename(os.path.normpath(source)),
                description=f"Trained on {name} by `examples/train_persistence_teacher.py`, as a topology teacher "
                            "for `examples/distill.py`.",
                training=training, results={name: metrics}, dataset_names=[name],
                results_description="Test split of the persistence-image classifier.")
    finish(accelerator, model, args, {"dataset": name, "split": "test", **metrics,
                                      "selected_epoch": best.epoch, "validation": best.metrics},
           results_file="eval_results.json", card=card,
           message=f"\nTeacher saved to {os.path.abspath(args.output_dir)}; distil it with:\n"
                   f"  accelerate launch examples/distill.py --teacher {args.output_dir} ...")
    return metrics


if __name__ == "__main__":
    main()
