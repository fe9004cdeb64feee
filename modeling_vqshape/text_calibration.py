"""Intensity calibration: a channel's intensity is its scale (the standard deviation VQShape's instance normalisation
removes) against its domain's terciles, since what counts as vigorous depends on the units. Pure functions; the model
keeps the calibration it uses as state (`VQShapeForTextAlignment.intensity_thresholds`) and saves it in its config."""

import math

import torch

from .modeling_vqshape import instance_normalize

# intensity (series level, per channel): the channel's standard deviation before instance normalisation, on a log
# scale, against its domain's terciles (`calibrate_intensity`): below the first still, below the second moderate, else
# vigorous. A domain whose terciles are closer than MIN_INTENSITY_SPREAD (log units) has no usable scale: sets stored
# z-normalised measure 0.00-0.05 even after resampling (ACSF1), the bundled sets kept in their units 0.23-1.21.
INTENSITY_QUANTILES = (1 / 3, 2 / 3)
MIN_INTENSITY_SPREAD = 0.1


def intensity_thresholds(scale: torch.Tensor, quantiles=INTENSITY_QUANTILES):
    """The intensity calibration of a domain: the `quantiles` (terciles) of its channels' log(scale), `(2,)`; None when
    they are closer than `MIN_INTENSITY_SPREAD` (no usable spread, e.g. series stored already standardised)."""
    log_scale = scale.detach().reshape(-1).double().clamp(min=1e-12).log()
    thresholds = torch.quantile(log_scale, torch.tensor(quantiles, dtype=torch.float64, device=log_scale.device))
    return thresholds.float() if float(thresholds[1] - thresholds[0]) >= MIN_INTENSITY_SPREAD else None


def relative_intensity(scale: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """A channel's log(scale) against its domain's calibration, -1 at the first threshold and +1 at the second, so that
    the projection head sees the same unit-free number for every domain. `scale` `(...)`, `thresholds` `(..., 2)`
    broadcastable (NaN thresholds: unknown, NaN out)."""
    low, high = thresholds.to(scale).unbind(dim=-1)
    return (scale.clamp(min=1e-12).log() - (low + high) / 2) / ((high - low) / 2)


def calibrations_by_source(values: torch.Tensor, sources, calibrations: dict | None = None):
    """Intensity calibrations for training on several domains: `(num_rows, 2)`, for each univariate row the log-scale
    terciles of its source's rows (every source is its own domain), NaN for sources without usable scale (stored
    standardised). `values` `(num_rows, sequence_length)` in their own units; `calibrations` (source -> thresholds) is
    extended and returned, so that validation rows can use their source's training calibration."""
    calibrations = {} if calibrations is None else calibrations
    sources = [str(source) for source in sources]
    scale = instance_normalize(values.double())[2][:, 0] if len(values) else values.new_zeros(0)
    for source in sorted(set(sources)):
        if source not in calibrations:
            thresholds = intensity_thresholds(scale[torch.tensor([s == source for s in sources])])
            calibrations[source] = thresholds if thresholds is not None else torch.full((2,), math.nan)
    rows = [calibrations[source].to(values.device) for source in sources]
    return (torch.stack(rows) if rows else torch.zeros(0, 2, device=values.device)), calibrations


def channel_calibration(scale: torch.Tensor, per_channel: bool = True) -> list:
    """The calibration of a domain from its channels' scales `(num_series, num_channels)`: one `[low, high]` pair per
    channel (one for all channels with `per_channel=False`). Raises a `ValueError` when a group's scales hardly vary."""
    groups = [scale[:, channel] for channel in range(scale.shape[1])] if per_channel else [scale]
    pairs = [intensity_thresholds(group) for group in groups]
    flat = [channel for channel, pair in enumerate(pairs) if pair is None]
    if flat:
        raise ValueError(
            f"Cannot calibrate intensity: the scales of "
            f"{'channel(s) ' + str(flat) if per_channel else 'the series'} "
            f"hardly vary (log-scale terciles closer than {MIN_INTENSITY_SPREAD}); the series look standardised "
            f"already. Pass the raw series, in their own units, of at least a few dozen recordings."
        )
    return [pair.tolist() for pair in pairs]


def resolve_calibration(given, stored, batch_size: int, num_channels: int, device=None):
    """The calibration of a batch, `(batch_size, num_channels, 2)`: per row from `given` (`(batch_size, 2)` or
    `(batch_size, num_channels, 2)`, NaN: unknown), else the `stored` pairs (one per channel, or one for all); None
    when neither is given (the embeddings then carry no intensity)."""
    if given is not None:
        thresholds = torch.as_tensor(given, dtype=torch.float32, device=device)
        shape = tuple(thresholds.shape)
        thresholds = thresholds[:, None] if thresholds.dim() == 2 else thresholds
        where = "per row"
        if thresholds.dim() == 3 and thresholds.shape[-1] == 2 and not bool(
                (thresholds[..., 0] < thresholds[..., 1]).logical_or(thresholds.isnan().any(dim=-1)).all()):
            raise ValueError("Per-row intensity thresholds must be increasing [low, high] pairs (NaN for an "
                             "unknown calibration); use calibrations_by_source(...) or calibrate_intensity(...).")
    elif stored is not None:
        thresholds = torch.tensor(stored, dtype=torch.float32, device=device)[None]
        shape = tuple(thresholds.shape[1:])
        where = "stored"
    else:
        return None
    if thresholds.dim() != 3 or thresholds.shape[-1] != 2 or thresholds.shape[0] not in (1, batch_size) \
            or thresholds.shape[1] not in (1, num_channels):
        raise ValueError(
            f"The {where} intensity thresholds have shape {shape}, which does not fit "
            f"{batch_size} series of {num_channels} channel(s): calibrate_intensity(...) on series with the same "
            f"channels, or pass per-row thresholds of shape (batch_size, 2) or (batch_size, num_channels, 2)."
        )
    return thresholds.expand(batch_size, num_channels, 2)


def per_channel_calibrations(past_values: torch.Tensor) -> torch.Tensor:
    """A multichannel domain's calibration for every row: `(num_series, sequence_length, num_channels)` series in their
    own units -> `(num_series, num_channels, 2)`, each channel's log-scale terciles (NaN where a channel has no usable
    spread)."""
    scale = instance_normalize(past_values.double().transpose(1, 2))[2][..., 0]  # (num_series, num_channels)
    pairs = [intensity_thresholds(scale[:, channel]) for channel in range(scale.shape[1])]
    pairs = torch.stack([pair if pair is not None else torch.full((2,), math.nan) for pair in pairs])
    return pairs[None].expand(len(past_values), -1, -1).float()
