"""Tokenizing whole recordings: windows per second and peak memory for a 1-hour and a 24-hour recording.

    python benchmarks/bench_recordings.py                    # the model the README's first command trains
    python benchmarks/bench_recordings.py --model PATH --hours 1 24 --window 10 --stride 10

For each duration it writes a synthetic 3-axis GENEActiv `.bin` at `--frequency` Hz (with the package's writer;
wrist-like: a walking rhythm that comes and goes, posture changes, sensor noise), then tokenizes it with
`modeling_vqshape.corpora.recordings.tokenize_recordings` in a fresh process and reports the windows, the wall
time, windows per second and that process's peak resident memory (VmHWM). The reader streams pages and the table is
written shard by shard, so peak memory should not grow with the recording's length: the last column is each run's peak
over the first's.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from modeling_vqshape.corpora.geneactiv import SAMPLES_PER_PAGE, write_geneactiv_bin

TOKENIZE = """
import json, resource, sys, time
import torch
from transformers import AutoModel
import modeling_vqshape  # noqa: F401
from modeling_vqshape.corpora.recordings import tokenize_recordings
model_path, recording, output, window, stride, threads = sys.argv[1:7]
torch.set_num_threads(int(threads))
model = AutoModel.from_pretrained(model_path)
started = time.perf_counter()
table = tokenize_recordings(model, [recording], output, float(window), float(stride), progress=False)
seconds = time.perf_counter() - started
windows = len(table.unique("window"))
# VmHWM: this process's own peak (ru_maxrss would keep the parent's peak across exec on Linux)
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
peak_mb = (int(status["VmHWM"].split()[0]) if "VmHWM" in status
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024
print(json.dumps({"windows": windows, "rows": len(table), "seconds": seconds, "peak_mb": peak_mb}))
"""


def synthetic_counts(hours: float, frequency: float, seed: int = 0) -> np.ndarray:
    """`(3, num_samples)` 12-bit counts (about 256 per g) of a wrist-like day, a whole number of pages."""
    num_samples = int(hours * 3600 * frequency) // SAMPLES_PER_PAGE * SAMPLES_PER_PAGE
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / frequency
    walking = (np.sin(2 * np.pi * t / 1800) > 0.3).astype(np.float32)  # bouts of walking, every half hour
    posture = np.repeat(rng.normal(0, 0.4, (3, num_samples // 60_000 + 1)), 60_000, axis=1)[:, :num_samples]
    counts = np.empty((3, num_samples), dtype=np.int64)
    for axis, phase in enumerate((0.0, 1.0, 2.0)):
        g = posture[axis] + walking * 0.6 * np.sin(2 * np.pi * 1.8 * t + phase) - (axis == 2)
        counts[axis] = np.clip(np.round(g * 256 + rng.normal(0, 4, num_samples)), -2048, 2047)
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vqshape-pretrained",
                        help="A VQShape folder; default: the README's first command's output.")
    parser.add_argument("--hours", nargs="+", type=float, default=[1.0, 24.0])
    parser.add_argument("--frequency", type=float, default=100.0)
    parser.add_argument("--window", type=float, default=10.0, help="Window length in seconds.")
    parser.add_argument("--stride", type=float, default=10.0, help="Step between windows in seconds.")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not (Path(args.model) / "config.json").exists():
        parser.error(f"{args.model} is not a saved model; run `accelerate launch examples/pretrain.py` first or pass "
                     "--model.")
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for hours in args.hours:
            path = Path(workdir) / f"synthetic-{hours:g}h.bin"
            started = time.perf_counter()
            write_geneactiv_bin(path, synthetic_counts(hours, args.frequency), frequency=args.frequency)
            written = time.perf_counter() - started
            result = subprocess.run([sys.executable, "-c", TOKENIZE, args.model, str(path),
                                     str(Path(workdir) / f"table-{hours:g}h"), str(args.window), str(args.stride),
                                     str(args.threads)], capture_output=True, text=True)
            if result.returncode:
                raise SystemExit(result.stderr[-3000:])
            run = json.loads(result.stdout.strip().splitlines()[-1])
            run.update(hours=hours, file_mb=path.stat().st_size / 2**20, write_seconds=written)
            rows.append(run)
            path.unlink()
            print(json.dumps(run), flush=True)
    first = rows[0]["peak_mb"]
    print(f"\n{args.frequency:g} Hz, 3 axes, {args.window:g} s windows every {args.stride:g} s, "
          f"{args.threads} threads, model {args.model}\n")
    print("| recording | .bin size | windows | token rows | seconds | windows/s | peak memory | vs first |")
    print("|---|---|---|---|---|---|---|---|")
    for run in rows:
        print(f"| {run['hours']:g} h | {run['file_mb']:.0f} MB | {run['windows']} | {run['rows']} | "
              f"{run['seconds']:.1f} | {run['windows'] / run['seconds']:.0f} | {run['peak_mb']:.0f} MB | "
              f"{run['peak_mb'] / first:.2f}x |")


if __name__ == "__main__":
    main()
