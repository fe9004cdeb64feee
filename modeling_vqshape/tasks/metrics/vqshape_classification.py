"""VQShape classification metrics: accuracy, balanced accuracy, macro-F1 and a per-class report (scikit-learn)."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_recall_fscore_support

_DESCRIPTION = """The metrics VQShape reports for time-series classification (the paper's protocol, fine-tuning,
zero-shot): accuracy, balanced accuracy (the mean of per-class recalls, robust to class imbalance), macro-F1 (classes
that are never predicted count as 0), and per class precision, recall, F1 and support. Labels may be class names or
integers."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted labels, strings or integers.
    references: true labels, of the same type.
    labels: optional, the classes of the per-class report and of macro-F1 (default: every class seen in references or
        predictions, sorted).
Returns:
    accuracy, balanced_accuracy, macro_f1: floats.
    per_class: {class: {"precision", "recall", "f1", "support"}} for every class in `labels`.
Example:
    >>> metric = evaluate.load(CLASSIFICATION_METRIC)
    >>> metric.compute(predictions=["run", "walk", "walk"], references=["run", "walk", "run"])["accuracy"]
    0.6666666666666666
"""

_CITATION = """@inproceedings{wen2024abstracted,
  title={Abstracted Shapes as Tokens -- A Generalizable and Interpretable Model for Time-series Classification},
  author={Wen, Yunshi and Ma, Tengfei and Weng, Tsui-Wei and Nguyen, Lam M. and Julius, Anak Agung},
  booktitle={Advances in Neural Information Processing Systems},
  year={2024}
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VQShapeClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
                datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            ],
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html"],
        )

    def _compute(self, predictions, references, labels=None):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if labels is None:
            labels = sorted(set(references.tolist()) | set(predictions.tolist()))
        precision, recall, f1, support = precision_recall_fscore_support(
            references, predictions, labels=labels, zero_division=0)
        return {
            "accuracy": float(accuracy_score(references, predictions)),
            "balanced_accuracy": float(balanced_accuracy_score(references, predictions)),
            "macro_f1": float(f1_score(references, predictions, labels=labels, average="macro", zero_division=0)),
            "per_class": {label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                          for label, p, r, f, s in zip(labels, precision, recall, f1, support)},
        }
