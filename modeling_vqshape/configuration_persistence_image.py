"""Configuration of the persistence-image classifier, the topology teacher of multi-teacher distillation."""

from transformers import PretrainedConfig

FEATURE_POOLINGS = ("flatten", "mean")


class PersistenceImageConfig(PretrainedConfig):
    """A small CNN on per-channel persistence images (`persistence.py`).

    Args:
        num_input_channels: channels of `past_values`; each gives one image, an input channel of the CNN.
        input_length: the length the training script resamples every series to (the images accept any length).
        resolution, bandwidth, birth_range, max_persistence: the image grid and kernel (`persistence_images`), on
            standardised channels: births in `birth_range`, persistences in `[0, max_persistence]`.
        hidden_size: convolution channels, also the width of the output's `features`.
        feature_pooling: how the convolution maps become `features`: `"flatten"` (the default) keeps where on the
            image each activation is, which is what a persistence image's pixels mean (birth and persistence), through
            a linear layer with ReLU on the flattened maps; `"mean"`, global average pooling, keeps only what patterns
            occur, not where. A saved config without this key predates it and was trained with `"mean"`, so it loads
            with `"mean"`.
        classifier_dropout: dropout before the linear classifier.
        num_labels, id2label, label2id: as for any sequence classifier.
    """

    model_type = "vqshape_persistence_image"

    def __init__(self, num_input_channels: int = 1, input_length: int = 512, resolution: int = 16,
                 bandwidth: float = 0.25, birth_range=(-3.0, 3.0), max_persistence: float = 6.0, hidden_size: int = 32,
                 classifier_dropout: float = 0.1, feature_pooling: str | None = None, **kwargs):
        if feature_pooling is None:  # a saved config (it carries `transformers_version`) without it predates it
            feature_pooling = "mean" if "transformers_version" in kwargs else "flatten"
        birth_range = [float(value) for value in birth_range]
        checks = {
            "num_input_channels": num_input_channels >= 1, "input_length": input_length >= 2,
            "resolution": resolution >= 4, "bandwidth": bandwidth > 0, "max_persistence": max_persistence > 0,
            "hidden_size": hidden_size >= 1, "classifier_dropout": 0.0 <= classifier_dropout < 1.0,
            "birth_range": len(birth_range) == 2 and birth_range[0] < birth_range[1],
            "feature_pooling (flatten or mean)": feature_pooling in FEATURE_POOLINGS,
        }
        invalid = [name for name, valid in checks.items() if not valid]
        if invalid:
            raise ValueError(f"invalid PersistenceImageConfig values: {', '.join(invalid)}.")
        self.num_input_channels = num_input_channels
        self.input_length = input_length
        self.resolution = resolution
        self.bandwidth = bandwidth
        self.birth_range = birth_range
        self.max_persistence = max_persistence
        self.hidden_size = hidden_size
        self.classifier_dropout = classifier_dropout
        self.feature_pooling = feature_pooling
        super().__init__(**kwargs)

    @property
    def image_kwargs(self) -> dict:
        """The arguments of `persistence_images` this model was trained with."""
        return dict(resolution=self.resolution, bandwidth=self.bandwidth, birth_range=tuple(self.birth_range),
                    max_persistence=self.max_persistence)


__all__ = ["PersistenceImageConfig"]
