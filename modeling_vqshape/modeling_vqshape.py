"""PyTorch VQShape (Wen et al., "Abstracted Shapes as Tokens: A Generalizable and Interpretable Model for
Time-series Classification", NeurIPS 2024).

Reads top to bottom: pure functions (normalisation, subsequence sampling, patch masking, losses) -> the encoder's
blocks -> the codebook and its helpers -> the decoders -> output dataclasses -> VQShapePreTrainedModel ->
VQShapeModel (with `encode`, the one encode step of every head) -> heads.
"""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_vqshape import WINDOW_PARTS, VQShapeConfig, check_window_scales
from .saving_vqshape import CompletedFolderMixin

# ---------------------------------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------------------------------


def instance_normalize(series: torch.Tensor, eps: float = 1e-5):
    """Standardise each series by its mean and sqrt(unbiased variance + eps).

    Args:
        series: `(batch_size, sequence_length)`.
    Returns:
        `(scaled, loc, scale)`, with `loc` and `scale` of shape `(batch_size, 1)`.
    """
    loc = series.mean(dim=-1, keepdim=True)
    scale = (series.var(dim=-1, keepdim=True) + eps).sqrt()
    return (series - loc) / scale, loc, scale


def moving_average(values: torch.Tensor, window: int) -> torch.Tensor:
    """Centred moving average over the last axis with edge replication; identity for `window == 1`.

    Args:
        values: `(batch_size, num_tokens, shape_length)`.
    """
    if window == 1:
        return values
    pad = window // 2
    padded = F.pad(values, (pad, pad), mode="replicate")
    num_rows = values.shape[0] * values.shape[1]
    kernel = torch.full((1, 1, window), 1.0 / window, dtype=values.dtype, device=values.device)
    # "batch tokens time -> (batch tokens) 1 time" so that one 1-channel convolution smooths every row
    smoothed = F.conv1d(padded.reshape(num_rows, 1, -1), kernel)
    return smoothed.reshape(values.shape)


def token_span_end(start, length):
    """Where a token's span ends, relative to its series: start + length clamped at the series' end, 1. The attribute
    decoder lets start + length reach 1 + min_shape_length; `extract_subsequence` reads the span up to the series' end
    only, and the token tables, the pipeline and the pictures show that same span. Tensors or arrays alike."""
    return (start + length).clip(max=1.0)


def extract_subsequence(
    series: torch.Tensor, start: torch.Tensor, length: torch.Tensor, num_samples: int, smoothing: int = 1
) -> torch.Tensor:
    """Read the stretch [start, start + length] (relative positions) of each series at `num_samples` evenly spaced
    points by linear interpolation, then smooth it (paper Sec. 3.2, the target of the shape loss).

    Args:
        series: `(batch_size, sequence_length)`.
        start, length: `(batch_size, num_tokens, 1)` in [0, 1].
    Returns:
        `(batch_size, num_tokens, num_samples)`.
    """
    sequence_length = series.shape[-1]
    relative_positions = torch.linspace(0, 1, steps=num_samples, device=series.device, dtype=series.dtype)
    first = start * (sequence_length - 1)
    last = token_span_end(start, length) * (sequence_length - 1)
    positions = first + (last - first) * relative_positions  # (batch_size, num_tokens, num_samples)
    # grid_sample reads a (batch, 1, 1, time) image at x in [-1, 1] (align_corners: -1 and 1 are the end samples)
    grid_x = 2.0 * positions / (sequence_length - 1) - 1
    grid = torch.stack([grid_x, torch.ones_like(grid_x)], dim=-1)
    sampled = F.grid_sample(
        series[:, None, None, :], grid, mode="bilinear", padding_mode="border", align_corners=True
    )  # (batch_size, 1, num_tokens, num_samples)
    return moving_average(sampled[:, 0], smoothing)


def keep_random_patches(patch_embeddings: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """Drop `int(mask_ratio * num_patches)` random patches per series, drawn as the original draws them (paper
    Sec. 3.3). `(batch_size, num_patches, d_model)` -> `(batch_size, num_kept_patches, d_model)`."""
    batch_size, num_patches, _ = patch_embeddings.shape
    num_masked = int(mask_ratio * num_patches)
    order = torch.rand(batch_size, num_patches, device=patch_embeddings.device).argsort(dim=-1)
    kept = order[:, num_masked:]
    return patch_embeddings[torch.arange(batch_size, device=kept.device).unsqueeze(1), kept]


def reconstruction_loss(reconstruction: torch.Tensor, series: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the reconstructed series, in the input's scale (paper Eq. 4, L_x)."""
    return F.mse_loss(reconstruction, series)


def shape_loss(shapes: torch.Tensor, target_shapes: torch.Tensor) -> torch.Tensor:
    """Mean squared error between decoded shapes and the subsequences they point to (paper Eq. 5, L_s)."""
    return F.mse_loss(shapes, target_shapes.detach())


def _entropy(probabilities: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Entropy over the last dimension; probabilities below `eps` are logged as `eps` (the original's loss uses 1e-5,
    which also keeps its gradient finite)."""
    return -(probabilities * probabilities.clamp(min=eps).log()).sum(dim=-1)


def codebook_loss(
    z_e: torch.Tensor,
    nearest_codes: torch.Tensor,
    distances: torch.Tensor,
    commitment_weight: float,
    entropy_weight: float,
    entropy_gamma: float,
    entropy_temperature: float,
) -> torch.Tensor:
    """Codebook loss (paper Eq. 3, L_vq): the encoder is pulled to its code with weight 1, the code to the encoder
    with `commitment_weight`, plus the code-usage entropy regulariser. As in the original, it can be negative.

    Args:
        z_e: `(num_vectors, code_dim)` encoder outputs.
        nearest_codes: `(num_vectors, code_dim)` their nearest codebook entries (not straight-through).
        distances: `(num_vectors, num_codes)` squared distances to every entry.
    """
    loss = F.mse_loss(z_e, nearest_codes.detach()) + commitment_weight * F.mse_loss(nearest_codes, z_e.detach())
    if entropy_weight > 0:
        soft_assignment = F.softmin(distances / entropy_temperature, dim=-1)
        entropy = _entropy(soft_assignment).mean() - entropy_gamma * _entropy(soft_assignment.mean(dim=0))
        loss = loss + entropy_weight * entropy
    return loss


def disentanglement_loss(
    start: torch.Tensor, length: torch.Tensor, min_shape_length: float, threshold: float
) -> torch.Tensor:
    """Push the tokens of a series apart in (start, length) (paper Eq. 6, L_div): each token is the point
    r (cos(pi t), sin(pi t)) with r = log(l) / log(min_shape_length), and pairs closer than `threshold` are penalised.

    Args:
        start, length: `(batch_size, num_tokens, 1)`.
    """
    radius = length.log() / math.log(min_shape_length)
    points = torch.cat([torch.cos(torch.pi * start) * radius, torch.sin(torch.pi * start) * radius], dim=-1)
    pairwise = torch.norm(points.unsqueeze(1) - points.unsqueeze(2), dim=-1)  # (batch_size, num_tokens, num_tokens)
    off_diagonal = 1.0 - torch.eye(pairwise.shape[-1], device=pairwise.device, dtype=pairwise.dtype)
    return (F.relu(threshold - pairwise) * off_diagonal).mean()


# ---------------------------------------------------------------------------------------------------------------------
# Blocks: the encoder side
# ---------------------------------------------------------------------------------------------------------------------


def _encoder_stack(config: VQShapeConfig, num_layers: int, num_heads: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model=config.d_model,
        nhead=num_heads,
        dim_feedforward=config.ffn_dim,
        dropout=config.dropout,
        activation="gelu",
        layer_norm_eps=config.layer_norm_eps,
        batch_first=True,
    )
    return nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)


class VQShapePatchEncoder(nn.Module):
    """Cuts the normalised series into patches, embeds them and encodes them with a Transformer encoder."""

    def __init__(self, config: VQShapeConfig):
        super().__init__()
        self.patch_length = config.patch_length
        self.patch_stride = config.patch_stride
        self.num_patches = config.num_patches
        self.input_projection = nn.Linear(config.patch_length, config.d_model)
        self.position_embeddings = nn.Embedding(config.num_patches, config.d_model)
        self.encoder = _encoder_stack(config, config.num_encoder_layers, config.num_encoder_heads)

    def embed(self, scaled: torch.Tensor) -> torch.Tensor:
        """`(batch_size, sequence_length)` -> `(batch_size, num_patches, d_model)`."""
        patches = scaled.unfold(-1, self.patch_length, self.patch_stride)  # (batch_size, num_patches, patch_length)
        return self.input_projection(patches) + self.position_embeddings.weight[: patches.shape[1]]

    def forward(self, patch_embeddings: torch.Tensor) -> torch.Tensor:
        """`(batch_size, num_kept_patches, d_model)` -> same shape."""
        return self.encoder(patch_embeddings)


class VQShapeTokenizer(nn.Module):
    """A Transformer decoder whose `num_tokens` learned queries cross-attend to the encoded patches."""

    def __init__(self, config: VQShapeConfig):
        super().__init__()
        self.query_tokens = nn.Parameter(torch.empty(1, config.num_tokens, config.d_model))
        layer = nn.TransformerDecoderLayer(
            d_model=config.d_model,
            nhead=config.num_tokenizer_heads,
            dim_feedforward=config.ffn_dim,
            dropout=config.dropout,
            activation="gelu",
            layer_norm_eps=config.layer_norm_eps,
            batch_first=True,
        )
        self.decoder = nn.TransformerDecoder(layer, num_layers=config.num_tokenizer_layers)

    def forward(self, encoded_patches: torch.Tensor) -> torch.Tensor:
        """`(batch_size, num_patches, d_model)` -> `(batch_size, num_tokens, d_model)`."""
        if not self.training:
            return self._inference_forward(encoded_patches)
        queries = self.query_tokens.expand(encoded_patches.shape[0], -1, -1)
        return self.decoder(queries, encoded_patches)

    def _inference_forward(self, encoded_patches: torch.Tensor) -> torch.Tensor:
        """The same function as `self.decoder(queries, encoded_patches)` without dropout, computed with less work: the
        first layer's self-attention and cross-attention query see the same learned queries for every series, so they
        are computed once and broadcast; the cross-attention keys and values of all layers come from one matrix
        multiplication of the encoded patches; attention is `scaled_dot_product_attention`."""
        layers = self.decoder.layers
        batch_size, num_patches, d_model = encoded_patches.shape
        num_heads = layers[0].self_attn.num_heads
        # every layer's cross-attention keys and values at once: (batch_size, num_patches, num_layers * 2 * d_model)
        kv_weights = torch.cat([layer.multihead_attn.in_proj_weight[d_model:] for layer in layers])
        kv_biases = torch.cat([layer.multihead_attn.in_proj_bias[d_model:] for layer in layers])
        keys_values = F.linear(encoded_patches, kv_weights, kv_biases)

        def heads(tensor):  # "batch length (heads dim) -> batch heads length dim"
            return tensor.unflatten(-1, (num_heads, -1)).transpose(1, 2)

        def attention(attn: nn.MultiheadAttention, query, key, value):
            attended = F.scaled_dot_product_attention(heads(query), heads(key), heads(value))
            # "batch heads length dim -> batch length (heads dim)"
            return F.linear(attended.transpose(1, 2).flatten(2), attn.out_proj.weight, attn.out_proj.bias)

        hidden = self.query_tokens  # (1, num_tokens, d_model) until the first cross-attention makes it per series
        for index, layer in enumerate(layers):
            query, key, value = F.linear(hidden, layer.self_attn.in_proj_weight,
                                         layer.self_attn.in_proj_bias).chunk(3, -1)
            hidden = layer.norm1(hidden + attention(layer.self_attn, query, key, value))
            attn = layer.multihead_attn
            query = F.linear(hidden, attn.in_proj_weight[:d_model], attn.in_proj_bias[:d_model])
            key, value = keys_values[..., 2 * d_model * index: 2 * d_model * (index + 1)].chunk(2, -1)
            hidden = layer.norm2(hidden + attention(attn, query.expand(batch_size, -1, -1), key, value))
            hidden = layer.norm3(hidden + layer.linear2(layer.activation(layer.linear1(hidden))))
        return hidden


def _mlp(in_features: int, out_features: int, hidden_features: int, activation=nn.ReLU) -> nn.Sequential:
    """Linear -> activation -> Linear: the attribute decoder's heads (ReLU) and the text model's projections (GELU)."""
    return nn.Sequential(nn.Linear(in_features, hidden_features), activation(),
                         nn.Linear(hidden_features, out_features))


class VQShapeAttributeDecoder(nn.Module):
    """Decodes each token into a code vector z_e, a start t, a length l, an offset mu and a scale sigma."""

    def __init__(self, config: VQShapeConfig):
        super().__init__()
        self.min_shape_length = config.min_shape_length
        self.code_head = _mlp(config.d_model, config.code_dim, config.d_model)
        self.start_length_head = _mlp(config.d_model, 2, config.d_model)
        self.offset_head = _mlp(config.d_model, 1, config.d_model)
        self.scale_head = _mlp(config.d_model, 1, config.d_model)

    def forward(self, hidden_states: torch.Tensor):
        """`(batch_size, num_tokens, d_model)` -> z_e `(batch_size, num_tokens, code_dim)` and start, length,
        offset, scale, each `(batch_size, num_tokens, 1)`."""
        start_length = torch.sigmoid(self.start_length_head(hidden_states))
        # l >= min_shape_length and t + l <= 1 + min_shape_length (paper Sec. 3.1)
        start = start_length[..., :1] * (1 - self.min_shape_length)
        length = start_length[..., 1:] * (1 - start) + self.min_shape_length
        offset = self.offset_head(hidden_states)
        scale = F.softplus(self.scale_head(hidden_states))
        return self.code_head(hidden_states), start, length, offset, scale


# ---------------------------------------------------------------------------------------------------------------------
# The codebook: code usage, distributed helpers, k-means, quantisation and VQShapeCodebook
# ---------------------------------------------------------------------------------------------------------------------


def code_histogram(code_indices: torch.Tensor, num_codes: int) -> torch.LongTensor:
    """How often each code occurs along the last axis: `(..., num_tokens)` -> `(..., num_codes)` int64 counts (the
    model's `histogram`; a 1-D input gives the counts of all its indices). By scatter, not bincount: bincount's output
    size depends on the values, which torch.compile cannot trace."""
    rows = code_indices.reshape(-1, code_indices.shape[-1])
    counts = torch.zeros(rows.shape[0], num_codes, dtype=torch.long, device=code_indices.device)
    counts.scatter_add_(1, rows, torch.ones_like(rows))
    return counts.reshape(*code_indices.shape[:-1], num_codes)


def usage_from_counts(counts: torch.Tensor):
    """Perplexity of a code distribution given as counts per code, `(num_codes,)`, and the fraction of codes used."""
    counts = counts.to(torch.float32)
    probabilities = counts / counts.sum().clamp(min=1)
    perplexity = torch.exp(_entropy(probabilities, eps=1e-10))  # a measurement: a finer clamp than the loss's
    return perplexity, (counts > 0).to(torch.float32).mean()


def usage_from_indices(code_indices: torch.Tensor, num_codes: int):
    """Perplexity of the hard code assignments and the fraction of the codebook they use."""
    return usage_from_counts(code_histogram(code_indices.reshape(-1), num_codes))


def _world_size() -> int:
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_world_size() if distributed else 1


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over the ranks of a distributed run (in place); the tensor itself on one process."""
    if _world_size() > 1:
        torch.distributed.all_reduce(tensor)
    return tensor


def _gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """The rows of every rank of a distributed run, concatenated in rank order (ranks may hold different numbers)."""
    if _world_size() == 1:
        return tensor
    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(_world_size())]
    torch.distributed.all_gather(sizes, torch.tensor([len(tensor)], device=tensor.device))
    largest = int(max(sizes))
    padded = torch.cat([tensor, tensor.new_zeros(largest - len(tensor), *tensor.shape[1:])])
    gathered = [torch.empty_like(padded) for _ in sizes]
    torch.distributed.all_gather(gathered, padded)
    return torch.cat([rows[: int(size)] for rows, size in zip(gathered, sizes)])


def _from_first_rank(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's value on every rank (in place), so that a codebook changed outside the optimiser stays identical."""
    if _world_size() > 1:
        torch.distributed.broadcast(tensor, src=0)
    return tensor


def kmeans(vectors: torch.Tensor, num_clusters: int, iterations: int, spherical: bool = False):
    """k-means++ seeding, then Lloyd iterations; clusters left empty keep their centre. Uses the global RNG.

    Args:
        vectors: `(num_vectors, code_dim)`; with fewer vectors than clusters, seeds repeat.
        spherical: cluster directions (vectors and centres L2-normalised, cosine assignment).
    Returns:
        `(centres, counts)`: `(num_clusters, code_dim)` and `(num_clusters,)` vectors assigned to each.
    """
    vectors = vectors.detach().float()
    if spherical:
        vectors = F.normalize(vectors, dim=-1)
    centres = vectors[torch.randint(len(vectors), (1,), device=vectors.device)]
    nearest = torch.cdist(vectors, centres).pow(2).squeeze(1)
    for _ in range(1, num_clusters):  # k-means++: the next seed drawn in proportion to the squared distance
        weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)
        seed = vectors[torch.multinomial(weights, 1)]
        centres = torch.cat([centres, seed])
        nearest = torch.minimum(nearest, (vectors - seed).pow(2).sum(-1))
    for _ in range(iterations):
        assignment = torch.cdist(vectors, centres).argmin(dim=1)
        counts = torch.bincount(assignment, minlength=num_clusters).to(vectors.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assignment, vectors)
        updated = sums / counts.clamp(min=1).unsqueeze(1)
        if spherical:
            updated = F.normalize(updated, dim=-1)
        centres = torch.where(counts.unsqueeze(1) > 0, updated, centres)
    counts = torch.bincount(torch.cdist(vectors, centres).argmin(dim=1), minlength=num_clusters).to(vectors.dtype)
    return centres, counts


def straight_through(z_e: torch.Tensor, nearest: torch.Tensor) -> torch.Tensor:
    """The quantised codes: the value of `nearest`, the gradient copied to `z_e` (VQ-VAE)."""
    return z_e + (nearest - z_e).detach()


def rotation_trick(z_e: torch.Tensor, nearest: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The quantised codes with the rotation trick (Fifty et al. 2024, Eq. 5): the value of `nearest`; the gradient
    reaches `z_e` through the fixed rotation R and rescaling that take `z_e` to `nearest`, so it keeps its angle to
    the code. R e = e - 2 (r.e) r + 2 (e_hat.e) q_hat with r = normalise(e_hat + q_hat); R, e_hat, q_hat and the scale
    are constants of the backward pass.

    Args:
        z_e, nearest: `(num_vectors, code_dim)`.
    """
    z_norm = z_e.norm(dim=-1, keepdim=True).clamp(min=eps)
    code_norm = nearest.norm(dim=-1, keepdim=True).clamp(min=eps)
    e_hat = (z_e / z_norm).detach()
    q_hat = (nearest / code_norm).detach()
    r = F.normalize(e_hat + q_hat, dim=-1)
    rotated = z_e - 2 * (z_e * r).sum(-1, keepdim=True) * r + 2 * (z_e * e_hat).sum(-1, keepdim=True) * q_hat
    rotated = (code_norm / z_norm).detach() * rotated
    return rotated + (nearest - rotated).detach()  # the exact value of nearest; the gradient of the rotation


@dataclass
class _Quantized:
    """What the codebook gives for `num_vectors` code vectors."""

    z_e: torch.Tensor  # (num_vectors, code_dim) the vectors as looked up (L2-normalised for cosine lookup)
    codes: torch.Tensor  # (num_vectors, code_dim) quantised: the value of nearest, a gradient to z_e
    nearest: torch.Tensor  # (num_vectors, code_dim) nearest entries, not straight-through
    code_indices: torch.Tensor  # (num_vectors,)
    distances: torch.Tensor  # (num_vectors, num_codes) squared distances to every entry


class VQShapeCodebook(nn.Module):
    """Vector quantiser: every code vector goes to its nearest entry.

    With the original config it is the original's Euclidean lookup of a gradient-trained table. The options of
    `VQShapeConfig` (codebook_init, code_lookup, codebook_update, codebook_projection, rotation_trick,
    dead_code_threshold) add k-means initialisation, cosine lookup, EMA updates, the SimVQ projection, the rotation
    trick and dead-code re-seeding; their statistics are buffers, registered only when an option needs them, so that
    original checkpoints keep their exact state dict. Changes made outside the optimiser (initialisation, re-seeding,
    EMA) use statistics summed over the ranks of a distributed run and rank 0's draws, so every rank keeps the same
    codebook.
    """

    def __init__(self, config: VQShapeConfig):
        super().__init__()
        self.num_codes = config.num_codes
        self.cosine = config.code_lookup == "cosine"
        self.kmeans_iterations = config.kmeans_iterations
        self.ema_decay = config.codebook_ema_decay
        self.usage_decay = config.usage_ema_decay
        self.dead_threshold = config.dead_code_threshold / config.num_codes
        self.quantize = rotation_trick if config.rotation_trick else straight_through
        self.weight = nn.Parameter(torch.empty(config.num_codes, config.code_dim))
        # SimVQ: the stored entries are frozen, the codebook is their image under a learned linear map
        self.projection = (nn.Linear(config.code_dim, config.code_dim, bias=False) if config.codebook_projection
                           else None)
        self.ema = config.codebook_update == "ema"
        if self.ema or self.projection is not None:
            self.weight.requires_grad_(False)
        if config.codebook_init == "kmeans":
            self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        if self.ema:
            self.register_buffer("ema_counts", torch.empty(config.num_codes))
            self.register_buffer("ema_sums", torch.empty(config.num_codes, config.code_dim))
        if self.dead_threshold > 0:
            self.register_buffer("usage", torch.empty(config.num_codes))  # moving average share of the tokens
            self.register_buffer("reseeded_codes", torch.zeros((), dtype=torch.long))  # re-seeded since creation
        # k-means initialisation or re-seeding change entries outside the optimiser, before a training lookup
        self.changes_entries = config.codebook_init == "kmeans" or self.dead_threshold > 0

    @property
    def codes(self) -> torch.Tensor:
        """The codebook as looked up, `(num_codes, code_dim)`: the entries, their SimVQ image, normalised for cosine
        lookup."""
        codes = self.weight if self.projection is None else self.projection(self.weight)
        return F.normalize(codes, dim=-1) if self.cosine else codes

    def forward(self, z_e: torch.Tensor) -> _Quantized:
        """
        Args:
            z_e: `(num_vectors, code_dim)`.
        """
        # at least float32 whatever the autocast: a bf16 distance would change which entry is nearest
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            quantized = self._quantize(z_e.to(torch.promote_types(z_e.dtype, torch.float32)))
        quantized.codes = quantized.codes.to(z_e.dtype)  # what the decoders read, in the model's precision
        return quantized

    def _quantize(self, z_e: torch.Tensor) -> _Quantized:
        if self.cosine:
            z_e = F.normalize(z_e, dim=-1)
        if self.training and self.changes_entries:
            self._prepare(z_e.detach())
        codes = self.codes.to(z_e.dtype)
        if self.ema:  # updated in place after the lookup: backward must see the entries used here
            codes = codes.clone()
        # |z|^2 + |e|^2 - 2 z.e, the original's expansion (the argmin must agree with it exactly)
        distances = (z_e**2).sum(dim=1, keepdim=True) + (codes**2).sum(dim=1) - 2 * (z_e @ codes.t())
        code_indices = distances.argmin(dim=1)
        nearest = F.embedding(code_indices, codes)
        if self.training:
            self._update_statistics(z_e.detach(), code_indices)
        return _Quantized(z_e, self.quantize(z_e, nearest), nearest, code_indices, distances)

    # ---- training-time codebook changes (no gradient) ----

    def _set_entries(self, rows: torch.Tensor, vectors: torch.Tensor):
        """Make the looked-up codes of `rows` equal `vectors` (through the inverse SimVQ map when there is one)."""
        if self.projection is not None:  # entries C with C W^T = vectors
            vectors = vectors @ torch.linalg.pinv(self.projection.weight.detach().float().t()).to(vectors.dtype)
        self.weight.data[rows] = vectors.to(self.weight.dtype)

    @torch.compiler.disable  # data-dependent (is it initialised, which codes are dead): runs eagerly when compiled
    @torch.no_grad()
    def _prepare(self, z_e: torch.Tensor):
        if hasattr(self, "initialized") and not self.initialized:  # the first batch of every rank, clustered once
            centres, counts = kmeans(_gather_rows(z_e), self.num_codes, self.kmeans_iterations, spherical=self.cosine)
            self._set_entries(slice(None), centres)
            _from_first_rank(self.weight.data)
            self.initialized.fill_(True)
            if self.ema:
                self.ema_counts.copy_(_from_first_rank(counts.to(self.ema_counts.dtype)))
                self.ema_sums.copy_(self.weight * self.ema_counts.unsqueeze(1))
        if self.dead_threshold > 0:
            dead = (self.usage < self.dead_threshold).nonzero().squeeze(1)
            if len(dead):
                self._reseed(dead, z_e)

    def _reseed(self, dead: torch.Tensor, z_e: torch.Tensor):
        """Replace the `dead` codes by code vectors of this batch, drawn without replacement in proportion to their
        squared distance from the codebook, so that poorly represented vectors get codes first. Rank 0 draws."""
        distances = torch.cdist(z_e.float(), self.codes.float()).min(dim=1).values.pow(2) + 1e-12
        picked = torch.multinomial(distances, len(dead), replacement=len(dead) > len(z_e))
        self._set_entries(dead, z_e[picked])
        _from_first_rank(self.weight.data)
        self.usage[dead] = 1.0 / self.num_codes  # a fresh code counts as used at the uniform rate
        if self.ema:
            self.ema_counts[dead] = self.ema_counts.mean()
            self.ema_sums[dead] = self.weight[dead] * self.ema_counts[dead].unsqueeze(1)
        self.reseeded_codes += len(dead)

    @torch.no_grad()
    def _update_statistics(self, z_e: torch.Tensor, code_indices: torch.Tensor):
        if not (self.ema or self.dead_threshold > 0):
            return
        one_hot = F.one_hot(code_indices, self.num_codes).float()  # (num_vectors, num_codes); float32 even under bf16
        counts = _all_reduce_sum(one_hot.sum(dim=0))
        if self.dead_threshold > 0:
            self.usage.lerp_(counts / counts.sum().clamp(min=1), 1 - self.usage_decay)
        if self.ema:  # VQ-VAE-2: moving averages of counts and sums; Laplace smoothing keeps every count positive
            sums = _all_reduce_sum(one_hot.t() @ z_e.float())
            self.ema_counts.lerp_(counts, 1 - self.ema_decay)
            self.ema_sums.lerp_(sums, 1 - self.ema_decay)
            total = self.ema_counts.sum()
            smoothed = (self.ema_counts + 1e-5) / (total + self.num_codes * 1e-5) * total
            entries = self.ema_sums / smoothed.unsqueeze(1)
            self.weight.data.copy_(F.normalize(entries, dim=-1) if self.cosine else entries)


# ---------------------------------------------------------------------------------------------------------------------
# Blocks: the decoders
# ---------------------------------------------------------------------------------------------------------------------


class VQShapeAttributeEncoder(nn.Module):
    """Embeds a token's attributes back to `d_model` for the patch decoder."""

    def __init__(self, config: VQShapeConfig):
        super().__init__()
        self.projection = nn.Linear(config.code_dim + 4, config.d_model)

    def forward(self, codes, start, length, offset, scale) -> torch.Tensor:
        # The original concatenates [code, mu, sigma, t, l], unlike the token features' [code, t, l, mu, sigma].
        return self.projection(torch.cat([codes, offset, scale, start, length], dim=-1))


class VQShapePatchDecoder(nn.Module):
    """Reconstructs the normalised series from the tokens: each token yields `input_length // num_tokens` samples."""

    def __init__(self, config: VQShapeConfig):
        super().__init__()
        self.cls_token = nn.Parameter(torch.empty(1, 1, config.d_model))
        self.decoder = _encoder_stack(config, config.num_decoder_layers, config.num_decoder_heads)
        self.output_projection = nn.Linear(config.d_model, config.decoder_patch_length)

    def forward(self, token_embeddings: torch.Tensor) -> torch.Tensor:
        """`(batch_size, num_tokens, d_model)` -> `(batch_size, sequence_length)`."""
        batch_size = token_embeddings.shape[0]
        hidden = self.decoder(torch.cat([self.cls_token.expand(batch_size, -1, -1), token_embeddings], dim=1))
        # "batch tokens patch -> batch (tokens patch)", dropping the cls position
        return self.output_projection(hidden[:, 1:]).reshape(batch_size, -1)


def shape_decoder_layout(device: torch.device) -> str:
    """How the shape decoder lays out its activations: "channels_last" runs its 1-D convolutions as 2-D ones in the
    channels-last layout, "plain" as `(rows, channels, time)` 1-D ones; the same function either way.

    Measured on the shape decoder's thousands of short rows (docs/benchmarks.md): channels-last is about twice as fast
    as the 1-D layout on CPU (oneDNN) and 1.5x in an eager CUDA training step (cuDNN), while a CUDA training step
    compiled with torch.compile is faster with the plain layout.
    """
    return "plain" if device.type == "cuda" and torch.compiler.is_compiling() else "channels_last"


def same_conv(hidden: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """Apply a 'same'-padded `nn.Conv1d` to `(rows, channels, time)` activations, or to `(rows, channels, 1, time)`
    channels-last ones as a 2-D convolution with the same parameters (checkpoints keep the original's shapes)."""
    if hidden.dim() == 3:
        return conv(hidden)
    return F.conv2d(hidden, conv.weight.unsqueeze(2), conv.bias, padding=(0, conv.kernel_size[0] // 2))


class VQShapeResidualBlock(nn.Module):
    """GroupNorm -> GELU -> Conv -> GroupNorm -> GELU -> Conv plus a skip (a 1x1 Conv when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(16, in_channels),
            nn.GELU(),
            nn.Conv1d(in_channels, out_channels, 3, padding="same"),
            nn.GroupNorm(16, out_channels),
            nn.GELU(),
            nn.Conv1d(out_channels, out_channels, 3, padding="same"),
        )
        self.skip = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """`(rows, in_channels, [1,] time)` -> `(rows, out_channels, [1,] time)` (see `same_conv`)."""
        first_norm, _, first_conv, second_norm, _, second_conv = self.block
        out = same_conv(F.gelu(first_norm(hidden)), first_conv)
        out = same_conv(F.gelu(second_norm(out)), second_conv)
        skip = hidden if isinstance(self.skip, nn.Identity) else same_conv(hidden, self.skip)
        return skip + out


class VQShapeUpsample(nn.Module):
    """Nearest-neighbour upsampling of the time axis by `factor`, then a 'same' convolution."""

    def __init__(self, channels: int, factor: int = 4):
        super().__init__()
        self.factor = factor
        self.conv = nn.Conv1d(channels, channels, 3, padding="same")

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """`(rows, channels, [1,] time)` -> `(rows, channels, [1,] factor * time)` (see `same_conv`)."""
        factor = (1.0, float(self.factor)) if hidden.dim() == 4 else float(self.factor)
        return same_conv(F.interpolate(hidden, scale_factor=factor, mode="nearest"), self.conv)


class VQShapeShapeDecoder(nn.Module):
    """Decodes a code vector into a standardised shape of `shape_length` samples. The channel widths (128, 64) are
    fixed, as in the original."""

    channels = 128

    def __init__(self, config: VQShapeConfig):
        super().__init__()
        self.input_projection = nn.Linear(config.code_dim, config.shape_length * 8)
        self.residual_in = VQShapeResidualBlock(128, 128)
        self.upsample_in = VQShapeUpsample(128)
        self.residual_out = VQShapeResidualBlock(128, 64)
        self.upsample_out = VQShapeUpsample(64)
        self.output_conv = nn.Conv1d(64, 1, config.shape_smoothing, padding="same")

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """`(batch_size, num_tokens, code_dim)` -> `(batch_size, num_tokens, shape_length)`, each shape with zero mean
        and unit (unbiased) standard deviation."""
        batch_size, num_tokens, _ = codes.shape
        # "batch tokens (channels time) -> (batch tokens) channels time", channel-major as the original's Rearrange
        hidden = self.input_projection(codes).reshape(batch_size * num_tokens, self.channels, -1)
        if shape_decoder_layout(codes.device) == "channels_last":  # "... channels time -> ... channels 1 time"
            hidden = hidden.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        hidden = self.upsample_in(F.gelu(self.residual_in(hidden)))
        hidden = F.gelu(self.upsample_out(F.gelu(self.residual_out(hidden))))
        shapes = same_conv(hidden, self.output_conv).reshape(batch_size, num_tokens, -1)
        return (shapes - shapes.mean(dim=-1, keepdim=True)) / (shapes.std(dim=-1, keepdim=True) + 1e-8)


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class VQShapeModelOutput(ModelOutput):
    """
    Args:
        last_hidden_state: `(batch_size, num_channels, num_tokens, d_model)` tokenizer output.
        token_features: `(batch_size, num_channels, num_tokens, code_dim + 4)`: [code, start, length, offset, scale].
        histogram: `(batch_size, num_channels, num_codes)` int64 count of each code among a series' tokens.
        code_indices: `(batch_size, num_channels, num_tokens)` codebook row of each token.
        codes: `(batch_size, num_channels, num_tokens, code_dim)` quantised codes (straight-through).
        shape_start, shape_length, shape_offset, shape_scale: `(batch_size, num_channels, num_tokens)`; start and
            length relative to the series, offset and scale in the normalised scale.
        loc, scale: `(batch_size, num_channels)` the mean and scale each series was normalised with.
        reconstruction: `(batch_size, sequence_length, num_channels)` in the input's scale, when asked for.
        shapes: `(batch_size, num_channels, num_tokens, shape_length)` decoded shapes in the input's scale, when
            asked for.
    """

    last_hidden_state: torch.FloatTensor | None = None
    token_features: torch.FloatTensor | None = None
    histogram: torch.LongTensor | None = None
    code_indices: torch.LongTensor | None = None
    codes: torch.FloatTensor | None = None
    shape_start: torch.FloatTensor | None = None
    shape_length: torch.FloatTensor | None = None
    shape_offset: torch.FloatTensor | None = None
    shape_scale: torch.FloatTensor | None = None
    loc: torch.FloatTensor | None = None
    scale: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    shapes: torch.FloatTensor | None = None


@dataclass
class VQShapeForPreTrainingOutput(ModelOutput):
    """
    Args:
        loss: the config-weighted sum of the four terms below.
        reconstruction_loss, codebook_loss, shape_loss, disentanglement_loss: each unweighted term.
        perplexity: perplexity of the batch's code assignments.
        code_usage: fraction of the codebook used in the batch.
        reconstruction: `(batch_size, sequence_length, num_channels)` in the input's scale.
        shapes, target_shapes: `(batch_size, num_channels, num_tokens, shape_length)` decoded shapes and the
            subsequences they point to, in the input's scale.
        code_indices: `(batch_size, num_channels, num_tokens)`.
        token_features: `(batch_size, num_channels, num_tokens, code_dim + 4)`.
        loc, scale: `(batch_size, num_channels)` the mean and scale each series was normalised with.
    """

    loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    shape_loss: torch.FloatTensor | None = None
    disentanglement_loss: torch.FloatTensor | None = None
    perplexity: torch.FloatTensor | None = None
    code_usage: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    shapes: torch.FloatTensor | None = None
    target_shapes: torch.FloatTensor | None = None
    code_indices: torch.LongTensor | None = None
    token_features: torch.FloatTensor | None = None
    loc: torch.FloatTensor | None = None
    scale: torch.FloatTensor | None = None


@dataclass
class VQShapeForTimeSeriesClassificationOutput(ModelOutput):
    """
    Args:
        loss: cross-entropy, when `labels` is given.
        logits: `(batch_size, num_labels)`.
        features: `(batch_size, feature_dim)` the head's input before scaling (`config.classifier_features`,
            flattened over channels).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    features: torch.FloatTensor | None = None


@dataclass
class _Tokens:
    """Per-series token attributes, internal to the models: all `(batch_size * num_channels, num_tokens, ...)`."""

    hidden_states: torch.Tensor
    z_e: torch.Tensor
    codes: torch.Tensor
    nearest_codes: torch.Tensor
    code_indices: torch.Tensor
    distances: torch.Tensor
    start: torch.Tensor
    length: torch.Tensor
    offset: torch.Tensor
    scale: torch.Tensor

    @property
    def features(self) -> torch.Tensor:
        return torch.cat([self.codes, self.start, self.length, self.offset, self.scale], dim=-1)


@dataclass
class _Encoded:
    """What the encode step gives every head: the flattened, normalised series and their tokens."""

    series: torch.Tensor  # (batch_size * num_channels, sequence_length) the input, one row per channel
    loc: torch.Tensor  # (batch_size * num_channels, 1)
    scale: torch.Tensor  # (batch_size * num_channels, 1)
    tokens: _Tokens
    batch_size: int
    num_channels: int

    def per_channel(self, tensor: torch.Tensor) -> torch.Tensor:
        """The rows back per series: "(batch channels) ... -> batch channels ..."."""
        return tensor.reshape(self.batch_size, self.num_channels, *tensor.shape[1:])


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------

# the CPU inference path encodes at most this many bytes of feed-forward activations at a time (see tokenize)
CPU_CHUNK_BYTES = 8 * 2**20

AUTO_MAP = {
    "AutoConfig": "configuration_vqshape.VQShapeConfig",
    "AutoModel": "modeling_vqshape.VQShapeModel",
    "AutoModelForPreTraining": "modeling_vqshape.VQShapeForPreTraining",
    "AutoModelForSequenceClassification": "modeling_vqshape.VQShapeForTimeSeriesClassification",
}


def vqshape_model(model) -> "VQShapeModel":
    """The `VQShapeModel` inside any VQShape model: a head's `base_model` (itself for a `VQShapeModel`), or that of a
    text-aligned model's VQShape head, which it keeps as `backbone`."""
    return getattr(model, "backbone", model).base_model


class VQShapePreTrainedModel(CompletedFolderMixin, PreTrainedModel):
    """`save_pretrained` writes a complete folder (`saving_vqshape`): every Auto class, the pipelines, the feature
    extractor."""

    config_class = VQShapeConfig
    saved_auto_map = AUTO_MAP
    base_model_prefix = "vqshape"
    main_input_name = "past_values"
    input_modalities = ("time",)
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        # The original's initialisation: PyTorch defaults, a uniform +-1/num_codes codebook, N(0, 1) position
        # embeddings and N(0, 1/d_model^2) learned queries; all through guarded init functions so that weights
        # loaded by from_pretrained are kept. Each branch names the module that owns the parameter directly: for
        # remote code, transformers skips modules without parameters of their own.
        if isinstance(module, VQShapeCodebook):
            if module.projection is None:
                bound = 1.0 / self.config.num_codes
                init.uniform_(module.weight, -bound, bound)
            else:  # SimVQ's frozen entries: N(0, 1/code_dim), mapped by a default-initialised linear layer
                init.normal_(module.weight, std=self.config.code_dim**-0.5)
            if hasattr(module, "initialized"):
                init.zeros_(module.initialized)
            if hasattr(module, "usage"):
                init.constant_(module.usage, 1.0 / self.config.num_codes)
                init.zeros_(module.reseeded_codes)
            if hasattr(module, "ema_counts"):
                init.zeros_(module.ema_counts)
                init.zeros_(module.ema_sums)

        elif isinstance(module, VQShapeFeatureScaler):  # the identity until the recipe sets training statistics
            init.zeros_(module.mean)
            init.ones_(module.std)
        elif isinstance(module, nn.Embedding):  # the patch encoder's position embeddings
            init.normal_(module.weight)
        elif isinstance(module, VQShapeTokenizer):
            init.normal_(module.query_tokens, std=1.0 / self.config.d_model)
        elif isinstance(module, VQShapePatchDecoder):
            init.normal_(module.cls_token, std=1.0 / self.config.d_model)
        elif isinstance(module, nn.MultiheadAttention):
            module._reset_parameters()
        elif isinstance(module, (nn.Linear, nn.Conv1d, nn.LayerNorm, nn.GroupNorm)):
            module.reset_parameters()

    def _flatten_channels(self, past_values: torch.Tensor):
        """Check `past_values` and make every channel an independent univariate series.

        Returns:
            `(series, batch_size, num_channels)` with series `(batch_size * num_channels, sequence_length)`.
        """
        if not isinstance(past_values, torch.Tensor):
            raise ValueError(
                f"past_values must be a torch.Tensor, got {type(past_values).__name__}; "
                "use VQShapeFeatureExtractor(...)(series, return_tensors='pt') to prepare raw series."
            )
        if past_values.dim() not in (2, 3):
            raise ValueError(
                f"past_values must have shape (batch_size, sequence_length) or (batch_size, sequence_length, "
                f"num_channels), got {past_values.dim()} dimensions {tuple(past_values.shape)}."
            )
        if past_values.shape[0] == 0:
            raise ValueError("past_values is an empty batch (batch_size 0); pass at least one series.")
        sequence_length = past_values.shape[1]
        if sequence_length != self.config.input_length:
            if sequence_length < self.config.patch_length:
                problem = f"shorter than one patch ({self.config.patch_length})"
            else:
                problem = f"but the model expects input_length={self.config.input_length}"
            hint = ""
            if past_values.dim() == 3 and past_values.shape[2] == self.config.input_length:
                hint = " It looks channels-first: past_values is (batch_size, sequence_length, num_channels)."
            raise ValueError(
                f"past_values has {sequence_length} time steps, {problem}; use VQShapeFeatureExtractor to resample "
                f"each series to {self.config.input_length} steps.{hint}"
            )
        if not past_values.is_floating_point():
            past_values = past_values.to(self.dtype)
        # the check reads a value on the host; compiled and exported graphs (torch.compile, ONNX) leave it out
        if not torch.compiler.is_compiling() and not torch.isfinite(past_values).all():
            raise ValueError(
                "past_values contains NaN or inf; fill or drop missing values first (VQShapeFeatureExtractor "
                "interpolates interior NaNs)."
            )
        if past_values.dim() == 2:
            past_values = past_values.unsqueeze(-1)
        batch_size, _, num_channels = past_values.shape
        # "batch time channels -> (batch channels) time"
        series = past_values.transpose(1, 2).reshape(batch_size * num_channels, sequence_length)
        return series, batch_size, num_channels


class VQShapeModel(VQShapePreTrainedModel):
    """VQShape: a series becomes `num_tokens` shape tokens [code, start, length, offset, scale] and a histogram of
    codes. The patch and shape decoders run only when their outputs are asked for."""

    def __init__(self, config: VQShapeConfig):
        super().__init__(config)
        self.patch_encoder = VQShapePatchEncoder(config)
        self.tokenizer = VQShapeTokenizer(config)
        self.attribute_decoder = VQShapeAttributeDecoder(config)
        self.codebook = VQShapeCodebook(config)
        self.attribute_encoder = VQShapeAttributeEncoder(config)
        self.patch_decoder = VQShapePatchDecoder(config)
        self.shape_decoder = VQShapeShapeDecoder(config)
        self.post_init()

    def encode(self, past_values: torch.Tensor, mask_ratio: float = 0.0) -> _Encoded:
        """The encode step of every head: make each channel a series, normalise it, embed its patches (dropping a
        random `mask_ratio` of them, for pre-training) and tokenize.

        Args:
            past_values: `(batch_size, sequence_length)` or `(batch_size, sequence_length, num_channels)`.
        """
        series, batch_size, num_channels = self._flatten_channels(past_values)
        scaled, loc, scale = instance_normalize(series)
        patch_embeddings = self.patch_encoder.embed(scaled)
        if mask_ratio > 0:
            patch_embeddings = keep_random_patches(patch_embeddings, mask_ratio)
        return _Encoded(series, loc, scale, self.tokenize(patch_embeddings), batch_size, num_channels)

    def tokenize(self, patch_embeddings: torch.Tensor) -> _Tokens:
        """Encode embedded patches and decode the tokens' attributes.

        On CPU in eval mode a large batch is encoded in chunks whose activations stay in the processor's caches,
        which is faster than one pass over everything (benchmarks/bench_inference.py); series are independent in
        eval mode, so the result is the same.

        Args:
            patch_embeddings: `(batch_size, num_kept_patches, d_model)` from `patch_encoder.embed`.
        """
        # series whose feed-forward activations take CPU_CHUNK_BYTES in float32
        chunk = max(1, CPU_CHUNK_BYTES // (4 * self.config.ffn_dim * self.config.num_tokens))
        # compiled and exported graphs take any batch size in one piece (a size test would fix it)
        if (torch.compiler.is_compiling() or self.training or patch_embeddings.device.type != "cpu"
                or len(patch_embeddings) <= chunk):
            return self._tokenize(patch_embeddings)
        parts = [self._tokenize(part) for part in patch_embeddings.split(chunk)]
        return _Tokens(**{field.name: torch.cat([getattr(part, field.name) for part in parts])
                          for field in fields(_Tokens)})

    def _tokenize(self, patch_embeddings: torch.Tensor) -> _Tokens:
        hidden_states = self.tokenizer(self.patch_encoder(patch_embeddings))
        batch_size = patch_embeddings.shape[0]
        num_tokens, code_dim = self.config.num_tokens, self.config.code_dim
        assert hidden_states.shape == (batch_size, num_tokens, self.config.d_model)
        z_e, start, length, offset, scale = self.attribute_decoder(hidden_states)
        # "batch tokens dim -> (batch tokens) dim" for the nearest-code search over all vectors at once
        quantized = self.codebook(z_e.reshape(-1, code_dim))

        def per_series(tensor):  # "(batch tokens) ... -> batch tokens ..."
            return tensor.reshape(batch_size, num_tokens, *tensor.shape[1:])

        return _Tokens(
            hidden_states=hidden_states,
            z_e=per_series(quantized.z_e),
            codes=per_series(quantized.codes),
            nearest_codes=per_series(quantized.nearest),
            code_indices=per_series(quantized.code_indices),
            distances=quantized.distances,
            start=start,
            length=length,
            offset=offset,
            scale=scale,
        )

    def reconstruct(self, tokens: _Tokens, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The series rebuilt from its tokens, `(batch_size, sequence_length)` in the input's scale."""
        embeddings = self.attribute_encoder(tokens.codes, tokens.start, tokens.length, tokens.offset, tokens.scale)
        reconstruction = self.patch_decoder(embeddings)
        assert reconstruction.shape == (embeddings.shape[0], self.config.input_length)
        return reconstruction * scale + loc

    def window_embedding(self, past_values: torch.Tensor, scales,
                         pooling: str | tuple = "mean") -> torch.Tensor | tuple:
        """The tokenizer's output for shorter windows of the series, averaged over tokens, then pooled over the windows
        of each scale (`pooling`: "mean", or "max" for the largest value of each dimension over the windows),
        `(batch_size, num_channels, len(scales) * d_model)`. Scale k cuts the series into windows of
        `input_length // k` steps, one starting every half window (2k - 1 of them where 2k divides `input_length`; the
        last steps may fall outside every window otherwise); each window is stretched linearly to `input_length` and
        tokenized as a series of its own, so that its tokens describe a k-th of the series at k times the grain. Only
        the patch encoder and the tokenizer run: no code lookup, so the codebook learns nothing from the windows, even
        in training mode.

        Args:
            past_values: `(batch_size, input_length)` or `(batch_size, input_length, num_channels)`.
            scales: integers from 2 to `input_length // 2` (`config.classifier_window_scales`).
            pooling: "mean" or "max", or a tuple of them: then a tuple of tensors, one per pooling, from one
                tokenization of the windows.
        """
        poolings = (pooling,) if isinstance(pooling, str) else tuple(pooling)
        unknown = [name for name in poolings if name not in ("mean", "max")]
        if unknown or len(set(poolings)) != len(poolings):
            raise ValueError(f"window_embedding: `pooling` must be 'mean' or 'max' (or a tuple of them, each once), "
                             f"got {pooling!r}.")
        length = self.config.input_length
        check_window_scales(scales, length // 2)
        series, batch_size, num_channels = self._flatten_channels(past_values)  # (batch channels) length
        pooled = {name: [] for name in poolings}
        for scale in scales:
            size = length // scale
            windows = series.unfold(1, size, max(1, size // 2))  # (batch channels) windows size
            num_windows = windows.shape[1]
            # "(batch channels) windows size -> (batch channels windows) length": every window a series of its own
            zoomed = F.interpolate(windows.reshape(-1, 1, size), size=length, mode="linear",
                                   align_corners=True).flatten(end_dim=1)
            scaled, _, _ = instance_normalize(zoomed)
            hidden_states = self.tokenizer(self.patch_encoder(self.patch_encoder.embed(scaled)))
            # "(batch channels windows) tokens d -> batch channels windows d", averaged over tokens, then pooled
            embedding = hidden_states.mean(dim=1).reshape(batch_size, num_channels, num_windows, -1)
            for name in poolings:
                pooled[name].append(embedding.mean(dim=2) if name == "mean" else embedding.amax(dim=2))
        embeddings = tuple(torch.cat(pooled[name], dim=-1) for name in poolings)
        return embeddings[0] if isinstance(pooling, str) else embeddings

    def decode_shapes(self, tokens: _Tokens, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Each token's decoded shape, `(batch_size, num_tokens, shape_length)` in the input's scale."""
        shapes = self.shape_decoder(tokens.codes) * tokens.scale + tokens.offset
        return shapes * scale.unsqueeze(1) + loc.unsqueeze(1)

    def forward(
        self,
        past_values: torch.Tensor,
        output_reconstruction: bool = False,
        output_shapes: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> VQShapeModelOutput | tuple:
        r"""
        Args:
            past_values: `(batch_size, sequence_length)` or `(batch_size, sequence_length, num_channels)`, with
                `sequence_length == config.input_length`; integer input is cast to float.
            output_reconstruction: also rebuild the series from the tokens (runs the patch decoder).
            output_shapes: also decode each token's shape (runs the shape decoder).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        encoded = self.encode(past_values)
        tokens, loc, scale, per_channel = encoded.tokens, encoded.loc, encoded.scale, encoded.per_channel
        num_tokens = self.config.num_tokens
        code_indices = tokens.code_indices
        reconstruction = shapes = None
        if output_reconstruction:
            # "(batch channels) time -> batch time channels"
            reconstruction = per_channel(self.reconstruct(tokens, loc, scale)).transpose(1, 2)
        if output_shapes:
            shapes = per_channel(self.decode_shapes(tokens, loc, scale))
        output = VQShapeModelOutput(
            last_hidden_state=per_channel(tokens.hidden_states),
            token_features=per_channel(tokens.features),
            histogram=per_channel(code_histogram(code_indices, self.config.num_codes)),
            code_indices=per_channel(code_indices),
            codes=per_channel(tokens.codes),
            shape_start=per_channel(tokens.start.reshape(-1, num_tokens)),
            shape_length=per_channel(tokens.length.reshape(-1, num_tokens)),
            shape_offset=per_channel(tokens.offset.reshape(-1, num_tokens)),
            shape_scale=per_channel(tokens.scale.reshape(-1, num_tokens)),
            loc=per_channel(loc[:, 0]),
            scale=per_channel(scale[:, 0]),
            reconstruction=reconstruction,
            shapes=shapes,
        )
        return output if return_dict else output.to_tuple()


class VQShapeForPreTraining(VQShapePreTrainedModel):
    """VQShape with its pre-training objective. In training mode a random `mask_ratio` of the patches is dropped
    from the encoder input (paper Sec. 3.3); in eval mode all patches are used."""

    def __init__(self, config: VQShapeConfig):
        super().__init__(config)
        self.vqshape = VQShapeModel(config)
        self.post_init()

    def forward(self, past_values: torch.Tensor, return_dict: bool | None = None, **kwargs):
        r"""
        Args:
            past_values: `(batch_size, sequence_length)` or `(batch_size, sequence_length, num_channels)`.
        Returns:
            `VQShapeForPreTrainingOutput` with the weighted loss and each of its terms.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        config = self.config
        encoded = self.vqshape.encode(past_values, config.mask_ratio if self.training else 0.0)
        series, tokens, loc, scale, per_channel = (encoded.series, encoded.tokens, encoded.loc, encoded.scale,
                                                   encoded.per_channel)
        reconstruction = self.vqshape.reconstruct(tokens, loc, scale)
        shapes = self.vqshape.decode_shapes(tokens, loc, scale)
        target_shapes = extract_subsequence(series, tokens.start, tokens.length, config.shape_length,
                                            config.shape_smoothing)

        losses = {
            "reconstruction_loss": reconstruction_loss(reconstruction, series),
            "codebook_loss": codebook_loss(
                tokens.z_e.reshape(-1, config.code_dim),
                tokens.nearest_codes.reshape(-1, config.code_dim),
                tokens.distances,
                config.commitment_weight,
                config.entropy_weight,
                config.entropy_gamma,
                config.entropy_temperature,
            ),
            "shape_loss": shape_loss(shapes, target_shapes),
            "disentanglement_loss": disentanglement_loss(
                tokens.start, tokens.length, config.min_shape_length, config.disentanglement_threshold
            ),
        }
        loss = (
            config.reconstruction_weight * losses["reconstruction_loss"]
            + config.codebook_weight * losses["codebook_loss"]
            + config.shape_weight * losses["shape_loss"]
            + config.disentanglement_weight * losses["disentanglement_loss"]
        )
        with torch.no_grad():
            perplexity, usage = usage_from_indices(tokens.code_indices, config.num_codes)
        output = VQShapeForPreTrainingOutput(
            loss=loss,
            **losses,
            perplexity=perplexity,
            code_usage=usage,
            reconstruction=per_channel(reconstruction).transpose(1, 2),
            shapes=per_channel(shapes),
            target_shapes=per_channel(target_shapes),
            code_indices=per_channel(tokens.code_indices),
            token_features=per_channel(tokens.features),
            loc=per_channel(loc[:, 0]),
            scale=per_channel(scale[:, 0]),
        )
        return output if return_dict else output.to_tuple()


class VQShapeFeatureScaler(nn.Module):
    """Standardises the classification head's input with fixed statistics: `(features - mean) / std`.

    The statistics are model state (persistent buffers, saved and reloaded with the weights), set once from training
    rows by the fine-tuning recipe (`set_statistics`); until then, and in folders saved before they existed, they are
    the identity (mean 0, std 1)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    @staticmethod
    def usable_std(std: torch.Tensor, min_std: float = 1e-6) -> torch.Tensor:
        """`std` with 1 where a feature never varies (under `min_std`): such a feature is only centred."""
        return torch.where(std < min_std, torch.ones_like(std), std)

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor, min_std: float = 1e-6):
        """Use `mean` and `std` (`(num_features,)` each); a feature that never varies (std under `min_std`, e.g. a
        code no training series uses) is only centred."""
        mean, std = torch.as_tensor(mean), torch.as_tensor(std)
        if mean.shape != self.mean.shape or std.shape != self.std.shape:
            raise ValueError(f"feature statistics must have shape {tuple(self.mean.shape)}, got mean "
                             f"{tuple(mean.shape)} and std {tuple(std.shape)}.")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError("feature statistics contain NaN or inf.")
        self.mean.copy_(mean)
        self.std.copy_(self.usable_std(std, min_std))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std


class VQShapeForTimeSeriesClassification(VQShapePreTrainedModel):
    """A linear classifier on VQShape's features, flattened over channels (the paper's linear probe), standardised by
    `feature_scaler` and with dropout on its input. `config.classifier_features` names what it reads (tokens,
    histogram, pooled embedding, instance statistics, the series rebuilt from the tokens, the pooled embedding of
    shorter windows, the largest values of the last two instead of their averages, or several of them); set
    `config.freeze_backbone` to train the classifier alone."""

    def __init__(self, config: VQShapeConfig):
        super().__init__(config)
        self.vqshape = VQShapeModel(config)
        num_features = config.num_input_channels * sum(config.classifier_feature_sizes.values())
        self.feature_scaler = VQShapeFeatureScaler(num_features)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(num_features, config.num_labels)
        self.post_init()
        if config.freeze_backbone:
            self.vqshape.requires_grad_(False)

    @property
    def backbone_frozen(self) -> bool:
        return not any(parameter.requires_grad for parameter in self.vqshape.parameters())

    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone_frozen:
            self.vqshape.eval()  # frozen features stay deterministic (no dropout)
        return self

    @staticmethod
    def feature_parts(outputs: VQShapeModelOutput, parts, reconstruction_steps: int = 32,
                      windows: dict | None = None) -> torch.Tensor:
        """What a head reads per channel: the `parts` (of `CLASSIFIER_FEATURE_PARTS`) of the backbone's `outputs`
        (with `reconstruction` for that part, averaged over `reconstruction_steps` equal stretches; the window parts,
        `windows` and `windows_max`, are taken from `windows`, as `window_parts` gives them), concatenated,
        `(batch_size, num_channels, features per channel)`."""
        if windows is not None and not isinstance(windows, dict):
            raise TypeError("feature_parts: `windows` is a dict of the window parts, as `window_parts` gives them "
                            f"(`{{'windows': ..., 'windows_max': ...}}`), not a {type(windows).__name__}.")
        windows = windows or {}
        num_tokens = outputs.code_indices.shape[-1]
        values = {
            "tokens": lambda: outputs.token_features.flatten(start_dim=2),  # "batch channels tokens dim -> ..."
            # code frequencies rather than counts keep the input scale independent of num_tokens
            "histogram": lambda: outputs.histogram.to(outputs.token_features.dtype) / num_tokens,
            "embedding": lambda: outputs.last_hidden_state.mean(dim=2),
            "statistics": lambda: torch.stack([outputs.loc, outputs.scale.log()], dim=-1),
            # "batch time channels -> batch channels steps (time / steps)", averaged over each stretch
            "reconstruction": lambda: outputs.reconstruction.transpose(1, 2).unflatten(
                -1, (reconstruction_steps, -1)).mean(dim=-1),
            "embedding_max": lambda: outputs.last_hidden_state.amax(dim=2),
        }
        missing = [part for part in parts if part in WINDOW_PARTS and part not in windows]
        if missing:
            raise ValueError(f"the parts {missing} need `windows` (`window_parts` of the same past_values).")
        return torch.cat([windows[part] if part in WINDOW_PARTS else values[part]() for part in parts], dim=-1)

    @staticmethod
    def window_parts(backbone: "VQShapeModel", past_values: torch.Tensor, parts, scales) -> dict:
        """`{part: (batch_size, num_channels, len(scales) * d_model)}` for the window parts among `parts` (`windows`,
        `windows_max`), from one tokenization of the windows (`VQShapeModel.window_embedding`); `{}` if none."""
        wanted = [part for part in WINDOW_PARTS if part in parts]
        if not wanted:
            return {}
        embeddings = backbone.window_embedding(past_values, scales, tuple(WINDOW_PARTS[part] for part in wanted))
        return dict(zip(wanted, embeddings))

    def head_input(self, past_values: torch.Tensor) -> torch.Tensor:
        """The head's unscaled input for `past_values`, `(batch_size, num_channels * features per channel)`: the
        backbone runs the patch decoder, and tokenizes the windows, only when the head reads them."""
        parts = self.config.classifier_feature_parts
        outputs = self.vqshape(past_values, return_dict=True, output_reconstruction="reconstruction" in parts)
        num_channels = outputs.token_features.shape[1]
        if num_channels != self.config.num_input_channels:
            raise ValueError(
                f"past_values has {num_channels} channels but this classifier was built for "
                f"config.num_input_channels={self.config.num_input_channels}."
            )
        windows = self.window_parts(self.vqshape, past_values, parts, self.config.classifier_window_scales)
        per_channel = self.feature_parts(outputs, parts, self.config.classifier_reconstruction_steps, windows)
        return per_channel.flatten(start_dim=1)  # "batch channels features -> batch (channels features)"

    def forward(
        self,
        past_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ):
        r"""
        Args:
            past_values: `(batch_size, sequence_length)` or `(batch_size, sequence_length, num_channels)` with
                `num_channels == config.num_input_channels`.
            labels: `(batch_size,)` class indices; gives the cross-entropy `loss`.
        Returns:
            `VQShapeForTimeSeriesClassificationOutput`; its `features` are the head's input before scaling.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen):
            features = self.head_input(past_values)
        logits = self.classifier(self.dropout(self.feature_scaler(features)))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits, labels.to(logits.device).long())
        output = VQShapeForTimeSeriesClassificationOutput(loss=loss, logits=logits, features=features)
        return output if return_dict else output.to_tuple()


__all__ = [
    "VQShapePreTrainedModel",
    "VQShapeModel",
    "VQShapeForPreTraining",
    "VQShapeForTimeSeriesClassification",
    "VQShapeFeatureScaler",
    "VQShapeModelOutput",
    "VQShapeForPreTrainingOutput",
    "VQShapeForTimeSeriesClassificationOutput",
    "vqshape_model",
]
