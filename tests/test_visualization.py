"""The codebook atlas, the per-series explanation and the code-usage histogram: arrays, figures, PNGs and the CLI."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex
from matplotlib.image import imread

from modeling_vqshape import VQShapeConfig, VQShapeForPreTraining
from modeling_vqshape.sharing.visualization import (
    code_counts,
    codebook_summary,
    decode_codebook,
    demo_series,
    explain_series,
    plot_code_histogram,
    plot_codebook_atlas,
    plot_explanation,
)

from .conftest import REPO_ROOT, TINY


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = VQShapeForPreTraining(VQShapeConfig(**TINY)).eval()
    with torch.no_grad():  # spread the codes out: the untrained +-1/num_codes codebook decodes to near-identical shapes
        model.vqshape.codebook.weight.copy_(torch.randn(TINY["num_codes"], TINY["code_dim"]) * 3)
    return model


@pytest.fixture(scope="module")
def dataset():
    rng = np.random.default_rng(0)
    return rng.normal(size=(12, 90)).cumsum(axis=1)


def test_codebook_summary_counts_used_codes_and_their_shape_words(model):
    import copy

    t = torch.linspace(0, 1, TINY["shape_length"])
    bump = torch.exp(-0.5 * ((t - 0.5) / 0.1) ** 2)
    curves = torch.stack([t, -t, bump, t, torch.sin(6 * torch.pi * t), -t, -bump, t])  # one curve per code

    class FixedShapes(torch.nn.Module):  # a shape decoder that draws the curves above
        def forward(self, codes):
            return curves[None].expand(codes.shape[0], -1, -1)

    stub = copy.deepcopy(model)
    stub.vqshape.shape_decoder = FixedShapes()
    usage = np.array([5, 3, 2, 0, 1, 0, 0, 0])  # used: rising, falling, peak and oscillation codes
    summary = codebook_summary(stub, usage)
    assert summary["codes_used"] == 0.5
    shares = usage[usage > 0] / usage.sum()
    assert summary["perplexity"] == pytest.approx(np.exp(-(shares * np.log(shares)).sum()))
    assert summary["shape_values"] == {"rising": 1, "falling": 1, "peak": 1, "oscillation": 1}


def assert_drawn(path):
    """The file is a PNG with something drawn on it: a decodable RGBA image that is not one flat colour."""
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] == 4 and min(image.shape[:2]) > 50
    assert len(np.unique(image[..., :3].reshape(-1, 3), axis=0)) > 10


def test_distinct_codes_decode_to_distinct_standardised_curves(model):
    shapes = decode_codebook(model)
    assert shapes.shape == (TINY["num_codes"], TINY["shape_length"])
    np.testing.assert_allclose(shapes.mean(axis=1), 0, atol=1e-5)
    gaps = np.abs(shapes[:, None] - shapes[None]).max(axis=-1)
    assert (gaps[~np.eye(len(shapes), dtype=bool)] > 0.05).all()


def test_atlas_draws_every_code_with_its_usage(model, dataset, tmp_path):
    path = tmp_path / "atlas.png"
    usage = code_counts(model, dataset)
    assert usage.sum() == len(dataset) * TINY["num_tokens"]
    figure = plot_codebook_atlas(model, dataset=dataset, output=path, dpi=100)
    panels = [axis for axis in figure.axes if axis.lines]
    assert len(panels) == TINY["num_codes"]
    # 8 codes -> a 3 x 3 grid, read row by row, every panel on the same scale
    corners = [axis.get_position().p0.round(3) for axis in panels]
    assert len({x for x, _ in corners}) == 3 and len({y for _, y in corners}) == 3
    assert [y for _, y in corners] == sorted((y for _, y in corners), reverse=True)
    assert len({(axis.get_xlim(), axis.get_ylim()) for axis in panels}) == 1
    curves = np.stack([axis.lines[0].get_ydata() for axis in panels])
    np.testing.assert_allclose(curves, decode_codebook(model), atol=1e-6)
    assert len({curve.tobytes() for curve in curves}) == TINY["num_codes"]
    titles = [axis.get_title() for axis in panels]
    assert titles == [f"{code} (n={int(count)})" for code, count in enumerate(usage)]
    # the drawn panels differ in pixels too, not only in data
    image = imread(path)[..., :3]
    rows, columns = np.array_split(np.arange(image.shape[0] - 40) + 40, 3), np.array_split(np.arange(image.shape[1]), 3)
    crops = [image[np.ix_(r, c)] for r in rows for c in columns][: TINY["num_codes"]]
    assert len({crop.round(2).tobytes() for crop in crops}) == TINY["num_codes"]


def test_explanation_places_each_shape_where_the_model_says(model, tmp_path):
    series = demo_series(300)
    explanation = explain_series(model, series)
    length = TINY["input_length"]
    assert explanation["series"].shape == explanation["reconstruction"].shape == (length,)
    assert len(explanation["tokens"]) == TINY["num_tokens"]
    values = explanation["series"]
    for token in explanation["tokens"]:
        assert 0 <= token["x"][0] <= token["x"][-1] <= length - 1
        # the stretch it covers ends where the model's subsequence extraction clamps it: at the series' end
        covered = min(token["start"] + token["length"], 1.0) - token["start"]
        np.testing.assert_allclose(token["x"][-1] - token["x"][0], covered * (length - 1), rtol=1e-5)
        assert token["y"].shape == token["fitted"].shape == (TINY["shape_length"],)
        # the fitted code shape has the mean and the spread of the stretch of the series it covers
        stretch = np.interp(token["x"], np.arange(length), values)
        np.testing.assert_allclose(token["fitted"].mean(), stretch.mean(), atol=1e-4)
        np.testing.assert_allclose(token["fitted"].std(ddof=1), stretch.std(ddof=1), rtol=1e-3, atol=1e-5)
    path = tmp_path / "explain.png"
    figure = plot_explanation(model, series, output=path)
    assert_drawn(path)
    placed, fitted = figure.axes[:2]
    assert len(placed.lines) == 2 + TINY["num_tokens"]  # series, reconstruction, one curve per token
    assert len(fitted.lines) == 1 + TINY["num_tokens"]  # series, one fitted code shape per token
    colours = {}  # one colour per code
    for line, token in zip(placed.lines[2:], explanation["tokens"]):
        np.testing.assert_allclose(line.get_ydata(), token["y"])
        assert colours.setdefault(token["code"], to_hex(line.get_color())) == to_hex(line.get_color())
    for line, token in zip(fitted.lines[1:], explanation["tokens"]):
        np.testing.assert_allclose(line.get_ydata(), token["fitted"])
        assert colours[token["code"]] == to_hex(line.get_color())


def test_histograms_of_a_dataset_and_per_class(model, dataset, tmp_path):
    figure = plot_code_histogram(model, dataset, output=tmp_path / "usage.png")
    heights = [patch.get_height() for patch in figure.axes[0].patches]
    np.testing.assert_array_equal(heights, code_counts(model, dataset))
    labels = np.arange(len(dataset)) % 2
    figure = plot_code_histogram(model, list(dataset), labels=labels, output=tmp_path / "classes.png")
    heights = np.array([patch.get_height() for patch in figure.axes[0].patches]).reshape(2, TINY["num_codes"])
    np.testing.assert_allclose(heights.sum(axis=1), 1.0)
    assert_drawn(tmp_path / "classes.png")


@pytest.mark.slow
def test_command_line_makes_atlas_and_explanation(model, dataset, tmp_path):
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    np.save(tmp_path / "data.npy", dataset)
    np.savetxt(tmp_path / "series.csv", dataset[:3], delimiter=",")
    script = (
        "import sys; from modeling_vqshape.sharing.visualization import main; "
        "assert main(sys.argv[1:8]) == 0; assert main(sys.argv[8:]) == 0; "
        "assert 'matplotlib.pyplot' not in sys.modules"
    )
    arguments = ["atlas", "--model", str(folder), "--output", str(tmp_path / "atlas.png"), "--data",
                 str(tmp_path / "data.npy"),
                 "explain", "--model", str(folder), "--output", str(tmp_path / "explain.png"), "--series",
                 str(tmp_path / "series.csv"), "--index", "2"]
    result = subprocess.run([sys.executable, "-c", script, *arguments], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
                                              "MPLBACKEND": "", "DISPLAY": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    assert_drawn(tmp_path / "atlas.png")
    assert_drawn(tmp_path / "explain.png")


@pytest.mark.slow
def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "modeling_vqshape.sharing.visualization", "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "atlas" in result.stdout and "explain" in result.stdout
