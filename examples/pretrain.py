"""Pre-train VQShape with accelerate: `accelerate launch examples/pretrain.py` (no arguments: a small model on the
time-series classification sets bundled with aeon, a few minutes on a laptop CPU).

Many processes: the same script under `accelerate config` / `accelerate launch --multi_gpu ...`; on CPU use
`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no
--dynamo_backend no examples/pretrain.py`.
"""

import argparse
import importlib.util
import os

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from modeling_vqshape.corpora.data import describe, load_pretraining_dataset, stream_pretraining_dataset
from modeling_vqshape.tasks.training import (
    PretrainingLog,
    add_hub_arguments,
    check_hub_arguments,
    evaluate_pretraining,
    finish,
    get_process_scheduler,
    num_training_steps,
    pretraining_model,
    resumable_batches,
    resume_from_checkpoint,
    save_checkpoint,
    set_cpu_threads,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Pre-train VQShape on time-series corpora.")
    parser.add_argument("--data", nargs="+", default=["bundled"],
                        help="'bundled', bundled set names, folders (UEA/UCR .ts layout, csv/parquet/npy), files, or "
                             "`datasets` names (with --dataset_column).")
    parser.add_argument("--dataset_column", default=None, help="Column holding the series (tables, `datasets`).")
    parser.add_argument("--ts_splits", default="TRAIN", help="Which Name_<SPLIT>.ts files to read, e.g. TRAIN,TEST.")
    parser.add_argument("--validation_split", type=float, default=0.1)
    parser.add_argument("--balance_datasets", action=argparse.BooleanOptionalAction, default=True,
                        help="Oversample small sources to the largest one's size, as the paper does.")
    parser.add_argument("--max_series_per_dataset", type=int, default=None)
    parser.add_argument("--window_length", type=int, default=None, help="Cut longer recordings into such windows.")
    parser.add_argument("--streaming", action="store_true",
                        help="Read the corpus file by file as training consumes it (for corpora that do not fit in "
                             "memory); needs --max_train_steps.")
    parser.add_argument("--shuffle_buffer_size", type=int, default=10_000,
                        help="Rows shuffled together when streaming.")
    parser.add_argument("--config_name", default=None, help="Config file, Hub id or 'paper'; default: a small config.")
    parser.add_argument("--config_overrides", default=None, help="key=value,... applied to the config.")
    parser.add_argument("--codebook_recipe", default="diverse", choices=["diverse", "original"],
                        help="Codebook options of a new model: 'diverse' (k-means initialisation, cosine lookup, "
                             "rotation trick, dead-code re-seeding; see DIVERSE_CODEBOOK) or 'original' (the paper's "
                             "code). --config_overrides take precedence; --model_name_or_path keeps its config.")
    parser.add_argument("--model_name_or_path", default=None, help="Continue pre-training this checkpoint.")
    parser.add_argument("--output_dir", default="vqshape-pretrained")
    parser.add_argument("--per_device_train_batch_size", type=int, default=64)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--num_train_epochs", type=int, default=1)
    parser.add_argument("--max_train_steps", type=int, default=1000, help="Overrides epochs; 0 to train by epochs.")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--lr_scheduler_type", default="cosine")
    parser.add_argument("--num_warmup_steps", type=int, default=50)
    parser.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"])
    parser.add_argument("--torch_compile", action="store_true",
                        help="Compile the model with torch.compile (inductor); pays off on GPUs, see "
                             "docs/benchmarks.md.")
    parser.add_argument("--num_threads", type=int, default=None,
                        help="CPU threads per process; default: the machine's cores divided among its processes, "
                             "or OMP_NUM_THREADS when set other than by `accelerate launch` (which sets 1).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpointing_steps", type=int, default=None)
    parser.add_argument("--resume_from_checkpoint", default=None, help="A checkpoint folder or 'latest'.")
    parser.add_argument("--eval_steps", type=int, default=200)
    parser.add_argument("--logging_steps", type=int, default=10)
    parser.add_argument("--usage_window", type=int, default=50, help="Steps over which dead codes are counted.")
    parser.add_argument("--report_to", default="tensorboard" if importlib.util.find_spec("tensorboard") else "none")
    add_hub_arguments(parser)
    args = parser.parse_args(argv)
    if args.streaming and not args.max_train_steps:
        parser.error("--streaming reads a corpus of unknown length: give --max_train_steps.")
    check_hub_arguments(parser, args, "lab/vqshape-small")
    return args


def get_dataloaders(accelerator, args, input_length):
    if args.streaming:
        data = stream_pretraining_dataset(
            args.data, input_length=input_length, column=args.dataset_column, ts_splits=args.ts_splits.split(","),
            validation_split=args.validation_split, balance=args.balance_datasets, window_length=args.window_length,
            seed=args.seed, shuffle_buffer_size=args.shuffle_buffer_size,
        )
        data = {split: part.select_columns(["past_values"]) for split, part in data.items()}
        # its own generator: starting (or skipping into) an epoch must not draw from the RNG that masks patches
        train = DataLoader(data["train"], batch_size=args.per_device_train_batch_size, drop_last=True,
                           generator=torch.Generator().manual_seed(args.seed))
        validation = DataLoader(data["validation"], batch_size=args.per_device_eval_batch_size)
        return train, validation, {"streamed": args.data}
    with accelerator.main_process_first():
        data = load_pretraining_dataset(
            args.data, input_length=input_length, column=args.dataset_column, ts_splits=args.ts_splits.split(","),
            validation_split=args.validation_split, balance=args.balance_datasets,
            max_series_per_source=args.max_series_per_dataset, window_length=args.window_length, seed=args.seed,
        )
    corpus = describe(data)
    data = data.select_columns(["past_values"])
    # its own generator: starting an epoch (or a resumed one) must not draw from the RNG that masks patches
    train = DataLoader(data["train"], batch_size=args.per_device_train_batch_size, shuffle=True, drop_last=True,
                       generator=torch.Generator().manual_seed(args.seed))
    validation = DataLoader(data["validation"], batch_size=args.per_device_eval_batch_size)
    return train, validation, corpus


def main(argv=None):
    args = parse_args(argv)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
        dynamo_backend="inductor" if args.torch_compile else None,
        log_with=None if args.report_to == "none" else args.report_to, project_dir=args.output_dir,
        # every process reads its own shard (a streamed corpus too): batch dispatching would draw from the global
        # RNG at each epoch start, and a resumed run would then mask patches differently
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed,
                                                  dispatch_batches=False),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],  # VQ leaves some unused
    )
    set_cpu_threads(accelerator, args.num_threads)
    if accelerator.device.type == "cpu":
        accelerator.print(f"CPU threads per process: {torch.get_num_threads()}")
    set_seed(args.seed)
    model = pretraining_model(args.model_name_or_path, args.config_name, args.codebook_recipe, args.config_overrides)
    train_dataloader, eval_dataloader, corpus = get_dataloaders(accelerator, args, model.config.input_length)

    # fused: one kernel for all parameters instead of ~10 per tensor, the larger share of a CPU step at small batches
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay, fused=True)
    max_train_steps = args.max_train_steps if args.streaming else num_training_steps(
        len(train_dataloader), accelerator.num_processes, args.gradient_accumulation_steps, args.num_train_epochs,
        args.max_train_steps)
    scheduler = get_process_scheduler(args.lr_scheduler_type, optimizer, args.num_warmup_steps, max_train_steps,
                                      accelerator.num_processes)
    model, optimizer, train_dataloader, eval_dataloader, scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, scheduler
    )
    if accelerator.log_with:
        accelerator.init_trackers("vqshape_pretrain", {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                       for k, v in vars(args).items()})

    completed_steps, epoch, batches = resume_from_checkpoint(accelerator, args.resume_from_checkpoint, args.output_dir)
    history = {}
    if completed_steps == 0:
        history["validation_step_0"] = evaluate_pretraining(model, eval_dataloader, accelerator)
        accelerator.print(f"step 0: validation {history['validation_step_0']}")

    progress = tqdm(range(max_train_steps), initial=completed_steps, disable=not accelerator.is_local_main_process)
    log = PretrainingLog(accelerator.unwrap_model(model), args.usage_window, accelerator.device)
    model.train()
    # epoch after epoch until the step budget is spent; nothing left when resumed at the last step
    data = resumable_batches(accelerator, train_dataloader, epoch, batches) if completed_steps < max_train_steps else ()
    for epoch, batches, batch in data:
        with accelerator.accumulate(model):
            outputs = model(past_values=batch["past_values"])
            loss = outputs.loss
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        if not accelerator.sync_gradients:
            continue
        completed_steps += 1
        progress.update(1)
        log.update(outputs)  # on the device: read back only every --logging_steps
        if completed_steps % args.logging_steps == 0:
            fields, event = log.log(accelerator, completed_steps, scheduler.get_last_lr()[0])
            progress.set_postfix(fields)
            if event and accelerator.is_main_process:
                progress.write(event)
        if args.checkpointing_steps and completed_steps % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, args.output_dir, completed_steps, epoch, batches)
        if args.eval_steps and completed_steps % args.eval_steps == 0 and completed_steps < max_train_steps:
            metrics = evaluate_pretraining(model, eval_dataloader, accelerator)
            accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=completed_steps)
            progress.write(f"step {completed_steps}: validation {metrics}")
        if completed_steps >= max_train_steps:
            break
    progress.close()

    history["validation_final"] = metrics = evaluate_pretraining(model, eval_dataloader, accelerator)
    accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=completed_steps)
    accelerator.print(f"step {completed_steps}: validation {metrics}")
    if "validation_step_0" in history:
        accelerator.print(f"validation loss: step 0 {history['validation_step_0']['loss']:.4f} -> "
                          f"step {completed_steps} {metrics['loss']:.4f}")
    training = {"data": args.data, "series": corpus, "steps": completed_steps, "processes": accelerator.num_processes,
                "global_batch_size": args.per_device_train_batch_size * accelerator.num_processes
                * args.gradient_accumulation_steps, "learning_rate": args.learning_rate, **history}
    finish(accelerator, model, args, training,
           card=dict(description="Pre-trained with `examples/pretrain.py`.", training=training),
           message=f"\nModel saved to {os.path.abspath(args.output_dir)}. Load it with:\n"
                   f"  import modeling_vqshape\n  from transformers import AutoModel, AutoFeatureExtractor\n"
                   f"  model = AutoModel.from_pretrained({args.output_dir!r})\n"
                   f"  feature_extractor = AutoFeatureExtractor.from_pretrained({args.output_dir!r})")
    return history


if __name__ == "__main__":
    main()
