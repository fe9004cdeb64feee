"""Fine-tune `VQShapeForTimeSeriesClassification` with accelerate, and save it with its label names.

    accelerate launch examples/finetune.py --model_name_or_path vqshape-pretrained --dataset BasicMotions \
        --output_dir vqshape-basicmotions

The recipe (its defaults were chosen on the bundled sets, validated on TRAIN; docs/classification.md): the head reads
`--classifier_features` standardised with statistics of its training rows (saved with the model). By default it is a
linear probe on the frozen backbone: `--probe_folds`-fold cross-validation over TRAIN (by whole recordings, for windows
of recordings: `--group_column`) chooses the features and regularisation, the heads of other feature sets that improve
the out-of-fold logits are averaged in (`--probe_ensemble`), the choice is trained on all of TRAIN, and a temperature
fitted on the out-of-fold logits calibrates its probabilities (`--no-calibrate`: none). With
`--num_train_epochs N` a stratified `--validation_fraction` of TRAIN is held out instead: it chooses the probe, trained
on the other rows, then the epoch of the whole model's fine-tuning (the backbone at `--backbone_learning_rate`;
`--freeze_backbone`: the head alone) whose weights are kept, and the temperature. The test split is read once, at the
end. The dataset is any that `modeling_vqshape.tasks.classification.load_classification_dataset` reads (a bundled aeon
set, a UEA/UCR folder, a saved DatasetDict with train/test splits); the channels and label names come from its training
split, and the saved `config.json` keeps them as `id2label`, so the folder (or its Hub repo, `--push_to_hub`) predicts
named classes. Test accuracy, macro-F1, the mean top probability and the cross-entropy are printed, written to
`eval_results.json` and put into the model card's `model-index`.
"""

import argparse
import json
import os

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from tqdm.auto import tqdm

from modeling_vqshape import VQShapeFeatureExtractor
from modeling_vqshape.tasks.classification import dataset_name
from modeling_vqshape.tasks.finetuning import (
    BestEpoch,
    add_dataset_arguments,
    add_training_arguments,
    calibrate_kept,
    classification_dataloaders,
    evaluate_classifier,
    first_stage_scores,
    parameter_groups,
    scripted_first_stage,
    split_metrics,
)
from modeling_vqshape.tasks.training import (
    add_hub_arguments,
    check_hub_arguments,
    finish,
    get_process_scheduler,
    num_training_steps,
    set_cpu_threads,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Fine-tune a VQShape classifier.")
    parser.add_argument("--model_name_or_path", required=True, help="A (converted or pre-trained) VQShape checkpoint.")
    add_dataset_arguments(parser)
    add_training_arguments(parser)
    parser.add_argument("--freeze_backbone", action="store_true", help="Train the classifier head alone.")
    parser.add_argument("--output_dir", default="vqshape-classifier")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--lr_scheduler_type", default="constant")
    parser.add_argument("--num_warmup_steps", type=int, default=0)
    parser.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"])
    add_hub_arguments(parser)
    args = parser.parse_args(argv)
    check_hub_arguments(parser, args, "lab/vqshape-basicmotions")
    return args


def main(argv=None):
    args = parse_args(argv)
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                              mixed_precision=args.mixed_precision,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    set_cpu_threads(accelerator, args.num_threads)
    set_seed(args.seed)
    input_length = VQShapeFeatureExtractor.from_pretrained(args.model_name_or_path).input_length
    with accelerator.main_process_first():
        dataloaders, label_names, train, (past_values, labels, rows) = classification_dataloaders(args, input_length)
    # first stage, the same on every process: a linear head on frozen features, chosen by the validation rows or,
    # without a second stage, by cross-validation over TRAIN and then trained on all of it
    model, head, judged = scripted_first_stage(args, args.model_name_or_path, past_values, labels, rows, label_names,
                                               train.groups, freeze_backbone=args.freeze_backbone)
    probes = " + ".join(f"{member['classifier_features']} (weight decay {member['weight_decay']}, dropout "
                        f"{member['dropout']}, share {member['share']:.2f})" for member in head.members)
    accelerator.print(f"{dataset_name(args.dataset)}: {len(label_names)} classes {label_names}, "
                      f"{past_values.shape[-1]} channel(s); linear probe on {probes}: {judged} accuracy "
                      f"{head.validation_accuracy:.3f}")

    # second stage: fine-tune from the probe; the validation rows pick the epoch (0: the probe itself)
    optimizer = torch.optim.AdamW(parameter_groups(model, args.learning_rate, args.backbone_learning_rate,
                                                   args.weight_decay))
    train_dataloader, validation_dataloader, test_dataloader = dataloaders
    max_train_steps = num_training_steps(len(train_dataloader), accelerator.num_processes,
                                         args.gradient_accumulation_steps, args.num_train_epochs)
    scheduler = get_process_scheduler(args.lr_scheduler_type, optimizer, args.num_warmup_steps, max_train_steps,
                                      accelerator.num_processes)
    model, optimizer, train_dataloader, validation_dataloader, test_dataloader, scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, validation_dataloader, test_dataloader, scheduler
    )
    best = BestEpoch()  # epoch 0, the probe: judged by the validation rows, or out of fold if all of TRAIN trained it
    best.update(0, first_stage_scores(head, model, validation_dataloader, accelerator), accelerator.unwrap_model(model))
    progress = tqdm(range(max_train_steps), disable=not accelerator.is_local_main_process)
    model.train()
    for epoch in range(1, args.num_train_epochs + 1):
        for batch_values, batch_labels in train_dataloader:
            with accelerator.accumulate(model):
                outputs = model(past_values=batch_values, labels=batch_labels)
                loss = outputs.loss
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            progress.update(int(accelerator.sync_gradients))
        # the test rows are never looked at here
        if best.update(epoch, evaluate_classifier(model, validation_dataloader, accelerator),
                       accelerator.unwrap_model(model)):
            progress.set_postfix(best_epoch=epoch, validation_accuracy=f"{best.metrics['accuracy']:.3f}")
    progress.close()
    best.restore(accelerator.unwrap_model(model))
    # the temperature from the rows that judged the model kept
    calibration = calibrate_kept(model, head, validation_dataloader, accelerator) if args.calibrate else None
    if calibration:
        accelerator.print(f"temperature {calibration['temperature']:.3f} ({judged} cross-entropy "
                          f"{calibration['validation_loss_before']:.3f} -> {calibration['validation_loss_after']:.3f})")

    metrics = split_metrics(model, test_dataloader, accelerator)
    accelerator.print(f"epoch {best.epoch} kept ({judged} accuracy {best.metrics['accuracy']:.3f}); test: "
                      f"{json.dumps(metrics)}")
    name = dataset_name(args.dataset)
    training = {"base_model": args.model_name_or_path, "dataset": name, "labels": label_names,
                "classifier_features": head.classifier_features, "head_weight_decay": head.weight_decay,
                "classifier_dropout": head.dropout, "probe_folds": head.folds, "probe_members": head.members,
                "freeze_backbone": accelerator.unwrap_model(model).config.freeze_backbone,
                "epochs": args.num_train_epochs, "selected_epoch": best.epoch, "validation": best.metrics,
                "learning_rate": args.learning_rate, "backbone_learning_rate": args.backbone_learning_rate,
                "calibration": calibration, "seed": args.seed}
    card = dict(description=f"Fine-tuned on {name} with `examples/finetune.py`.", training=training,
                results={name: metrics}, dataset_names=[name],
                results_description="Test split of the fine-tuned classifier (`examples/finetune.py`).")
    finish(accelerator, model, args, {"dataset": name, "split": "test", **metrics, "selected_epoch": best.epoch,
                                      "validation": best.metrics, "calibration": calibration,
                                      "probe_members": head.members},
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
