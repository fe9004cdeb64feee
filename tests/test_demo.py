"""The Gradio demo (modeling_vqshape.sharing.demo): uploads, what the page shows, the Space it publishes, and the page
itself driven by a headless Chromium."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

pytest.importorskip("pyarrow")
datasets = pytest.importorskip("datasets")

from modeling_vqshape import VQShapeConfig, VQShapeFeatureExtractor, VQShapeModel  # noqa: E402
from modeling_vqshape.corpora.geneactiv import read_geneactiv_bin, write_geneactiv_bin  # noqa: E402
from modeling_vqshape.corpora.recordings import main as recordings_main  # noqa: E402
from modeling_vqshape.sharing.demo import analyse, parse_classes, read_upload  # noqa: E402
from modeling_vqshape.sharing.loading import load_vqshape  # noqa: E402
from modeling_vqshape.sharing.visualization import explain_series  # noqa: E402

from .conftest import REPO_ROOT, TINY  # noqa: E402
from .test_hub import hub, online  # noqa: E402, F401  the local Hub stand-in, as fixtures
from .test_saved_folders import SAVED  # noqa: E402

CLASSIFIER = SAVED / "classifier"  # two channels, classes rest / walk / run


@pytest.fixture(scope="module")
def classifier():
    return load_vqshape(str(CLASSIFIER), keep_classifier=True)


def two_channel_csv(path, header=True, num_samples=600):
    values = np.random.default_rng(0).normal(size=(num_samples, 2)).cumsum(axis=0)
    np.savetxt(path, values, delimiter=",", header="acc_x,acc_y" if header else "", comments="")
    return values.T


def upload_values(path, sampling_rate):
    source = read_upload(path, sampling_rate)
    return np.concatenate([values for values, _ in source.pieces()], axis=1), source


def test_uploads_are_read_in_every_format(tmp_path):
    values = two_channel_csv(tmp_path / "header.csv")
    read, source = upload_values(tmp_path / "header.csv", 25)
    np.testing.assert_allclose(read, values, rtol=1e-12)
    assert source.sampling_rate == 25 and source.channel_names == ["acc_x", "acc_y"]
    two_channel_csv(tmp_path / "plain.csv", header=False)
    read, source = upload_values(tmp_path / "plain.csv", 25)
    np.testing.assert_allclose(read, values, rtol=1e-12)
    assert source.channel_names == ["channel_0", "channel_1"]
    np.save(tmp_path / "series.npy", values[0])
    assert upload_values(tmp_path / "series.npy", 10)[0].shape == (1, 600)
    raw = np.random.default_rng(1).integers(-500, 500, (3, 600))
    bin_path = write_geneactiv_bin(tmp_path / "wrist.bin", raw, frequency=40, page_times=[0.0, 8.0])
    read, source = upload_values(bin_path, 999)  # a GENEActiv file states its own rate, and its own sample times
    recording = read_geneactiv_bin(bin_path)
    np.testing.assert_array_equal(read, recording.values)
    np.testing.assert_array_equal(np.concatenate([time for _, time in source.pieces()]), recording.time)
    assert source.sampling_rate == 40 and source.channel_names == ["x", "y", "z"] and source.start == recording.start


def test_unreadable_uploads_get_a_message(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match="bad.npy: not a readable NumPy array file"):
        read_upload(tmp_path / "bad.npy", 50)
    (tmp_path / "words.csv").write_text("a,b\nx,y\nz,w\n")
    with pytest.raises(ValueError, match="words.csv: every column must be numeric"):
        read_upload(tmp_path / "words.csv", 50)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        read_upload(tmp_path / "notes.txt", 50)
    two_channel_csv(tmp_path / "no_rate.csv")
    with pytest.raises(ValueError, match="give the sampling rate"):
        read_upload(tmp_path / "no_rate.csv", None)


def test_analyse_shows_the_models_prediction_tokens_and_usage(classifier, tmp_path):
    values = two_channel_csv(tmp_path / "walk.csv")
    result = analyse(classifier, tmp_path / "walk.csv", sampling_rate=25, window_seconds=8, workdir=tmp_path / "run")
    window = values[:, :200]  # 8 s at 25 Hz
    with torch.no_grad():
        expected = classifier(**VQShapeFeatureExtractor(classifier.config.input_length)(window[None])).logits
    probabilities = expected.softmax(dim=-1)[0]
    assert result["prediction"] == pytest.approx({"rest": float(probabilities[0]), "walk": float(probabilities[1]),
                                                  "run": float(probabilities[2])}, abs=1e-6)
    import pandas as pd

    table = pd.read_csv(result["table"])
    assert len(table) == 3 * 2 * classifier.config.num_tokens  # three 8 s windows, two channels
    assert set(table["channel"]) == {"acc_x", "acc_y"}
    atlas_titles = [axis.get_title() for axis in result["atlas"].axes if axis.get_title()]
    counts = np.bincount(table["code"], minlength=classifier.config.num_codes)
    assert atlas_titles == [f"{code} (n={count})" for code, count in enumerate(counts)]
    drawn = result["explanation"].axes[0].lines
    assert len(drawn) == 2 + classifier.config.num_tokens  # the window, its reconstruction and one shape per token
    assert "3 window(s) of 8 s" in result["summary"]


def test_the_demo_and_the_command_line_give_the_same_windows_for_the_same_file(tmp_path, capsys):
    """A GENEActiv file whose second page is 0.5 s late: its first 8 s window spans the jump. The demo's table is the
    command line's, and it explains the first window kept, timed from the pages."""
    torch.manual_seed(0)
    VQShapeModel(VQShapeConfig(**TINY)).save_pretrained(tmp_path / "model")
    model = load_vqshape(str(tmp_path / "model"), keep_classifier=True)
    raw = np.random.default_rng(2).integers(-400, 400, (3, 1200)).cumsum(axis=1) % 2000 - 1000
    path = write_geneactiv_bin(tmp_path / "jump.bin", raw, frequency=50, page_times=[0.0, 6.5, 12.5, 18.5])
    result = analyse(model, path, window_seconds=8, workdir=tmp_path / "demo")
    recordings_main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "cli"), "--window", "8",
                     str(path)])
    import pandas as pd

    demo = pd.read_csv(result["table"])
    cli = datasets.Dataset.from_parquet(str(tmp_path / "cli" / "data" / "*.parquet")).to_pandas()
    assert sorted(set(demo["window"])) == sorted(set(cli["window"])) == [1, 2]
    for column in ("window", "channel", "token", "code"):
        np.testing.assert_array_equal(demo[column], cli[column])
    for column in ("window_start", "token_start", "token_end"):  # through the demo's CSV, to its printed digits
        np.testing.assert_allclose(demo[column], cli[column], rtol=1e-12)
    assert demo.groupby("window")["window_start"].first().tolist() == [8.5, 16.5]  # the pages' clock
    assert "2 window(s) of 8 s, 1 spanning a gap left out" in result["summary"]
    assert "Window 1 (from 8.5 s) is explained" in result["summary"]
    explained = explain_series(model, read_geneactiv_bin(path).values[:, 400:800])["series"]
    np.testing.assert_allclose(result["explanation"].axes[0].lines[0].get_ydata(), explained, rtol=1e-6)
    with pytest.raises(ValueError, match=r"no window to keep: all 1 window\(s\) of 20 s span a gap"):
        analyse(model, path, window_seconds=20, workdir=tmp_path / "none")


def test_text_aligned_models_classify_from_stored_names_or_the_forms_classes(tmp_path):
    model = load_vqshape(str(SAVED / "text_aligned"), keep_classifier=True)
    values = two_channel_csv(tmp_path / "walk.csv")
    stored = analyse(model, tmp_path / "walk.csv", sampling_rate=25, window_seconds=8, workdir=tmp_path / "a")
    inputs = VQShapeFeatureExtractor(model.config.vqshape_config.input_length)(values[None, :, :200])
    with torch.no_grad():
        expected = model.zero_shot_classify(inputs["past_values"])
    assert stored["prediction"] == pytest.approx(dict(zip(expected.class_names, expected.probabilities[0].tolist())),
                                                 abs=1e-6)
    assert parse_classes("walking, running\nstanding") == ["walking", "running", "standing"]
    assert parse_classes("walking: a regular rhythm; steady steps\nrunning: vigorous swings") == {
        "walking": ["a regular rhythm", "steady steps"], "running": ["vigorous swings"]}
    assert parse_classes("  ") is None
    with pytest.raises(ValueError, match="write each class as 'name: description; description'"):
        parse_classes("walking: steady steps\nrunning")


@pytest.mark.slow
def test_demo_space_publishes_with_the_package_and_the_model_id(hub, tmp_path):  # noqa: F811
    from modeling_vqshape.sharing.hub import publish_demo

    publish_demo("lab/vqshape-demo", "lab/vqshape-basicmotions", endpoint=hub.endpoint, token="hf_stand_in")
    repo = hub.repos["lab/vqshape-demo"]
    files = repo.head[2]
    space = REPO_ROOT / "modeling_vqshape" / "sharing" / "space"
    assert files["app.py"] == (space / "app.py").read_bytes()
    assert files["requirements.txt"] == (space / "requirements.txt").read_bytes()
    assert files["model_id.txt"] == b"lab/vqshape-basicmotions\n"
    demo = REPO_ROOT / "modeling_vqshape" / "sharing" / "demo.py"
    assert files["modeling_vqshape/sharing/demo.py"] == demo.read_bytes()
    assert b"sdk: gradio" in files["README.md"] and b"- lab/vqshape-basicmotions" in files["README.md"]
    assert not any("__pycache__" in name or name.startswith("modeling_vqshape/sharing/space") for name in files)
    # beside a model: publish(..., demo_space=...) pushes the model, then its demo pointing at it
    from modeling_vqshape import VQShapeConfig, VQShapeForPreTraining
    from modeling_vqshape.sharing.hub import publish

    from .conftest import TINY

    publish(VQShapeForPreTraining(VQShapeConfig(**TINY)), "lab/vqshape-tiny", demo_space="lab/vqshape-tiny-demo",
            endpoint=hub.endpoint, token="hf_stand_in")
    assert "model.safetensors" in hub.repos["lab/vqshape-tiny"].head[2]
    assert hub.repos["lab/vqshape-tiny-demo"].head[2]["model_id.txt"] == b"lab/vqshape-tiny\n"


def browser_or_skip():
    """chromedriver and Chromium from Debian's packages (`apt-get install chromium chromium-driver`), selenium and
    gradio from PyPI; the test skips, saying which is missing, where one is absent."""
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[demo]')")
    pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver packages")
    return browser, driver


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_the_demo_page_in_a_real_browser(tmp_path):
    browser, driver_path = browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    two_channel_csv(tmp_path / "walk.csv")
    (tmp_path / "broken.npy").write_bytes(b"garbage")
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "modeling_vqshape.sharing.demo", "--model", str(CLASSIFIER),
                               "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2000"):
        options.add_argument(argument)
    options.binary_location = browser
    page = None
    try:
        deadline = time.monotonic() + 120
        while True:  # the server is up when its page answers
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("the demo server did not start:\n" + server.stdout.read().decode(errors="replace"))
                time.sleep(0.5)
        page = webdriver.Chrome(service=Service(driver_path), options=options)
        page.set_page_load_timeout(60)
        page.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(page, 90)

        def analyse_upload(path):
            upload = wait.until(lambda p: p.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))[0]
            upload.send_keys(str(path))
            wait.until(lambda p: path.stem in p.find_element(By.CSS_SELECTOR, "#upload").text)  # "walk\n.csv"
            page.find_element(By.CSS_SELECTOR, "#analyse").click()

        analyse_upload(tmp_path / "walk.csv")
        wait.until(lambda p: p.find_elements(By.CSS_SELECTOR, "#explanation img"))
        wait.until(lambda p: "walk" in p.find_element(By.CSS_SELECTOR, "#prediction").text)
        prediction = page.find_element(By.CSS_SELECTOR, "#prediction").text
        assert {"rest", "walk", "run"} <= set(prediction.split()), prediction
        assert page.find_elements(By.CSS_SELECTOR, "#atlas img")
        assert "walk-tokens" in page.find_element(By.CSS_SELECTOR, "#table").text
        page.find_element(By.CSS_SELECTOR, "#upload button[aria-label='Clear']").click()
        analyse_upload(tmp_path / "broken.npy")
        wait.until(lambda p: "Could not use this upload" in p.find_element(By.CSS_SELECTOR, "#status").text)
        assert "broken.npy: not a readable NumPy array file" in page.find_element(By.CSS_SELECTOR, "#status").text
    finally:
        if page is not None:
            page.quit()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
