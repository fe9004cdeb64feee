"""Temperature scaling (modeling_vqshape.tasks.calibration): the fitted temperature, its fold into the head, and the
validation rows as the only thing it reads."""

import pytest
import torch
import torch.nn.functional as F

from modeling_vqshape import VQShapeConfig, VQShapeForTimeSeriesClassification
from modeling_vqshape.tasks.calibration import calibrate_on_validation, fit_temperature, scale_head

from .conftest import TINY


def sampled_rows(num_rows: int, temperature: float, seed: int = 0):
    """Labels drawn from softmax(z) and the logits `z * temperature` a model over-confident by that factor gives."""
    generator = torch.Generator().manual_seed(seed)
    z = 2 * torch.randn(num_rows, 5, generator=generator)
    labels = torch.multinomial(z.softmax(-1), 1, generator=generator).squeeze(-1)
    return z * temperature, labels


@pytest.mark.parametrize("temperature", [0.4, 3.0])
def test_the_fitted_temperature_is_the_one_that_made_the_logits(temperature):
    logits, labels = sampled_rows(4000, temperature)
    assert fit_temperature(logits, labels) == pytest.approx(temperature, rel=0.06)


def test_rows_all_right_by_a_margin_give_a_finite_temperature_and_a_confidence_below_one():
    labels = torch.arange(8) % 4
    logits = 10 * F.one_hot(labels, 4).double()  # every row right, by a wide margin
    temperature = fit_temperature(logits, labels)
    confidence = (logits / temperature).softmax(-1).max(-1).values.mean().item()
    # the targets are smoothed by 1 / (8 + 1): about 0.92 on the true class, not 1
    assert 0.85 < confidence < 0.97
    # plain cross-entropy would have pushed the temperature to its bound
    assert 1 / temperature < 100


def test_calibration_lowers_the_held_out_loss_of_timid_logits():
    logits, labels = sampled_rows(500, 0.25, seed=1)
    temperature = fit_temperature(logits, labels)
    assert temperature < 1
    assert F.cross_entropy(logits / temperature, labels) < F.cross_entropy(logits, labels)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="num_rows"):
        fit_temperature(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="finite"):
        fit_temperature(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))
    model = VQShapeForTimeSeriesClassification(VQShapeConfig(**TINY, num_labels=3))
    with pytest.raises(ValueError, match="positive"):
        scale_head(model, 0.0)


def test_the_folded_temperature_divides_the_logits_and_survives_saving(tmp_path):
    torch.manual_seed(0)
    model = VQShapeForTimeSeriesClassification(VQShapeConfig(**TINY, num_labels=3)).eval()
    past_values = torch.randn(6, TINY["input_length"])
    with torch.no_grad():
        before = model(past_values=past_values).logits
        scale_head(model, 2.5)
        after = model(past_values=past_values).logits
    torch.testing.assert_close(after, before / 2.5)
    assert torch.equal(after.argmax(-1), before.argmax(-1))
    model.save_pretrained(tmp_path)
    reloaded = VQShapeForTimeSeriesClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(past_values=past_values).logits, after)


def test_calibration_on_validation_reads_the_validation_rows_and_keeps_their_predictions():
    from accelerate import Accelerator
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = VQShapeForTimeSeriesClassification(VQShapeConfig(**TINY, num_labels=3)).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(40)  # an over-confident head on random features
    past_values, labels = torch.randn(30, TINY["input_length"]), torch.arange(30) % 3
    validation = DataLoader(TensorDataset(past_values, labels), batch_size=7)
    with torch.no_grad():
        before = model(past_values=past_values).logits
    report = calibrate_on_validation(model, validation, Accelerator(cpu=True))
    with torch.no_grad():
        after = model(past_values=past_values).logits
    assert report["temperature"] > 1  # random features: the confident head is softened
    torch.testing.assert_close(after, before / report["temperature"])
    assert torch.equal(after.argmax(-1), before.argmax(-1))
    assert report["validation_loss_after"] < report["validation_loss_before"]
    assert report["validation_loss_before"] == pytest.approx(F.cross_entropy(before, labels).item(), rel=1e-5)
