"""Caption rules: a token's decoded attributes -> one value per attribute, and a channel's relative intensity -> its
intensity value. Pure and deterministic (no model, no text); the thresholds are documented here. The text model aligns
its projections with the phrases of these values (`configuration_vqshape_text.PHRASE_BANK`)."""

import math

import torch

from .configuration_vqshape_text import PHRASE_BANK

# position: the token's centre t + l/2 (relative to the series) below 1/3 is early, below 2/3 middle, else late
POSITION_THRESHOLDS = (1 / 3, 2 / 3)
# duration: the relative length l below 0.04 (1/25 of the series) is short, below 0.15 medium, else long
DURATION_THRESHOLDS = (0.04, 0.15)
# amplitude: the scale sigma (in units of the series' standard deviation) below 0.01 is small, below 0.05 moderate,
# else large. Small because most VQShape tokens cover short stretches that vary little (median sigma ~0.01).
AMPLITUDE_THRESHOLDS = (0.01, 0.05)
# level: the offset mu (in units of the series' standard deviation, around its mean) below -0.4 is low, above 0.4 high
LEVEL_THRESHOLDS = (-0.4, 0.4)
# shape: the decoded (standardised) shape is correlated with template families; the best family names it, unless its
# Pearson correlation is below this, when the shape has no coherent form and is called "flat" (a standardised shape
# has unit variance by construction, so a code that stands for level stretches decodes to low-amplitude noise).
SHAPE_MIN_CORRELATION = 0.6
SHAPE_VALUES = tuple(PHRASE_BANK["shape"])  # rising, falling, flat, peak, dip, step up, step down, oscillation
ATTRIBUTE_VALUES = {attribute: tuple(values) for attribute, values in PHRASE_BANK.items()}


def _standardize(values: torch.Tensor) -> torch.Tensor:
    return (values - values.mean(dim=-1, keepdim=True)) / (values.std(dim=-1, keepdim=True) + 1e-8)


def shape_templates(shape_length: int, dtype=torch.float32, device=None):
    """Template shapes of every family but flat, standardised.

    Families: rising and falling (linear ramps); peak and dip (Gaussian bumps centred at 0.2..0.8 with widths 0.05,
    0.1, 0.2); step up and step down (logistic steps at 0.25..0.75); oscillation (sines of 2, 3 or 4 cycles, 4 phases).

    Returns:
        `(templates, families)`: `(num_templates, shape_length)` and `(num_templates,)` indices into `SHAPE_VALUES`.
    """
    t = torch.linspace(0, 1, shape_length, dtype=torch.float64)
    rows, families = [t, -t], [SHAPE_VALUES.index("rising"), SHAPE_VALUES.index("falling")]
    for centre in torch.linspace(0.2, 0.8, 7).tolist():
        for width in (0.05, 0.1, 0.2):
            bump = torch.exp(-0.5 * ((t - centre) / width) ** 2)
            rows += [bump, -bump]
            families += [SHAPE_VALUES.index("peak"), SHAPE_VALUES.index("dip")]
    for centre in torch.linspace(0.25, 0.75, 5).tolist():
        step = torch.sigmoid((t - centre) / 0.02)
        rows += [step, -step]
        families += [SHAPE_VALUES.index("step up"), SHAPE_VALUES.index("step down")]
    for cycles in (2, 3, 4):
        for phase in (0, 0.5 * math.pi, math.pi, 1.5 * math.pi):
            rows.append(torch.sin(2 * math.pi * cycles * t + phase))
            families.append(SHAPE_VALUES.index("oscillation"))
    templates = _standardize(torch.stack(rows)).to(dtype=dtype, device=device)
    return templates, torch.tensor(families, device=device)


def shape_labels(shapes: torch.Tensor, min_correlation: float = SHAPE_MIN_CORRELATION) -> torch.Tensor:
    """Name decoded shapes by their best-correlated template family (see `shape_templates`), or "flat".

    Args:
        shapes: `(..., shape_length)` decoded shapes (any offset and scale).
    Returns:
        `(...,)` indices into `SHAPE_VALUES`.
    """
    shape_length = shapes.shape[-1]
    templates, families = shape_templates(shape_length, shapes.dtype, shapes.device)
    correlation = _standardize(shapes) @ templates.t() / (shape_length - 1)  # (..., num_templates)
    best = torch.full((*correlation.shape[:-1], len(SHAPE_VALUES)), -2.0, dtype=shapes.dtype, device=shapes.device)
    best = best.scatter_reduce(-1, families.expand_as(correlation), correlation, reduce="amax")
    best_correlation, labels = best.max(dim=-1)
    return torch.where(best_correlation < min_correlation, SHAPE_VALUES.index("flat"), labels)


def caption_labels(code_shape_labels, code_indices, start, length, offset, scale) -> torch.Tensor:
    """The rule value of every attribute of every token.

    Args:
        code_shape_labels: `(num_codes,)` shape value of each codebook entry (`shape_labels` of its decoded shape).
        code_indices: `(...,)`; start, length, offset, scale: `(...,)` the token attributes.
    Returns:
        `(..., len(ATTRIBUTES))` value indices, in the order of `ATTRIBUTES` and of each attribute's values.
    """

    def bucket(values, thresholds):  # index of the first threshold above the value
        return torch.bucketize(values.contiguous(), torch.tensor(thresholds, dtype=values.dtype, device=values.device),
                               right=True)

    return torch.stack(
        [
            code_shape_labels[code_indices],
            bucket(start + length / 2, POSITION_THRESHOLDS),
            bucket(length, DURATION_THRESHOLDS),
            bucket(scale, AMPLITUDE_THRESHOLDS),
            bucket(offset, LEVEL_THRESHOLDS),
        ],
        dim=-1,
    )



def intensity_labels(relative: torch.Tensor) -> torch.Tensor:
    """Intensity value of `relative_intensity` values: below -1 still, below +1 moderate, else vigorous."""
    return torch.bucketize(relative.contiguous(), torch.tensor([-1.0, 1.0], dtype=relative.dtype,
                                                                device=relative.device), right=True)


# rhythm (per channel): the autocorrelation of the channel (unbiased, over lags up to half the series) after its first
# zero crossing; its highest value r is the regularity and its lag the period. r >= 0.5 is a regular rhythm, r >= 0.25
# irregular, else (or with no zero crossing: a trend, or under two cycles) none. White noise gives r ~ 3/sqrt(length)
# (about 0.19 at 256 steps), a clean sine close to 1.
RHYTHM_THRESHOLDS = (0.25, 0.5)
RHYTHM_VALUES = tuple(PHRASE_BANK["rhythm"])  # regular, irregular, none


def autocorrelation(values: torch.Tensor) -> torch.Tensor:
    """`(..., length)` -> `(..., length // 2 + 1)` unbiased autocorrelation at lags 0 .. length // 2 (1 at lag 0; 0
    for a constant series), through the FFT."""
    length = values.shape[-1]
    centred = values.double() - values.double().mean(dim=-1, keepdim=True)
    spectrum = torch.fft.rfft(centred, n=2 * length)
    covariance = torch.fft.irfft(spectrum.abs() ** 2, n=2 * length)[..., : length // 2 + 1]
    covariance = covariance / torch.arange(length, length - length // 2 - 1, -1, dtype=torch.float64,
                                           device=values.device)
    return (covariance / covariance[..., :1].clamp(min=1e-12)).to(values.dtype)


def rhythm_features(values: torch.Tensor):
    """A channel's rhythm: `(regularity, cycles)`, each `(...)`, from its autocorrelation (see `RHYTHM_THRESHOLDS`);
    `cycles` is the series length over the period (0 where there is no zero crossing, and then regularity is 0)."""
    correlation = autocorrelation(values)
    lags = torch.arange(correlation.shape[-1], device=values.device)
    negative = correlation < 0
    crossed = negative.any(dim=-1)
    first = torch.where(crossed, negative.float().argmax(dim=-1), correlation.shape[-1])
    after = torch.where(lags >= first.unsqueeze(-1), correlation, torch.full_like(correlation, -2.0))
    regularity, period = after.max(dim=-1)
    regularity = torch.where(crossed, regularity, torch.zeros_like(regularity))
    cycles = torch.where(crossed, values.shape[-1] / period.clamp(min=1).to(values.dtype),
                         torch.zeros_like(regularity))
    return regularity, cycles


def rhythm_labels(regularity: torch.Tensor) -> torch.Tensor:
    """Rhythm value of regularities: >= 0.5 regular, >= 0.25 irregular, else none (indices into `RHYTHM_VALUES`)."""
    return 2 - torch.bucketize(regularity.contiguous(), torch.tensor(RHYTHM_THRESHOLDS, dtype=regularity.dtype,
                                                                     device=regularity.device), right=True)


def rhythm_words(regularity: float, cycles: float, window_seconds: float | None = None) -> str:
    """A channel's rhythm in words, with its cycles per window and, when the window's duration is known, in Hz."""
    value = RHYTHM_VALUES[int(rhythm_labels(torch.tensor(float(regularity))))]
    phrase = PHRASE_BANK["rhythm"][value][0]
    return phrase if value == "none" else phrase + rhythm_numbers(float(cycles), window_seconds)


def rhythm_numbers(cycles: float, window_seconds: float | None = None) -> str:
    """" (8.0 cycles per window, 2 Hz)": a rhythm's cycles per window and, with the window's duration, its frequency;
    empty without cycles."""
    if cycles <= 0:
        return ""
    rate = f", {cycles / window_seconds:.2g} Hz" if window_seconds else ""
    return f" ({cycles:.1f} cycles per window{rate})"
