"""VQShapeFeatureExtractor: raw series of any length, with gaps, to VQShape's `past_values`."""

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BatchFeature, FeatureExtractionMixin


def fill_gaps(values: np.ndarray, name: str = "series") -> np.ndarray:
    """Linearly interpolate interior NaNs of a 1-D series and extend the first/last valid value over its edges."""
    missing = np.isnan(values)
    if not missing.any():
        return values
    if missing.all():
        raise ValueError(f"{name} has no valid value (all NaN); drop it before preprocessing.")
    positions = np.arange(values.shape[0])
    filled = values.copy()
    filled[missing] = np.interp(positions[missing], positions[~missing], values[~missing])
    return filled


def resample(values: np.ndarray, length: int) -> np.ndarray:
    """Resample the last axis of `(channels, time)` linearly to `length` samples, as the original data loaders do
    (`torch.nn.functional.interpolate`, mode 'linear', align_corners False)."""
    if values.shape[-1] == length:
        return values
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None]
    return F.interpolate(tensor, size=length, mode="linear").numpy()[0]


def resample_series(series, length: int) -> np.ndarray:
    """`(channels, time)` arrays of any lengths (NaN gaps allowed), or a `(batch, channels, time)` array ->
    `(num_series, channels, length)` float32: gaps filled and every channel resampled as `VQShapeFeatureExtractor`
    does, kept channels-first (the feature extractor's output is the model's `(batch, time, channels)`)."""
    series = list(series) if isinstance(series, (list, tuple)) else series
    past_values = VQShapeFeatureExtractor(input_length=length)(series, return_tensors="np")["past_values"]
    return past_values.transpose(0, 2, 1)  # "batch time channels -> batch channels time"


def check_sampling_rate(sampling_rate):
    """A positive, finite number of samples per second (as float), or None."""
    if sampling_rate is None:
        return None
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, float, np.number)) \
            or not np.isfinite(sampling_rate) or sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be a positive number of samples per second, got {sampling_rate!r}.")
    return float(sampling_rate)


class VQShapeFeatureExtractor(FeatureExtractionMixin):
    r"""
    Prepares raw series for VQShape: fills interior gaps, resamples every channel linearly to `input_length`, and
    lays the result out as `past_values`.

    Accepted inputs (numpy arrays, torch tensors or nested lists):
        - one series `(time,)` -> `past_values` `(1, input_length)`;
        - a batch `(batch, time)` -> `(batch, input_length)`;
        - a batch `(batch, channels, time)` -> `(batch, input_length, channels)`;
        - a list of series of different lengths, each `(time_i,)` or `(channels, time_i)`.

    Args:
        input_length (`int`, defaults to 512): the model's `config.input_length`.
        sampling_rate (`float`, *optional*): the raw series' samples per second (e.g. 100 for GENEActiv), or per
            call; when known the output also holds `window_seconds`, each series' duration, so that rhythms can be
            said in Hz.
    """

    model_input_names = ["past_values"]

    def __init__(self, input_length: int = 512, sampling_rate: float | None = None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(input_length, bool) or not isinstance(input_length, int) or input_length < 2:
            raise ValueError(f"input_length must be an integer >= 2, got {input_length!r}.")
        self.input_length = input_length
        self.sampling_rate = check_sampling_rate(sampling_rate)

    def _series_list(self, series):
        """Split the input into a list of `(channels, time)` float64 arrays and say whether it had channels."""
        if isinstance(series, torch.Tensor):
            series = series.detach().cpu().numpy()
        if isinstance(series, np.ndarray) and series.dtype != object:
            if series.ndim == 1:
                return [series[None]], False
            if series.ndim == 2:
                return [row[None] for row in series], False
            if series.ndim == 3:
                return list(series), True
            raise ValueError(
                f"series must be (time,), (batch, time) or (batch, channels, time), got shape {series.shape}."
            )
        if isinstance(series, (list, tuple)):
            if len(series) == 0:
                raise ValueError("series is empty; pass at least one series.")
            if all(np.isscalar(value) for value in series):
                return [np.asarray(series)[None]], False
            items = [np.asarray(item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else item)
                     for item in series]
            ranks = {item.ndim for item in items}
            if ranks == {1}:
                return [item[None] for item in items], False
            if ranks == {2}:
                return items, True
            raise ValueError(
                f"a list of series must hold only 1-D (time,) or only 2-D (channels, time) arrays, got ranks "
                f"{sorted(ranks)}."
            )
        raise ValueError(f"series must be a numpy array, a torch tensor or a list of series, got "
                         f"{type(series).__name__}.")

    def __call__(self, series, return_tensors: str | None = "pt", sampling_rate: float | None = None,
                 **kwargs) -> BatchFeature:
        """
        Args:
            sampling_rate: the series' samples per second, for this call (else the extractor's).
        Returns:
            `BatchFeature` with `past_values` `(batch, input_length)` or `(batch, input_length, channels)`, and with a
            sampling rate `window_seconds` `(batch,)`, each series' duration before resampling.
        """
        sampling_rate = check_sampling_rate(sampling_rate) or self.sampling_rate
        items, has_channels = self._series_list(series)
        if len(items) == 0:
            raise ValueError("series is an empty batch; pass at least one series.")
        num_channels = items[0].shape[0]
        batch = np.empty((len(items), num_channels, self.input_length), dtype=np.float32)
        for index, item in enumerate(items):
            if item.shape[0] != num_channels:
                raise ValueError(
                    f"series {index} has {item.shape[0]} channels but series 0 has {num_channels}; "
                    "all series of a batch need the same channels."
                )
            if not np.issubdtype(item.dtype, np.number):
                raise ValueError(f"series {index} is not numeric (dtype {item.dtype}).")
            item = item.astype(np.float64)
            if np.isinf(item).any():
                raise ValueError(f"series {index} contains inf; replace it with NaN or a finite value.")
            if item.shape[-1] < 2:
                raise ValueError(
                    f"series {index} has {item.shape[-1]} time step(s); at least 2 are needed to resample it."
                )
            filled = np.stack(
                [fill_gaps(channel, f"series {index} channel {c}") for c, channel in enumerate(item)]
            )
            batch[index] = resample(filled, self.input_length)
        # "batch channels time -> batch time channels"; univariate input keeps (batch, time)
        past_values = batch.transpose(0, 2, 1) if has_channels else batch[:, 0]
        features = {"past_values": past_values}
        if sampling_rate is not None:
            features["window_seconds"] = np.array([item.shape[-1] / sampling_rate for item in items], np.float32)
        return BatchFeature(features, tensor_type=return_tensors)


__all__ = ["VQShapeFeatureExtractor", "resample_series"]
