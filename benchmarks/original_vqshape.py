"""The original implementation (github.com/YunshiWen/VQShape, needs einops) built from a `VQShapeConfig`, for the
benchmarks that time it beside ours."""

import sys


def build_original(config, repo: str):
    """The original `VQShape` with `config`'s hyper-parameters, from the checkout at `repo`."""
    sys.path.insert(0, repo)
    from vqshape.model import VQShape

    return VQShape(
        dim_embedding=config.d_model, patch_size=config.patch_length, num_patch=config.num_patches,
        num_enc_head=config.num_encoder_heads, num_enc_layer=config.num_encoder_layers,
        num_tokenizer_head=config.num_tokenizer_heads, num_tokenizer_layer=config.num_tokenizer_layers,
        num_dec_head=config.num_decoder_heads, num_dec_layer=config.num_decoder_layers, num_token=config.num_tokens,
        len_s=config.shape_length, len_input=config.input_length, s_smooth_factor=config.shape_smoothing,
        num_code=config.num_codes, dim_code=config.code_dim, codebook_type="standard",
        lambda_commit=config.commitment_weight, lambda_entropy=config.entropy_weight,
        entropy_gamma=config.entropy_gamma, mask_ratio=config.mask_ratio,
    )


def original_training_loss(model, config, inputs):
    """The original LightningModule's training_step loss, weighted as `config` weights ours."""
    _, losses = model(inputs, mode="pretrain")
    return (config.reconstruction_weight * losses["ts_loss"].mean() + config.codebook_weight * losses["vq_loss"].mean()
            + config.shape_weight * losses["shape_loss"].mean()
            + config.disentanglement_weight * losses["dist_loss"].mean())
