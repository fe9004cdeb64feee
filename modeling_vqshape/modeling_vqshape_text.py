"""Multimodal VQShape: the codebook and the shape tokens aligned with a frozen sentence-transformer's text embeddings.

Codes get words without human captions. Rules turn each token's decoded attributes into one phrase per attribute
(`caption_labels`); a frozen sentence-transformer embeds the finite phrase bank once, and the embeddings, centred by
their mean, are stored as persistent buffers, so training and inference need the text encoder only for new free text.
Projection heads map codebook entries and token attributes into the text space, and a symmetric multi-positive InfoNCE
with a learnable, clamped logit scale aligns (a) codes with their shape phrases, (b) tokens with each attribute's
phrases and channels with their intensity phrases, (c) pooled series with class prompts when labels exist. Intensity is
the one series-level attribute: a channel's scale (which instance normalisation hides from the tokens) against its
domain's calibration (`calibrate_intensity`).

Reads top to bottom: caption rules -> text encoder access -> loss -> blocks -> outputs -> models.
"""

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_vqshape_text import ATTRIBUTES, BANK_ATTRIBUTES, PHRASE_BANK, VQShapeTextConfig
from .modeling_vqshape import VQShapeForPreTraining, VQShapeModel, complete_saved_folder, instance_normalize

# ---------------------------------------------------------------------------------------------------------------------
# Caption rules: decoded attributes -> one value per attribute. Deterministic; the thresholds are documented here.
# ---------------------------------------------------------------------------------------------------------------------

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
# intensity (series level, per channel): the channel's standard deviation before instance normalisation, on a log
# scale, against its domain's terciles (`calibrate_intensity`): below the first still, below the second moderate, else
# vigorous. A domain whose terciles are closer than MIN_INTENSITY_SPREAD (log units) has no usable scale: sets stored
# z-normalised measure 0.00-0.05 even after resampling (ACSF1), the bundled sets kept in their units 0.23-1.21.
INTENSITY_QUANTILES = (1 / 3, 2 / 3)
MIN_INTENSITY_SPREAD = 0.1
# momentum of the running mean of token vectors (BatchNorm's default)
TOKEN_MEAN_MOMENTUM = 0.1
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


def intensity_labels(relative: torch.Tensor) -> torch.Tensor:
    """Intensity value of `relative_intensity` values: below -1 still, below +1 moderate, else vigorous."""
    return torch.bucketize(relative.contiguous(), torch.tensor([-1.0, 1.0], dtype=relative.dtype,
                                                                device=relative.device), right=True)


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


# ---------------------------------------------------------------------------------------------------------------------
# The text encoder: needed only to embed new free text
# ---------------------------------------------------------------------------------------------------------------------


def load_text_encoder(name_or_path: str):
    """A `sentence_transformers.SentenceTransformer` on CPU, with a clear error when the package is missing."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise ImportError(
            "Embedding new text needs the package `sentence-transformers` (pip install sentence-transformers, or "
            "pip install 'vqshape[multimodal]'). Without it the stored phrase bank still serves describe_codes, "
            "explain with stored class names, and retrieval by bank phrases."
        ) from error
    return SentenceTransformer(str(name_or_path), device="cpu")


def encode_texts(text_encoder, texts) -> torch.Tensor:
    """`len(texts)` unit-norm float32 embeddings `(len(texts), text_dim)` from a sentence-transformer."""
    with torch.no_grad():
        embeddings = text_encoder.encode(list(texts), convert_to_tensor=True, normalize_embeddings=True,
                                         show_progress_bar=False)
    return embeddings.detach().to("cpu", torch.float32)


# ---------------------------------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------------------------------


def multi_positive_info_nce(queries, keys, query_labels, key_labels, logit_scale) -> torch.Tensor:
    """Symmetric InfoNCE where every key with the query's label is a positive (CLIP, with several positives; duplicated
    texts share a label, so they are positives, not negatives). Rows or columns without a positive are left out.

    Args:
        queries: `(num_queries, dim)`, keys: `(num_keys, dim)`, both unit-norm.
        query_labels: `(num_queries,)`, key_labels: `(num_keys,)`.
    """
    logits = logit_scale * queries @ keys.t()
    positives = (query_labels[:, None] == key_labels[None, :]).to(logits.dtype)

    def one_direction(logits, positives):
        has_positive = positives.sum(dim=1) > 0
        per_row = -(logits.log_softmax(dim=1) * positives).sum(dim=1) / positives.sum(dim=1).clamp(min=1)
        return per_row[has_positive].mean() if has_positive.any() else logits.sum() * 0

    return 0.5 * (one_direction(logits, positives) + one_direction(logits.t(), positives.t()))


# ---------------------------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------------------------


HUBNESS_METHODS = ("inverted_softmax", "csls")


def hubness_corrected_logits(similarity: torch.Tensor, reference_similarity: torch.Tensor, method: str,
                             scale: torch.Tensor, neighbours: int = 10) -> torch.Tensor:
    """Zero-shot logits corrected for hubness (a few class prompts being nearest to most series).

    Args:
        similarity: `(batch_size, num_classes)` cosines of the series to classify with each class prompt.
        reference_similarity: `(num_reference, num_classes)` cosines of unlabelled reference series.
        method: `"inverted_softmax"` (Smith et al. 2017: each class's exp-similarities are normalised over the
            reference series, so a class close to everything loses its advantage) or `"csls"` (Conneau et al. 2018:
            twice the cosine minus the class's mean cosine to its `neighbours` nearest reference series).
        scale: the logit scale.
    """
    if method == "inverted_softmax":
        return scale * similarity - torch.logsumexp(scale * reference_similarity, dim=0)
    if method == "csls":
        nearest = reference_similarity.topk(min(neighbours, reference_similarity.shape[0]), dim=0).values
        return scale * (2 * similarity - nearest.mean(dim=0))
    raise ValueError(f"hubness must be None or one of {HUBNESS_METHODS}, got {method!r}.")


def _mlp(in_features: int, out_features: int, hidden_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, hidden_features), nn.GELU(), nn.Linear(hidden_features, out_features))


def token_inputs(token_features: torch.Tensor, code_dim: int, code_mean=0.0, code_std=1.0) -> torch.Tensor:
    """Token features [code, t, l, mu, sigma] -> projection inputs [code, t, t + l/2, l, log l, mu, log sigma]: logs,
    because lengths and scales span orders of magnitude; the code standardised by `code_mean` and `code_std`.
    `(..., code_dim + 4)` -> `(..., code_dim + 6)`."""
    code, start, length, offset, scale = token_features.split([code_dim, 1, 1, 1, 1], dim=-1)
    return torch.cat([(code - code_mean) / code_std, start, start + length / 2, length, length.clamp(min=1e-6).log(),
                      offset, (scale + 1e-4).log()], dim=-1)


class VQShapeTextBank(nn.Module):
    """The stored text side: the phrase bank's embeddings (centred by their mean, unit-norm), that mean (to centre new
    text alike), and the stored class prompts' embeddings. All persistent: a saved model reloads with its bank."""

    def __init__(self, config: VQShapeTextConfig):
        super().__init__()
        num_phrases = sum(len(phrases) for values in config.phrase_bank.values() for phrases in values.values())
        self.register_buffer("phrase_embeddings", torch.zeros(num_phrases, config.text_dim))
        self.register_buffer("text_mean", torch.zeros(config.text_dim))
        self.register_buffer("class_embeddings", torch.zeros(len(config.class_names), config.text_dim))

    @property
    def is_built(self) -> bool:
        return bool(self.phrase_embeddings.abs().sum() > 0)

    def centre(self, raw_embeddings: torch.Tensor) -> torch.Tensor:
        """Unit-norm encoder embeddings -> centred by the bank mean, unit-norm again."""
        return F.normalize(raw_embeddings.to(self.text_mean) - self.text_mean, dim=-1)


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class VQShapeForTextAlignmentOutput(ModelOutput):
    """
    Args:
        loss: weighted sum of the terms below.
        code_text_loss: codebook entry <-> its shape phrases (a).
        token_text_loss: token <-> each attribute's phrases, mean over attributes (b).
        intensity_text_loss: channel intensity <-> intensity phrases, over the channels with a known calibration.
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
    class_text_loss: torch.FloatTensor | None = None
    pretraining_loss: torch.FloatTensor | None = None
    logit_scale: torch.FloatTensor | None = None
    series_embeddings: torch.FloatTensor | None = None
    token_embeddings: torch.FloatTensor | None = None
    caption_labels: torch.LongTensor | None = None


@dataclass
class VQShapeZeroShotOutput(ModelOutput):
    """
    Args:
        logits: `(batch_size, num_classes)` scaled cosine similarities of series and class prompts.
        probabilities: `(batch_size, num_classes)` their softmax.
        predictions: `(batch_size,)` index of the best class.
        class_names: the classes, in column order.
    """

    logits: torch.FloatTensor | None = None
    probabilities: torch.FloatTensor | None = None
    predictions: torch.LongTensor | None = None
    class_names: list | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------

TEXT_AUTO_MAP = {
    "AutoConfig": "configuration_vqshape_text.VQShapeTextConfig",
    "AutoModel": "modeling_vqshape_text.VQShapeForTextAlignment",
}


class VQShapeTextPreTrainedModel(PreTrainedModel):
    config_class = VQShapeTextConfig
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
            if module.has_intensity:
                init.zeros_(module.intensity_vector_mean)
        elif isinstance(module, nn.Linear):
            module.reset_parameters()

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save, then write the complete `auto_map` and the feature extractor, so that the folder loads with
        `AutoModel` (and `trust_remote_code`)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if not kwargs.get("is_main_process", True):
            return
        complete_saved_folder(save_directory, TEXT_AUTO_MAP, self.config.vqshape_config.input_length)


class VQShapeForTextAlignment(VQShapeTextPreTrainedModel):
    """VQShape whose codes and tokens live in a sentence-transformer's text space.

    Build one from a pre-trained VQShape with `from_vqshape` (embeds the phrase bank once), train it with `forward`'s
    loss, then use `describe_codes`, `retrieve_codes`, `zero_shot_classify` and `explain`.
    """

    def __init__(self, config: VQShapeTextConfig):
        super().__init__(config)
        vqshape_config = config.vqshape_config
        self.backbone = VQShapeForPreTraining(vqshape_config)
        self.text_bank = VQShapeTextBank(config)
        self.code_projection = _mlp(vqshape_config.code_dim, config.text_dim, config.projection_hidden_dim)
        self.token_projection = _mlp(vqshape_config.code_dim + 6, len(ATTRIBUTES) * config.text_dim,
                                     config.projection_hidden_dim)
        if self.has_intensity:  # relative log(scale) of a channel -> its text-space intensity vector
            self.intensity_projection = _mlp(1, config.text_dim, config.projection_hidden_dim)
        self.logit_scale = nn.Parameter(torch.empty(()))  # log of the scale, as in CLIP
        # how often each code was seen in training batches, for describe_codes
        self.register_buffer("code_counts", torch.zeros(vqshape_config.num_codes, dtype=torch.long))
        # running mean of the token vectors, removed before pooling (as the bank mean is removed from text)
        self.register_buffer("token_vector_mean", torch.zeros(config.text_dim))
        if self.has_intensity:
            # running mean of the calibrated channels' intensity vectors, removed from them alike: channels without a
            # calibration add nothing, so a domain where all are calibrated is not pulled towards the mean intensity
            self.register_buffer("intensity_vector_mean", torch.zeros(config.text_dim))
        # the bank as flat lists, in config order: (attribute index, value index, text, held out)
        self.phrases = [
            (BANK_ATTRIBUTES.index(attribute), value_index, text,
             rank >= len(paraphrases) - config.num_heldout_paraphrases)
            for attribute in BANK_ATTRIBUTES if attribute in config.phrase_bank
            for value_index, value in enumerate(ATTRIBUTE_VALUES[attribute])
            for paraphrases in [config.phrase_bank[attribute][value]]
            for rank, text in enumerate(paraphrases)
        ]
        self.__dict__["_text_encoder"] = None  # not a submodule: never saved, never moved
        self.post_init()
        if config.freeze_backbone:
            self.backbone.requires_grad_(False)

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

    def set_text_encoder(self, text_encoder):
        """Use this `SentenceTransformer` (or a name / path to load) for new text; its size must match the bank's."""
        if isinstance(text_encoder, (str, os.PathLike)):
            text_encoder = load_text_encoder(text_encoder)
        size = encode_texts(text_encoder, ["a probe"]).shape[-1]
        if size != self.config.text_dim:
            raise ValueError(
                f"The text model embeds into {size} dimensions, but this model's phrase bank and projections use "
                f"text_dim={self.config.text_dim} (from {self.config.text_model_name_or_path!r}); use that text model "
                f"or rebuild the alignment with from_vqshape(..., text_dim={size})."
            )
        self.__dict__["_text_encoder"] = text_encoder

    @property
    def text_encoder(self):
        if self._text_encoder is None:
            self.set_text_encoder(load_text_encoder(self.config.text_model_name_or_path))
        return self._text_encoder

    @torch.no_grad()
    def build_text_bank(self):
        """Embed the phrase bank (and any stored class names) with the text encoder; store them centred."""
        raw = encode_texts(self.text_encoder, [text for _, _, text, _ in self.phrases]).to(self.text_bank.text_mean)
        self.text_bank.text_mean.copy_(raw.mean(dim=0))
        self.text_bank.phrase_embeddings.copy_(self.text_bank.centre(raw))
        if self.config.class_names:
            self.set_class_names(self._stored_classes(), self.config.class_templates)

    def _require_bank(self):
        if not self.text_bank.is_built:
            raise ValueError("The phrase bank is empty: build the model with VQShapeForTextAlignment.from_vqshape(...) "
                             "or call build_text_bank() first.")

    @torch.no_grad()
    def embed_text(self, texts) -> torch.Tensor:
        """Texts -> `(len(texts), text_dim)` centred unit-norm embeddings; bank phrases come from the stored bank and
        only other text needs the text encoder."""
        self._require_bank()
        texts = [texts] if isinstance(texts, str) else list(texts)
        stored = {text: index for index, (_, _, text, _) in enumerate(self.phrases)}
        embeddings = torch.empty(len(texts), self.config.text_dim).to(self.text_bank.text_mean)
        new = [i for i, text in enumerate(texts) if text not in stored]
        for i, text in enumerate(texts):
            if text in stored:
                embeddings[i] = self.text_bank.phrase_embeddings[stored[text]]
        if new:
            embeddings[new] = self.text_bank.centre(encode_texts(self.text_encoder, [texts[i] for i in new]))
        return embeddings

    def _check_class_names(self, class_names) -> list:
        if isinstance(class_names, str):
            raise ValueError(f"class_names must be a list of names, got the string {class_names!r}.")
        class_names = [str(name) for name in class_names] if class_names is not None else []
        if not class_names:
            raise ValueError("class_names is empty: give at least one class name (two for a classification).")
        duplicates = sorted({name for name in class_names if class_names.count(name) > 1})
        if duplicates:
            raise ValueError(f"class_names has duplicates {duplicates}: each class needs its own name.")
        return class_names

    @staticmethod
    def _check_descriptions(descriptions: Mapping) -> dict:
        """`{class name: [descriptions]}` -> the same with str keys and lists of non-empty strings."""
        checked = {}
        for name, texts in descriptions.items():
            texts = [texts] if isinstance(texts, str) else list(texts or [])
            if not texts or not all(isinstance(text, str) and text.strip() for text in texts):
                raise ValueError(f"class {name!r} needs a non-empty list of non-empty descriptions, got {texts!r}.")
            if str(name) in checked:
                raise ValueError(f"class {name!r} is given twice; each class needs its own name.")
            checked[str(name)] = texts
        if not checked:
            raise ValueError("class descriptions are empty: give at least one class with its descriptions.")
        return checked

    def _check_classes(self, class_names):
        """Classes given as a list of names or as `{name: [descriptions]}` -> `(names, descriptions)`, both checked;
        `descriptions` is None for names."""
        if isinstance(class_names, Mapping):
            descriptions = self._check_descriptions(class_names)
            return list(descriptions), descriptions
        return self._check_class_names(class_names), None

    def _embed_classes(self, names: list, descriptions: dict | None, templates) -> torch.Tensor:
        if descriptions is not None:  # each class: the mean of its descriptions
            texts = [text for group in descriptions.values() for text in group]
            embeddings = self.embed_text(texts).split([len(group) for group in descriptions.values()])
            return F.normalize(torch.stack([group.mean(dim=0) for group in embeddings]), dim=-1)
        templates = list(templates or self.config.class_templates)
        prompts = self.embed_text([template.format(name) for name in names for template in templates])
        return F.normalize(prompts.reshape(len(names), len(templates), -1).mean(dim=1), dim=-1)

    @torch.no_grad()
    def embed_class_prompts(self, class_names, templates=None) -> torch.Tensor:
        """`(num_classes, text_dim)`: per class, the mean of its prompts: its descriptions when `class_names` maps
        each name to a list of them, else `templates` with "{}" for the name."""
        return self._embed_classes(*self._check_classes(class_names), templates)

    @torch.no_grad()
    def set_class_names(self, class_names, templates=None):
        """Embed and store class prompts with the model (and in its config), so that `zero_shot_classify` and
        `explain` serve them after saving, without the text encoder. `class_names` is a list of names (prompted with
        `templates`) or `{name: [descriptions]}`."""
        names, descriptions = self._check_classes(class_names)
        self.text_bank.class_embeddings = self._embed_classes(names, descriptions, templates)
        self.config.class_names = names
        self.config.class_descriptions = list(descriptions.values()) if descriptions is not None else []
        self.config.class_templates = list(templates or self.config.class_templates)

    def _stored_classes(self):
        """The stored classes as given to `set_class_names`: `{name: [descriptions]}` or a list of names."""
        if self.config.class_descriptions:
            return dict(zip(self.config.class_names, self.config.class_descriptions))
        return list(self.config.class_names)

    def _class_embeddings(self, class_names, templates):
        if class_names is None:
            if not self.config.class_names:
                raise ValueError("No class names: pass class_names, or store some with set_class_names(...).")
            return list(self.config.class_names), self.text_bank.class_embeddings
        names, descriptions = self._check_classes(class_names)
        if (names if descriptions is None else descriptions) == self._stored_classes() and templates is None:
            return names, self.text_bank.class_embeddings
        return names, self._embed_classes(names, descriptions, templates)

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

    # ---- the series-level intensity attribute ------------------------------------------------------------------------

    @property
    def has_intensity(self) -> bool:
        """Whether the bank has intensity phrases (models saved before the attribute existed have none)."""
        return "intensity" in self.config.phrase_bank

    @torch.no_grad()
    def calibrate_intensity(self, past_values: torch.Tensor, per_channel: bool = True) -> list:
        """Calibrate the intensity attribute on unlabelled series of a domain (e.g. a dataset's training split): the
        terciles of each channel's log(scale) (or of all channels together with `per_channel=False`) become
        `config.intensity_thresholds`, saved with the model. From then on, series embeddings, `zero_shot_classify` and
        `explain` include each channel's intensity (still, moderate, vigorous) relative to this domain.

        Args:
            past_values: raw series in their own units (not standardised), `(batch_size, sequence_length)` or
                `(batch_size, sequence_length, num_channels)`.
        Returns:
            the thresholds, one `[low, high]` pair per channel (one pair with `per_channel=False`).
        """
        if not self.has_intensity:
            raise ValueError("This model's phrase bank has no intensity phrases (it was built before the attribute "
                             "existed); rebuild it with VQShapeForTextAlignment.from_vqshape(...) to use intensity.")
        scale = self.channel_scales(past_values)
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
        self.config.intensity_thresholds = [pair.tolist() for pair in pairs]
        return self.config.intensity_thresholds

    def channel_scales(self, past_values: torch.Tensor) -> torch.Tensor:
        """`(batch_size, num_channels)`: each channel's standard deviation, as VQShape's instance normalisation computes
        it (the `scale` its heads return), without running the model."""
        series, batch_size, num_channels = self.backbone.vqshape._flatten_channels(past_values)
        return instance_normalize(series.detach())[2].reshape(batch_size, num_channels)

    def _intensity_calibration(self, intensity_thresholds, batch_size: int, num_channels: int):
        """`(batch_size, num_channels, 2)` thresholds: per row from the argument (`(batch_size, 2)` or
        `(batch_size, num_channels, 2)`, NaN: unknown), else the stored calibration; None when neither is given (the
        embeddings then carry no intensity)."""
        if not self.has_intensity:
            if intensity_thresholds is not None:
                raise ValueError("intensity_thresholds were given, but this model's phrase bank has no intensity "
                                 "phrases (it was built before the attribute existed); rebuild it with "
                                 "VQShapeForTextAlignment.from_vqshape(...) to use intensity.")
            return None
        device = self.text_bank.text_mean.device
        if intensity_thresholds is not None:
            thresholds = torch.as_tensor(intensity_thresholds, dtype=torch.float32, device=device)
            given = tuple(thresholds.shape)
            thresholds = thresholds[:, None] if thresholds.dim() == 2 else thresholds
            where = "per row"
            if thresholds.dim() == 3 and thresholds.shape[-1] == 2 and not bool(
                    (thresholds[..., 0] < thresholds[..., 1]).logical_or(thresholds.isnan().any(dim=-1)).all()):
                raise ValueError("Per-row intensity thresholds must be increasing [low, high] pairs (NaN for an "
                                 "unknown calibration); use calibrations_by_source(...) or calibrate_intensity(...).")
        elif self.config.intensity_thresholds is not None:
            thresholds = torch.tensor(self.config.intensity_thresholds, dtype=torch.float32, device=device)[None]
            given = tuple(thresholds.shape[1:])
            where = "stored (config.intensity_thresholds)"
        else:
            return None
        if thresholds.dim() != 3 or thresholds.shape[-1] != 2 or thresholds.shape[0] not in (1, batch_size) \
                or thresholds.shape[1] not in (1, num_channels):
            raise ValueError(
                f"The {where} intensity thresholds have shape {given}, which does not fit "
                f"{batch_size} series of {num_channels} channel(s): calibrate_intensity(...) on series with the same "
                f"channels, or pass per-row thresholds of shape (batch_size, 2) or (batch_size, num_channels, 2)."
            )
        return thresholds.expand(batch_size, num_channels, 2)

    def intensity_embeddings(self, scale: torch.Tensor, thresholds: torch.Tensor):
        """`(batch_size, num_channels)` instance-normalisation scales and their calibration `(..., 2)` ->
        `(relative intensity, embeddings)`: `(batch_size, num_channels)` and `(batch_size, num_channels, text_dim)`,
        unit-norm, with NaN relative intensity where the calibration is unknown."""
        relative = relative_intensity(scale.detach(), thresholds)
        known = torch.isfinite(relative)
        inputs = torch.where(known, relative, torch.zeros_like(relative)).unsqueeze(-1)
        return relative, F.normalize(self.intensity_projection(inputs), dim=-1)

    def intensity_vectors(self, relative: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """What a channel's intensity adds to each of its token vectors: its embedding less the mean intensity
        embedding (the batch's calibrated channels in training, the running mean otherwise); zero without a
        calibration. `(batch_size, num_channels, text_dim)`."""
        known = torch.isfinite(relative)
        mean = self.intensity_vector_mean
        if self.training and known.any():
            mean = embeddings.detach()[known].mean(dim=0)
            self.intensity_vector_mean.lerp_(mean.to(self.intensity_vector_mean.dtype), TOKEN_MEAN_MOMENTUM)
        centred = embeddings - mean.to(embeddings.dtype)
        return torch.where(known.unsqueeze(-1), centred, torch.zeros_like(centred))

    def token_vectors(self, token_embeddings: torch.Tensor,
                      intensity_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """A token's single text-space vector: the sum of its attribute embeddings (a caption's bag of phrases), less
        the mean token vector (the batch's in training, the running mean otherwise), so that what all series share
        does not decide their class; plus its channel's centred intensity vector when given (`intensity_vectors`).
        `(batch_size, num_channels, num_tokens, num_attributes, text_dim)` -> `(..., num_tokens, text_dim)`."""
        vectors = token_embeddings.sum(dim=-2)
        if self.training:
            mean = vectors.detach().reshape(-1, vectors.shape[-1]).mean(dim=0)
            self.token_vector_mean.lerp_(mean.to(self.token_vector_mean.dtype), TOKEN_MEAN_MOMENTUM)
        else:
            mean = self.token_vector_mean
        vectors = vectors - mean.to(vectors.dtype)
        return vectors if intensity_vectors is None else vectors + intensity_vectors.unsqueeze(-2)

    def _token_and_intensity_vectors(self, scale, token_embeddings, intensity_thresholds):
        """Token vectors with their channels' intensity where a calibration is known: `(token_vectors, relative
        intensity, intensity embeddings)`, the last two None without a calibration. `scale`: the backbone's
        `(batch_size, num_channels)` instance-normalisation scales."""
        thresholds = self._intensity_calibration(intensity_thresholds, *token_embeddings.shape[:2])
        if thresholds is None:
            return self.token_vectors(token_embeddings), None, None
        relative, intensity = self.intensity_embeddings(scale, thresholds)
        return self.token_vectors(token_embeddings, self.intensity_vectors(relative, intensity)), relative, intensity

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
                calibration (its domain's log-scale terciles; NaN: unknown, e.g. a standardised source); the stored
                calibration when not given. Rows with a calibration add the intensity loss and their intensity to the
                series embedding.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self._require_bank()
        config = self.config
        outputs, pretraining_loss = self._tokenize(past_values)
        token_features = outputs.token_features  # (batch_size, num_channels, num_tokens, code_dim + 4)
        code_indices = outputs.code_indices  # (batch_size, num_channels, num_tokens)
        code_dim = config.vqshape_config.code_dim
        start, length, offset, scale = token_features[..., code_dim:].detach().unbind(dim=-1)
        code_labels = self.code_shape_labels()
        labels_per_token = caption_labels(code_labels, code_indices, start, length, offset, scale)
        token_embeddings = self.token_embeddings(token_features)
        token_vectors, relative, intensity = self._token_and_intensity_vectors(outputs.scale, token_embeddings,
                                                                                intensity_thresholds)
        series_embeddings = self.series_embeddings(token_vectors)
        logit_scale = self.logit_scale_value()
        if self.training:
            self.code_counts += torch.bincount(code_indices.reshape(-1), minlength=self.code_counts.shape[0])

        device = token_features.device
        attribute_of = torch.tensor([a for a, _, _, _ in self.phrases], device=device)
        value_of = torch.tensor([v for _, v, _, _ in self.phrases], device=device)
        trainable = ~torch.tensor([heldout for _, _, _, heldout in self.phrases], device=device)
        bank = self.text_bank.phrase_embeddings

        # (a) codebook entries <-> their shape phrases
        shape_phrases = trainable & (attribute_of == ATTRIBUTES.index("shape"))
        code_text_loss = multi_positive_info_nce(
            self.code_embeddings(), bank[shape_phrases], code_labels, value_of[shape_phrases], logit_scale
        )
        # (b) tokens <-> each attribute's phrases, a separate softmax per attribute
        flat_embeddings = token_embeddings.reshape(-1, len(ATTRIBUTES), config.text_dim)  # "(b c n) attributes dim"
        flat_labels = labels_per_token.reshape(-1, len(ATTRIBUTES))
        per_attribute = []
        for attribute in range(len(ATTRIBUTES)):
            phrases = trainable & (attribute_of == attribute)
            per_attribute.append(multi_positive_info_nce(
                flat_embeddings[:, attribute], bank[phrases], flat_labels[:, attribute], value_of[phrases], logit_scale
            ))
        token_text_loss = torch.stack(per_attribute).mean()
        loss = config.code_text_weight * code_text_loss + config.token_text_weight * token_text_loss
        # channels <-> their intensity phrases (series level: the scale instance normalisation removes, against the
        # channel's domain), over the channels whose calibration is known
        intensity_text_loss = None
        known = None if relative is None else torch.isfinite(relative)
        if known is not None and known.any():
            phrases = trainable & (attribute_of == BANK_ATTRIBUTES.index("intensity"))
            intensity_text_loss = multi_positive_info_nce(
                intensity[known], bank[phrases], intensity_labels(relative[known]), value_of[phrases], logit_scale
            )
            loss = loss + config.intensity_text_weight * intensity_text_loss

        # (c) pooled series <-> class prompts; every series of a class is a positive of its prompt
        class_text_loss = None
        if labels is not None:
            labels = labels.to(device).long()
            labelled = labels >= 0
            if labelled.any():
                prompts = self.text_bank.class_embeddings if label_embeddings is None else label_embeddings
                present = torch.unique(labels[labelled])
                class_text_loss = multi_positive_info_nce(
                    series_embeddings[labelled], prompts.to(series_embeddings)[present], labels[labelled], present,
                    logit_scale,
                )
                loss = loss + config.class_text_weight * class_text_loss
        if pretraining_loss is not None:
            loss = loss + config.pretraining_weight * pretraining_loss

        output = VQShapeForTextAlignmentOutput(
            loss=loss,
            code_text_loss=code_text_loss,
            token_text_loss=token_text_loss,
            intensity_text_loss=intensity_text_loss,
            class_text_loss=class_text_loss,
            pretraining_loss=pretraining_loss,
            logit_scale=logit_scale.detach(),
            series_embeddings=series_embeddings,
            token_embeddings=token_embeddings,
            caption_labels=labels_per_token,
        )
        return output if return_dict else output.to_tuple()

    # ---- user methods -----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, past_values: torch.Tensor, intensity_thresholds: torch.Tensor | None = None) -> dict:
        """Backbone outputs plus text-space embeddings, in eval mode: `outputs` (VQShapeModelOutput),
        `token_embeddings` `(batch, channels, tokens, attributes, text_dim)`, `token_vectors` `(batch, channels, tokens,
        text_dim)`, `series_embeddings` `(batch, text_dim)`, and with an intensity calibration (`forward`'s argument,
        else the stored one) `intensity` `(batch, channels)` value indices and `intensity_embeddings`
        `(batch, channels, text_dim)` (both None without one)."""
        was_training = self.training
        self.eval()
        try:
            outputs = self.backbone.vqshape(past_values, return_dict=True)
            token_embeddings = self.token_embeddings(outputs.token_features)
            token_vectors, relative, intensity = self._token_and_intensity_vectors(outputs.scale, token_embeddings,
                                                                                    intensity_thresholds)
            return {"outputs": outputs, "token_embeddings": token_embeddings, "token_vectors": token_vectors,
                    "series_embeddings": self.series_embeddings(token_vectors), "intensity_embeddings": intensity,
                    "intensity": None if relative is None else torch.where(
                        torch.isfinite(relative), intensity_labels(relative.nan_to_num(0.0)), -1)}
        finally:
            self.train(was_training)

    def _phrase_indices(self, attribute: str, heldout: bool | None = None) -> list:
        index = BANK_ATTRIBUTES.index(attribute)
        return [i for i, (a, _, _, h) in enumerate(self.phrases) if a == index and (heldout is None or h == heldout)]

    @torch.no_grad()
    def describe_codes(self, top_k: int = 3, past_values: torch.Tensor | None = None) -> list:
        """Each code in words: its `top_k` shape phrases with cosine scores, its rule label and its usage count (on
        `past_values` when given, else in the training batches seen). Needs only the stored bank.

        Returns:
            one dict per code: `code`, `phrases` [(text, score)], `rule_label`, `usage`.
        """
        self._require_bank()
        indices = self._phrase_indices("shape")
        scores = self.code_embeddings() @ self.text_bank.phrase_embeddings[indices].t()  # (num_codes, num_phrases)
        top = scores.topk(min(top_k, len(indices)), dim=-1)
        if past_values is not None:
            code_indices = self.backbone.vqshape(past_values, return_dict=True).code_indices
            usage = torch.bincount(code_indices.reshape(-1), minlength=scores.shape[0])
        else:
            usage = self.code_counts
        rule = self.code_shape_labels()
        return [
            {
                "code": code,
                "phrases": [(self.phrases[indices[j]][2], round(float(s), 4))
                            for s, j in zip(top.values[code], top.indices[code])],
                "rule_label": SHAPE_VALUES[int(rule[code])],
                "usage": int(usage[code]),
            }
            for code in range(scores.shape[0])
        ]

    @torch.no_grad()
    def retrieve_codes(self, text, top_k: int = 5) -> dict:
        """The codes nearest to a text (`str` or list): `{"codes": (num_texts, top_k), "scores": (num_texts, top_k)}`
        as lists. Bank phrases need no text encoder; free text does."""
        queries = self.embed_text(text)
        scores = queries @ self.code_embeddings().t()
        top = scores.topk(min(top_k, scores.shape[1]), dim=-1)
        if isinstance(text, str):
            return {"codes": top.indices[0].tolist(), "scores": top.values[0].tolist()}
        return {"codes": top.indices.tolist(), "scores": top.values.tolist()}

    @torch.no_grad()
    def zero_shot_classify(self, past_values: torch.Tensor, class_names=None, templates=None,
                           intensity_thresholds=None, hubness: str | None = None,
                           reference_values: torch.Tensor | None = None) -> VQShapeZeroShotOutput:
        """Classify series by the cosine of their pooled embedding with each class's prompts (CLIP-style).

        Args:
            past_values: `(batch_size, sequence_length)` or `(batch_size, sequence_length, num_channels)`, in their
                own units when the model's intensity is calibrated (`calibrate_intensity`).
            class_names: the classes (the stored ones when not given): a list of names, prompted with `templates`
                ("{}" is the name), or `{name: [descriptions]}`, whose descriptions are averaged per class.
            intensity_thresholds: per-row intensity calibration (see `forward`); the stored one when not given.
            hubness: `None` (plain cosines), `"inverted_softmax"` or `"csls"`: correct for classes that are near
                every series (see `hubness_corrected_logits`), using `reference_values`.
            reference_values: unlabelled series like `past_values` for the hubness correction; `past_values`
                themselves when not given.
        """
        class_names, prompts = self._class_embeddings(class_names, templates)
        series = self.encode(past_values, intensity_thresholds)["series_embeddings"]
        prompts = prompts.to(series)
        similarity = series @ prompts.t()
        if hubness is None:
            logits = self.logit_scale_value() * similarity
        else:
            reference = series if reference_values is None else \
                self.encode(reference_values, intensity_thresholds)["series_embeddings"]
            logits = hubness_corrected_logits(similarity, reference @ prompts.t(), hubness, self.logit_scale_value())
        probabilities = logits.softmax(dim=-1)
        return VQShapeZeroShotOutput(logits=logits, probabilities=probabilities,
                                     predictions=probabilities.argmax(dim=-1), class_names=class_names)

    def _past_values(self, series) -> torch.Tensor:
        """Model input from a `past_values` tensor, a `datasets.Dataset` with a `past_values` column of
        `(channels, time)` windows (as `build_geneactiv_dataset` gives), or raw series for the feature extractor."""
        if isinstance(series, torch.Tensor):
            return series
        if hasattr(series, "column_names"):
            if "past_values" not in series.column_names:
                raise ValueError(f"the dataset has no 'past_values' column (columns: {series.column_names}).")
            series = np.asarray(series.with_format("numpy")["past_values"], dtype=np.float32)
        from .processing_vqshape import VQShapeFeatureExtractor

        return VQShapeFeatureExtractor(self.config.vqshape_config.input_length)(series)["past_values"]

    @torch.no_grad()
    def search(self, texts, series, top_k: int = 10, intensity_thresholds=None, batch_size: int = 256,
               phrases_per_result: int = 2) -> list:
        """Rank series (or windows of a recording) by free-text queries such as "vigorous irregular bursts".

        Args:
            texts: a query or a list of them.
            series: a `past_values` tensor, a `datasets.Dataset` of windows (`build_geneactiv_dataset`), or raw series
                in any form `VQShapeFeatureExtractor` takes.
            top_k: results per query.
            intensity_thresholds: a per-row intensity calibration `(num_series, 2)` or `(num_series, channels, 2)`
                (see `forward`); the stored one when not given.
        Returns:
            one dict per query: `query`, `indices` (best first), `scores` (cosine of the series embedding with the
            query), and `phrases`: for each result, the captions of its `phrases_per_result` tokens nearest the query.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(text, str) and text.strip() for text in texts):
            raise ValueError(f"texts must be non-empty queries, got {texts!r}.")
        if top_k < 1:
            raise ValueError(f"top_k must be positive, got {top_k}.")
        past_values = self._past_values(series)

        def thresholds(rows):  # a per-row calibration follows its rows; None means the stored one
            if intensity_thresholds is None:
                return None
            return torch.as_tensor(intensity_thresholds, dtype=torch.float32)[rows]

        queries = self.embed_text(texts)  # (num_queries, text_dim), unit norm
        series_embeddings = torch.cat([
            self.encode(past_values[start : start + batch_size],
                        thresholds(slice(start, start + batch_size)))["series_embeddings"]
            for start in range(0, len(past_values), batch_size)])
        scores = queries.to(series_embeddings) @ series_embeddings.t()  # (num_queries, num_series)
        best = scores.topk(min(top_k, scores.shape[1]), dim=-1)
        results = []
        for query, text in enumerate(texts):
            indices = best.indices[query].tolist()
            encoded = self.encode(past_values[indices], thresholds(indices))
            batch, channels, tokens = encoded["outputs"].code_indices.shape
            vectors = encoded["token_vectors"].reshape(batch, channels * tokens, -1)
            nearest = (vectors @ queries[query].to(vectors)).topk(min(phrases_per_result, channels * tokens),
                                                                  dim=-1).indices
            embeddings = encoded["token_embeddings"].reshape(batch, channels * tokens, len(ATTRIBUTES), -1)
            results.append({"query": text, "indices": indices, "scores": best.values[query].tolist(),
                            "phrases": [self.token_phrases(embeddings[row, nearest[row]]) for row in range(batch)]})
        return results

    def _best_phrases(self, attribute: str, embeddings: torch.Tensor) -> list:
        """`(n, text_dim)` -> for each row, the first paraphrase of the value of its best `attribute` bank phrase."""
        indices = self._phrase_indices(attribute)
        best = (embeddings @ self.text_bank.phrase_embeddings[indices].t()).argmax(dim=-1).tolist()
        values = ATTRIBUTE_VALUES[attribute]
        return [self.config.phrase_bank[attribute][values[self.phrases[indices[j]][1]]][0] for j in best]

    def token_phrases(self, token_embeddings: torch.Tensor) -> list:
        """`(num_tokens, num_attributes, text_dim)` -> one caption per token: per attribute the value of the best
        bank phrase, written with that value's first paraphrase."""
        words = [self._best_phrases(attribute, token_embeddings[:, index])
                 for index, attribute in enumerate(ATTRIBUTES)]
        return [f"{shape} {position}, {duration}, {amplitude}, {level}"
                for shape, position, duration, amplitude, level in zip(*words)]

    @torch.no_grad()
    def explain(self, past_values: torch.Tensor, class_names=None, templates=None, top_k: int = 3,
                intensity_thresholds=None) -> list:
        """Why each series gets its zero-shot class: the `top_k` tokens that most support it, each as a phrase.

        A token's support is its vector's similarity to the predicted class's prompt minus its mean similarity to the
        other classes (the series embedding is the mean token vector, so supports add up to the score margin, up to
        the normalisation). With the stored class names (`set_class_names`) no text encoder is needed. With an
        intensity calibration (`calibrate_intensity`) each phrase ends with its channel's intensity.

        Returns:
            one dict per series: `predicted_class`, `probability`, and `tokens`, a list of dicts with `phrase`, `code`,
            `channel`, `start`, `end` (relative positions), `score`.
        """
        class_names, prompts = self._class_embeddings(class_names, templates)
        encoded = self.encode(past_values, intensity_thresholds)
        outputs, token_embeddings = encoded["outputs"], encoded["token_embeddings"]
        series = encoded["series_embeddings"]
        prompts = prompts.to(series)
        probabilities = (self.logit_scale_value() * series @ prompts.t()).softmax(dim=-1)
        batch_size, num_channels, num_tokens = outputs.code_indices.shape
        vectors = encoded["token_vectors"].reshape(batch_size, num_channels * num_tokens, -1)
        similarity = vectors @ prompts.t()  # (batch_size, channels * tokens, num_classes)
        explanations = []
        for row in range(batch_size):
            predicted = int(probabilities[row].argmax())
            others = [c for c in range(len(class_names)) if c != predicted]
            support = similarity[row, :, predicted] - (similarity[row][:, others].mean(dim=-1) if others else 0)
            order = support.argsort(descending=True)[:top_k].tolist()
            phrases = self.token_phrases(
                token_embeddings[row].reshape(num_channels * num_tokens, len(ATTRIBUTES), -1)[order])
            tokens = []
            for phrase, flat_index in zip(phrases, order):
                channel, token = divmod(flat_index, num_tokens)
                if encoded["intensity"] is not None and encoded["intensity"][row, channel] >= 0:
                    phrase += "; " + self._best_phrases("intensity",
                                                        encoded["intensity_embeddings"][row, channel, None])[0]
                start = float(outputs.shape_start[row, channel, token])
                tokens.append({
                    "phrase": phrase,
                    "code": int(outputs.code_indices[row, channel, token]),
                    "channel": channel,
                    "start": round(start, 4),
                    "end": round(min(start + float(outputs.shape_length[row, channel, token]), 1.0), 4),
                    "score": round(float(support[flat_index]), 4),
                })
            explanations.append({"predicted_class": class_names[predicted],
                                 "probability": round(float(probabilities[row, predicted]), 4), "tokens": tokens})
        return explanations


__all__ = [
    "VQShapeTextPreTrainedModel",
    "VQShapeForTextAlignment",
    "VQShapeForTextAlignmentOutput",
    "VQShapeZeroShotOutput",
    "VQShapeTextConfig",
    "caption_labels",
    "intensity_labels",
    "intensity_thresholds",
    "relative_intensity",
    "calibrations_by_source",
    "shape_labels",
    "multi_positive_info_nce",
    "load_text_encoder",
    "hubness_corrected_logits",
]
