"""VQShape model configuration."""

from transformers import PretrainedConfig

CODEBOOK_CHOICES = {
    "codebook_init": ("uniform", "kmeans"),
    "code_lookup": ("euclidean", "cosine"),
    "codebook_update": ("gradient", "ema"),
}

# The codebook options that `examples/pretrain.py` gives the models it creates (`benchmarks/bench_codebook.py` compares
# them with the original recipe and with each option alone). VQShapeConfig's own defaults stay the original's.
# what "combined" names: the four parts it has named since it existed, so that saved heads keep their size
COMBINED_FEATURE_PARTS = ("tokens", "histogram", "embedding", "statistics")
# what a classification head can read per channel, in the order it concatenates them
CLASSIFIER_FEATURE_PARTS = COMBINED_FEATURE_PARTS + ("reconstruction", "windows", "embedding_max", "windows_max")
# the parts read from the tokenized windows of the series, and how each pools them over the windows of a scale
WINDOW_PARTS = {"windows": "mean", "windows_max": "max"}


def classifier_feature_parts(features: str) -> tuple:
    """`"tokens+statistics"` -> `("tokens", "statistics")`, in `CLASSIFIER_FEATURE_PARTS` order; `"combined"` stands
    for `COMBINED_FEATURE_PARTS`, alone or joined (`"combined+reconstruction"`)."""
    parts = [part.strip() for part in str(features).split("+")]
    parts = [name for part in parts for name in (COMBINED_FEATURE_PARTS if part == "combined" else [part])]
    unknown = [part for part in parts if part not in CLASSIFIER_FEATURE_PARTS]
    if unknown:
        raise ValueError(
            f"VQShapeConfig: `classifier_features` must be 'combined' or parts of {CLASSIFIER_FEATURE_PARTS} joined "
            f"by '+', got {features!r}."
        )
    return tuple(part for part in CLASSIFIER_FEATURE_PARTS if part in parts)


def check_window_scales(scales, largest: int | None = None):
    """Raise a ValueError unless `scales` (of the `windows` and `windows_max` parts) are distinct integers of at least
    2, and at most `largest` (`input_length // 2`, where windows are cut) if given."""
    usable = [isinstance(k, int) and not isinstance(k, bool) and 2 <= k <= (largest or k)
              for k in scales] if isinstance(scales, (list, tuple)) else []
    if not usable or not all(usable) or len(set(scales)) < len(scales):
        raise ValueError(
            f"`classifier_window_scales` must be distinct integers of at least 2 (scale k: windows of "
            f"input_length // k steps){f', at most input_length // 2 = {largest}' if largest else ''}, got {scales!r} "
            "(the default is [2, 4])."
        )


DIVERSE_CODEBOOK = {
    "codebook_init": "kmeans",
    "code_lookup": "cosine",
    "rotation_trick": True,
    "dead_code_threshold": 0.1,
}
ORIGINAL_CODEBOOK = {
    "codebook_init": "uniform",
    "code_lookup": "euclidean",
    "codebook_update": "gradient",
    "codebook_projection": False,
    "rotation_trick": False,
    "dead_code_threshold": 0.0,
}


def remote_only_pipelines(custom_pipelines: dict | None) -> dict:
    """A saved config's `custom_pipelines` (which transformers serves only with `trust_remote_code=True`), less the
    tasks this installation already serves with the same pipeline class, i.e. when the package is imported: then
    `pipeline(task, model=folder)` uses the registered class and needs no remote code."""
    if not custom_pipelines:
        return {}
    from transformers.pipelines import PIPELINE_REGISTRY

    kept = {}
    for task, info in custom_pipelines.items():
        registered = PIPELINE_REGISTRY.supported_tasks.get(task, {}).get("impl")
        if registered is None or registered.__name__ != str(info.get("impl", "")).rsplit(".", 1)[-1]:
            kept[task] = info
    return kept


class VQShapeConfig(PretrainedConfig):
    r"""
    Configuration of a VQShape model (Wen et al., "Abstracted Shapes as Tokens", NeurIPS 2024).

    The defaults are the paper's pre-training script with a 256-wide model and a 512-entry codebook.

    Args:
        input_length (`int`, defaults to 512):
            Length every univariate series is resampled to before it enters the model.
        num_patches (`int`, defaults to 64):
            Number of patches the series is cut into; the patch stride is `input_length // num_patches`.
        patch_length (`int`, defaults to 8):
            Length of one patch; at most the stride, so that exactly `num_patches` patches fit.
        d_model (`int`, defaults to 256):
            Width of every Transformer.
        num_encoder_layers (`int`, defaults to 4), num_encoder_heads (`int`, defaults to 8):
            Depth and heads of the patch encoder.
        num_tokenizer_layers (`int`, defaults to 4), num_tokenizer_heads (`int`, defaults to 8):
            Depth and heads of the tokenizer (a Transformer decoder with `num_tokens` learned queries).
        num_decoder_layers (`int`, defaults to 2), num_decoder_heads (`int`, defaults to 8):
            Depth and heads of the patch decoder that reconstructs the series from the tokens.
        ffn_dim (`int`, *optional*):
            Feed-forward width of the Transformer layers; `4 * d_model` when not given.
        dropout (`float`, defaults to 0.1):
            Dropout inside the Transformer layers.
        layer_norm_eps (`float`, defaults to 1e-5):
            Epsilon of the Transformer layer norms.
        num_tokens (`int`, defaults to 64):
            Number of shape tokens per series; `input_length` must be a multiple of it.
        num_codes (`int`, defaults to 512):
            Number of codebook entries.
        code_dim (`int`, defaults to 8):
            Dimension of a code vector.
        shape_length (`int`, defaults to 128):
            Number of samples of a decoded shape; a multiple of 16 (the shape decoder upsamples twice by 4).
        shape_smoothing (`int`, defaults to 1):
            Odd window of the moving average applied to the target subsequences and kernel of the shape
            decoder's last convolution.
        min_shape_length (`float`, defaults to 1/64):
            Smallest relative length a shape may cover.
        reconstruction_weight, codebook_weight, shape_weight (`float`, default to 1.0),
        disentanglement_weight (`float`, defaults to 0.8):
            Weights of the four pre-training loss terms.
        commitment_weight (`float`, defaults to 0.25):
            Weight of the codebook-update term inside the codebook loss.
        entropy_weight (`float`, defaults to 0.1), entropy_gamma (`float`, defaults to 1.0),
        entropy_temperature (`float`, defaults to 0.01):
            Code-usage entropy regulariser of the codebook loss (per-token entropy minus `entropy_gamma`
            times the entropy of the mean assignment, with soft assignments at `entropy_temperature`).
        disentanglement_threshold (`float`, defaults to 0.2):
            Distance under which two tokens' (start, length) points are pushed apart.
        mask_ratio (`float`, defaults to 0.25):
            Share of the patches dropped from the encoder input during pre-training.
        num_input_channels (`int`, defaults to 1):
            Channels of the series a classification head expects (its features are flattened over them).
        classifier_features (`str`, defaults to `"tokens"`):
            What the classification head reads, per channel: one part or several joined by `"+"`, of `"tokens"`
            (every token's [code, start, length, offset, scale]), `"histogram"` (code frequencies), `"embedding"`
            (the tokenizer's output averaged over tokens), `"statistics"` (the mean and log-scale that instance
            normalisation takes out of each channel) and `"reconstruction"` (the series as the patch decoder rebuilds
            it from the tokens, in the input's scale, averaged over `classifier_reconstruction_steps` equal
            stretches), `"windows"` (the embedding of shorter windows of the series, each stretched to
            `input_length` and tokenized, averaged per scale of `classifier_window_scales`), `"embedding_max"` (the
            tokenizer's output, its largest value over tokens) and `"windows_max"` (each window's embedding, its
            largest value over the windows of a scale: whether a shape occurs anywhere, rather than on average);
            `"combined"` is the first four. Parts are always concatenated in that order.
        classifier_reconstruction_steps (`int`, defaults to 32):
            Values per channel of the `"reconstruction"` part; must divide `input_length`.
        classifier_window_scales (`list[int]`, defaults to `[2, 4]`):
            The scales of the `"windows"` and `"windows_max"` parts: scale k cuts the series into windows of
            `input_length // k` steps that overlap by half (2k - 1 of them where 2k divides `input_length`); each scale
            gives `d_model` values per channel.
        classifier_dropout (`float`, defaults to 0.1):
            Dropout on the classification head's input.
        freeze_backbone (`bool`, defaults to `False`):
            Whether the classification head leaves the VQShape backbone untrained.

    Codebook learning (each default is the original's behaviour, which converted and older checkpoints keep;
    `DIVERSE_CODEBOOK` is the combination the example scripts use):

        codebook_init (`str`, defaults to `"uniform"`):
            `"uniform"`: entries drawn in +-1/num_codes (the original). `"kmeans"`: the first training batch's code
            vectors are clustered (k-means++ seeding, `kmeans_iterations` Lloyd steps) and the centroids become the
            codebook, so every entry starts where the encoder's outputs are.
        kmeans_iterations (`int`, defaults to 10):
            Lloyd iterations of the k-means initialisation.
        code_lookup (`str`, defaults to `"euclidean"`):
            `"euclidean"`: nearest entry by squared distance (the original). `"cosine"`: code vectors and entries are
            L2-normalised before the lookup (ViT-VQGAN), so the quantised codes, and the shape decoder's input, have
            unit norm. Changes the forward pass.
        codebook_update (`str`, defaults to `"gradient"`):
            `"gradient"`: entries are trained by the codebook loss (the original). `"ema"`: entries are exponential
            moving averages of the code vectors assigned to them (VQ-VAE-2), decay `codebook_ema_decay`.
        codebook_ema_decay (`float`, defaults to 0.99):
            Decay of the EMA codebook update.
        codebook_projection (`bool`, defaults to `False`):
            SimVQ (Zhu et al. 2024): the stored entries are frozen and the codebook is their image under one learned
            linear map, so every gradient step moves all entries. Changes the forward pass.
        rotation_trick (`bool`, defaults to `False`):
            Pass gradients from quantised codes to code vectors through the rotation and rescaling that takes each
            vector to its code (Fifty et al. 2024) instead of copying them (straight-through). Forward values are
            unchanged.
        dead_code_threshold (`float`, defaults to 0.0):
            Re-seed dead codes during training: a code whose moving average share of the tokens falls below
            `dead_code_threshold / num_codes` is replaced by a code vector of the current batch (drawn in proportion
            to its distance from its own code) and counted in the `reseeded_codes` buffer. 0 turns it off.
        usage_ema_decay (`float`, defaults to 0.99):
            Decay of the moving average of code usage that `dead_code_threshold` reads (about 1 / (1 - decay) steps).
    """

    model_type = "vqshape"

    def __init__(
        self,
        input_length: int = 512,
        num_patches: int = 64,
        patch_length: int = 8,
        d_model: int = 256,
        num_encoder_layers: int = 4,
        num_encoder_heads: int = 8,
        num_tokenizer_layers: int = 4,
        num_tokenizer_heads: int = 8,
        num_decoder_layers: int = 2,
        num_decoder_heads: int = 8,
        ffn_dim: int | None = None,
        dropout: float = 0.1,
        layer_norm_eps: float = 1e-5,
        num_tokens: int = 64,
        num_codes: int = 512,
        code_dim: int = 8,
        shape_length: int = 128,
        shape_smoothing: int = 1,
        min_shape_length: float = 1 / 64,
        reconstruction_weight: float = 1.0,
        codebook_weight: float = 1.0,
        shape_weight: float = 1.0,
        disentanglement_weight: float = 0.8,
        commitment_weight: float = 0.25,
        entropy_weight: float = 0.1,
        entropy_gamma: float = 1.0,
        entropy_temperature: float = 0.01,
        disentanglement_threshold: float = 0.2,
        mask_ratio: float = 0.25,
        num_input_channels: int = 1,
        classifier_features: str = "tokens",
        classifier_dropout: float = 0.1,
        freeze_backbone: bool = False,
        classifier_reconstruction_steps: int = 32,
        classifier_window_scales: tuple = (2, 4),
        codebook_init: str = "uniform",
        kmeans_iterations: int = 10,
        code_lookup: str = "euclidean",
        codebook_update: str = "gradient",
        codebook_ema_decay: float = 0.99,
        codebook_projection: bool = False,
        rotation_trick: bool = False,
        dead_code_threshold: float = 0.0,
        usage_ema_decay: float = 0.99,
        **kwargs,
    ):
        self.input_length = input_length
        self.num_patches = num_patches
        self.patch_length = patch_length
        self.d_model = d_model
        self.num_encoder_layers = num_encoder_layers
        self.num_encoder_heads = num_encoder_heads
        self.num_tokenizer_layers = num_tokenizer_layers
        self.num_tokenizer_heads = num_tokenizer_heads
        self.num_decoder_layers = num_decoder_layers
        self.num_decoder_heads = num_decoder_heads
        self.ffn_dim = 4 * d_model if ffn_dim is None else ffn_dim
        self.dropout = dropout
        self.layer_norm_eps = layer_norm_eps
        self.num_tokens = num_tokens
        self.num_codes = num_codes
        self.code_dim = code_dim
        self.shape_length = shape_length
        self.shape_smoothing = shape_smoothing
        self.min_shape_length = min_shape_length
        self.reconstruction_weight = reconstruction_weight
        self.codebook_weight = codebook_weight
        self.shape_weight = shape_weight
        self.disentanglement_weight = disentanglement_weight
        self.commitment_weight = commitment_weight
        self.entropy_weight = entropy_weight
        self.entropy_gamma = entropy_gamma
        self.entropy_temperature = entropy_temperature
        self.disentanglement_threshold = disentanglement_threshold
        self.mask_ratio = mask_ratio
        self.num_input_channels = num_input_channels
        self.classifier_features = classifier_features
        self.classifier_dropout = classifier_dropout
        self.freeze_backbone = freeze_backbone
        self.classifier_reconstruction_steps = classifier_reconstruction_steps
        self.classifier_window_scales = (list(classifier_window_scales)
                                         if isinstance(classifier_window_scales, (list, tuple))
                                         else classifier_window_scales)
        self.codebook_init = codebook_init
        self.kmeans_iterations = kmeans_iterations
        self.code_lookup = code_lookup
        self.codebook_update = codebook_update
        self.codebook_ema_decay = codebook_ema_decay
        self.codebook_projection = codebook_projection
        self.rotation_trick = rotation_trick
        self.dead_code_threshold = dead_code_threshold
        self.usage_ema_decay = usage_ema_decay
        self._validate()
        if "custom_pipelines" in kwargs:
            kwargs["custom_pipelines"] = remote_only_pipelines(kwargs["custom_pipelines"])
        super().__init__(**kwargs)

    @property
    def patch_stride(self) -> int:
        return self.input_length // self.num_patches

    @property
    def decoder_patch_length(self) -> int:
        """Samples of the series each token reconstructs."""
        return self.input_length // self.num_tokens

    @property
    def classifier_feature_parts(self) -> tuple:
        """The parts of `classifier_features`, in their fixed order."""
        return classifier_feature_parts(self.classifier_features)

    @property
    def classifier_feature_sizes(self) -> dict:
        """Features per channel of each part the classification head reads, in order."""
        sizes = {"tokens": self.num_tokens * self.token_dim, "histogram": self.num_codes, "embedding": self.d_model,
                 "statistics": 2, "reconstruction": self.classifier_reconstruction_steps,
                 "windows": self.d_model * len(self.classifier_window_scales), "embedding_max": self.d_model,
                 "windows_max": self.d_model * len(self.classifier_window_scales)}
        return {part: sizes[part] for part in self.classifier_feature_parts}

    @property
    def token_dim(self) -> int:
        """Features per token: the code, then start, length, offset and scale."""
        return self.code_dim + 4

    def _validate(self):
        positive = (
            "input_length", "num_patches", "patch_length", "d_model", "num_encoder_layers", "num_encoder_heads",
            "num_tokenizer_layers", "num_tokenizer_heads", "num_decoder_layers", "num_decoder_heads", "ffn_dim",
            "num_tokens", "num_codes", "code_dim", "shape_length", "shape_smoothing", "num_input_channels",
            "kmeans_iterations", "classifier_reconstruction_steps",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VQShapeConfig: `{name}` must be a positive integer, got {value!r}.")
        if self.input_length % self.num_patches:
            raise ValueError(
                f"VQShapeConfig: `input_length` ({self.input_length}) must be divisible by `num_patches` "
                f"({self.num_patches}); choose num_patches among its divisors."
            )
        if self.patch_length > self.patch_stride:
            raise ValueError(
                f"VQShapeConfig: `patch_length` ({self.patch_length}) is longer than the patch stride "
                f"input_length // num_patches = {self.patch_stride}, so only "
                f"{(self.input_length - self.patch_length) // self.patch_stride + 1} of {self.num_patches} patches "
                "fit; use patch_length <= input_length // num_patches."
            )
        if self.input_length % self.num_tokens:
            raise ValueError(
                f"VQShapeConfig: `input_length` ({self.input_length}) must be divisible by `num_tokens` "
                f"({self.num_tokens}): each token reconstructs input_length // num_tokens samples."
            )
        if self.input_length % self.classifier_reconstruction_steps:
            raise ValueError(
                f"VQShapeConfig: `classifier_reconstruction_steps` ({self.classifier_reconstruction_steps}) must "
                f"divide `input_length` ({self.input_length}): each value averages an equal stretch of the series."
            )
        # the upper bound only where a head reads the windows: the default [2, 4] must not refuse short models
        check_window_scales(self.classifier_window_scales, self.input_length // 2
                            if set(WINDOW_PARTS) & set(classifier_feature_parts(self.classifier_features)) else None)
        if self.shape_length % 16:
            raise ValueError(
                f"VQShapeConfig: `shape_length` ({self.shape_length}) must be a multiple of 16: the shape decoder "
                "starts from shape_length // 16 samples and upsamples twice by 4."
            )
        if self.shape_smoothing % 2 == 0:
            raise ValueError(
                f"VQShapeConfig: `shape_smoothing` ({self.shape_smoothing}) must be odd so that the smoothed "
                "shapes keep their length."
            )
        for heads, layers in (("num_encoder_heads", "patch encoder"), ("num_tokenizer_heads", "tokenizer"),
                              ("num_decoder_heads", "patch decoder")):
            if self.d_model % getattr(self, heads):
                raise ValueError(
                    f"VQShapeConfig: `d_model` ({self.d_model}) must be divisible by `{heads}` "
                    f"({getattr(self, heads)}) of the {layers}."
                )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"VQShapeConfig: `mask_ratio` must lie in [0, 1), got {self.mask_ratio}.")
        if not 0.0 < self.min_shape_length < 1.0:
            raise ValueError(f"VQShapeConfig: `min_shape_length` must lie in (0, 1), got {self.min_shape_length}.")
        for name in ("dropout", "classifier_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"VQShapeConfig: `{name}` must lie in [0, 1), got {getattr(self, name)}.")
        classifier_feature_parts(self.classifier_features)  # raises on an unknown part
        for name, choices in CODEBOOK_CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"VQShapeConfig: `{name}` must be one of {choices}, got {getattr(self, name)!r}.")
        for name in ("codebook_ema_decay", "usage_ema_decay"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"VQShapeConfig: `{name}` must lie in (0, 1), got {getattr(self, name)}.")
        if not 0.0 <= self.dead_code_threshold < 1.0:
            raise ValueError(
                f"VQShapeConfig: `dead_code_threshold` must lie in [0, 1) (a share of the uniform usage 1/num_codes; "
                f"0 turns re-seeding off), got {self.dead_code_threshold}."
            )
        if self.codebook_projection and self.codebook_update == "ema":
            raise ValueError(
                "VQShapeConfig: `codebook_projection=True` (SimVQ) learns the codebook through a linear map and cannot "
                "be combined with `codebook_update='ema'`; choose one."
            )
        for name in ("entropy_temperature", "layer_norm_eps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"VQShapeConfig: `{name}` must be positive, got {getattr(self, name)}.")


__all__ = ["VQShapeConfig", "DIVERSE_CODEBOOK", "ORIGINAL_CODEBOOK"]
