import pytest

from modeling_vqshape import VQShapeConfig


def test_defaults_are_the_papers_pretraining_script():
    config = VQShapeConfig()
    assert (config.input_length, config.num_patches, config.patch_length) == (512, 64, 8)
    assert (config.d_model, config.num_codes, config.num_tokens, config.code_dim) == (256, 512, 64, 8)
    assert (config.num_encoder_layers, config.num_encoder_heads) == (4, 8)
    assert (config.num_tokenizer_layers, config.num_tokenizer_heads) == (4, 8)
    assert (config.num_decoder_layers, config.num_decoder_heads) == (2, 8)
    assert config.shape_length == 128 and config.ffn_dim == 1024
    assert (config.commitment_weight, config.entropy_weight) == (0.25, 0.1)
    assert (config.disentanglement_weight, config.mask_ratio) == (0.8, 0.25)
    assert config.model_type == "vqshape"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(input_length=500), "divisible by `num_patches`"),
        (dict(num_tokens=48), "divisible by `num_tokens`"),
        (dict(shape_length=100), "multiple of 16"),
        (dict(patch_length=16), "patch_length <= input_length // num_patches"),
        (dict(d_model=250), "divisible by `num_encoder_heads`"),
        (dict(mask_ratio=1.0), "mask_ratio"),
        (dict(classifier_features="mean"), "classifier_features"),
        (dict(shape_smoothing=4), "odd"),
        (dict(num_codes=0), "positive integer"),
    ],
)
def test_invalid_hyperparameters_raise_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        VQShapeConfig(**overrides)


def test_round_trip(tmp_path, tiny_config):
    tiny_config.save_pretrained(tmp_path)
    loaded = VQShapeConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == tiny_config.to_dict()
