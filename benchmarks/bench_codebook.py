"""Codebook ablation: the original recipe, each codebook option alone and the chosen combination, pre-trained by
`examples/pretrain.py` at equal steps and seeds on the bundled corpus, then measured on held-out data.

    python benchmarks/bench_codebook.py                       # every variant, seed 0; original and chosen on 3 seeds
    python benchmarks/bench_codebook.py --variants original chosen --seeds 0 --steps 200 --no_probe   # quick look

For each run it reports:
- validation reconstruction and shape loss (the script's final evaluation on its held-out 10% of the TRAIN series);
- perplexity and the share of codes used over the bundled TEST splits (every channel a series);
- which of the 8 shape words (the text alignment's rule labels: rising, falling, flat, peak, dip, step up, step down,
  oscillation) name at least one code used on those TEST splits;
- the paper's linear probe (tokens and histogram, `modeling_vqshape.tasks.classification`) on BasicMotions, GunPoint and
  ItalyPowerDemand, with the same probe on the raw resampled values beside it.

Every run is a separate `examples/pretrain.py` process with its own output folder under `--output_dir`; results go
to `results.json` and `results.md` there. The variants differ only in their codebook options and loss weights
(`--config_overrides` on top of `--codebook_recipe original`), so everything else (data order, patch masks, schedule)
is the same. The "loss weights x2" variants are not in the default set (`--variants` names them).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from modeling_vqshape import VQShapeFeatureExtractor, VQShapeForPreTraining  # noqa: E402
from modeling_vqshape.configuration_vqshape import DIVERSE_CODEBOOK  # noqa: E402
from modeling_vqshape.corpora.data import BUNDLED_DATASETS  # noqa: E402
from modeling_vqshape.sharing.visualization import code_counts, codebook_summary  # noqa: E402
from modeling_vqshape.tasks.classification import load_classification_dataset, run_protocol  # noqa: E402

LOSS_WEIGHTS_X2 = {"reconstruction_weight": 2.0, "codebook_weight": 2.0}
# each option alone, on top of the original recipe; "chosen" is DIVERSE_CODEBOOK, what the scripts use
VARIANTS = {
    "original": {},
    "k-means init": {"codebook_init": "kmeans"},
    "dead-code re-seeding": {"dead_code_threshold": 0.1},
    "EMA updates": {"codebook_update": "ema"},
    "cosine lookup": {"code_lookup": "cosine"},
    "rotation trick": {"rotation_trick": True},
    "SimVQ projection": {"codebook_projection": True},
    "chosen": dict(DIVERSE_CODEBOOK),
    # a trial of loss weights that count reconstruction and the codebook term twice, alone and with the chosen options
    "loss weights x2": LOSS_WEIGHTS_X2,
    "chosen with loss weights x2": {**DIVERSE_CODEBOOK, **LOSS_WEIGHTS_X2},
}
PROBE_DATASETS = ("BasicMotions", "GunPoint", "ItalyPowerDemand")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        default=[variant for variant in VARIANTS if "loss weights" not in variant])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="Seeds of every variant.")
    parser.add_argument("--extra_seeds", nargs="*", type=int, default=[1, 2],
                        help="Further seeds for 'original' and the 'chosen' variants (the seed spread).")
    parser.add_argument("--steps", type=int, default=None, help="Training steps; default: the script's default.")
    parser.add_argument("--probe_seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--no_probe", "--no-probe", dest="probe", action="store_false", help="Skip the linear probes.")
    parser.add_argument("--output_dir", default="bench-codebook")
    parser.add_argument("--pretrain_args", default="", help="Further arguments for examples/pretrain.py.")
    return parser.parse_args(argv)


def overrides_text(overrides: dict) -> str:
    return ",".join(f"{key}={json.dumps(value) if isinstance(value, bool) else value}"
                    for key, value in overrides.items())


def pretrain(variant: str, seed: int, args) -> Path:
    """Run examples/pretrain.py for one variant and seed; returns its output folder."""
    output = Path(args.output_dir) / f"{variant.replace(' ', '-')}-seed{seed}"
    command = [sys.executable, str(REPO_ROOT / "examples" / "pretrain.py"), "--codebook_recipe", "original",
               "--seed", str(seed), "--output_dir", str(output), "--report_to", "none", "--eval_steps", "0",
               *(["--max_train_steps", str(args.steps)] if args.steps else []), *args.pretrain_args.split()]
    if VARIANTS[variant]:
        command += ["--config_overrides", overrides_text(VARIANTS[variant])]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{variant} seed {seed} failed:\n{result.stderr[-3000:]}")
    print(f"  trained {variant!r} seed {seed} in {time.perf_counter() - started:.0f} s", flush=True)
    return output


def test_series() -> dict:
    """The bundled sets' TEST splits, `{name: [(channels, time) arrays]}`."""
    return {name: load_classification_dataset(name)["test"].series for name in BUNDLED_DATASETS}


METHOD_KINDS = {"VQShape tokens": "tokens", "VQShape histogram": "histogram", "raw values": "raw"}


def probe(model, extractor, probe_datasets: dict, probe_seeds, kinds) -> dict:
    """Mean test accuracy over the probe seeds, `{"<dataset> <kind>": accuracy}`."""
    rows = run_protocol(model, extractor, probe_datasets, seeds=probe_seeds, feature_kinds=kinds,
                        log=lambda message: None)
    accuracies = {}
    for row in rows:
        accuracies.setdefault(f"{row['dataset']} {METHOD_KINDS[row['method']]}", []).append(row["accuracy"])
    return {key: float(np.mean(values)) for key, values in accuracies.items()}


def measure(model, folder: Path, tests: dict, probe_datasets: dict, probe_seeds) -> dict:
    extractor = VQShapeFeatureExtractor.from_pretrained(folder)
    with open(folder / "training_results.json") as handle:
        validation = json.load(handle)["validation_final"]
    usage = sum(code_counts(model, series, extractor, batch_size=256) for series in tests.values())
    summary = codebook_summary(model, usage)
    row = {
        "reconstruction_loss": validation["reconstruction_loss"],
        "shape_loss": validation["shape_loss"],
        "test_perplexity": summary["perplexity"],
        "test_codes_used": summary["codes_used"],
        "shape_values": summary["shape_values"],
        "num_shape_values": len(summary["shape_values"]),
    }
    if probe_datasets:
        row.update(probe(model, extractor, probe_datasets, probe_seeds, ("tokens", "histogram")))
    return row


def spread(values) -> str:
    values = np.asarray(values, dtype=float)
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{values.mean():.3f} ({values.min():.3f}-{values.max():.3f})"


def markdown(results: dict, raw: dict) -> str:
    columns = ["reconstruction_loss", "shape_loss", "test_perplexity", "test_codes_used", "num_shape_values"]
    probe_columns = sorted({key for runs in results.values() for run in runs for key in run
                            if key.endswith((" tokens", " histogram"))}, key=lambda key: (key.split()[0], key))
    header = ["variant", "seeds", "val. reconstruction", "val. shape", "TEST perplexity", "TEST codes used",
              "shape values", *probe_columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, runs in results.items():
        cells = [variant, ",".join(str(run["seed"]) for run in runs)]
        cells += [spread([run[column] for run in runs]) for column in columns]
        cells += [spread([run[column] for run in runs]) for column in probe_columns]
        lines.append("| " + " | ".join(cells) + " |")
    if raw:
        lines.append("| raw values (same probe) | | | | | | | " + " | ".join(
            f"{raw[column.rsplit(' ', 1)[0] + ' raw']:.3f}" for column in probe_columns) + " |")
    lines.append("")
    for variant, runs in results.items():
        lines.append(f"- {variant}: shape values of used codes " + "; ".join(
            f"seed {run['seed']}: " + ", ".join(f"{value} {count}" for value, count in run["shape_values"].items())
            for run in runs))
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    tests = test_series()
    probe_datasets = {name: load_classification_dataset(name) for name in PROBE_DATASETS} if args.probe else {}
    results, raw = {}, {}
    for variant in args.variants:
        seeds = list(args.seeds)
        if variant == "original" or variant.startswith("chosen"):
            seeds += [seed for seed in args.extra_seeds if seed not in seeds]
        for seed in seeds:
            folder = pretrain(variant, seed, args)
            model = VQShapeForPreTraining.from_pretrained(folder).eval()
            row = {"seed": seed, **measure(model, folder, tests, probe_datasets, args.probe_seeds)}
            results.setdefault(variant, []).append(row)
            print(f"  {variant} seed {seed}: " + json.dumps(row), flush=True)
            if probe_datasets and not raw:  # the raw values depend on the input length alone, the same in every run
                raw = probe(model, VQShapeFeatureExtractor.from_pretrained(folder), probe_datasets, args.probe_seeds,
                            ("raw",))
    with open(Path(args.output_dir) / "results.json", "w") as handle:
        json.dump({"results": results, "raw": raw, "steps": args.steps, "threads": torch.get_num_threads()}, handle,
                  indent=2)
    table = markdown(results, raw)
    (Path(args.output_dir) / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
