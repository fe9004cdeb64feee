"""VQShape for Hugging Face transformers. Importing this package registers the Auto classes."""

__version__ = "0.2.0"

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
)

from .configuration_persistence_image import PersistenceImageConfig
from .configuration_vqshape import VQShapeConfig
from .configuration_vqshape_text import VQShapeTextConfig
from .modeling_persistence_image import PersistenceImageClassificationOutput, PersistenceImageForClassification
from .modeling_vqshape import (
    VQShapeForPreTraining,
    VQShapeForPreTrainingOutput,
    VQShapeForTimeSeriesClassification,
    VQShapeForTimeSeriesClassificationOutput,
    VQShapeModel,
    VQShapeModelOutput,
    VQShapePreTrainedModel,
)
from .modeling_vqshape_text import VQShapeForTextAlignment, VQShapeForTextAlignmentOutput, VQShapeZeroShotOutput
from .pipeline_vqshape import (
    VQShapeTimeSeriesClassificationPipeline,
    VQShapeTimeSeriesTokenizationPipeline,
    register_pipelines,
)
from .processing_vqshape import VQShapeFeatureExtractor

AutoConfig.register("vqshape", VQShapeConfig, exist_ok=True)
AutoModel.register(VQShapeConfig, VQShapeModel, exist_ok=True)
AutoModelForPreTraining.register(VQShapeConfig, VQShapeForPreTraining, exist_ok=True)
AutoModelForSequenceClassification.register(VQShapeConfig, VQShapeForTimeSeriesClassification, exist_ok=True)
AutoFeatureExtractor.register(VQShapeConfig, VQShapeFeatureExtractor, exist_ok=True)
AutoConfig.register("vqshape_text", VQShapeTextConfig, exist_ok=True)
AutoModel.register(VQShapeTextConfig, VQShapeForTextAlignment, exist_ok=True)
AutoConfig.register("vqshape_persistence_image", PersistenceImageConfig, exist_ok=True)
AutoModelForSequenceClassification.register(PersistenceImageConfig, PersistenceImageForClassification, exist_ok=True)

register_pipelines()  # pipeline("time-series-classification" | "time-series-tokenization", model=...)

# save_pretrained copies the modeling files (for trust_remote_code users) only for registered classes
VQShapeConfig.register_for_auto_class()
VQShapeModel.register_for_auto_class("AutoModel")
VQShapeForPreTraining.register_for_auto_class("AutoModelForPreTraining")
VQShapeForTimeSeriesClassification.register_for_auto_class("AutoModelForSequenceClassification")
VQShapeFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
VQShapeTextConfig.register_for_auto_class()
VQShapeForTextAlignment.register_for_auto_class("AutoModel")
PersistenceImageConfig.register_for_auto_class()
PersistenceImageForClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "PersistenceImageClassificationOutput",
    "PersistenceImageConfig",
    "PersistenceImageForClassification",
    "VQShapeConfig",
    "VQShapeFeatureExtractor",
    "VQShapeForPreTraining",
    "VQShapeForPreTrainingOutput",
    "VQShapeForTimeSeriesClassification",
    "VQShapeForTimeSeriesClassificationOutput",
    "VQShapeModel",
    "VQShapeModelOutput",
    "VQShapePreTrainedModel",
    "VQShapeTextConfig",
    "VQShapeForTextAlignment",
    "VQShapeForTextAlignmentOutput",
    "VQShapeZeroShotOutput",
    "VQShapeTimeSeriesClassificationPipeline",
    "VQShapeTimeSeriesTokenizationPipeline",
]
