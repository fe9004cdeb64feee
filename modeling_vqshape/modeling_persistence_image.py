"""A persistence-image classifier: the topology teacher of multi-teacher distillation (`distillation.py`).

`past_values` `(batch_size, sequence_length, num_channels)` -> one persistence image per channel (`persistence.py`,
computed in forward, without gradient; or given as `persistence_images`) -> log1p -> two 3x3 convolutions with ReLU
(the first followed by 2x2 max pooling) -> the maps flattened, a linear layer and ReLU = `features` `(batch_size,
hidden_size)` -> dropout -> linear -> `logits`. A pixel's place on the image is its meaning (its birth value and its
persistence), so the maps are flattened rather than averaged: with global average pooling (`feature_pooling="mean"`,
the head of folders saved before the option) the classifier sees which patterns occur but not where. On 5-fold
cross-validation of TRAIN (30 epochs; `benchmarks/bench_persistence_pooling.py`) the flattened maps reach 0.82 on
GunPoint against 0.56 averaged, 0.38 against 0.12 on PickupGestureWiimoteZ, 0.93 against 0.78 on BasicMotions (the
sets of the distillation benchmark), and 0.64 against 0.47 on ArrowHead, 0.74 against 0.46 on OSULeaf (sets the
choice did not look at).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_persistence_image import PersistenceImageConfig
from .persistence import persistence_images


@dataclass
class PersistenceImageClassificationOutput(ModelOutput):
    """
    Args:
        loss: cross-entropy, when `labels` is given.
        logits: `(batch_size, num_labels)`.
        features: `(batch_size, hidden_size)`, the classifier's input (pooled convolution features).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    features: torch.FloatTensor | None = None


class PersistenceImageForClassification(PreTrainedModel):
    config_class = PersistenceImageConfig
    base_model_prefix = "persistence_image"
    main_input_name = "past_values"
    input_modalities = ("time",)

    def __init__(self, config: PersistenceImageConfig):
        super().__init__(config)
        self.encoder = nn.Sequential(
            nn.Conv2d(config.num_input_channels, config.hidden_size, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(config.hidden_size, config.hidden_size, 3, padding=1), nn.ReLU(),
        )
        if config.feature_pooling == "flatten":
            pooled = (config.resolution // 2) ** 2  # positions after the 2x2 max pooling
            self.projection = nn.Sequential(nn.Flatten(), nn.Linear(config.hidden_size * pooled, config.hidden_size),
                                            nn.ReLU())
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.reset_parameters()

    def images(self, past_values: torch.Tensor) -> torch.Tensor:
        """`(batch_size, num_channels, resolution, resolution)` persistence images of `past_values`, on the model's
        device."""
        return persistence_images(past_values, **self.config.image_kwargs).to(self.classifier.weight.device)

    def forward(self, past_values: torch.Tensor | None = None, persistence_images: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, return_dict: bool | None = None, **kwargs):
        r"""
        Args:
            past_values: `(batch_size, sequence_length)` or `(batch_size, sequence_length, num_channels)`.
            persistence_images: `(batch_size, num_channels, resolution, resolution)`, `images(past_values)` computed
                beforehand (training computes them once); either this or `past_values`.
            labels: `(batch_size,)` class indices; gives the cross-entropy `loss`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if persistence_images is None:
            if past_values is None:
                raise ValueError("pass past_values or persistence_images.")
            persistence_images = self.images(past_values)
        resolution = self.config.resolution
        expected = (self.config.num_input_channels, resolution, resolution)
        if tuple(persistence_images.shape[1:]) != expected:
            raise ValueError(f"persistence images of shape {tuple(persistence_images.shape[1:])}; this model expects "
                             f"{expected} (config.num_input_channels, resolution, resolution).")
        hidden = self.encoder(persistence_images.to(self.classifier.weight.dtype).log1p())
        if self.config.feature_pooling == "flatten":  # "batch hidden height width -> batch (hidden height width)"
            features = self.projection(hidden)
        else:  # "batch hidden height width -> batch hidden"
            features = hidden.mean(dim=(2, 3))
        logits = self.classifier(self.dropout(features))
        loss = F.cross_entropy(logits, labels.to(logits.device).long()) if labels is not None else None
        output = PersistenceImageClassificationOutput(loss=loss, logits=logits, features=features)
        return output if return_dict else output.to_tuple()


__all__ = ["PersistenceImageClassificationOutput", "PersistenceImageForClassification"]
