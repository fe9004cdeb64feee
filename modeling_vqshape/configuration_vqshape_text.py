"""Configuration of the multimodal VQShape (codebook aligned with frozen sentence-transformer text embeddings)."""


import numpy as np
from transformers import PretrainedConfig

from .configuration_vqshape import VQShapeConfig, remote_only_pipelines

DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

# Attributes captioned per token, in this order; the values of each come from the rules in text_captions.py.
ATTRIBUTES = ("shape", "position", "duration", "amplitude", "level")
# Attributes captioned per channel or series, from the raw channels (what instance normalisation hides from the
# tokens): intensity from the channel's standard deviation `scale` against its domain's calibration
# (`intensity_thresholds`); rhythm from the channel's autocorrelation; channel, which named channel moves most (its
# intensity relative to its own calibration), when `channel_names` are known. Optional in a bank: models saved before
# an attribute existed load without it.
SERIES_ATTRIBUTES = ("intensity", "rhythm", "channel")
BANK_ATTRIBUTES = ATTRIBUTES + SERIES_ATTRIBUTES

# The phrase bank: attribute -> value -> paraphrases. The last `num_heldout_paraphrases` of each list never enter
# training; they measure whether the alignment generalises to wordings it was not trained on.
PHRASE_BANK = {
    "shape": {
        "rising": ["a rising trend", "an upward slope", "values going up", "an increasing ramp",
                   "a steady climb", "the signal increases"],
        "falling": ["a falling trend", "a downward slope", "values going down", "a decreasing ramp",
                    "a steady decline", "the signal decreases"],
        "flat": ["a flat segment", "a constant plateau", "no change", "a stable level",
                 "a steady flat line", "the signal stays level"],
        "peak": ["a sharp peak", "a spike upward", "a local maximum", "a bump that rises and falls",
                 "a hill", "a short burst up"],
        "dip": ["a sharp dip", "a drop and recovery", "a local minimum", "a valley",
                "a trough", "a downward spike"],
        "step up": ["a step up", "a sudden jump up", "a rise to a higher level", "an abrupt increase",
                    "a jump upward", "a sudden shift up"],
        "step down": ["a step down", "a sudden drop", "a fall to a lower level", "an abrupt decrease",
                      "a jump downward", "a sudden shift down"],
        "oscillation": ["an oscillation", "a repeating wave", "periodic ups and downs", "a vibration",
                        "a cyclic pattern", "a wavy signal"],
    },
    "position": {
        "early": ["early in the series", "at the beginning", "near the start", "in the first part",
                  "at the outset", "soon after the start"],
        "middle": ["in the middle of the series", "halfway through", "around the centre", "midway",
                   "in the central part", "at the midpoint"],
        "late": ["late in the series", "at the end", "near the finish", "in the last part",
                 "towards the end", "just before the end"],
    },
    "duration": {
        "short": ["brief", "a short moment", "lasting a short time", "quick", "momentary", "a short span"],
        "medium": ["of medium length", "lasting a while", "moderately long", "a medium span",
                   "of moderate duration", "neither long nor short"],
        "long": ["long lasting", "a long stretch", "spanning much of the series", "prolonged",
                 "extended over a long time", "a long span"],
    },
    "amplitude": {
        "small": ["small amplitude", "a subtle change", "a slight variation", "a small swing",
                  "a faint ripple", "a tiny fluctuation"],
        "moderate": ["moderate amplitude", "a noticeable change", "a medium variation", "a medium swing",
                     "a clear ripple", "a medium fluctuation"],
        "large": ["large amplitude", "a strong change", "a big variation", "a big swing",
                  "a dramatic excursion", "a huge fluctuation"],
    },
    "level": {
        "low": ["at a low level", "below average values", "low values", "near the bottom",
                "a low baseline", "under the mean"],
        "middle": ["at an average level", "around the mean", "typical values", "near the usual level",
                   "a middle baseline", "close to average"],
        "high": ["at a high level", "above average values", "high values", "near the top",
                 "a high baseline", "over the mean"],
    },
    "intensity": {
        "still": ["still, barely moving", "almost motionless", "nearly at rest", "very little activity",
                  "calm and quiet", "hardly any motion"],
        "moderate": ["moderate motion", "some steady activity", "medium activity level", "moving at an even pace",
                     "a fair amount of motion", "mildly active"],
        "vigorous": ["vigorous, intense motion", "very energetic activity", "strong, forceful movement",
                     "highly active", "intense and fast activity", "a lot of vigorous motion"],
    },
    "rhythm": {
        "regular": ["a regular rhythm", "a steady repeating cycle", "evenly timed repetitions",
                    "a periodic, regular pattern", "a consistent beat", "repeating at a steady pace"],
        "irregular": ["an irregular rhythm", "uneven, irregular repetitions", "bursts at irregular times",
                      "a jerky, uneven pattern", "erratic, unevenly spaced movements", "a broken, unsteady beat"],
        "none": ["no rhythm", "no repeating pattern", "aperiodic, without cycles", "nothing repeats",
                 "without any periodicity", "no cycles at all"],
    },
    # templates: "{}" is a channel's name (`channel_names`); the bank holds them for every channel
    "channel": {
        "moves most": ["the {} moves most", "most of the motion is in the {}", "the {} is the most active",
                       "the {} varies the most", "the strongest movement is on the {}",
                       "the {} shows the most activity"],
    },
}

DEFAULT_CLASS_TEMPLATES = ("{}", "a time series of {}", "sensor data recorded during {}", "a signal of {}")


def check_calibration(thresholds, name: str = "intensity thresholds") -> list | None:
    """An intensity calibration as stored: None, or `[low, high]` pairs of finite, increasing log-scale values (one
    pair, or one per channel), from lists, arrays or tensors; a `ValueError` naming `name` otherwise."""
    if thresholds is None:
        return None
    if hasattr(thresholds, "detach"):  # a tensor
        thresholds = thresholds.detach().cpu().tolist()
    try:  # numpy, not torch: models are built on the meta device by from_pretrained
        pairs = np.asarray(thresholds, dtype=np.float64)
    except (TypeError, ValueError):
        pairs = np.empty(0)
    pairs = pairs[None] if pairs.ndim == 1 else pairs
    if pairs.ndim != 2 or pairs.shape[-1] != 2 or len(pairs) == 0 or not np.isfinite(pairs).all() \
            or not (pairs[:, 0] < pairs[:, 1]).all():
        raise ValueError(f"{name} must be increasing [low, high] pairs of finite log-scale values (one pair, or one "
                         f"per channel), got {thresholds!r}; use calibrate_intensity(...).")
    return pairs.tolist()


class VQShapeTextConfig(PretrainedConfig):
    r"""
    Configuration of `VQShapeForTextAlignment`: a VQShape backbone, a frozen sentence-transformer's embeddings of a
    finite phrase bank, and the projection heads that align codes and tokens with them.

    Args:
        vqshape_config (`dict` or `VQShapeConfig`, *optional*):
            The backbone's configuration (nested in `config.json`); `VQShapeConfig()` when not given.
        text_model_name_or_path (`str`, defaults to `"sentence-transformers/all-MiniLM-L6-v2"`):
            The sentence-transformer that embedded the bank; loaded only to embed new free text.
        text_dim (`int`, defaults to 384):
            Its embedding size; a text model of another size is refused.
        phrase_bank (`dict`, *optional*):
            attribute -> value -> paraphrases, for the attributes `ATTRIBUTES` (and optionally `SERIES_ATTRIBUTES`) and
            the values of `PHRASE_BANK` (whose order the model uses); `PHRASE_BANK` when not given.
        num_heldout_paraphrases (`int`, defaults to 2):
            The last paraphrases of each value that training never sees (for evaluation).
        projection_hidden_dim (`int`, defaults to 256):
            Hidden width of the projection heads (codes, tokens, and the channel-level intensity, rhythm and channel).
        class_names (`list[str]`, *optional*), class_templates (`list[str]`, *optional*):
            Class names whose prompt embeddings are stored with the model (`set_class_names`), so that `explain` and
            `zero_shot_classify` serve them without the text encoder; `class_templates` ("{}" is the name) are the
            prompts averaged per class.
        class_descriptions (`list[list[str]]`, *optional*):
            When the stored classes were given as descriptions (`set_class_names({name: [descriptions]})`): each
            class's descriptions, in `class_names` order, whose embeddings are averaged instead of the templated name.
        logit_scale_init (`float`, defaults to 1/0.07), logit_scale_max (`float`, defaults to 100):
            Initial value and upper clamp of the learnable InfoNCE logit scale (CLIP's).
        code_text_weight, token_text_weight, class_text_weight (`float`, default to 1.0):
            Weights of the code <-> shape phrase, token <-> attribute phrase and series <-> class prompt losses.
        freeze_backbone (`bool`, defaults to `True`):
            Keep VQShape fixed (its codes keep their meaning); with `False` it trains jointly and the pre-training loss,
            weighted by `pretraining_weight`, is kept.
        pretraining_weight (`float`, defaults to 1.0):
            Weight of VQShape's pre-training loss in joint training.
        intensity_thresholds (`list[list[float]]`, *optional*):
            The calibration of the series-level *intensity* attribute: per channel (or one pair for all channels) two
            increasing thresholds on log(scale), the channel's standard deviation before instance normalisation:
            still < first <= moderate < second <= vigorous. Intensity is relative to a domain, so it is set from
            unlabelled series of that domain with `VQShapeForTextAlignment.calibrate_intensity` (their terciles).
            When not set, series embeddings carry no intensity (they depend on the shapes only).
        intensity_text_weight (`float`, defaults to 1.0):
            Weight of the channel intensity <-> intensity phrase loss.
        rhythm_text_weight (`float`, defaults to 1.0):
            Weight of the channel rhythm <-> rhythm phrase loss (regular, irregular or no rhythm, from each channel's
            autocorrelation; needs no calibration).
        channel_names (`list[str]`, *optional*):
            The names of the input channels, in order (e.g. `["accelerometer x", ..., "gyroscope z"]`). With them,
            series of exactly these channels get the *channel* attribute: which channel moves most, relative to its
            own intensity calibration (so it needs `intensity_thresholds` with one pair per channel). Fixed when the
            model is built (the head's size depends on the count).
        channel_text_weight (`float`, defaults to 1.0):
            Weight of the series <-> channel phrase loss.
        standardize_codes (`bool`, *optional*):
            Feed the projection heads code vectors standardised by the codebook's per-dimension mean and std (codes are
            small, about 0.1, next to the other token inputs, and heads fed raw codes barely tell them apart). When not
            given: `True`, except for phrase banks without the series attributes (models saved before them), whose
            heads were trained on raw codes.
    """

    model_type = "vqshape_text"
    sub_configs = {"vqshape_config": VQShapeConfig}

    def __init__(
        self,
        vqshape_config: dict | VQShapeConfig | None = None,
        text_model_name_or_path: str = DEFAULT_TEXT_MODEL,
        text_dim: int = 384,
        phrase_bank: dict | None = None,
        num_heldout_paraphrases: int = 2,
        projection_hidden_dim: int = 256,
        class_names: list | None = None,
        class_templates: list | None = None,
        class_descriptions: list | None = None,
        logit_scale_init: float = 1 / 0.07,
        logit_scale_max: float = 100.0,
        code_text_weight: float = 1.0,
        token_text_weight: float = 1.0,
        class_text_weight: float = 1.0,
        freeze_backbone: bool = True,
        pretraining_weight: float = 1.0,
        intensity_thresholds: list | None = None,
        intensity_text_weight: float = 1.0,
        rhythm_text_weight: float = 1.0,
        channel_names: list | None = None,
        channel_text_weight: float = 1.0,
        standardize_codes: bool | None = None,
        **kwargs,
    ):
        if vqshape_config is None:
            vqshape_config = VQShapeConfig()
        elif isinstance(vqshape_config, dict):
            vqshape_config = VQShapeConfig(**{k: v for k, v in vqshape_config.items() if k != "model_type"})
        self.vqshape_config = vqshape_config
        self.text_model_name_or_path = str(text_model_name_or_path)
        self.text_dim = text_dim
        self.phrase_bank = PHRASE_BANK if phrase_bank is None else phrase_bank
        self.num_heldout_paraphrases = num_heldout_paraphrases
        self.projection_hidden_dim = projection_hidden_dim
        self.class_names = list(class_names) if class_names else []
        self.class_templates = list(class_templates) if class_templates else list(DEFAULT_CLASS_TEMPLATES)
        self.class_descriptions = [list(texts) for texts in class_descriptions] if class_descriptions else []
        self.logit_scale_init = logit_scale_init
        self.logit_scale_max = logit_scale_max
        self.code_text_weight = code_text_weight
        self.token_text_weight = token_text_weight
        self.class_text_weight = class_text_weight
        self.freeze_backbone = freeze_backbone
        self.pretraining_weight = pretraining_weight
        self.intensity_thresholds = check_calibration(intensity_thresholds, "VQShapeTextConfig: `intensity_thresholds`")
        self.intensity_text_weight = intensity_text_weight
        self.rhythm_text_weight = rhythm_text_weight
        if isinstance(channel_names, str):
            raise ValueError(f"VQShapeTextConfig: `channel_names` must be a list of names, got {channel_names!r}.")
        self.channel_names = [str(name) for name in channel_names] if channel_names else None
        self.channel_text_weight = channel_text_weight
        # banks saved before the series attributes existed were trained on raw code vectors: keep them as they were
        self.standardize_codes = ("intensity" in self.phrase_bank if standardize_codes is None
                                  else bool(standardize_codes))
        self._validate()
        if "custom_pipelines" in kwargs:
            kwargs["custom_pipelines"] = remote_only_pipelines(kwargs["custom_pipelines"])
        super().__init__(**kwargs)

    def _validate(self):
        for name in ("text_dim", "projection_hidden_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VQShapeTextConfig: `{name}` must be a positive integer, got {value!r}.")
        # the series attributes are optional: banks saved before they existed load without them
        if not set(ATTRIBUTES) <= set(self.phrase_bank) <= set(BANK_ATTRIBUTES):
            raise ValueError(f"VQShapeTextConfig: `phrase_bank` must have the attributes {ATTRIBUTES} (and may have "
                             f"{SERIES_ATTRIBUTES}), got {sorted(self.phrase_bank)}.")
        if self.intensity_thresholds is not None:
            if "intensity" not in self.phrase_bank:
                raise ValueError("VQShapeTextConfig: `intensity_thresholds` is set but the phrase bank has no "
                                 "'intensity' phrases; rebuild the alignment with the current PHRASE_BANK.")
        for attribute in self.phrase_bank:
            if set(self.phrase_bank[attribute]) != set(PHRASE_BANK[attribute]):
                raise ValueError(f"VQShapeTextConfig: the values of `phrase_bank[{attribute!r}]` must be "
                                 f"{list(PHRASE_BANK[attribute])} (the caption rules produce them), got "
                                 f"{sorted(self.phrase_bank[attribute])}; only the paraphrases may change.")
        texts = [text for values in self.phrase_bank.values() for phrases in values.values() for text in phrases]
        if len(set(texts)) != len(texts):
            raise ValueError("VQShapeTextConfig: `phrase_bank` repeats a phrase; every paraphrase must be unique.")
        shortest = min(len(phrases) for values in self.phrase_bank.values() for phrases in values.values())
        if not 0 <= self.num_heldout_paraphrases < shortest:
            raise ValueError(f"VQShapeTextConfig: `num_heldout_paraphrases` must leave at least one training "
                             f"paraphrase per value (the shortest list has {shortest}), got "
                             f"{self.num_heldout_paraphrases}.")
        if self.channel_names is not None:
            if len(self.channel_names) < 2 or len(set(self.channel_names)) != len(self.channel_names) \
                    or not all(name.strip() for name in self.channel_names):
                raise ValueError(f"VQShapeTextConfig: `channel_names` must be at least two distinct, non-empty "
                                 f"names, got {self.channel_names}.")
            if "channel" not in self.phrase_bank or "intensity" not in self.phrase_bank:
                raise ValueError("VQShapeTextConfig: `channel_names` need the 'channel' and 'intensity' phrases in "
                                 "the phrase bank; rebuild the alignment with the current PHRASE_BANK.")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"VQShapeTextConfig: `class_names` has duplicates: {self.class_names}.")
        if self.class_descriptions and len(self.class_descriptions) != len(self.class_names):
            raise ValueError("VQShapeTextConfig: `class_descriptions` must hold one list of descriptions per class of "
                             f"`class_names`; got {len(self.class_descriptions)} for {len(self.class_names)} classes.")
        if not all("{}" in template for template in self.class_templates):
            raise ValueError(f"VQShapeTextConfig: every class template must contain '{{}}', got "
                             f"{self.class_templates}.")
        if not 1.0 <= self.logit_scale_init <= self.logit_scale_max:
            raise ValueError(f"VQShapeTextConfig: need 1 <= logit_scale_init <= logit_scale_max, got "
                             f"{self.logit_scale_init} and {self.logit_scale_max}.")


__all__ = [
    "VQShapeTextConfig",
    "ATTRIBUTES",
    "SERIES_ATTRIBUTES",
    "BANK_ATTRIBUTES",
    "PHRASE_BANK",
    "DEFAULT_TEXT_MODEL",
    "DEFAULT_CLASS_TEMPLATES",
]
