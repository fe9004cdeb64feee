"""Multimodal VQShape: the codebook and the shape tokens aligned with a frozen sentence-transformer's text embeddings.

Codes get words without human captions. Rules turn each token's decoded attributes into one value per attribute
(`text_captions`); a frozen sentence-transformer embeds the finite phrase bank once, stored with the model
(`text_bank`). Projection heads map codebook entries and token attributes into the text space, and a symmetric
multi-positive InfoNCE with a learnable, clamped logit scale aligns them with the phrases (`text_loss`). Intensity is
a channel-level attribute: a channel's scale (which instance normalisation hides from the tokens) against its domain's
calibration (`text_calibration`). What the aligned model offers its users is in `text_interpretation`.

This file: the heads, the embeddings of codes, tokens, channels and series, `forward` and `encode`.
"""

import math
import os
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_vqshape_text import ATTRIBUTES, VQShapeTextConfig
from .modeling_vqshape import (
    VQShapeForPreTraining,
    VQShapeModel,
    VQShapeModelOutput,
    _all_reduce_sum,
    _mlp,
    code_histogram,
)
from .saving_vqshape import CompletedFolderMixin
from .text_attributes import TOKEN_MEAN_MOMENTUM, TextAttributesMixin
from .text_bank import TextBankMixin, VQShapeTextBank, load_text_encoder
from .text_calibration import calibrations_by_source, intensity_thresholds, relative_intensity
from .text_captions import SHAPE_VALUES, caption_labels, intensity_labels, shape_labels
from .text_interpretation import (
    HUBNESS_METHODS,
    TextInterpretationMixin,
    VQShapeZeroShotOutput,
    hubness_corrected_logits,
)
from .text_loss import multi_positive_info_nce, text_alignment_loss

# the loss terms, each weighted by `config.<term>_weight`
LOSS_TERMS = ("code_text", "token_text", "intensity_text", "rhythm_text", "channel_text", "class_text")

# the projection heads into the text space
_projection = partial(_mlp, activation=nn.GELU)


def token_inputs(token_features: torch.Tensor, code_dim: int, code_mean=0.0, code_std=1.0) -> torch.Tensor:
    """Token features [code, t, l, mu, sigma] -> projection inputs [code, t, t + l/2, l, log l, mu, log sigma]: logs,
    because lengths and scales span orders of magnitude; the code standardised by `code_mean` and `code_std`.
    `(..., code_dim + 4)` -> `(..., code_dim + 6)`."""
    code, start, length, offset, scale = token_features.split([code_dim, 1, 1, 1, 1], dim=-1)
    return torch.cat([(code - code_mean) / code_std, start, start + length / 2, length, length.clamp(min=1e-6).log(),
                      offset, (scale + 1e-4).log()], dim=-1)


# Outputs

@dataclass
class VQShapeForTextAlignmentOutput(ModelOutput):
    """
    Args:
        loss: weighted sum of the terms below.
        code_text_loss: codebook entry <-> its shape phrases (a).
        token_text_loss: token <-> each attribute's phrases, mean over attributes (b).
        intensity_text_loss: channel intensity <-> intensity phrases, over the channels with a known calibration.
        rhythm_text_loss: channel rhythm <-> rhythm phrases (when the bank has them).
        channel_text_loss: series <-> "the <channel> moves most" phrases, for series of the named channels with a
            known calibration.
        class_text_loss: pooled series <-> class prompts (c), when labels are given (else None).
        pretraining_loss: VQShape's pre-training loss, in joint training only.
        logit_scale: the clamped logit scale in use.
        series_embeddings: `(batch_size, text_dim)` pooled series embeddings in the text space.
        token_embeddings: `(batch_size, num_channels, num_tokens, num_attributes, text_dim)`.
        caption_labels: `(batch_size, num_channels, num_tokens, num_attributes)` rule values of the tokens.
    """

    loss: torch.FloatTensor | None = None
    code_text_loss: torch.FloatTensor | None = None
    token_text_loss: torch.FloatTensor | None = None
    intensity_text_loss: torch.FloatTensor | None = None
    rhythm_text_loss: torch.FloatTensor | None = None
    channel_text_loss: torch.FloatTensor | None = None
    class_text_loss: torch.FloatTensor | None = None
    pretraining_loss: torch.FloatTensor | None = None
    logit_scale: torch.FloatTensor | None = None
    series_embeddings: torch.FloatTensor | None = None
    token_embeddings: torch.FloatTensor | None = None
    caption_labels: torch.LongTensor | None = None


@dataclass
class VQShapeTextEncoding(ModelOutput):
    """
    Args:
        outputs: the backbone's `VQShapeModelOutput` (tokens, codes, scales).
        token_embeddings: `(batch_size, num_channels, num_tokens, num_attributes, text_dim)`.
        token_vectors: `(batch_size, num_channels, num_tokens, text_dim)`, centred, with their channel's attributes.
        series_embeddings: `(batch_size, text_dim)`.
        intensity: `(batch_size, num_channels)` intensity value indices (-1: no calibration for the channel), and
        intensity_embeddings: `(batch_size, num_channels, text_dim)`; both None without a calibration.
        rhythm, rhythm_embeddings: the same for rhythm (regular, irregular, none), and regularity and cycles
            `(batch_size, num_channels)` its rule inputs; None when the bank has no rhythm phrases.
        channel: `(batch_size,)` the index of the channel that moves most (-1: unknown), and channel_embeddings
            `(batch_size, text_dim)`; None without channel names or a calibration.
    """

    outputs: VQShapeModelOutput | None = None
    token_embeddings: torch.FloatTensor | None = None
    token_vectors: torch.FloatTensor | None = None
    series_embeddings: torch.FloatTensor | None = None
    intensity: torch.LongTensor | None = None
    intensity_embeddings: torch.FloatTensor | None = None
    rhythm: torch.LongTensor | None = None
    rhythm_embeddings: torch.FloatTensor | None = None
    regularity: torch.FloatTensor | None = None
    cycles: torch.FloatTensor | None = None
    channel: torch.LongTensor | None = None
    channel_embeddings: torch.FloatTensor | None = None


TEXT_AUTO_MAP = {
    "AutoConfig": "configuration_vqshape_text.VQShapeTextConfig",
    "AutoModel": "modeling_vqshape_text.VQShapeForTextAlignment",
}


class VQShapeTextPreTrainedModel(CompletedFolderMixin, PreTrainedModel):
    config_class = VQShapeTextConfig
    saved_auto_map = TEXT_AUTO_MAP
    base_model_prefix = "text_alignment"
    main_input_name = "past_values"
    input_modalities = ("time", "text")
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        # The backbone (a PreTrainedModel) is initialised by its own _init_weights. Each branch names the module that
        # owns the tensor directly (remote code skips modules without their own parameters); guarded init functions
        # keep what from_pretrained loaded.
        if isinstance(module, VQShapeTextBank):
            init.zeros_(module.phrase_embeddings)
            init.zeros_(module.text_mean)
            init.zeros_(module.class_embeddings)
        elif isinstance(module, VQShapeForTextAlignment):
            init.constant_(module.logit_scale, math.log(self.config.logit_scale_init))
            init.zeros_(module.code_counts)
            init.zeros_(module.token_vector_mean)
            for name in ("intensity", "rhythm", "channel"):
                if hasattr(module, f"{name}_vector_mean"):
                    init.zeros_(getattr(module, f"{name}_vector_mean"))
        elif isinstance(module, nn.Linear):
            module.reset_parameters()


class VQShapeForTextAlignment(TextInterpretationMixin, TextAttributesMixin, TextBankMixin, VQShapeTextPreTrainedModel):
    """VQShape whose codes and tokens live in a sentence-transformer's text space.

    Build one from a pre-trained VQShape with `from_vqshape` (embeds the phrase bank once), train it with `forward`'s
    loss, then use `describe_codes`, `retrieve_codes`, `zero_shot_classify`, `explain` and `search`. The stored
    classes (`set_class_names`) and the intensity calibration (`calibrate_intensity`) are state of the model, which
    `save_pretrained` writes into the saved config.
    """

    def __init__(self, config: VQShapeTextConfig):
        super().__init__(config)
        vqshape_config = config.vqshape_config
        self.backbone = VQShapeForPreTraining(vqshape_config)
        self.text_bank = VQShapeTextBank(config)
        self.code_projection = _projection(vqshape_config.code_dim, config.text_dim, config.projection_hidden_dim)
        self.token_projection = _projection(vqshape_config.code_dim + 6, len(ATTRIBUTES) * config.text_dim,
                                     config.projection_hidden_dim)
        if self.has_intensity:  # relative log(scale) of a channel -> its text-space intensity vector
            self.intensity_projection = _projection(1, config.text_dim, config.projection_hidden_dim)
        if self.has_rhythm:  # a channel's regularity and log(1 + cycles) -> its rhythm vector
            self.rhythm_projection = _projection(2, config.text_dim, config.projection_hidden_dim)
        if self.has_channel:  # every channel's relative intensity -> the series' "which channel moves most" vector
            self.channel_projection = _projection(len(config.channel_names), config.text_dim,
                                                  config.projection_hidden_dim)
        self.logit_scale = nn.Parameter(torch.empty(()))  # log of the scale, as in CLIP
        # how often each code was seen in training batches, for describe_codes
        self.register_buffer("code_counts", torch.zeros(vqshape_config.num_codes, dtype=torch.long))
        # running mean of the token vectors, removed before pooling (as the bank mean is removed from text)
        self.register_buffer("token_vector_mean", torch.zeros(config.text_dim))
        if self.has_intensity:
            # running mean of the calibrated channels' intensity vectors, removed from them alike: channels without a
            # calibration add nothing, so a domain where all are calibrated is not pulled towards the mean intensity
            self.register_buffer("intensity_vector_mean", torch.zeros(config.text_dim))
        for name in ("rhythm", "channel"):  # the same for the other channel- and series-level attributes
            if getattr(self, f"has_{name}"):
                self.register_buffer(f"{name}_vector_mean", torch.zeros(config.text_dim))
        self.intensity_thresholds = config.intensity_thresholds  # the calibration in use (a property, checked)
        self.post_init()
        if config.freeze_backbone:
            self.backbone.requires_grad_(False)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save with the model's state (stored classes, intensity calibration) written into the saved config; the
        folder is completed (`auto_map`, feature extractor) as every VQShape model's is."""
        self.config.update(self.state_dict_for_config())
        super().save_pretrained(save_directory, *args, **kwargs)

    def saved_input_length(self) -> int:
        return self.config.vqshape_config.input_length

    def state_dict_for_config(self) -> dict:
        """The model's state that its config carries when saved: the stored classes and the intensity calibration."""
        return {"class_names": list(self.text_bank.class_names),
                "class_descriptions": [list(texts) for texts in self.text_bank.class_descriptions],
                "class_templates": list(self.text_bank.class_templates),
                "intensity_thresholds": self.intensity_thresholds}

    # ---- construction and the text side -----------------------------------------------------------------------------

    @classmethod
    def from_vqshape(cls, vqshape, text_encoder=None, text_model_name_or_path=None, **config_kwargs):
        """A new alignment model on a pre-trained VQShape, with the phrase bank embedded.

        Args:
            vqshape: a `VQShapeModel`, `VQShapeForPreTraining` or a folder / Hub id of one.
            text_encoder: a loaded `SentenceTransformer`; loaded from `text_model_name_or_path` when not given.
            text_model_name_or_path: the name stored with the bank (default all-MiniLM-L6-v2).
        """
        if isinstance(vqshape, (str, os.PathLike)):
            vqshape = VQShapeForPreTraining.from_pretrained(vqshape)
        if text_model_name_or_path is not None:
            config_kwargs["text_model_name_or_path"] = str(text_model_name_or_path)
        config = VQShapeTextConfig(vqshape_config=vqshape.config.to_dict(), **config_kwargs)
        model = cls(config)
        target = model.backbone.vqshape if isinstance(vqshape, VQShapeModel) else model.backbone
        target.load_state_dict(vqshape.state_dict())
        if text_encoder is not None:
            model.set_text_encoder(text_encoder)
        model.build_text_bank()
        return model

    # ---- the time-series side ----------------------------------------------------------------------------------------

    @property
    def backbone_frozen(self) -> bool:
        return self.config.freeze_backbone

    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone_frozen:  # also after from_pretrained, which loads the backbone's parameters trainable
            self.backbone.requires_grad_(False)
            self.backbone.eval()  # frozen features stay deterministic
        return self

    def logit_scale_value(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(self.config.logit_scale_max)).exp()

    def code_shape_labels(self) -> torch.Tensor:
        """`(num_codes,)` rule shape value of each codebook entry's decoded shape."""
        with torch.no_grad():
            shapes = self.backbone.vqshape.shape_decoder(self.backbone.vqshape.codebook.codes[None])[0]
            return shape_labels(shapes)

    def code_statistics(self):
        """`(mean, std)` of the codebook entries per dimension (not differentiated), or `(0, 1)` when the config
        keeps codes unstandardised."""
        if not self.config.standardize_codes:
            return 0.0, 1.0
        codebook = self.backbone.vqshape.codebook.codes.detach()
        return codebook.mean(dim=0), codebook.std(dim=0) + 1e-6

    def code_embeddings(self) -> torch.Tensor:
        """`(num_codes, text_dim)` unit-norm text-space embeddings of the codebook entries."""
        mean, std = self.code_statistics()
        return F.normalize(self.code_projection((self.backbone.vqshape.codebook.codes - mean) / std), dim=-1)

    def token_embeddings(self, token_features: torch.Tensor) -> torch.Tensor:
        """`(..., code_dim + 4)` token features -> `(..., num_attributes, text_dim)`, unit-norm per attribute."""
        projected = self.token_projection(token_inputs(token_features, self.config.vqshape_config.code_dim,
                                                       *self.code_statistics()))
        # "... (attributes dim) -> ... attributes dim"
        return F.normalize(projected.reshape(*projected.shape[:-1], len(ATTRIBUTES), self.config.text_dim), dim=-1)

    def token_vectors(self, token_embeddings: torch.Tensor, attribute_vectors=()) -> torch.Tensor:
        """A token's single text-space vector: the sum of its attribute embeddings (a caption's bag of phrases), less
        the mean token vector (the batch's in training, the running mean otherwise), so that what all series share
        does not decide their class; plus its channel's centred attribute vectors (`attribute_vectors`).
        `(batch_size, num_channels, num_tokens, num_attributes, text_dim)` -> `(..., num_tokens, text_dim)`."""
        vectors = token_embeddings.sum(dim=-2)
        if self.training:
            mean = vectors.detach().reshape(-1, vectors.shape[-1]).mean(dim=0)
            self.token_vector_mean.lerp_(mean.to(self.token_vector_mean.dtype), TOKEN_MEAN_MOMENTUM)
        else:
            mean = self.token_vector_mean
        vectors = vectors - mean.to(vectors.dtype)
        for attribute_vectors_of_channels in attribute_vectors:
            vectors = vectors + attribute_vectors_of_channels.unsqueeze(-2)
        return vectors

    def series_embeddings(self, token_vectors: torch.Tensor) -> torch.Tensor:
        """`(batch_size, num_channels, num_tokens, text_dim)` token vectors -> `(batch_size, text_dim)`: their mean over
        channels and tokens, unit-norm. Linear in the tokens, so a class score splits exactly into per-token
        contributions (`explain`)."""
        return F.normalize(token_vectors.mean(dim=(1, 2)), dim=-1)

    def _tokenize(self, past_values: torch.Tensor):
        """Backbone outputs: frozen -> VQShapeModel without gradients; joint -> the pre-training forward (its loss)."""
        if self.backbone_frozen or not self.training:
            with torch.no_grad():
                return self.backbone.vqshape(past_values, return_dict=True), None
        outputs = self.backbone(past_values, return_dict=True)
        return outputs, outputs.loss

    def forward(
        self,
        past_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        label_embeddings: torch.Tensor | None = None,
        intensity_thresholds: torch.Tensor | None = None,
        with_code_term: bool = True,
        return_dict: bool | None = None,
        **kwargs,
    ) -> VQShapeForTextAlignmentOutput | tuple:
        r"""
        Args:
            past_values: `(batch_size, sequence_length)` or `(batch_size, sequence_length, num_channels)`.
            labels: `(batch_size,)` class indices into `label_embeddings` (-100: unlabelled); gives the class loss.
            label_embeddings: `(num_labels, text_dim)` class prompt embeddings (`embed_class_prompts`); the stored
                class bank when not given.
            intensity_thresholds: `(batch_size, 2)` or `(batch_size, num_channels, 2)` each row's intensity
                calibration (its domain's log-scale terciles; NaN: unknown, e.g. a standardised source); the model's
                calibration when not given. Rows with a calibration add the intensity loss and their intensity to the
                series embedding.
            with_code_term: whether `loss` counts the codebook entries <-> shape phrases term (`code_text_loss`, still
                returned). That term depends on the codebook alone, not on the batch: pass `False` for a second batch
                of the same training step, which would otherwise count it twice.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self.text_bank.require_built()
        config = self.config
        outputs, pretraining_loss = self._tokenize(past_values)
        code_dim = config.vqshape_config.code_dim
        start, length, offset, scale = outputs.token_features[..., code_dim:].detach().unbind(dim=-1)
        code_labels = self.code_shape_labels()
        labels_per_token = caption_labels(code_labels, outputs.code_indices, start, length, offset, scale)
        token_embeddings = self.token_embeddings(outputs.token_features)
        rhythm = self.channel_rhythm(past_values) if self.has_rhythm else None
        attributes = self.attribute_embeddings(outputs.scale, rhythm, intensity_thresholds)
        token_vectors = self.token_vectors(token_embeddings, self.attribute_vectors(attributes))
        series_embeddings = self.series_embeddings(token_vectors)
        logit_scale = self.logit_scale_value()
        if self.training:
            # summed over the ranks of a distributed run, so that every rank (and the saved model) counts all tokens
            self.code_counts += _all_reduce_sum(code_histogram(outputs.code_indices.reshape(-1),
                                                               self.code_counts.shape[0]))
        losses = text_alignment_loss(
            self.text_bank.phrase_embeddings, self.text_bank.phrases, logit_scale,
            {name: getattr(config, f"{name}_weight") if with_code_term or name != "code_text" else 0.0
             for name in LOSS_TERMS},
            self.code_embeddings(), code_labels, token_embeddings, labels_per_token,
            {name: (embeddings[values >= 0], values[values >= 0]) for name, (embeddings, values) in attributes.items()},
            series_embeddings, labels,
            self.text_bank.class_embeddings if label_embeddings is None else label_embeddings)
        loss = losses["loss"]
        if pretraining_loss is not None:
            loss = loss + config.pretraining_weight * pretraining_loss
        output = VQShapeForTextAlignmentOutput(
            loss=loss,
            code_text_loss=losses["code_text_loss"],
            token_text_loss=losses["token_text_loss"],
            intensity_text_loss=losses.get("intensity_text_loss"),
            rhythm_text_loss=losses.get("rhythm_text_loss"),
            channel_text_loss=losses.get("channel_text_loss"),
            class_text_loss=losses["class_text_loss"],
            pretraining_loss=pretraining_loss,
            logit_scale=logit_scale.detach(),
            series_embeddings=series_embeddings,
            token_embeddings=token_embeddings,
            caption_labels=labels_per_token,
        )
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def encode(self, past_values: torch.Tensor,
               intensity_thresholds: torch.Tensor | None = None) -> VQShapeTextEncoding:
        """Backbone outputs plus text-space embeddings, in eval mode (see `VQShapeTextEncoding`); with an intensity
        calibration (`forward`'s argument, else the model's) also each channel's intensity."""
        was_training = self.training
        self.eval()
        try:
            outputs = self.backbone.vqshape(past_values, return_dict=True)
            token_embeddings = self.token_embeddings(outputs.token_features)
            rhythm = self.channel_rhythm(past_values) if self.has_rhythm else None
            attributes = self.attribute_embeddings(outputs.scale, rhythm, intensity_thresholds)
            token_vectors = self.token_vectors(token_embeddings, self.attribute_vectors(attributes))
            regularity, cycles = rhythm if rhythm is not None else (None, None)
            return VQShapeTextEncoding(
                outputs=outputs, token_embeddings=token_embeddings, token_vectors=token_vectors,
                series_embeddings=self.series_embeddings(token_vectors), regularity=regularity, cycles=cycles,
                **{key: value for name, (embeddings, values) in attributes.items()
                   for key, value in ((name, values), (f"{name}_embeddings", embeddings))})
        finally:
            self.train(was_training)


__all__ = [
    "VQShapeTextPreTrainedModel",
    "VQShapeForTextAlignment",
    "VQShapeForTextAlignmentOutput",
    "VQShapeTextEncoding",
    "VQShapeZeroShotOutput",
    "VQShapeTextConfig",
    "caption_labels",
    "intensity_labels",
    "intensity_thresholds",
    "relative_intensity",
    "calibrations_by_source",
    "shape_labels",
    "multi_positive_info_nce",
    "text_alignment_loss",
    "load_text_encoder",
    "hubness_corrected_logits",
    "HUBNESS_METHODS",
    "SHAPE_VALUES",
]
