"""Pre-train VQShape with accelerate: `accelerate launch examples/pretrain.py` (no arguments: a small model on the
time-series classification sets bundled with aeon, a few minutes on a laptop CPU).

Many processes: the same script under `accelerate config` / `accelerate launch --multi_gpu ...`; on CPU use
`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no
--dynamo_backend no examples/pretrain.py`.
"""

import argparse
import importlib.util
import json
import math
import os
import re
import shutil
from collections import deque

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoConfig, get_scheduler

from modeling_vqshape import VQShapeConfig, VQShapeForPreTraining
from modeling_vqshape.configuration_vqshape import DIVERSE_CODEBOOK, ORIGINAL_CODEBOOK
from modeling_vqshape.data import describe, load_pretraining_dataset, stream_pretraining_dataset
from modeling_vqshape.hub import push_folder_to_hub, write_model_card
from modeling_vqshape.modeling_vqshape import usage_from_indices

# The default run: a small VQShape that pre-trains on the bundled corpus on a 2-core CPU in minutes.
SMALL_CONFIG = dict(
    input_length=256, num_patches=32, patch_length=8, d_model=64, num_encoder_layers=2, num_encoder_heads=4,
    num_tokenizer_layers=2, num_tokenizer_heads=4, num_decoder_layers=1, num_decoder_heads=4, num_tokens=16,
    num_codes=64, code_dim=8, shape_length=64,
)
TERMS = ("loss", "reconstruction_loss", "codebook_loss", "shape_loss", "disentanglement_loss")
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "checkpoint_complete.json"  # written last: a folder without it was interrupted mid-write


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
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    parser.add_argument("--hub_private", action="store_true")
    args = parser.parse_args(argv)
    if args.streaming and not args.max_train_steps:
        parser.error("--streaming reads a corpus of unknown length: give --max_train_steps.")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id (e.g. lab/vqshape-small).")
    return args


def parse_overrides(text):
    """'d_model=16,dropout=0' -> {'d_model': 16, 'dropout': 0}; values are JSON (numbers, true/false) or strings."""
    overrides = {}
    for item in filter(None, (text or "").split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def get_model(args):
    overrides = parse_overrides(args.config_overrides)
    if args.model_name_or_path:
        return VQShapeForPreTraining.from_pretrained(args.model_name_or_path, **overrides)
    recipe = DIVERSE_CODEBOOK if args.codebook_recipe == "diverse" else ORIGINAL_CODEBOOK
    if args.config_name == "paper":
        base = dict(recipe)  # VQShapeConfig() defaults: the paper's model
    elif args.config_name:
        base = {**recipe, **AutoConfig.from_pretrained(args.config_name).to_diff_dict()}
    else:
        base = {**SMALL_CONFIG, **recipe}
    if "d_model" in overrides:
        base.pop("ffn_dim", None)  # recomputed from the new width unless given
    base = {key: value for key, value in base.items() if key not in ("model_type", "transformers_version")}
    return VQShapeForPreTraining(VQShapeConfig(**{**base, **overrides}))


def set_cpu_threads(accelerator, num_threads=None):
    """On CPU, run `num_threads` threads per process, by default the machine's cores divided among its processes.
    OMP_NUM_THREADS set by the user is kept; `accelerate launch` sets it to 1 when not told otherwise, which would
    leave all but one core idle (pass --num_threads 1 to really want one)."""
    if accelerator.device.type != "cpu":
        return
    if num_threads is None:
        chosen = os.environ.get("OMP_NUM_THREADS")
        launched = "ACCELERATE_DYNAMO_BACKEND" in os.environ  # set by `accelerate launch` for its processes
        if chosen and not (launched and chosen == "1"):
            return
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        num_threads = max(1, cores // local_processes)
    torch.set_num_threads(num_threads)


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


def checkpoint_dirs(output_dir):
    """Complete checkpoints `{step: folder}`; folders without the marker (interrupted writes) are ignored."""
    folder = os.path.join(output_dir, "checkpoints")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return {int(m.group(1)): os.path.join(folder, name) for name in names if (m := CHECKPOINT.match(name))
            and os.path.exists(os.path.join(folder, name, COMPLETE_MARKER))}


def save_checkpoint(accelerator, output_dir, step, epoch, batches):
    """save_state into a hidden folder, mark it complete, then rename it: a partial folder never looks finished. The
    marker records the step and where in the data it was (epoch, batches of that epoch consumed)."""
    final = os.path.join(output_dir, "checkpoints", f"checkpoint-{step}")
    partial = os.path.join(output_dir, "checkpoints", f".partial-checkpoint-{step}")
    accelerator.save_state(partial)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(os.path.join(partial, COMPLETE_MARKER), "w") as handle:
            json.dump({"step": step, "epoch": epoch, "batches": batches}, handle)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
    accelerator.wait_for_everyone()


def evaluate(model, dataloader, accelerator):
    """Mean of every loss term over the validation set, and code usage of all its tokens. Runs on a forked RNG so
    that evaluating (or not, after a resume) leaves the training RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        return _evaluate(model, dataloader, accelerator)


def _evaluate(model, dataloader, accelerator):
    model.eval()
    terms, codes = [], []
    with torch.no_grad():
        for batch in dataloader:
            outputs = model(past_values=batch["past_values"])
            batch_size = batch["past_values"].shape[0]
            per_series = torch.stack([getattr(outputs, term).float() for term in TERMS]).expand(batch_size, -1)
            terms.append(accelerator.gather_for_metrics(per_series))
            codes.append(accelerator.gather_for_metrics(outputs.code_indices.reshape(batch_size, -1)))
    model.train()
    metrics = dict(zip(TERMS, torch.cat(terms).mean(0).tolist()))
    num_codes = accelerator.unwrap_model(model).config.num_codes
    perplexity, used = usage_from_indices(torch.cat(codes), num_codes)
    metrics["perplexity"] = perplexity.item()
    metrics["dead_codes"] = num_codes - round(used.item() * num_codes)
    return metrics


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
    model = get_model(args)
    config = model.config
    train_dataloader, eval_dataloader, corpus = get_dataloaders(accelerator, args, config.input_length)

    # fused: one kernel for all parameters instead of ~10 per tensor, the larger share of a CPU step at small batches
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay, fused=True)
    if args.streaming:
        max_train_steps = args.max_train_steps
    else:
        steps_per_epoch = math.ceil(len(train_dataloader) / accelerator.num_processes
                                    / args.gradient_accumulation_steps)
        max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    # a prepared scheduler steps once per process per optimizer step
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.num_warmup_steps *
                              accelerator.num_processes, num_training_steps=max_train_steps * accelerator.num_processes)
    model, optimizer, train_dataloader, eval_dataloader, scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, scheduler
    )
    if accelerator.log_with:
        accelerator.init_trackers("vqshape_pretrain", {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                       for k, v in vars(args).items()})

    completed_steps = start_epoch = batches_done = 0
    checkpoint = args.resume_from_checkpoint
    if checkpoint == "latest":
        found = checkpoint_dirs(args.output_dir)
        checkpoint = found[max(found)] if found else None
    if checkpoint:
        accelerator.print(f"Resuming from {checkpoint}")
        accelerator.load_state(checkpoint)
        with open(os.path.join(checkpoint, COMPLETE_MARKER)) as handle:
            marker = json.load(handle)
        completed_steps, start_epoch, batches_done = marker["step"], marker["epoch"], marker["batches"]
    history = {}
    if completed_steps == 0:
        history["validation_step_0"] = evaluate(model, eval_dataloader, accelerator)
        accelerator.print(f"step 0: validation {history['validation_step_0']}")

    progress = tqdm(range(max_train_steps), initial=completed_steps, disable=not accelerator.is_local_main_process)
    recent_codes = deque(maxlen=args.usage_window)
    codebook = accelerator.unwrap_model(model).vqshape.codebook
    logged_reseeded = int(getattr(codebook, "reseeded_codes", 0))  # the same on every rank
    running = torch.zeros(len(TERMS), device=accelerator.device)
    model.train()
    epoch = start_epoch
    while completed_steps < max_train_steps:  # epochs, until the step budget is spent
        train_dataloader.set_epoch(epoch)
        epoch_batches = (accelerator.skip_first_batches(train_dataloader, batches_done) if batches_done
                         else train_dataloader)
        for batch in epoch_batches:
            batches_done += 1
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
            terms = torch.stack([getattr(outputs, term).detach().float() for term in TERMS])
            running += terms
            recent_codes.append(torch.bincount(outputs.code_indices.flatten(), minlength=config.num_codes))
            dead_codes = int((torch.stack(list(recent_codes)).sum(0) == 0).sum())
            progress.update(1)
            progress.set_postfix(loss=f"{terms[0]:.3f}", rec=f"{terms[1]:.3f}", vq=f"{terms[2]:.3f}",
                                 shape=f"{terms[3]:.3f}", dis=f"{terms[4]:.3f}",
                                 ppl=f"{outputs.perplexity.item():.1f}", dead=dead_codes)
            reseeded = int(getattr(codebook, "reseeded_codes", 0))
            if completed_steps % args.logging_steps == 0:
                means = accelerator.reduce(running / args.logging_steps, reduction="mean")
                accelerator.log({**{f"train/{k}": v for k, v in zip(TERMS, means.tolist())},
                                 "train/perplexity": outputs.perplexity.item(), "train/dead_codes": dead_codes,
                                 "train/reseeded_codes": reseeded, "train/lr": scheduler.get_last_lr()[0]},
                                step=completed_steps)
                running.zero_()
                if reseeded > logged_reseeded and accelerator.is_main_process:  # re-seeding events
                    progress.write(f"step {completed_steps}: re-seeded {reseeded - logged_reseeded} dead codes "
                                   f"({reseeded} since the start)")
                logged_reseeded = reseeded
            if args.checkpointing_steps and completed_steps % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, args.output_dir, completed_steps, epoch, batches_done)
            if args.eval_steps and completed_steps % args.eval_steps == 0 and completed_steps < max_train_steps:
                metrics = evaluate(model, eval_dataloader, accelerator)
                accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=completed_steps)
                progress.write(f"step {completed_steps}: validation {metrics}")
            if completed_steps >= max_train_steps:
                break
        else:
            if batches_done == 0:
                raise ValueError(f"the training data gives no batch of {args.per_device_train_batch_size} series; "
                                 "lower --per_device_train_batch_size or add data.")
            epoch, batches_done = epoch + 1, 0
    progress.close()

    history["validation_final"] = metrics = evaluate(model, eval_dataloader, accelerator)
    accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=completed_steps)
    accelerator.print(f"step {completed_steps}: validation {metrics}")
    if "validation_step_0" in history:
        accelerator.print(f"validation loss: step 0 {history['validation_step_0']['loss']:.4f} -> "
                          f"step {completed_steps} {metrics['loss']:.4f}")
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(args.output_dir, is_main_process=accelerator.is_main_process,
                              save_function=accelerator.save)
    if accelerator.is_main_process:
        training = {"data": args.data, "series": corpus, "steps": completed_steps,
                    "processes": accelerator.num_processes,
                    "global_batch_size": args.per_device_train_batch_size * accelerator.num_processes
                    * args.gradient_accumulation_steps, "learning_rate": args.learning_rate, **history}
        with open(os.path.join(args.output_dir, "training_results.json"), "w") as handle:
            json.dump(training, handle, indent=2)
        write_model_card(args.output_dir, unwrapped.config, "Pre-trained with `examples/pretrain.py`.", training)
        if args.push_to_hub:
            print(push_folder_to_hub(args.output_dir, args.hub_model_id, private=args.hub_private))
        print(f"\nModel saved to {os.path.abspath(args.output_dir)}. Load it with:\n"
              f"  import modeling_vqshape\n  from transformers import AutoModel, AutoFeatureExtractor\n"
              f"  model = AutoModel.from_pretrained({args.output_dir!r})\n"
              f"  feature_extractor = AutoFeatureExtractor.from_pretrained({args.output_dir!r})")
    # every rank reaches the teardown together: a rank that destroys the process group while another is still
    # writing can leave the launcher waiting forever (gloo)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # also ends the process group: last
    return history


if __name__ == "__main__":
    main()
