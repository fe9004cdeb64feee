"""Temperature scaling of a classifier's probabilities (Guo et al., "On Calibration of Modern Neural Networks",
ICML 2017): one temperature T, fitted on held-out rows, divides the logits. Predictions never change; the confidence
does, towards what the held-out rows support.

- `fit_temperature`: the T that minimises the held-out cross-entropy of `logits / T`.
- `scale_head`: folds 1 / T into a classifier's linear layer, so that the saved weights, the pipeline, the demo and
  an ONNX export give the calibrated probabilities with no new state (folders of earlier versions load unchanged).
- `calibrate`: both, from held-out rows' logits (the out-of-fold logits of a cross-validated head);
  `calibrate_on_validation`: both, on the validation rows of the fine-tuning scripts.
"""

import numpy as np
import torch
import torch.nn.functional as F

# the search interval of the inverse temperature 1 / T; the smoothed loss is convex in it
INVERSE_TEMPERATURE_BOUNDS = (1e-3, 1e3)


def smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, inverse_temperature: float) -> float:
    """The mean cross-entropy of `logits * inverse_temperature` `(num_rows, num_labels)` against `labels`
    `(num_rows,)`, with the targets smoothed by 1 / (num_rows + 1): as if one more held-out row had been
    uncertain, so that rows all classified right by a margin give a finite temperature instead of T -> 0."""
    smoothing = 1.0 / (len(labels) + 1)
    return F.cross_entropy(logits.double() * inverse_temperature, labels, label_smoothing=smoothing).item()


def fit_temperature(logits, labels) -> float:
    """The temperature T > 0 that minimises `smoothed_cross_entropy` of `logits / T` on held-out rows (`logits`
    `(num_rows, num_labels)`, `labels` `(num_rows,)` class indices). T > 1 softens over-confident logits, T < 1
    sharpens timid ones (a strongly regularised head)."""
    from scipy.optimize import minimize_scalar

    logits, labels = torch.as_tensor(logits).double(), torch.as_tensor(labels).long()
    if logits.ndim != 2 or labels.shape != logits.shape[:1] or len(labels) == 0:
        raise ValueError(f"expected logits (num_rows, num_labels) and labels (num_rows,) for at least one row, got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}.")
    if not torch.isfinite(logits).all():
        raise ValueError("the held-out logits are not all finite; a temperature cannot be fitted to them.")
    # convex in the inverse temperature (log-sum-exp of a linear function minus a linear one): a bounded scalar
    # search finds the minimum
    result = minimize_scalar(lambda beta: smoothed_cross_entropy(logits, labels, beta),
                             bounds=INVERSE_TEMPERATURE_BOUNDS, method="bounded", options={"xatol": 1e-6})
    return float(1.0 / result.x)


@torch.no_grad()
def scale_head(model, temperature: float) -> None:
    """Divide the logits of a `VQShapeForTimeSeriesClassification` by `temperature` for good, by scaling its linear
    layer (`logits = W x + b`, so `W / T` and `b / T` give `logits / T`)."""
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"the temperature must be a positive number, got {temperature}.")
    model.classifier.weight.div_(temperature)
    model.classifier.bias.div_(temperature)


def calibrate(model, held_out_logits, held_out_labels) -> dict:
    """Fit the temperature on held-out rows' logits `(num_rows, num_labels)` and labels `(num_rows,)` of `model` (a
    `VQShapeForTimeSeriesClassification`, unwrapped), fold it into its head and return `{"temperature",
    "validation_loss_before", "validation_loss_after"}` (the rows' plain cross-entropy)."""
    logits, labels = torch.as_tensor(held_out_logits).float(), torch.as_tensor(held_out_labels).long()
    temperature = fit_temperature(logits, labels)
    scale_head(model, temperature)
    return {"temperature": temperature, "validation_loss_before": F.cross_entropy(logits, labels).item(),
            "validation_loss_after": F.cross_entropy(logits / temperature, labels).item()}


def calibrate_on_validation(model, validation_dataloader, accelerator) -> dict:
    """`calibrate` on the validation rows as `model` scores them now (every process's rows,
    `finetuning.evaluate_classifier`: the same on every process)."""
    from .finetuning import evaluate_classifier

    validation = evaluate_classifier(model, validation_dataloader, accelerator)
    return calibrate(accelerator.unwrap_model(model), validation["logits"], validation["labels"])


__all__ = ["INVERSE_TEMPERATURE_BOUNDS", "calibrate", "calibrate_on_validation", "fit_temperature", "scale_head",
           "smoothed_cross_entropy"]
