"""The package's metrics as `evaluate` modules, loadable offline by path:

    import evaluate
    from modeling_vqshape.tasks.metrics import CLASSIFICATION_METRIC

    metric = evaluate.load(CLASSIFICATION_METRIC)
    metric.compute(predictions=["walking", "running"], references=["walking", "walking"])
"""

from pathlib import Path

CLASSIFICATION_METRIC = str(Path(__file__).resolve().parent / "vqshape_classification.py")

__all__ = ["CLASSIFICATION_METRIC"]
