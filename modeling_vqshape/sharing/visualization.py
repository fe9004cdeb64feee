"""Pictures that explain a VQShape model: the codebook atlas, a per-series explanation and code-usage histograms.

Every plot returns a `matplotlib.figure.Figure` built without pyplot (headless, no display needed) and saves a PNG
when given `output`. The arrays a plot draws come from small functions (`decode_codebook`, `code_counts`,
`explain_series`) so they can be checked or reused.

Command line:
    python -m modeling_vqshape.sharing.visualization atlas --model PATH --output atlas.png [--data series.npy]
    python -m modeling_vqshape.sharing.visualization explain --model PATH --output explain.png \
        [--series series.npy --index 0]
    python -m modeling_vqshape.sharing.visualization histogram --model PATH --data series.npy --output usage.png
        [--labels y.npy]
"""

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ..modeling_vqshape import extract_subsequence, token_span_end, vqshape_model
from .loading import load_vqshape

# a fixed qualitative palette so that a code keeps its colour across pictures
_PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]


def code_colour(code: int) -> str:
    return _PALETTE[int(code) % len(_PALETTE)]


def _feature_extractor(model, feature_extractor=None):
    if feature_extractor is not None:
        return feature_extractor
    from ..processing_vqshape import VQShapeFeatureExtractor

    return VQShapeFeatureExtractor(input_length=vqshape_model(model).config.input_length)


def _save(figure: Figure, output, dpi: int):
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        # no "Software"/date metadata: the same model gives the same bytes (an unchanged push uploads nothing)
        figure.savefig(output, dpi=dpi, format="png", metadata={"Software": None})
    return figure


# ---------------------------------------------------------------------------------------------------------------------
# Arrays
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def decode_codebook(model) -> np.ndarray:
    """Every codebook entry decoded to its standardised shape, `(num_codes, shape_length)`."""
    base = vqshape_model(model)
    codes = base.codebook.codes.detach().unsqueeze(0)  # (1, num_codes, code_dim)
    return base.shape_decoder(codes)[0].float().cpu().numpy()


@torch.no_grad()
def code_counts(model, series, feature_extractor=None, batch_size: int = 64) -> np.ndarray:
    """How often each code is used over a dataset of raw series (anything `VQShapeFeatureExtractor` takes),
    summed over series, channels and tokens, `(num_codes,)`."""
    base = vqshape_model(model)
    past_values = _feature_extractor(model, feature_extractor)(series, return_tensors="pt")["past_values"]
    counts = torch.zeros(base.config.num_codes, dtype=torch.long)
    for start in range(0, past_values.shape[0], batch_size):
        histogram = base(past_values[start:start + batch_size], return_dict=True).histogram  # (batch, channels, codes)
        counts += histogram.sum(dim=(0, 1)).cpu()
    return counts.numpy()


def codebook_summary(model, usage) -> dict:
    """What a dataset makes of the codebook, from its usage counts per code (`code_counts`).

    Returns:
        `{"codes_used": share of the codes used at least once, "perplexity": exp of the entropy of the code
        distribution, "shape_values": {value: number of used codes whose decoded shape has that rule value}}`, the
        values being the text alignment's shape words (`SHAPE_VALUES`: rising, falling, flat, peak, dip, step up, step
        down, oscillation).
    """
    from ..modeling_vqshape import usage_from_counts
    from ..text_captions import SHAPE_VALUES, shape_labels

    counts = np.asarray(usage)
    perplexity, used = usage_from_counts(torch.as_tensor(counts))
    labels = shape_labels(torch.from_numpy(decode_codebook(model))).numpy()
    used_labels = labels[counts > 0]
    return {
        "codes_used": used.item(),
        "perplexity": perplexity.item(),
        "shape_values": {value: int((used_labels == index).sum()) for index, value in enumerate(SHAPE_VALUES)
                         if (used_labels == index).any()},
    }


@torch.no_grad()
def explain_series(model, series, feature_extractor=None, channel: int = 0) -> dict:
    """What the explanation draws for one series (one channel of it), in the input's scale.

    Returns a dict with `series` and `reconstruction` `(input_length,)`, and per token (`num_tokens` entries):
    `code`, `start`, `length`, `offset`, `scale` (as the model predicts them, start and length in [0, 1]),
    `x` (the time steps the token covers: the span the model reads, which ends at the series' end at the latest,
    `token_span_end`), `y` (the decoded shape at the token's own offset and scale: what the model places there),
    and `fitted` (the code's decoded shape standardised, then given the mean and standard deviation of the stretch it
    covers: the code's form drawn at the series' size, to read against the series), all `(shape_length,)`.
    """
    base = vqshape_model(model)
    series = np.asarray(series.detach().cpu().numpy() if isinstance(series, torch.Tensor) else series, dtype=float)
    if series.ndim not in (1, 2):
        raise ValueError(f"explain one series, (time,) or (channels, time); got shape {series.shape}.")
    batch = series[None]  # a batch of one: (1, time) or (1, channels, time)
    past_values = _feature_extractor(model, feature_extractor)(batch, return_tensors="pt")["past_values"]
    out = base(past_values, output_reconstruction=True, output_shapes=True, return_dict=True)
    if past_values.dim() == 2:
        past_values = past_values.unsqueeze(-1)
    config = base.config
    values = past_values[0, :, channel].float()
    start = out.shape_start[0, channel].float()  # (num_tokens,)
    length = out.shape_length[0, channel].float()
    # the stretch each token covers, read as the shape loss reads it: (num_tokens, shape_length)
    stretches = extract_subsequence(values[None], start[None, :, None], length[None, :, None], config.shape_length)[0]
    forms = base.shape_decoder(out.codes[0, channel][None].to(base.dtype))[0].float()  # the codes' own shapes
    forms = (forms - forms.mean(-1, keepdim=True)) / forms.std(-1, keepdim=True).clamp_min(1e-6)
    fitted = forms * stretches.std(-1, keepdim=True) + stretches.mean(-1, keepdim=True)
    last = token_span_end(start, length)  # the span the model reads ends at the series' end at the latest
    tokens = []
    for token in range(config.num_tokens):
        x = np.linspace(float(start[token]), float(last[token]), config.shape_length) * (config.input_length - 1)
        tokens.append(
            {
                "code": int(out.code_indices[0, channel, token]),
                "start": float(start[token]),
                "length": float(length[token]),
                "offset": float(out.shape_offset[0, channel, token]),
                "scale": float(out.shape_scale[0, channel, token]),
                "x": x,
                "y": out.shapes[0, channel, token].float().cpu().numpy(),
                "fitted": fitted[token].cpu().numpy(),
            }
        )
    return {
        "series": values.cpu().numpy(),
        "reconstruction": out.reconstruction[0, :, channel].float().cpu().numpy(),
        "tokens": tokens,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------------------


def plot_codebook_atlas(model, usage=None, dataset=None, feature_extractor=None, columns: int | None = None,
                        output=None, panel_size: float = 1.2, dpi: int = 100) -> Figure:
    """The codebook atlas: every code decoded to its shape, one panel per code in a grid, titled with its index and,
    when `usage` (counts per code) or a `dataset` of raw series is given, how often the code is used."""
    shapes = decode_codebook(model)
    num_codes = shapes.shape[0]
    if usage is None and dataset is not None:
        usage = code_counts(model, dataset, feature_extractor)
    if usage is not None:
        usage = np.asarray(usage)
        if usage.shape != (num_codes,):
            raise ValueError(f"usage must hold one count per code, shape ({num_codes},); got {usage.shape}.")
    columns = columns or max(1, math.ceil(math.sqrt(num_codes)))
    rows = math.ceil(num_codes / columns)
    height = panel_size * rows + 0.4
    # a fixed grid with the same limits set on every panel: shared axes or a constrained layout make drawing
    # quadratic in the number of panels (each set_ylim walks every sibling), minutes for the paper's 512 codes
    figure = Figure(figsize=(panel_size * columns, height))
    axes = figure.subplots(rows, columns, squeeze=False, gridspec_kw=dict(
        left=0.02, right=0.98, bottom=0.1 / height, top=1 - 0.4 / height, wspace=0.08,
        hspace=0.3))
    limit = float(np.abs(shapes).max()) * 1.1 if num_codes else 1.0
    for index, axis in enumerate(axes.flat):
        axis.set_xticks([])
        axis.set_yticks([])
        if index >= num_codes:
            axis.set_axis_off()
            continue
        unused = usage is not None and usage[index] == 0
        axis.plot(shapes[index], color="#bbbbbb" if unused else code_colour(index), linewidth=1.5)
        axis.set_xlim(0, shapes.shape[1] - 1)
        axis.set_ylim(-limit, limit)
        title = f"{index}" if usage is None else f"{index} (n={int(usage[index])})"
        axis.set_title(title, fontsize=7, pad=2)
    suffix = "" if usage is None else f", usage over {int(usage.sum())} tokens"
    figure.suptitle(f"VQShape codebook: {num_codes} codes{suffix}", fontsize=9)
    return _save(figure, output, dpi)


def plot_explanation(model, series, feature_extractor=None, channel: int = 0, output=None,
                     figsize=(8, 4.8), dpi: int = 100) -> Figure:
    """One series, twice. Above: each token's decoded shape where the model placed it (start, length) at its own offset
    and scale, coloured by code, with the reconstruction from the tokens. Below: each token's code shape fitted to the
    stretch it covers (the stretch's mean and standard deviation), so that codes can be matched to the series; the
    legend says how flat the model's own scales are."""
    explanation = explain_series(model, series, feature_extractor, channel)
    tokens = explanation["tokens"]
    figure = Figure(figsize=figsize, layout="constrained")
    placed, fitted = figure.subplots(2, 1)
    for axis in (placed, fitted):
        axis.plot(explanation["series"], color="black", linewidth=1.2, label="series (resampled)")
        for token in tokens:
            axis.axvspan(token["x"][0], token["x"][-1], color=code_colour(token["code"]), alpha=0.06)
    placed.plot(explanation["reconstruction"], color="black", linewidth=1.0, linestyle="--", alpha=0.6,
                label="reconstruction")
    labelled = set()
    for token in tokens:
        code = token["code"]
        placed.plot(token["x"], token["y"], color=code_colour(code), linewidth=2.4, alpha=0.85,
                    label=None if code in labelled else f"code {code}")
        labelled.add(code)
    for token in tokens:
        fitted.plot(token["x"], token["fitted"], color=code_colour(token["code"]), linewidth=2.0, alpha=0.9)
    series_std = float(np.std(explanation["series"])) or 1.0
    amplitude = np.median([np.ptp(token["y"]) for token in tokens]) / series_std
    placed.set_title(f"tokens as the model places them (median height: {amplitude:.2f} of the series' std)",
                     fontsize=9)
    fitted.set_title("each token's code shape, fitted to the mean and std of its stretch", fontsize=9)
    fitted.set_xlabel("time step")
    figure.legend(*placed.get_legend_handles_labels(), fontsize=7, loc="outside right upper")
    return _save(figure, output, dpi)


def plot_code_histogram(model, series=None, labels=None, usage=None, feature_extractor=None, output=None,
                        figsize=(7, 2.8), dpi: int = 100) -> Figure:
    """Code usage of a dataset of raw series (or given `usage` counts); with `labels`, one bar group per class,
    each normalised to its class's token count so that classes of different sizes compare."""
    num_codes = vqshape_model(model).config.num_codes
    figure = Figure(figsize=figsize, layout="constrained")
    axis = figure.subplots()
    codes = np.arange(num_codes)
    if labels is None:
        if usage is None:
            if series is None:
                raise ValueError("give series (a dataset of raw series) or usage (counts per code).")
            usage = code_counts(model, series, feature_extractor)
        axis.bar(codes, usage, color=[code_colour(code) for code in codes])
        axis.set_ylabel("tokens")
    else:
        if series is None:
            raise ValueError("labels need the series they label.")
        labels = np.asarray(labels)
        classes = np.unique(labels)
        width = 0.8 / len(classes)
        for position, label in enumerate(classes):
            members = [item for item, keep in zip(series, labels == label) if keep]
            counts = code_counts(model, members, feature_extractor)
            frequencies = counts / max(int(counts.sum()), 1)
            axis.bar(codes - 0.4 + width * (position + 0.5), frequencies, width=width, label=f"class {label}")
        axis.set_ylabel("fraction of tokens")
        axis.legend(fontsize=7)
    axis.set_xticks(codes if num_codes <= 64 else codes[:: max(1, num_codes // 32)])
    axis.tick_params(axis="x", labelsize=6)
    axis.set_xlabel("code")
    axis.set_title("VQShape code usage", fontsize=9)
    return _save(figure, output, dpi)


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def demo_series(length: int = 512) -> np.ndarray:
    """A built-in series with a rise, a plateau, a dip and an oscillation, `(length,)`."""
    t = np.linspace(0.0, 1.0, length)
    return (
        np.where(t < 0.25, 4 * t, 1.0)
        - 1.5 * np.exp(-((t - 0.5) ** 2) / 0.002)
        + np.where(t > 0.65, 0.6 * np.sin(2 * np.pi * 12 * t), 0.0)
    )


def load_series(path) -> np.ndarray:
    """Series from a .npy (any shape the feature extractor takes) or a .csv/.txt file (one series per row)."""
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix in (".csv", ".txt"):
        return np.atleast_2d(np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=2))
    raise ValueError(f"{path}: use a .npy, .csv or .txt file.")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m modeling_vqshape.sharing.visualization",
                                     description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    atlas = commands.add_parser("atlas", help="the codebook atlas")
    explain = commands.add_parser("explain", help="one series explained by its shape tokens")
    histogram = commands.add_parser("histogram", help="code usage of a dataset, or per class")
    for command in (atlas, explain, histogram):
        command.add_argument("--model", required=True, help="a saved model folder or Hub repo id")
        command.add_argument("--output", required=True, help="the PNG to write")
        command.add_argument("--dpi", type=int, default=100)
    atlas.add_argument("--data", help=".npy/.csv series whose code usage titles each panel")
    atlas.add_argument("--columns", type=int, default=None)
    explain.add_argument("--series", help=".npy/.csv file of series (default: a built-in demo series)")
    explain.add_argument("--index", type=int, default=0, help="which series of the file")
    explain.add_argument("--channel", type=int, default=0)
    histogram.add_argument("--data", required=True, help=".npy/.csv series")
    histogram.add_argument("--labels", help=".npy/.csv labels, one per series: one bar group per class")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    model = load_vqshape(args.model)
    if args.command == "atlas":
        dataset = load_series(args.data) if args.data else None
        plot_codebook_atlas(model, dataset=dataset, columns=args.columns, output=args.output, dpi=args.dpi)
    elif args.command == "explain":
        series = load_series(args.series)[args.index] if args.series else demo_series()
        plot_explanation(model, series, channel=args.channel, output=args.output, dpi=args.dpi)
    else:
        labels = load_series(args.labels).ravel() if args.labels else None
        plot_code_histogram(model, list(load_series(args.data)), labels=labels, output=args.output, dpi=args.dpi)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
