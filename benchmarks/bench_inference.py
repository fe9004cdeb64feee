"""Inference throughput and peak memory of VQShape's tokens/histogram path and of a full forward (with reconstruction
and decoded shapes), for the default configuration, measured in one run.

    python benchmarks/bench_inference.py [--batch-size 64] [--steps 10] [--original-repo PATH]

`--original-repo` points to a checkout of the original implementation (github.com/YunshiWen/VQShape); its
`VQShape(x, mode='tokenize')`, which always runs both decoders, is then timed in the same run with the same
hyper-parameters. Each path runs in its own process so that its peak memory (max RSS) is its own.
"""

import argparse
import multiprocessing
import resource
import sys
import time

import torch

DEFAULTS = dict(  # the paper's pre-training script, d_model 256, 512 codes
    input_length=512, num_patches=64, patch_length=8, d_model=256, num_tokens=64, num_codes=512, code_dim=8,
    shape_length=128, num_encoder_layers=4, num_encoder_heads=8, num_tokenizer_layers=4, num_tokenizer_heads=8,
    num_decoder_layers=2, num_decoder_heads=8,
)


def build(path: str, original_repo: str | None):
    torch.manual_seed(0)
    if path == "original":
        sys.path.insert(0, original_repo)
        from vqshape.model import VQShape

        model = VQShape(
            dim_embedding=DEFAULTS["d_model"], patch_size=DEFAULTS["patch_length"], num_patch=DEFAULTS["num_patches"],
            num_enc_head=DEFAULTS["num_encoder_heads"], num_enc_layer=DEFAULTS["num_encoder_layers"],
            num_tokenizer_head=DEFAULTS["num_tokenizer_heads"], num_tokenizer_layer=DEFAULTS["num_tokenizer_layers"],
            num_dec_head=DEFAULTS["num_decoder_heads"], num_dec_layer=DEFAULTS["num_decoder_layers"],
            num_token=DEFAULTS["num_tokens"], len_s=DEFAULTS["shape_length"], len_input=DEFAULTS["input_length"],
            s_smooth_factor=1, num_code=DEFAULTS["num_codes"], dim_code=DEFAULTS["code_dim"],
            lambda_commit=0.25, lambda_entropy=0.1,
        ).eval()
        return lambda x: model(x, mode="tokenize")
    sys.path.insert(0, ".")
    from modeling_vqshape import VQShapeConfig, VQShapeModel

    model = VQShapeModel(VQShapeConfig(**DEFAULTS)).eval()
    if path == "tokens":
        return lambda x: model(x)
    return lambda x: model(x, output_reconstruction=True, output_shapes=True)


def measure(path, original_repo, batch_size, steps, queue):
    torch.set_num_threads(torch.get_num_threads())
    forward = build(path, original_repo)
    x = torch.randn(batch_size, DEFAULTS["input_length"])
    with torch.no_grad():
        forward(x)  # warm-up
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        for _ in range(steps):
            forward(x)
        elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put((batch_size * steps / elapsed, peak / 1024, baseline / 1024))


def run(path, args):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure, args=(path, args.original_repo, args.batch_size, args.steps, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--original-repo", help="checkout of github.com/YunshiWen/VQShape to compare against")
    args = parser.parse_args()
    paths = ["tokens", "full"] + (["original"] if args.original_repo else [])
    results = {path: run(path, args) for path in paths}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, {args.steps} steps")
    print(f"{'path':<44} {'series/s':>10} {'peak RSS MB':>12} {'RSS after warm-up MB':>21}")
    names = {"tokens": "ours: tokens + histogram (no decoders)", "full": "ours: full (reconstruction + shapes)",
             "original": "original: tokenize (runs both decoders)"}
    for path, (throughput, peak, baseline) in results.items():
        print(f"{names[path]:<44} {throughput:>10.1f} {peak:>12.0f} {baseline:>21.0f}")
    print(f"tokens / full: {results['tokens'][0] / results['full'][0]:.2f}x")
    if "original" in results:
        print(f"tokens / original tokenize: {results['tokens'][0] / results['original'][0]:.2f}x")
        print(f"full / original tokenize: {results['full'][0] / results['original'][0]:.2f}x")


if __name__ == "__main__":
    main()
