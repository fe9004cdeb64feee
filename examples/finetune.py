"""Fine-tune `VQShapeForTimeSeriesClassification` end to end with accelerate, and save it with its label names.

    accelerate launch examples/finetune.py --model_name_or_path vqshape-pretrained --dataset BasicMotions \
        --classifier_features histogram --freeze_backbone --output_dir vqshape-basicmotions

`--freeze_backbone` trains the linear head alone (the linear probe, trained by gradient descent); without it the whole
model is fine-tuned. The dataset is any that `modeling_vqshape.classification.load_classification_dataset` reads (a
bundled aeon set, a UEA/UCR folder, a saved DatasetDict with train/test splits); the number of channels and the label
names come from its training split, and the saved `config.json` keeps them as `id2label`, so the folder (or its Hub
repo, `--push_to_hub`) predicts named classes. Accuracy, balanced accuracy and macro-F1 on the test split are printed,
written to `eval_results.json` and put into the model card's `model-index`.
"""

import argparse
import json
import os

import evaluate
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from modeling_vqshape import VQShapeFeatureExtractor, VQShapeForTimeSeriesClassification
from modeling_vqshape.classification import dataset_name, load_classification_dataset
from modeling_vqshape.metrics import CLASSIFICATION_METRIC
from modeling_vqshape.training import (
    add_hub_arguments,
    check_hub_arguments,
    finish,
    get_process_scheduler,
    num_training_steps,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Fine-tune a VQShape classifier.")
    parser.add_argument("--model_name_or_path", required=True, help="A (converted or pre-trained) VQShape checkpoint.")
    parser.add_argument("--dataset", default="BasicMotions")
    parser.add_argument("--series_column", default="past_values")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--classifier_features", default="histogram", choices=["tokens", "histogram"])
    parser.add_argument("--classifier_dropout", type=float, default=0.1)
    parser.add_argument("--freeze_backbone", action="store_true", help="Train the classifier head alone.")
    parser.add_argument("--output_dir", default="vqshape-classifier")
    parser.add_argument("--per_device_train_batch_size", type=int, default=16)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--num_train_epochs", type=int, default=30)
    parser.add_argument("--max_train_steps", type=int, default=0, help="Overrides epochs when > 0.")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--lr_scheduler_type", default="linear")
    parser.add_argument("--num_warmup_steps", type=int, default=0)
    parser.add_argument("--max_train_samples", type=int, default=None, help="Stratified subset of TRAIN.")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="Stratified subset of TEST.")
    parser.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"])
    parser.add_argument("--seed", type=int, default=0)
    add_hub_arguments(parser)
    args = parser.parse_args(argv)
    check_hub_arguments(parser, args, "lab/vqshape-basicmotions")
    return args


def get_dataloaders(args, input_length):
    """Train/test dataloaders of `(past_values, labels)` and the label names (sorted training labels)."""
    splits = load_classification_dataset(args.dataset, args.series_column, args.label_column)
    train = splits["train"].subset(args.max_train_samples, args.seed)
    test = splits["test"].subset(args.max_eval_samples, args.seed)
    label_names = sorted({str(label) for label in train.labels})
    unseen = sorted(set(test.labels) - set(label_names))
    if unseen:
        raise ValueError(f"{args.dataset}: test labels {unseen} never occur in the training split.")
    feature_extractor = VQShapeFeatureExtractor(input_length=input_length)

    def tensors(split):
        # (channels, time) series -> past_values (batch, input_length, channels); label names -> indices
        past_values = torch.as_tensor(feature_extractor(split.series)["past_values"])
        labels = torch.as_tensor(np.searchsorted(label_names, split.labels))
        return TensorDataset(past_values, labels)

    train_data, test_data = tensors(train), tensors(test)
    num_channels = train_data.tensors[0].shape[-1]
    train_dataloader = DataLoader(train_data, batch_size=args.per_device_train_batch_size, shuffle=True,
                                  generator=torch.Generator().manual_seed(args.seed))
    test_dataloader = DataLoader(test_data, batch_size=args.per_device_eval_batch_size)
    return train_dataloader, test_dataloader, label_names, num_channels


def evaluate_model(model, dataloader, accelerator, label_names):
    """Test metrics of the named classes, from the package's `evaluate` module, over every process's batches."""
    metric = evaluate.load(CLASSIFICATION_METRIC)
    names = np.asarray(label_names)
    model.eval()
    with torch.no_grad():
        for past_values, labels in dataloader:
            logits = model(past_values=past_values).logits
            predicted, labels = accelerator.gather_for_metrics((logits.argmax(-1), labels))
            metric.add_batch(predictions=names[predicted.cpu().numpy()], references=names[labels.cpu().numpy()])
    model.train()
    return metric.compute()


def main(argv=None):
    args = parse_args(argv)
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                              mixed_precision=args.mixed_precision,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    set_seed(args.seed)
    input_length = VQShapeFeatureExtractor.from_pretrained(args.model_name_or_path).input_length
    with accelerator.main_process_first():
        train_dataloader, test_dataloader, label_names, num_channels = get_dataloaders(args, input_length)
    model = VQShapeForTimeSeriesClassification.from_pretrained(
        args.model_name_or_path, num_labels=len(label_names), num_input_channels=num_channels,
        id2label=dict(enumerate(label_names)), label2id={name: index for index, name in enumerate(label_names)},
        classifier_features=args.classifier_features, classifier_dropout=args.classifier_dropout,
        freeze_backbone=args.freeze_backbone,
    )
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=args.weight_decay)
    max_train_steps = num_training_steps(len(train_dataloader), accelerator.num_processes,
                                         args.gradient_accumulation_steps, args.num_train_epochs, args.max_train_steps)
    scheduler = get_process_scheduler(args.lr_scheduler_type, optimizer, args.num_warmup_steps, max_train_steps,
                                      accelerator.num_processes)
    model, optimizer, train_dataloader, test_dataloader, scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, test_dataloader, scheduler
    )
    accelerator.print(f"{dataset_name(args.dataset)}: {len(label_names)} classes {label_names}, {num_channels} "
                      f"channel(s); features {args.classifier_features}, backbone "
                      f"{'frozen' if args.freeze_backbone else 'trained'}; {max_train_steps} steps")

    completed_steps = 0
    progress = tqdm(range(max_train_steps), disable=not accelerator.is_local_main_process)
    model.train()
    while completed_steps < max_train_steps:
        for past_values, labels in train_dataloader:
            with accelerator.accumulate(model):
                outputs = model(past_values=past_values, labels=labels)
                loss = outputs.loss
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                completed_steps += 1
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.3f}")
                if completed_steps >= max_train_steps:
                    break
    progress.close()

    metrics = evaluate_model(model, test_dataloader, accelerator, label_names)
    per_class = metrics.pop("per_class")
    accelerator.print(f"test: {json.dumps(metrics)}")
    name = dataset_name(args.dataset)
    training = {"base_model": args.model_name_or_path, "dataset": name, "labels": label_names,
                "classifier_features": args.classifier_features, "freeze_backbone": args.freeze_backbone,
                "steps": completed_steps, "learning_rate": args.learning_rate, "seed": args.seed}
    card = dict(description=f"Fine-tuned on {name} with `examples/finetune.py`.", training=training,
                results={name: metrics}, dataset_names=[name],
                results_description="Test split of the fine-tuned classifier (`examples/finetune.py`).")
    finish(accelerator, model, args, {"dataset": name, "split": "test", **metrics, "per_class": per_class},
           results_file="eval_results.json", card=card,
           message=f"\nModel saved to {os.path.abspath(args.output_dir)}. Predict named classes with:\n"
                   f"  import modeling_vqshape\n  from transformers import AutoFeatureExtractor, "
                   f"AutoModelForSequenceClassification\n"
                   f"  model = AutoModelForSequenceClassification.from_pretrained({args.output_dir!r})\n"
                   f"  inputs = AutoFeatureExtractor.from_pretrained({args.output_dir!r})(series)\n"
                   f"  names = [model.config.id2label[i] for i in model(**inputs).logits.argmax(-1).tolist()]")
    return metrics


if __name__ == "__main__":
    main()
