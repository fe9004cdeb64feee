"""GPU benchmark: pre-training steps/s and peak memory, and inference tokens/s, on one CUDA device, in fp32, bf16
autocast and bf16 autocast + torch.compile, beside the original implementation when its source is given.

    python benchmarks/bench_gpu.py                                   # the paper's configuration, batch 512
    python benchmarks/bench_gpu.py --original_repo PATH              # + github.com/YunshiWen/VQShape, same run
    python benchmarks/bench_gpu.py --codebook_recipe diverse         # ours with the scripts' codebook recipe
    python benchmarks/bench_gpu.py --agreement_model vqshape-pretrained   # + bf16 agreement of a trained model
    python benchmarks/bench_gpu.py --smoke                           # CPU, tiny configuration: does it run?

A training step is what `examples/pretrain.py` does: forward, weighted loss, backward, fused AdamW. Inference is the
tokens/histogram path (`VQShapeModel`, no decoders); the original's is `VQShape(x, mode="tokenize")`. Peak memory is
`torch.cuda.max_memory_allocated` per setting (on CPU, the process's peak resident memory, which only grows).
`--codebook_recipe` chooses ours' codebook options (`original`: the paper's, as the original implementation;
`diverse`: `DIVERSE_CODEBOOK`, what the example scripts build). `--agreement_model` compares a trained model's bf16
autocast tokens with fp32's on the device, on the bundled TEST splits (needs aeon). Results are printed as a Markdown
table and, with `--output`, written as JSON after every row (a run cut short keeps what it measured).
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from original_vqshape import build_original, original_training_loss  # noqa: E402

from modeling_vqshape import VQShapeConfig, VQShapeForPreTraining  # noqa: E402
from modeling_vqshape.configuration_vqshape import DIVERSE_CODEBOOK, ORIGINAL_CODEBOOK  # noqa: E402
from modeling_vqshape.saving_vqshape import atomic_write  # noqa: E402

RECIPES = {"original": ORIGINAL_CODEBOOK, "diverse": DIVERSE_CODEBOOK}

SMOKE = dict(input_length=64, num_patches=8, patch_length=8, d_model=16, num_encoder_layers=1, num_encoder_heads=2,
             num_tokenizer_layers=1, num_tokenizer_heads=2, num_decoder_layers=1, num_decoder_heads=2, num_tokens=4,
             num_codes=8, code_dim=4, shape_length=16)
SETTINGS = {"fp32": (None, False), "bf16": (torch.bfloat16, False), "bf16 + compile": (torch.bfloat16, True)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20, help="Timed steps per setting.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps first (compilation happens here).")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--codebook_recipe", default="original", choices=list(RECIPES),
                        help="Ours' codebook options: the paper's ('original') or the example scripts' ('diverse').")
    parser.add_argument("--agreement_model", "--agreement-model", default=None,
                        help="A trained model folder: its bf16 autocast tokens against fp32's on the device.")
    parser.add_argument("--original_repo", "--original-repo", default=None,
                        help="A checkout of github.com/YunshiWen/VQShape (needs einops) to time beside ours.")
    parser.add_argument("--smoke", action="store_true", help="Tiny configuration on CPU, 2 steps: a smoke test.")
    parser.add_argument("--output", default=None, help="Write the results as JSON here.")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch_size, args.steps, args.warmup = 8, 2, 1
    return args


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def our_model(config: VQShapeConfig, device):
    torch.manual_seed(0)
    model = VQShapeForPreTraining(config).to(device)
    return model, lambda inputs: model(past_values=inputs).loss, lambda inputs: model.vqshape(inputs)


def original_model(config: VQShapeConfig, device, repo: str):
    torch.manual_seed(0)
    model = build_original(config, repo).to(device)
    return (model, lambda inputs: original_training_loss(model, config, inputs),
            lambda inputs: model(inputs, mode="tokenize"))


def timed(run, steps: int, warmup: int, device) -> float:
    """Seconds per call of `run`, after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        run()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def measure(name: str, setting: str, config, device, args) -> dict:
    dtype, compiled = SETTINGS[setting]
    model, loss_of, tokens_of = (our_model(config, device) if name == "ours"
                                 else original_model(config, device, args.original_repo))
    if compiled:
        model.compile()
        if name == "ours":
            model.vqshape.compile()  # inference calls the submodule, which the head's compiled forward does not cover
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
    inputs = torch.randn(args.batch_size, config.input_length, device=device)
    autocast = dict(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def train_step():
        with torch.autocast(**autocast):
            loss = loss_of(inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def tokenize():
        with torch.no_grad(), torch.autocast(**autocast):
            tokens_of(inputs)

    reset_peak(device)
    model.train()
    step_seconds = timed(train_step, args.steps, args.warmup, device)
    training_peak = peak_mib(device)
    model.eval()
    reset_peak(device)
    inference_seconds = timed(tokenize, args.steps, args.warmup, device)
    row = {"implementation": name, "setting": setting,
           "codebook": args.codebook_recipe if name == "ours" else "original", "steps_per_s": 1 / step_seconds,
           "training_series_per_s": args.batch_size / step_seconds, "training_peak_mib": training_peak,
           "inference_series_per_s": args.batch_size / inference_seconds,
           "inference_tokens_per_s": args.batch_size * config.num_tokens / inference_seconds,
           "inference_peak_mib": peak_mib(device)}
    return row


def markdown(rows, device_name, args) -> str:
    lines = [f"{device_name}, torch {torch.__version__}, batch {args.batch_size}, {args.steps} timed steps after "
             f"{args.warmup} warm-up", "",
             "| implementation | codebook | setting | train steps/s | train series/s | train peak MiB "
             "| tokens/s (inference) | inference peak MiB |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['implementation']} | {row['codebook']} | {row['setting']} | {row['steps_per_s']:.2f} | "
                     f"{row['training_series_per_s']:.0f} | {row['training_peak_mib']:.0f} | "
                     f"{row['inference_tokens_per_s']:.0f} | {row['inference_peak_mib']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    recipe = RECIPES[args.codebook_recipe]
    if args.smoke:
        device, config = torch.device("cpu"), VQShapeConfig(**SMOKE, **recipe)
        device_name = "CPU (smoke test, tiny configuration)"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("No CUDA device: run on a GPU machine, or pass --smoke for the CPU smoke test.")
        device, config = torch.device("cuda"), VQShapeConfig(**recipe)  # the paper's configuration
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        device_name = torch.cuda.get_device_name(device)
    names = ["ours"] + (["original"] if args.original_repo else [])
    results = {"device": device_name, "rows": []}
    for name in names:
        for setting in args.settings:
            results["rows"].append(measure(name, setting, config, device, args))  # the original reads no codebook keys
            print(f"  {name} {setting}: {results['rows'][-1]['steps_per_s']:.2f} steps/s", flush=True)
            write(results, args.output)
    print(markdown(results["rows"], device_name, args))
    if args.agreement_model:
        from bench_inference import agreement

        results["bf16_agreement"] = agreement(args.agreement_model, device)
        print(f"bf16 autocast vs fp32 on {device_name}, {args.agreement_model} on the bundled TEST splits: "
              f"{results['bf16_agreement']}")
        write(results, args.output)
    return results["rows"]


def write(results: dict, output):
    if output:
        with atomic_write(output) as temporary:
            temporary.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
