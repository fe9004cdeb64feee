"""The one way the package's tools load a saved VQShape model: `load_vqshape(name_or_path)`.

The plots, the demo, the token tables, the linear probe and publishing all take a folder or a Hub repo id that any
head saved (`VQShapeModel`, `VQShapeForPreTraining`, `VQShapeForTimeSeriesClassification`) or a text-aligned model
(`VQShapeForTextAlignment`); the package is imported here, so its Auto classes are registered, and
`trust_remote_code=True` (one of `from_pretrained`'s arguments) loads the code saved with the model instead.
"""

import os

from ..processing_vqshape import VQShapeFeatureExtractor

# from_pretrained's arguments that say where the files are: AutoConfig and AutoFeatureExtractor take them too
LOCATION_ARGUMENTS = ("cache_dir", "force_download", "local_files_only", "revision", "subfolder", "token",
                      "trust_remote_code")


def load_vqshape(name_or_path, keep_classifier: bool = False, with_feature_extractor: bool = False, device=None,
                 **kwargs):
    """A VQShape model from a saved folder or Hub repo id, in eval mode.

    Args:
        name_or_path: a folder or Hub repo id saved by any VQShape head or by a text-aligned model.
        keep_classifier: keep the classification head of a model saved as `VQShapeForTimeSeriesClassification`;
            otherwise `AutoModel` reads the base `VQShapeModel` out of any head's weights. A text-aligned model is
            always a `VQShapeForTextAlignment`.
        with_feature_extractor: also return the saved `VQShapeFeatureExtractor`, or one for the model's
            `input_length` when a local folder has no `preprocessor_config.json`.
        device: where to move the model.
        kwargs: `from_pretrained`'s (`trust_remote_code`, `revision`, `local_files_only`, `dtype`, ...); those that
            say where the files are go to the configuration and the feature extractor too.

    Returns:
        the model, or `(model, feature_extractor)` with `with_feature_extractor=True`.
    """
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForSequenceClassification

    name_or_path = str(name_or_path)
    location = {key: kwargs[key] for key in LOCATION_ARGUMENTS if key in kwargs}
    auto = AutoModel
    if keep_classifier:
        architectures = AutoConfig.from_pretrained(name_or_path, **location).architectures or []
        if "VQShapeForTimeSeriesClassification" in architectures:
            auto = AutoModelForSequenceClassification
    model = auto.from_pretrained(name_or_path, **kwargs).eval()
    if device is not None:
        model.to(device)
    if not with_feature_extractor:
        return model
    if os.path.isdir(name_or_path) and not os.path.exists(os.path.join(name_or_path, "preprocessor_config.json")):
        return model, VQShapeFeatureExtractor(input_length=model.config.input_length)
    return model, AutoFeatureExtractor.from_pretrained(name_or_path, **location)


__all__ = ["load_vqshape"]
