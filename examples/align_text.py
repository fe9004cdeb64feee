"""Align a pre-trained VQShape's codebook and tokens with a frozen sentence-transformer, with accelerate:

    accelerate launch examples/align_text.py --model_name_or_path vqshape-pretrained --output_dir vqshape-text

Series come from any corpus the data module reads (`--data`, default the sets bundled with aeon); they train the code
and token alignment (captions come from the model's own attributes, no labels needed). Labelled sets with human class
names (`--labelled_data`, `modeling_vqshape.tasks.classification.CLASS_NAMES`) add the series <-> class prompt loss.
`--zero_shot_dataset` (BasicMotions by default) is refused as a labelled set, so that its labels never touch training
and its zero-shot score means something.

The training loop is `examples/pretrain.py`'s (`modeling_vqshape.tasks.training`): gradient accumulation
(`--gradient_accumulation_steps`), checkpoints every `--checkpointing_steps` and `--resume_from_checkpoint latest`;
the losses are read back from the device only every `--logging_steps`.
"""

import argparse
import importlib.util
import math
import os

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, set_seed
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from modeling_vqshape import VQShapeFeatureExtractor
from modeling_vqshape.configuration_vqshape_text import DEFAULT_TEXT_MODEL
from modeling_vqshape.corpora.data import load_pretraining_dataset
from modeling_vqshape.modeling_vqshape_text import (
    VQShapeForTextAlignment,
    calibrations_by_source,
    load_text_encoder,
)
from modeling_vqshape.tasks.classification import CLASS_NAMES, load_classification_dataset, load_labelled_rows
from modeling_vqshape.tasks.training import (
    add_hub_arguments,
    check_hub_arguments,
    evaluate_alignment,
    finish,
    get_process_scheduler,
    loss_terms,
    resumable_batches,
    resume_from_checkpoint,
    save_checkpoint,
)
from modeling_vqshape.text_calibration import per_channel_calibrations

EVALUATED = ("code_text_loss", "token_text_loss", "intensity_text_loss", "rhythm_text_loss")
TERMS = ("loss", "code_text_loss", "token_text_loss", "intensity_text_loss", "rhythm_text_loss", "channel_text_loss",
         "class_text_loss", "pretraining_loss")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Align VQShape codes with sentence-transformer text embeddings.")
    parser.add_argument("--model_name_or_path", required=True, help="A pre-trained VQShape folder or Hub id.")
    parser.add_argument("--text_model", default=DEFAULT_TEXT_MODEL, help="sentence-transformer name or local path.")
    parser.add_argument("--text_model_name", default=None,
                        help="Name stored with the bank (default: --text_model); e.g. the Hub name of a local copy.")
    parser.add_argument("--data", nargs="+", default=["bundled"], help="Unlabelled series: any data module spec.")
    parser.add_argument("--dataset_column", default=None)
    parser.add_argument("--labelled_data", nargs="*", default=["GunPoint", "ItalyPowerDemand", "PickupGestureWiimoteZ"],
                        help="Bundled sets whose training labels train the class prompts; known: "
                             f"{sorted(CLASS_NAMES)}.")
    parser.add_argument("--zero_shot_dataset", default="BasicMotions", help="Never used as a labelled set.")
    parser.add_argument("--channel_data", default=None,
                        help="A multichannel set whose TRAIN series (labels unused) teach which channel moves most.")
    parser.add_argument("--channel_names", default=None, help="Its channels' names, comma-separated, in order.")
    parser.add_argument("--max_series_per_dataset", type=int, default=300)
    parser.add_argument("--validation_split", type=float, default=0.1)
    parser.add_argument("--output_dir", default="vqshape-text")
    parser.add_argument("--per_device_train_batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--max_train_steps", type=int, default=400)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--num_warmup_steps", type=int, default=20)
    parser.add_argument("--joint_training", action="store_true", help="Also train VQShape (pre-training loss kept).")
    parser.add_argument("--class_text_weight", type=float, default=0.1,
                        help="Weight of the class prompt loss; at 1 it pulls the token heads off their attributes "
                             "(benchmarks/bench_text_alignment.py: held-out attribute accuracy falls below majority).")
    parser.add_argument("--intensity_text_weight", type=float, default=1.0,
                        help="Weight of the channel intensity <-> intensity phrase loss (sources with raw scales).")
    parser.add_argument("--logging_steps", type=int, default=20,
                        help="Log (and read the losses back from the device) every so many steps.")
    parser.add_argument("--checkpointing_steps", type=int, default=None)
    parser.add_argument("--resume_from_checkpoint", default=None, help="A checkpoint folder or 'latest'.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report_to", default="tensorboard" if importlib.util.find_spec("tensorboard") else "none")
    add_hub_arguments(parser)
    args = parser.parse_args(argv)
    check_hub_arguments(parser, args, "lab/vqshape-text")
    unknown = [name for name in args.labelled_data if name not in CLASS_NAMES]
    if unknown:
        parser.error(f"no class names for {unknown}; known: {sorted(CLASS_NAMES)} (add yours to "
                     "modeling_vqshape.tasks.classification.CLASS_NAMES).")
    if bool(args.channel_data) != bool(args.channel_names):
        parser.error("--channel_data and --channel_names go together.")
    args.channel_names = [name.strip() for name in args.channel_names.split(",")] if args.channel_names else None
    if args.zero_shot_dataset in args.labelled_data:
        parser.error(f"{args.zero_shot_dataset} is the zero-shot dataset: its labels must not train the model.")
    return args


def get_dataloaders(accelerator, args, input_length):
    with accelerator.main_process_first():
        data = load_pretraining_dataset(args.data, input_length=input_length, column=args.dataset_column,
                                        validation_split=args.validation_split, balance=False,
                                        max_series_per_source=args.max_series_per_dataset, seed=args.seed,
                                        normalize=False)  # in their own units: intensity reads the scale
        labelled, labels, class_names, labelled_sources = load_labelled_rows(args.labelled_data, input_length,
                                                                             args.max_series_per_dataset)
    unlabelled = torch.as_tensor(np.asarray(data["train"].with_format("numpy")["past_values"]), dtype=torch.float32)
    labelled = torch.from_numpy(labelled)
    calibration, calibrations = calibrations_by_source(unlabelled, data["train"]["source"])
    labelled_calibration, _ = calibrations_by_source(labelled, [f"labelled {name}" for name in labelled_sources])
    train = TensorDataset(torch.cat([unlabelled, labelled]),
                          torch.cat([torch.full((len(unlabelled),), -100), torch.from_numpy(labels)]),
                          torch.cat([calibration, labelled_calibration]))
    validation = torch.as_tensor(np.asarray(data["validation"].with_format("numpy")["past_values"]),
                                 dtype=torch.float32)
    validation = TensorDataset(validation, torch.full((len(validation),), -100),
                               calibrations_by_source(validation, data["validation"]["source"], calibrations)[0])
    accelerator.print("intensity calibration (log-scale terciles) per source: " + ", ".join(
        f"{source} {[round(v, 3) for v in thresholds.tolist()]}"
        for source, thresholds in sorted(calibrations.items())))
    train_loader = DataLoader(train, batch_size=args.per_device_train_batch_size, shuffle=True, drop_last=True,
                              generator=torch.Generator().manual_seed(args.seed))
    validation_loader = DataLoader(validation, batch_size=256)
    return train_loader, validation_loader, class_names, {"unlabelled": len(unlabelled), "labelled": len(labelled)}


def get_channel_dataloader(args, input_length):
    """The multichannel series of `--channel_data` (its TRAIN split; labels unused), each with every channel's
    calibration on that split, in batches of a quarter of the main batch size."""
    series = load_classification_dataset(args.channel_data)["train"].series
    past_values = VQShapeFeatureExtractor(input_length)(series)["past_values"].float()
    channels = past_values.shape[-1] if past_values.dim() == 3 else 1
    if channels != len(args.channel_names):
        raise ValueError(f"--channel_data {args.channel_data} has {channels} channel(s) but --channel_names gives "
                         f"{len(args.channel_names)} ({args.channel_names}); name each channel once, in order.")
    dataset = TensorDataset(past_values, per_channel_calibrations(past_values))
    return DataLoader(dataset, batch_size=min(max(args.per_device_train_batch_size // 4, 2), len(dataset)),
                      shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(args.seed))


def main(argv=None):
    args = parse_args(argv)
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                              log_with=None if args.report_to == "none" else args.report_to,
                              project_dir=args.output_dir,
                              # seeded sampling per epoch: a resumed run sees the data in the same order
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    set_seed(args.seed)
    text_name = args.text_model_name or args.text_model
    model = VQShapeForTextAlignment.from_vqshape(args.model_name_or_path,
                                                 text_encoder=load_text_encoder(args.text_model),
                                                 text_model_name_or_path=text_name,
                                                 freeze_backbone=not args.joint_training,
                                                 class_text_weight=args.class_text_weight,
                                                 intensity_text_weight=args.intensity_text_weight,
                                                 channel_names=args.channel_names)
    train_dataloader, eval_dataloader, class_names, corpus = get_dataloaders(
        accelerator, args, model.config.vqshape_config.input_length)
    if class_names:
        model.set_class_names(class_names)  # stored prompts: `labels` index them

    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_process_scheduler("cosine", optimizer, args.num_warmup_steps, args.max_train_steps,
                                      accelerator.num_processes)  # in optimizer steps, accumulated or not
    channel_dataloader = get_channel_dataloader(args, model.config.vqshape_config.input_length) \
        if args.channel_data else None
    model, optimizer, train_dataloader, eval_dataloader, scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, scheduler)
    channel_batches = (batch for *_, batch in resumable_batches(accelerator, accelerator.prepare(channel_dataloader))) \
        if channel_dataloader else None  # epoch after epoch, reshuffled
    if accelerator.log_with:
        accelerator.init_trackers("vqshape_align_text", {k: str(v) for k, v in vars(args).items()})

    completed_steps, epoch, batches = resume_from_checkpoint(accelerator, args.resume_from_checkpoint, args.output_dir)
    history = {}
    if completed_steps == 0:
        history["validation_step_0"] = evaluate_alignment(model, eval_dataloader, accelerator, EVALUATED)
        accelerator.print(f"step 0: validation {history['validation_step_0']}")
    progress = tqdm(range(args.max_train_steps), initial=completed_steps, disable=not accelerator.is_local_main_process)
    log = []
    model.train()
    # epoch after epoch until the step budget is spent; nothing left when resumed at the last step
    data = resumable_batches(accelerator, train_dataloader, epoch, batches) \
        if completed_steps < args.max_train_steps else ()
    for epoch, batches, (past_values, labels, calibration) in data:
        with accelerator.accumulate(model):
            outputs = model(past_values=past_values, labels=labels, intensity_thresholds=calibration)
            loss = outputs.loss
            if channel_batches is not None:  # and a batch of the named channels: its terms, "which moves most" too
                channel_values, channel_calibration = next(channel_batches)
                # the code <-> phrase term does not depend on the batch: the main batch has counted it
                channel_outputs = model(past_values=channel_values, intensity_thresholds=channel_calibration,
                                        with_code_term=False)
                loss = loss + channel_outputs.loss
                outputs.channel_text_loss = channel_outputs.channel_text_loss
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        if not accelerator.sync_gradients:
            continue
        completed_steps += 1
        progress.update(1)
        if completed_steps % args.logging_steps == 0:  # the only place the losses are read back from the device
            # means over the ranks' batches, each term over the ranks that had it
            means = accelerator.gather(loss_terms(outputs, TERMS)[None]).nanmean(0).tolist()
            terms = {term: value for term, value in zip(TERMS, means) if not math.isnan(value)}
            terms["logit_scale"] = float(outputs.logit_scale)
            accelerator.log({f"train/{k}": v for k, v in terms.items()}, step=completed_steps)
            log.append({"step": completed_steps, **terms})
            progress.set_postfix(loss=f"{terms['loss']:.3f}", scale=f"{terms['logit_scale']:.1f}")
            progress.write(f"step {completed_steps}: " + ", ".join(f"{k} {v:.4f}" for k, v in terms.items()))
        if args.checkpointing_steps and completed_steps % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, args.output_dir, completed_steps, epoch, batches)
        if completed_steps >= args.max_train_steps:
            break
    progress.close()
    history["validation_final"] = evaluate_alignment(model, eval_dataloader, accelerator, EVALUATED)
    accelerator.print(f"step {completed_steps}: validation {history['validation_final']}")

    results = {"base_model": args.model_name_or_path, "text_model": text_name, "series": corpus,
               "labelled_data": args.labelled_data, "class_names": class_names, "steps": completed_steps, "log": log,
               **history}
    finish(accelerator, model, args, results, message=f"\nSaved to {os.path.abspath(args.output_dir)}; load with "
                                                      f"VQShapeForTextAlignment.from_pretrained({args.output_dir!r}).")
    return history


if __name__ == "__main__":
    main()
