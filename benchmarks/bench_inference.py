"""Inference throughput and peak memory of VQShape's tokens/histogram path (fp32, bf16 autocast, torch.compile,
onnxruntime) and of a full forward (with reconstruction and decoded shapes), for the paper's configuration, measured
in one run.

    python benchmarks/bench_inference.py [--batch_size 256] [--steps 5] [--rounds 2] [--original_repo PATH]
                                         [--baseline_repo PATH ...] [--agreement_model vqshape-pretrained]

- `--original_repo`: a checkout of the original implementation (github.com/YunshiWen/VQShape, needs einops); its
  `VQShape(x, mode='tokenize')`, which always runs both decoders, is timed in the same run with the same
  hyper-parameters.
- `--baseline_repo`: checkouts of this package at other commits (e.g. `git worktree add ../before <commit>`); their
  tokens paths are timed too, for before/after figures measured in one run.
- `--agreement_model`: a trained model whose bf16-autocast tokens are compared with fp32's on the bundled TEST splits
  (share of identical codes, attribute error); default `vqshape-pretrained` when that folder exists.

Each path runs in its own process (peak memory is its own max RSS); the paths alternate for `--rounds` rounds and each
keeps its best, so that load from other processes on a shared machine favours none.
"""

import argparse
import importlib.util
import multiprocessing
import os
import resource
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULTS = dict(  # the paper's pre-training script, d_model 256, 512 codes
    input_length=512, num_patches=64, patch_length=8, d_model=256, num_tokens=64, num_codes=512, code_dim=8,
    shape_length=128, num_encoder_layers=4, num_encoder_heads=8, num_tokenizer_layers=4, num_tokenizer_heads=8,
    num_decoder_layers=2, num_decoder_heads=8,
)
NAMES = {
    "tokens": "ours: tokens + histogram, fp32",
    "tokens bf16": "ours: tokens + histogram, bf16 autocast",
    "tokens compiled": "ours: tokens + histogram, torch.compile",
    "onnxruntime": "ours: tokens + histogram, onnxruntime",
    "full": "ours: full (reconstruction + shapes)",
    "original": "original: tokenize (runs both decoders)",
}


def build(path: str, args):
    """A function of a `(batch_size, input_length)` batch that runs `path`."""
    torch.manual_seed(0)
    if path == "original":
        from original_vqshape import build_original

        from modeling_vqshape import VQShapeConfig

        model = build_original(VQShapeConfig(**DEFAULTS), args.original_repo).eval()
        return lambda x: model(x, mode="tokenize")
    baseline = path.startswith("baseline")
    sys.path.insert(0, args.baseline_repo[int(path.split()[1])] if baseline else REPO_ROOT)
    from modeling_vqshape import VQShapeConfig, VQShapeModel

    model = VQShapeModel(VQShapeConfig(**DEFAULTS)).eval()
    if path == "tokens" or baseline:
        return lambda x: model(x)
    if path == "tokens bf16":
        def autocast(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x)
        return autocast
    if path == "tokens compiled":
        from torch._inductor import config as inductor_config

        inductor_config.freezing = True  # inference: weights become constants, linear layers prepacked
        return torch.compile(model)
    if path == "onnxruntime":
        import tempfile

        from modeling_vqshape.sharing.export_onnx import export_tokens_onnx, onnx_session

        folder = tempfile.mkdtemp()
        session = onnx_session(export_tokens_onnx(model, os.path.join(folder, "tokens.onnx")))
        return lambda x: session.run(None, {"past_values": x.unsqueeze(-1).numpy()})
    return lambda x: model(x, output_reconstruction=True, output_shapes=True)


def measure(path, args, queue):
    try:
        queue.put(throughput(path, args))
    except BaseException as error:  # the parent waits on the queue: give it the failure instead of nothing
        queue.put(RuntimeError(f"{path}: {error!r}"))
        raise


def throughput(path, args):
    forward = build(path, args)
    x = torch.randn(args.batch_size, DEFAULTS["input_length"])
    with torch.no_grad():
        forward(x)  # warm-up (compilation, export)
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        for _ in range(args.steps):
            forward(x)
        elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return args.batch_size * args.steps / elapsed, peak / 1024, baseline / 1024


def run(path, args):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure, args=(path, args, queue))
    process.start()
    result = queue.get()
    process.join()
    if isinstance(result, Exception):
        raise result
    return result


def agreement(folder: str, device="cpu") -> dict:
    """bf16 autocast against fp32 for a trained model on the bundled TEST splits (every channel a series), on
    `device`."""
    sys.path.insert(0, REPO_ROOT)
    from modeling_vqshape import VQShapeFeatureExtractor, VQShapeModel
    from modeling_vqshape.corpora.data import BUNDLED_DATASETS
    from modeling_vqshape.tasks.classification import load_classification_dataset
    from modeling_vqshape.tasks.precision import autocast_agreement

    model = VQShapeModel.from_pretrained(folder).to(device).eval()
    extractor = VQShapeFeatureExtractor.from_pretrained(folder)
    series = [channel for name in BUNDLED_DATASETS for item in load_classification_dataset(name)["test"].series
              for channel in item]
    past_values = extractor(series, return_tensors="pt")["past_values"]
    return autocast_agreement(model, past_values.reshape(-1, past_values.shape[1]), dtype=torch.bfloat16)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", "--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--paths", nargs="+", default=None, choices=list(NAMES),
                        help="Default: every path whose requirements are there.")
    parser.add_argument("--original_repo", "--original-repo",
                        help="checkout of github.com/YunshiWen/VQShape to compare against")
    parser.add_argument("--baseline_repo", "--baseline-repo", nargs="+", default=[],
                        help="checkouts of this package at other commits (before/after), each timed as 'baseline N'")
    parser.add_argument("--agreement_model", "--agreement-model",
                        default="vqshape-pretrained" if os.path.isdir("vqshape-pretrained") else None)
    args = parser.parse_args()
    paths = args.paths or [
        "tokens", "tokens bf16", "tokens compiled", "full",
        *(["onnxruntime"] if importlib.util.find_spec("onnxruntime") else []),
        *(["original"] if args.original_repo else [])]
    paths = [*paths, *(f"baseline {index}" for index in range(len(args.baseline_repo)))]
    results = {}
    for _ in range(args.rounds):
        for path in paths:
            throughput, peak, after_warmup = run(path, args)
            best = results.get(path, (0.0, 0.0, 0.0))
            results[path] = (max(best[0], throughput), max(best[1], peak), max(best[2], after_warmup))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, {args.steps} steps, "
          f"best of {args.rounds} alternating rounds")
    print(f"{'path':<44} {'series/s':>10} {'peak RSS MB':>12} {'RSS after warm-up MB':>21}")
    for path, (throughput, peak, after_warmup) in results.items():
        name = NAMES.get(path) or f"{path} ({args.baseline_repo[int(path.split()[1])]}): tokens"
        print(f"{name:<44} {throughput:>10.1f} {peak:>12.0f} {after_warmup:>21.0f}")
    for path in results:
        if path != "tokens":
            print(f"tokens fp32 / {path}: {results['tokens'][0] / results[path][0]:.2f}x")
    if "original" in results and "full" in results:
        print(f"full / original tokenize: {results['full'][0] / results['original'][0]:.2f}x")
    if args.agreement_model:
        print(f"bf16 autocast vs fp32, {args.agreement_model} on the bundled TEST splits: "
              f"{agreement(args.agreement_model)}")


if __name__ == "__main__":
    main()
