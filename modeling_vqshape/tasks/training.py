"""What the example scripts share: CPU threads, config overrides, the Hub arguments, scheduler sizing for processes x
gradient accumulation, resumable checkpoints, code-usage logging and the end of a run (save, results, card, push).

Every helper that takes the `accelerator` runs on every process, as the scripts do; only the main process writes.
"""

import copy
import json
import math
import os
import re
from collections import deque

import torch

from ..modeling_vqshape import code_histogram

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "checkpoint_complete.json"  # written last: a folder without it was interrupted mid-write

# The default pre-training run: a small VQShape that pre-trains on the bundled corpus on a 2-core CPU in minutes.
SMALL_CONFIG = dict(
    input_length=256, num_patches=32, patch_length=8, d_model=64, num_encoder_layers=2, num_encoder_heads=4,
    num_tokenizer_layers=2, num_tokenizer_heads=4, num_decoder_layers=1, num_decoder_heads=4, num_tokens=16,
    num_codes=64, code_dim=8, shape_length=64,
)
PRETRAINING_TERMS = ("loss", "reconstruction_loss", "codebook_loss", "shape_loss", "disentanglement_loss")


# ---- arguments -------------------------------------------------------------------------------------------------------


def parse_overrides(text, config) -> dict:
    """'d_model=16,dropout=0' -> {'d_model': 16, 'dropout': 0.0}, read by transformers'
    `PretrainedConfig.update_from_string` on a copy of `config`: each value takes the type of the attribute it replaces
    (true/false for booleans), and an unknown key is refused."""
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    if not items:
        return {}
    parsed = copy.deepcopy(config)
    parsed.update_from_string(",".join(items))
    return {key: getattr(parsed, key) for key in (item.partition("=")[0] for item in items)}


def pretraining_model(model_name_or_path=None, config_name=None, codebook_recipe: str = "diverse",
                      config_overrides=None):
    """The model `examples/pretrain.py` trains: `model_name_or_path` continued (its config kept, but for the overrides),
    or a new model of `config_name` (a config file or Hub id, 'paper' for `VQShapeConfig()`'s defaults, None for
    `SMALL_CONFIG`) with the codebook recipe ('diverse': `DIVERSE_CODEBOOK`, 'original': the paper's), then the
    `config_overrides` ('key=value,...'), which take precedence."""
    from transformers import AutoConfig

    from ..configuration_vqshape import DIVERSE_CODEBOOK, ORIGINAL_CODEBOOK, VQShapeConfig
    from ..modeling_vqshape import VQShapeForPreTraining

    if model_name_or_path:
        overrides = parse_overrides(config_overrides, AutoConfig.from_pretrained(model_name_or_path))
        return VQShapeForPreTraining.from_pretrained(model_name_or_path, **overrides)
    recipe = DIVERSE_CODEBOOK if codebook_recipe == "diverse" else ORIGINAL_CODEBOOK
    if config_name == "paper":
        base = dict(recipe)  # VQShapeConfig() defaults: the paper's model
    elif config_name:
        base = {**recipe, **AutoConfig.from_pretrained(config_name).to_diff_dict()}
    else:
        base = {**SMALL_CONFIG, **recipe}
    base = {key: value for key, value in base.items() if key not in ("model_type", "transformers_version")}
    overrides = parse_overrides(config_overrides, VQShapeConfig(**base))
    if "d_model" in overrides:
        base.pop("ffn_dim", None)  # recomputed from the new width unless given
    return VQShapeForPreTraining(VQShapeConfig(**{**base, **overrides}))


def add_hub_arguments(parser):
    """`--push_to_hub`, `--hub_model_id`, `--hub_private`: the end of the run publishes `--output_dir` (`finish`)."""
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    parser.add_argument("--hub_private", action="store_true")


def check_hub_arguments(parser, args, example: str):
    """Refuse `--push_to_hub` without `--hub_model_id` before anything runs; `example` is a repo id to suggest."""
    if args.push_to_hub and not args.hub_model_id:
        parser.error(f"--push_to_hub needs --hub_model_id (e.g. {example}).")


# ---- processes and schedule ------------------------------------------------------------------------------------------


def set_cpu_threads(accelerator, num_threads=None):
    """On CPU, run `num_threads` threads per process, by default the machine's cores divided among its processes.
    OMP_NUM_THREADS set by the user is kept; `accelerate launch` sets it to 1 when not told otherwise, which would
    leave all but one core idle (pass --num_threads 1 to really want one).

    accelerate has no API that sets a process's threads: `accelerate launch --num_cpu_threads_per_process N` only
    exports OMP_NUM_THREADS (kept here), and without the flag exports 1 unless `--cpu` is given, so the plain
    `accelerate launch examples/pretrain.py` would run on one core."""
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


def num_training_steps(num_batches: int, num_processes: int, gradient_accumulation_steps: int = 1,
                       num_train_epochs: int = 1, max_train_steps: int = 0) -> int:
    """Optimizer steps of a run: `max_train_steps` when > 0, else the epochs' steps, where an epoch of `num_batches`
    (the unprepared dataloader's length) is shared by the processes and accumulated `gradient_accumulation_steps` at a
    time."""
    steps_per_epoch = math.ceil(num_batches / num_processes / gradient_accumulation_steps)
    return max_train_steps or num_train_epochs * steps_per_epoch


def get_process_scheduler(name: str, optimizer, num_warmup_steps: int, num_training_steps: int, num_processes: int):
    """`transformers.get_scheduler` for a scheduler that goes through `accelerator.prepare`: prepared, it steps once
    per process per optimizer step, so warmup and length (in optimizer steps) are scaled by `num_processes`."""
    from transformers import get_scheduler

    return get_scheduler(name, optimizer, num_warmup_steps=num_warmup_steps * num_processes,
                         num_training_steps=num_training_steps * num_processes)


# ---- resumable checkpoints -------------------------------------------------------------------------------------------


def checkpoint_dirs(output_dir) -> dict:
    """Complete checkpoints `{step: folder}`; folders without the marker (interrupted writes) are ignored."""
    folder = os.path.join(output_dir, "checkpoints")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return {int(m.group(1)): os.path.join(folder, name) for name in names if (m := CHECKPOINT.match(name))
            and os.path.exists(os.path.join(folder, name, COMPLETE_MARKER))}


def save_checkpoint(accelerator, output_dir, step: int, epoch: int, batches: int):
    """save_state into a hidden folder, mark it complete, then rename it (`atomic_write`, committed by the main
    process): a partial folder never looks finished. The marker records the step and where in the data it was (epoch,
    batches of that epoch consumed)."""
    from ..saving_vqshape import atomic_write

    final = os.path.join(output_dir, "checkpoints", f"checkpoint-{step}")
    with atomic_write(final, commit=accelerator.is_main_process) as partial:
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            with open(os.path.join(partial, COMPLETE_MARKER), "w") as handle:
                json.dump({"step": step, "epoch": epoch, "batches": batches}, handle)
    accelerator.wait_for_everyone()


def resume_from_checkpoint(accelerator, checkpoint, output_dir) -> tuple:
    """Load `checkpoint` (a folder, 'latest' for the last complete one under `output_dir`, or None) into the prepared
    objects and RNGs; returns `(step, epoch, batches)` to continue from, `(0, 0, 0)` when there is none."""
    if checkpoint == "latest":
        found = checkpoint_dirs(output_dir)
        checkpoint = found[max(found)] if found else None
    if not checkpoint:
        return 0, 0, 0
    accelerator.print(f"Resuming from {checkpoint}")
    accelerator.load_state(checkpoint)
    with open(os.path.join(checkpoint, COMPLETE_MARKER)) as handle:
        marker = json.load(handle)
    return marker["step"], marker["epoch"], marker["batches"]


def resumable_batches(accelerator, dataloader, epoch: int = 0, batches: int = 0):
    """Yield `(epoch, batches, batch)` for ever, epoch after epoch, where `batches` counts the batches of `epoch`
    consumed so far (this one included): what `save_checkpoint` records. A resumed run starts at `epoch`, skipping its
    first `batches`, so that it sees the data in the same order as a run that never stopped."""
    while True:
        dataloader.set_epoch(epoch)
        for batch in accelerator.skip_first_batches(dataloader, batches) if batches else dataloader:
            batches += 1
            yield epoch, batches, batch
        if batches == 0:
            raise ValueError(f"the training data gives no batch of {dataloader.batch_size} series; lower "
                             "--per_device_train_batch_size or add data.")
        epoch, batches = epoch + 1, 0


# ---- pre-training metrics -------------------------------------------------------------------------------------------


def code_usage(code_indices: torch.Tensor, num_codes: int) -> dict:
    """Perplexity of the code histogram of `code_indices` and the number of codes they never use."""
    from ..modeling_vqshape import usage_from_indices

    perplexity, used = usage_from_indices(code_indices, num_codes)
    return {"perplexity": perplexity.item(), "dead_codes": num_codes - round(used.item() * num_codes)}


def evaluate_pretraining(model, dataloader, accelerator) -> dict:
    """Mean of every loss term (`PRETRAINING_TERMS`) over a dataloader of `past_values`, gathered from every process,
    and the code usage of all its tokens. Runs on a forked RNG so that evaluating (or not, after a resume) leaves the
    training RNG as it was."""
    terms, codes = [], []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        model.eval()
        for batch in dataloader:
            outputs = model(past_values=batch["past_values"])
            batch_size = batch["past_values"].shape[0]
            per_series = torch.stack([getattr(outputs, term).float() for term in PRETRAINING_TERMS])
            terms.append(accelerator.gather_for_metrics(per_series.expand(batch_size, -1)))
            codes.append(accelerator.gather_for_metrics(outputs.code_indices.reshape(batch_size, -1)))
        model.train()
    usage = code_usage(torch.cat(codes), accelerator.unwrap_model(model).config.num_codes)
    return {**dict(zip(PRETRAINING_TERMS, torch.cat(terms).mean(0).tolist())), **usage}


class PretrainingLog:
    """What a pre-training run logs: running means of the loss terms between logging steps, the codes unused over the
    last `window` steps, and the codebook's re-seeding events (the same on every rank). `model` is unwrapped."""

    def __init__(self, model, window: int, device):
        from ..modeling_vqshape import vqshape_model

        self.codebook = vqshape_model(model).codebook
        self.num_codes = model.config.num_codes
        self.recent = deque(maxlen=window)
        self.running = torch.zeros(len(PRETRAINING_TERMS), device=device)
        self.steps = 0
        self.logged_reseeded = self.reseeded
        self.dead_codes = 0

    @property
    def reseeded(self) -> int:
        """Codes re-seeded since training started (0 for a codebook that does not re-seed)."""
        return int(getattr(self.codebook, "reseeded_codes", 0))

    def update(self, outputs):
        """Count one optimizer step's outputs, on the device: nothing is read back until `log`."""
        self.running += torch.stack([getattr(outputs, term).detach().float() for term in PRETRAINING_TERMS])
        self.steps += 1
        self.recent.append(code_histogram(outputs.code_indices.flatten(), self.num_codes))
        self.perplexity = outputs.perplexity.detach()

    def log(self, accelerator, step: int, learning_rate: float):
        """On every process: log the means since the last call (over the processes too) and start again; returns
        `(progress bar fields, a line on the codes re-seeded since the last call or None)`."""
        means = accelerator.reduce(self.running / self.steps, reduction="mean").tolist()
        self.dead_codes = int((torch.stack(list(self.recent)).sum(0) == 0).sum())
        perplexity = float(self.perplexity)
        reseeded, logged, self.logged_reseeded = self.reseeded, self.logged_reseeded, self.reseeded
        accelerator.log({**{f"train/{k}": v for k, v in zip(PRETRAINING_TERMS, means)},
                         "train/perplexity": perplexity, "train/dead_codes": self.dead_codes,
                         "train/reseeded_codes": reseeded, "train/lr": learning_rate}, step=step)
        self.running.zero_()
        self.steps = 0
        fields = dict(zip(("loss", "rec", "vq", "shape", "dis"), (f"{value:.3f}" for value in means)),
                      ppl=f"{perplexity:.1f}", dead=self.dead_codes)
        event = None
        if reseeded > logged:
            event = f"step {step}: re-seeded {reseeded - logged} dead codes ({reseeded} since the start)"
        return fields, event


# ---- text alignment --------------------------------------------------------------------------------------------------


def loss_terms(outputs, names):
    """The named losses as one float tensor on the losses' device; a term the batch did not have (no labelled or no
    calibrated rows) is NaN, so that every rank contributes a row of the same shape."""
    nan = outputs.code_text_loss.new_tensor(math.nan)
    return torch.stack([getattr(outputs, name).detach() if getattr(outputs, name) is not None else nan
                        for name in names]).float()


def evaluate_alignment(model, dataloader, accelerator, names) -> dict:
    """Mean text-alignment losses `names` on held-out `(past_values, labels, calibration)` batches, each term over
    the batches that have it (intensity over those with calibrated rows)."""
    model.eval()
    totals = []
    with torch.no_grad():
        for past_values, labels, calibration in dataloader:
            outputs = model(past_values=past_values, labels=labels, intensity_thresholds=calibration)
            row = loss_terms(outputs, names)
            totals.append(accelerator.gather_for_metrics(row.expand(past_values.shape[0], -1)))
    model.train()
    return dict(zip(names, torch.cat(totals).nanmean(0).tolist()))


# ---- the end of a run ------------------------------------------------------------------------------------------------


def finish(accelerator, model, args, results: dict, results_file: str = "training_results.json", card=None,
           message: str = ""):
    """Save the unwrapped model into `args.output_dir` (its complete folder: auto_map, modeling files, feature
    extractor), write `results` to `results_file` and the model card (`card`: `write_model_card` arguments), publish
    the folder with `hub.publish` when `args.push_to_hub`, print `message`, then end training. Every rank reaches the
    teardown together: a rank that destroys the process group while another is still writing can leave the launcher
    waiting for ever (gloo)."""
    from ..sharing.hub import publish, write_model_card

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(args.output_dir, is_main_process=accelerator.is_main_process,
                              save_function=accelerator.save)
    if accelerator.is_main_process:
        with open(os.path.join(args.output_dir, results_file), "w") as handle:
            json.dump(results, handle, indent=2)
        if card is not None:
            write_model_card(args.output_dir, unwrapped.config, **card)
        if args.push_to_hub:
            print(publish(args.output_dir, args.hub_model_id, private=args.hub_private))
        print(message)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # also ends the process group: last


__all__ = [
    "PRETRAINING_TERMS",
    "PretrainingLog",
    "SMALL_CONFIG",
    "add_hub_arguments",
    "check_hub_arguments",
    "checkpoint_dirs",
    "code_usage",
    "evaluate_pretraining",
    "finish",
    "get_process_scheduler",
    "num_training_steps",
    "parse_overrides",
    "pretraining_model",
    "resumable_batches",
    "resume_from_checkpoint",
    "save_checkpoint",
    "set_cpu_threads",
]
