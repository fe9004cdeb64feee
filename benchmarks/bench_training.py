"""Pre-training step throughput and peak memory of VQShapeForPreTraining (default VQShapeConfig, batch 64): one step is
forward, weighted loss, backward and AdamW (fused, as examples/pretrain.py uses it), as in the original's training_step.

    python benchmarks/bench_training.py [--steps 3] [--original_repo /path/to/YunshiWen/VQShape]
    python benchmarks/bench_training.py --profile     # where a step of ours spends its time, and the dropout draws

With --original_repo (a checkout of https://github.com/YunshiWen/VQShape; needs einops) the original VQShape is
measured the same way in the same run, and the ratio is printed. Each measurement runs in its own process, so that
peak memory (the process's maximum resident set size) belongs to one model.
"""

import argparse
import multiprocessing
import os
import resource
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ours(batch_size):
    sys.path.insert(0, REPO_ROOT)
    from modeling_vqshape import VQShapeConfig, VQShapeForPreTraining

    model = VQShapeForPreTraining(VQShapeConfig())
    inputs = torch.randn(batch_size, model.config.input_length)
    return model, lambda: model(past_values=inputs).loss


def original(batch_size, repo):
    from original_vqshape import build_original, original_training_loss

    from modeling_vqshape import VQShapeConfig

    config = VQShapeConfig()
    model = build_original(config, repo)
    inputs = torch.randn(batch_size, config.input_length)
    return model, lambda: original_training_loss(model, config, inputs)


def training_step(compute_loss, optimizer):
    """Forward, weighted loss, backward, optimizer step."""
    compute_loss().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure(name, batch_size, steps, warmup, repo=None):
    """Run in a fresh process: returns (series per second, peak resident memory in MiB)."""
    torch.manual_seed(0)
    sys.path.insert(0, REPO_ROOT)
    model, compute_loss = ours(batch_size) if name == "ours" else original(batch_size, repo)
    model.train()
    # ours: the optimizer of examples/pretrain.py (fused AdamW); the original: its default AdamW
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=name == "ours")
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        training_step(compute_loss, optimizer)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return batch_size * steps / elapsed, peak


def profile(batch_size: int, warmup: int, row_limit: int = 15):
    """The operators of one training step of ours by self time, then what a dropout draw costs: `bernoulli_` (what
    dropout calls) against `torch.rand(float64) < keep`, which draws the same masks from the same generator."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    model, compute_loss = ours(batch_size)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
    for _ in range(warmup):
        training_step(compute_loss, optimizer)
    with torch_profile(activities=[ProfilerActivity.CPU]) as profiler:
        training_step(compute_loss, optimizer)
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit))
    draws = torch.empty(10_000_000)
    for name, draw in (("bernoulli_(0.9)", lambda: draws.bernoulli_(0.9)),
                       ("rand(float64) < 0.9", lambda: torch.rand(len(draws), dtype=torch.float64) < 0.9)):
        draw()
        start = time.perf_counter()
        draw()
        print(f"{name:>20}: {(time.perf_counter() - start) / len(draws) * 1e9:.1f} ns a draw")
    torch.manual_seed(0)
    masks = torch.empty(4096).bernoulli_(0.9).bool()
    torch.manual_seed(0)
    print(f"same masks from the same seed: {torch.equal(masks, torch.rand(4096, dtype=torch.float64) < 0.9)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--original_repo", "--original-repo", default=None)
    parser.add_argument("--rounds", type=int, default=2,
                        help="Alternate the implementations this many times and keep each one's best round, so that "
                             "load from other processes on a shared machine does not favour either.")
    parser.add_argument("--profile", action="store_true", help="Profile one step of ours instead of timing.")
    args = parser.parse_args()
    if args.profile:
        return profile(args.batch_size, args.warmup)
    context = multiprocessing.get_context("spawn")
    names = ["ours"] + (["original"] if args.original_repo else [])
    figures = {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup} warm-up, best of {args.rounds} alternating rounds")
    for _ in range(args.rounds):
        for name in names:
            with context.Pool(1) as pool:
                throughput, peak = pool.apply(measure, (name, args.batch_size, args.steps, args.warmup,
                                                        args.original_repo))
            best = figures.get(name, (0.0, 0.0))
            figures[name] = (max(best[0], throughput), max(best[1], peak))
    for name in names:
        print(f"{name:>9}: {figures[name][0]:8.1f} training series/s, peak memory {figures[name][1]:8.0f} MiB")
    if "original" in figures:
        print(f"    ratio: {figures['ours'][0] / figures['original'][0]:.2f}x the original's throughput (goal >= 1.2x)")


if __name__ == "__main__":
    main()
