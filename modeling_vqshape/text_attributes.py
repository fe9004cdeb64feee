"""The channel- and series-level attributes of the multimodal VQShape: each channel's intensity (its scale, which
instance normalisation hides from the tokens, against its domain's calibration), each channel's rhythm, and which
named channel moves most. `VQShapeForTextAlignment` embeds them next to its tokens (`TextAttributesMixin`)."""

import math

import torch
import torch.nn.functional as F

from .configuration_vqshape_text import check_calibration
from .modeling_vqshape import instance_normalize
from .text_calibration import channel_calibration, relative_intensity, resolve_calibration
from .text_captions import intensity_labels, rhythm_features, rhythm_labels

# momentum of the running means of token and attribute vectors (BatchNorm's default)
TOKEN_MEAN_MOMENTUM = 0.1


class TextAttributesMixin:
    """For `VQShapeForTextAlignment`: the attributes its bank has (`has_intensity`, `has_rhythm`, `has_channel`), the
    intensity calibration (`intensity_thresholds`, `calibrate_intensity`), and their embeddings and vectors. Uses the
    model's `backbone`, `config`, `text_bank`, projections and running means."""

    @property
    def intensity_thresholds(self) -> list | None:
        """The intensity calibration in use: `[low, high]` log-scale pairs, one per channel or one for all, or None."""
        return self._intensity_thresholds

    @intensity_thresholds.setter
    def intensity_thresholds(self, thresholds):
        self.__dict__["_intensity_thresholds"] = check_calibration(thresholds)


    # ---- intensity ---------------------------------------------------------------------------------------------------

    @property
    def has_intensity(self) -> bool:
        """Whether the bank has intensity phrases (models saved before the attribute existed have none)."""
        return "intensity" in self.config.phrase_bank

    def _require_intensity(self):
        if not self.has_intensity:
            raise ValueError("This model's phrase bank has no intensity phrases (it was built before the attribute "
                             "existed); rebuild it with VQShapeForTextAlignment.from_vqshape(...) to use intensity.")

    @torch.no_grad()
    def calibrate_intensity(self, past_values: torch.Tensor, per_channel: bool = True) -> list:
        """Calibrate the intensity attribute on unlabelled series of a domain (e.g. a dataset's training split): the
        terciles of each channel's log(scale) (or of all channels together with `per_channel=False`) become the
        model's `intensity_thresholds`, saved with it. From then on, series embeddings, `zero_shot_classify` and
        `explain` include each channel's intensity (still, moderate, vigorous) relative to this domain.

        Args:
            past_values: raw series in their own units (not standardised), `(batch_size, sequence_length)` or
                `(batch_size, sequence_length, num_channels)`.
        Returns:
            the thresholds, one `[low, high]` pair per channel (one pair with `per_channel=False`).
        """
        self._require_intensity()
        scale = self.channel_scales(past_values)
        if self.has_channel and (scale.shape[1] != len(self.config.channel_names) or not per_channel):
            raise ValueError(f"The series have {scale.shape[1]} channel(s), but this model names "
                             f"{len(self.config.channel_names)} ({self.config.channel_names}) and compares them, each "
                             f"against its own calibration: calibrate on series of those channels, in that order, "
                             f"with per_channel=True.")
        self.intensity_thresholds = channel_calibration(scale, per_channel)
        return self.intensity_thresholds

    def channel_scales(self, past_values: torch.Tensor) -> torch.Tensor:
        """`(batch_size, num_channels)`: each channel's standard deviation, as VQShape's instance normalisation computes
        it (the `scale` its heads return), without running the model."""
        series, batch_size, num_channels = self.backbone.vqshape._flatten_channels(past_values)
        return instance_normalize(series.detach())[2].reshape(batch_size, num_channels)

    def _intensity_calibration(self, intensity_thresholds, batch_size: int, num_channels: int):
        """`(batch_size, num_channels, 2)` thresholds: per row from the argument, else the model's calibration; None
        when neither is given (see `text_calibration.resolve_calibration`)."""
        if not self.has_intensity:
            if intensity_thresholds is not None:
                raise ValueError("intensity_thresholds were given, but this model's phrase bank has no intensity "
                                 "phrases (it was built before the attribute existed); rebuild it with "
                                 "VQShapeForTextAlignment.from_vqshape(...) to use intensity.")
            return None
        return resolve_calibration(intensity_thresholds, self.intensity_thresholds, batch_size, num_channels,
                                   self.text_bank.text_mean.device)

    # ---- rhythm and which channel moves most -----------------------------------------------------------------------

    @property
    def has_rhythm(self) -> bool:
        """Whether the bank has rhythm phrases (models saved before the attribute existed have none)."""
        return "rhythm" in self.config.phrase_bank

    @property
    def has_channel(self) -> bool:
        """Whether the model names its channels (`config.channel_names`) and says which one moves most."""
        return bool(self.config.channel_names) and "channel" in self.config.phrase_bank

    def channel_rhythm(self, past_values: torch.Tensor):
        """`(regularity, cycles)`, each `(batch_size, num_channels)`: each channel's rhythm from its autocorrelation
        (`text_captions.rhythm_features`)."""
        series, batch_size, num_channels = self.backbone.vqshape._flatten_channels(past_values)
        regularity, cycles = rhythm_features(series.detach().float())
        return regularity.reshape(batch_size, num_channels), cycles.reshape(batch_size, num_channels)

    def attribute_embeddings(self, scale: torch.Tensor, rhythm, intensity_thresholds) -> dict:
        """The channel- and series-level attributes of a batch, from the backbone's `scale` and the channels'
        `rhythm` (`channel_rhythm`; None when the bank has no rhythm phrases): `{name: (embeddings, values)}`, values
        being rule value indices, -1 where unknown. Intensity and rhythm: `(batch_size, num_channels, text_dim)` and
        `(batch_size, num_channels)`; intensity only with a calibration (NaN thresholds: unknown). Channel (which named
        channel moves most, by its relative intensity): `(batch_size, text_dim)` and `(batch_size,)`, for series of
        the named channels whose channels are all calibrated. Only the attributes the bank has."""
        batch_size, num_channels = scale.shape
        attributes = {}
        thresholds = self._intensity_calibration(intensity_thresholds, batch_size, num_channels)
        if thresholds is not None:
            relative = relative_intensity(scale.detach(), thresholds)
            known = torch.isfinite(relative)
            relative_inputs = torch.where(known, relative, torch.zeros_like(relative))
            attributes["intensity"] = (F.normalize(self.intensity_projection(relative_inputs.unsqueeze(-1)), dim=-1),
                                       torch.where(known, intensity_labels(relative_inputs), -1))
        if rhythm is not None:
            regularity, cycles = rhythm
            inputs = torch.stack([regularity, cycles.log1p()], dim=-1).to(scale.dtype)
            attributes["rhythm"] = (F.normalize(self.rhythm_projection(inputs), dim=-1), rhythm_labels(regularity))
        if thresholds is not None and self.has_channel and num_channels == len(self.config.channel_names) \
                and self._calibrated_per_channel(intensity_thresholds, num_channels):
            all_known = known.all(dim=-1)
            moves_most = torch.where(all_known, relative.nan_to_num(-math.inf).argmax(dim=-1), -1)
            attributes["channel"] = (F.normalize(self.channel_projection(relative_inputs), dim=-1), moves_most)
        return attributes

    def _calibrated_per_channel(self, intensity_thresholds, num_channels: int) -> bool:
        """Whether the calibration in use gives each channel its own pair (comparing channels needs it)."""
        if intensity_thresholds is not None:
            shape = torch.as_tensor(intensity_thresholds).shape
            return len(shape) == 3 and shape[1] == num_channels
        return len(self.intensity_thresholds) == num_channels

    def attribute_vectors(self, attributes: dict) -> list:
        """What each attribute adds to the token vectors of its channels (or of the whole series): its embedding less
        the mean embedding of that attribute (the batch's known ones in training, the running mean otherwise); zero
        where unknown. A list of `(batch_size, num_channels or 1, text_dim)`."""
        vectors = []
        for name, (embeddings, values) in attributes.items():
            known = values >= 0
            running_mean = getattr(self, f"{name}_vector_mean")
            mean = running_mean
            if self.training and known.any():
                mean = embeddings.detach()[known].mean(dim=0)
                running_mean.lerp_(mean.to(running_mean.dtype), TOKEN_MEAN_MOMENTUM)
            centred = embeddings - mean.to(embeddings.dtype)
            centred = torch.where(known.unsqueeze(-1), centred, torch.zeros_like(centred))
            vectors.append(centred if centred.dim() == 3 else centred.unsqueeze(1))
        return vectors


__all__ = ["TOKEN_MEAN_MOMENTUM", "TextAttributesMixin"]
