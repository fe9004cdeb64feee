"""Publishing to a local Hub stand-in (tests/hub_stand_in.py on 127.0.0.1) and loading back in a fresh process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_vqshape import VQShapeConfig, VQShapeForPreTraining
from modeling_vqshape.sharing.hub import check_repo_id, publish, write_model_card

from .conftest import ORIGINAL_TINY, REPO_ROOT, TINY
from .hub_stand_in import HubStandIn
from .test_loading import CARRIED_FILES, LOADER, PACKAGE_OR_REMOTE, save_expected_outputs

REPO_ID = "lab/vqshape-geneactiv"
RESULTS = {"ECG200": 0.87, "GunPoint": {"accuracy": 0.953, "f1": 0.95}}


@pytest.fixture(scope="module")
def online():
    """conftest puts huggingface_hub offline for the session; these tests talk to 127.0.0.1 only."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield patch


@pytest.fixture(scope="module")
def hub(online):
    with HubStandIn(request_timeout=30) as stand_in:
        online.setattr("huggingface_hub.constants.ENDPOINT", stand_in.endpoint)
        yield stand_in


@pytest.fixture(scope="module")
def pushed(hub, tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    model = VQShapeForPreTraining(VQShapeConfig(**TINY)).eval()
    expected = save_expected_outputs(model, root / "expected.safetensors")
    kwargs = dict(private=True, commit_message="First VQShape upload", results=RESULTS, dataset_names=["ECG200"],
                  base_model="YunshiWen/VQShape", atlas_dataset=np.random.default_rng(0).normal(size=(6, 80)),
                  endpoint=hub.endpoint, token="hf_stand_in")
    commit = publish(model, REPO_ID, **kwargs)
    return root, model, expected, commit, kwargs


def run_in_fresh_process(hub, root, mode, script, *arguments, name=None):
    """Run `script` (`python -c`, with `mode` and `arguments` as argv) in a fresh process with HF_ENDPOINT on the
    stand-in and an empty HF_HOME; in "remote" mode the package cannot be imported (tests/test_loading.py)."""
    name = name or mode
    workdir = root / f"run-{name}"
    workdir.mkdir(exist_ok=True)
    dropped = ("HF_HUB_CACHE", "TRANSFORMERS_CACHE", "PYTHONPATH")
    env = {key: value for key, value in os.environ.items() if key not in dropped}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(root / f"hf_home-{name}"), HF_HUB_OFFLINE="0",
               TRANSFORMERS_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1",
               HF_MODULES_CACHE=str(root / f"modules-{name}"), NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    if mode == "package":
        env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run([sys.executable, "-c", script, mode, *map(str, arguments)],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def load_in_fresh_process(hub, root, mode, expected, repo_id=REPO_ID):
    """Run tests/test_loading.py's loader on `repo_id` of the stand-in."""
    name = f"load-{mode}-{repo_id.replace('/', '--')}"
    return run_in_fresh_process(hub, root, mode, LOADER, repo_id, expected, name=name)


# a collaborator without the package: load a shared model with remote code, then save and push it the standard way
# (argv: mode, source, "-", repo_id, folder)
REMOTE_PUSH = PACKAGE_OR_REMOTE + """
from transformers import AutoModel
repo_id, folder = sys.argv[4:6]
model = AutoModel.from_pretrained(source, trust_remote_code=True)
assert "transformers_modules" in type(model).__module__, type(model).__module__
model.save_pretrained(folder, push_to_hub=True, repo_id=repo_id, token="hf_stand_in",
                      commit_message="Shared without the package")
print("pushed", type(model).__name__)
"""


@pytest.mark.slow
def test_push_creates_a_private_repo_with_everything(pushed, hub):
    _, _, _, commit, _ = pushed
    repo = hub.repos[REPO_ID]
    assert repo.private
    assert len(repo.commits) == 1 and repo.commits[0][1] == "First VQShape upload"
    assert commit.oid == repo.commits[0][0]
    assert set(repo.head[2]) == CARRIED_FILES | {"README.md", "atlas.png"}
    assert repo.head[2]["atlas.png"].startswith(b"\x89PNG")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["package", "remote"])
def test_pushed_model_loads_by_repo_id_in_a_fresh_process(pushed, hub, mode):
    root, _, expected, _, _ = pushed
    printed = load_in_fresh_process(hub, root, mode, expected)
    assert "VQShapeModel" in printed
    assert ("transformers_modules" in printed) == (mode == "remote")


@pytest.mark.slow
def test_second_push_of_an_unchanged_model_creates_no_new_files(pushed, hub):
    _, model, _, commit, kwargs = pushed
    before = len(hub.requests)
    again = publish(model, REPO_ID, **{**kwargs, "commit_message": "Same model again"})
    assert again.oid == commit.oid
    assert len(hub.repos[REPO_ID].commits) == 1
    assert not any(path.endswith("/commit/main") for _, path in hub.requests[before:])


@pytest.mark.slow
@pytest.mark.parametrize("repo_id", ["lab/vqshape geneactiv", "lab/vqshape/geneactiv", "lab/../x", "lab/-x--y", ""])
def test_invalid_repo_id_fails_before_anything_is_sent(hub, repo_id):
    before = len(hub.requests)
    with pytest.raises(ValueError, match="invalid Hub repo id"):
        publish(VQShapeForPreTraining(VQShapeConfig(**TINY)), repo_id, endpoint=hub.endpoint)
    with pytest.raises(ValueError, match="invalid Hub repo id"):
        publish(REPO_ROOT, repo_id, endpoint=hub.endpoint)
    assert len(hub.requests) == before


@pytest.mark.slow
def test_converter_push_to_hub_uses_the_same_helper(hub, tmp_path):
    from conversion.convert_vqshape_original_to_hf import convert

    convert(ORIGINAL_TINY / "VQShape.ckpt", tmp_path / "converted", push_to_hub="lab/vqshape-converted")
    files = hub.repos["lab/vqshape-converted"].head[2]
    assert {"atlas.png", "model.safetensors", "modeling_vqshape.py", "preprocessor_config.json"} <= set(files)
    assert b"](atlas.png)" in files["README.md"]
    # the folder holds exactly what was pushed, byte for byte
    pushed_files_equal_folder(files, tmp_path / "converted")


def pushed_files_equal_folder(files, folder, added=()):
    """The repo holds the folder's files byte for byte, plus `added` (completed on a copy, not in the folder)."""
    assert set(files) == {path.name for path in folder.iterdir()} | set(added)
    for name in set(files) - set(added):
        assert (folder / name).read_bytes() == files[name], name


@pytest.mark.slow
def test_a_saved_folder_is_published_as_saved(hub, tmp_path):
    torch.manual_seed(0)
    publish(VQShapeForPreTraining(VQShapeConfig(**TINY)), "lab/vqshape-model", endpoint=hub.endpoint)
    folder = tmp_path / "downloaded"
    folder.mkdir()
    for name, content in hub.repos["lab/vqshape-model"].head[2].items():
        (folder / name).write_bytes(content)
    # a complete folder (atlas and card): uploaded as it is; an unchanged one makes no new commit
    commit = publish(folder, "lab/vqshape-folder", endpoint=hub.endpoint, commit_message="From a folder")
    pushed_files_equal_folder(hub.repos["lab/vqshape-folder"].head[2], folder)
    assert publish(folder, "lab/vqshape-folder", endpoint=hub.endpoint).oid == commit.oid
    with pytest.raises(ValueError, match="card"):
        publish(folder, "lab/vqshape-folder", description="A new card", endpoint=hub.endpoint)


@pytest.mark.slow
def test_save_pretrained_push_to_hub_uploads_the_completed_folder(hub, tmp_path):
    torch.manual_seed(0)
    model = VQShapeForPreTraining(VQShapeConfig(**TINY))
    folder = tmp_path / "vqshape-saved"
    model.save_pretrained(folder, push_to_hub=True, repo_id="lab/vqshape-saved", private=True,
                          commit_message="save_pretrained", token="hf_stand_in")
    repo = hub.repos["lab/vqshape-saved"]
    assert repo.private and [message for _, message, _ in repo.commits] == ["save_pretrained"]
    # transformers' own upload of the completed folder (auto_map, pipelines, feature extractor, modeling files) and
    # its generic card; the atlas and our card are extras of hub.publish
    files = repo.head[2]
    pushed_files_equal_folder(files, folder)
    assert set(files) == CARRIED_FILES | {"README.md"}
    config = json.loads(files["config.json"])
    assert "AutoModelForSequenceClassification" in config["auto_map"] and config["custom_pipelines"]


@pytest.mark.slow  # three fresh processes
def test_without_the_package_save_pretrained_pushes_a_model_that_loads_identically(hub, tmp_path):
    torch.manual_seed(0)
    model = VQShapeForPreTraining(VQShapeConfig(**TINY)).eval()
    shared = tmp_path / "shared"
    model.save_pretrained(shared)
    expected = save_expected_outputs(model, tmp_path / "expected.safetensors")
    # a collaborator's machine: the package cannot be imported, the model comes with its own files
    printed = run_in_fresh_process(hub, tmp_path, "remote", REMOTE_PUSH, shared, "-", "lab/vqshape-shared",
                                   tmp_path / "collaborator-folder", name="push")
    assert "pushed VQShapeModel" in printed
    files = hub.repos["lab/vqshape-shared"].head[2]
    assert set(files) == CARRIED_FILES | {"README.md"}
    config = json.loads(files["config.json"])
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForPreTraining",
                                       "AutoModelForSequenceClassification"}
    assert b"AutoFeatureExtractor" in files["preprocessor_config.json"]
    assert set(config["custom_pipelines"]) == {"time-series-classification", "time-series-tokenization"}
    # another fresh process loads what was pushed, with or without the package: identical outputs
    for mode in ("remote", "package"):
        load_in_fresh_process(hub, tmp_path, mode, expected, repo_id="lab/vqshape-shared")


def test_model_card_metadata_round_trips(tmp_path):
    from huggingface_hub import ModelCard

    config = VQShapeConfig(**TINY)
    path = write_model_card(tmp_path, config, "A tiny test model.", training={"steps": 3}, results=RESULTS,
                            dataset_names=["ECG200", "GunPoint"], base_model="YunshiWen/VQShape", repo_id=REPO_ID)
    card = ModelCard.load(path)
    assert card.data.library_name == "transformers"
    assert card.data.tags == ["time-series", "time-series-classification", "vqshape"]
    assert card.data.license == "mit" and card.data.base_model == "YunshiWen/VQShape"
    assert card.data.datasets == ["ECG200", "GunPoint"]
    numbers = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert numbers == {("ECG200", "accuracy"): 0.87, ("GunPoint", "accuracy"): 0.953, ("GunPoint", "f1"): 0.95}
    assert card.data.model_name == "vqshape-geneactiv"
    text = path.read_text()
    assert "| `d_model` | 16 |" in text and "trust_remote_code=True" in text and 'revision="' in text
    assert "@inproceedings{wen2024vqshape" in text
    first = path.read_bytes()
    write_model_card(tmp_path, config, "A tiny test model.", training={"steps": 3}, results=RESULTS,
                     dataset_names=["ECG200", "GunPoint"], base_model="YunshiWen/VQShape", repo_id=REPO_ID)
    assert path.read_bytes() == first  # deterministic: an unchanged model gives an unchanged card


def test_check_repo_id_accepts_ordinary_ids():
    for repo_id in ("lab/vqshape-geneactiv", "vqshape", "Org_1/model.v2"):
        assert check_repo_id(repo_id) == repo_id


@pytest.mark.slow
def test_classification_metric_publishes_as_an_evaluate_space(hub):
    from modeling_vqshape.sharing.hub import push_metric_to_hub
    from modeling_vqshape.tasks.metrics import CLASSIFICATION_METRIC

    push_metric_to_hub("lab/vqshape-classification", endpoint=hub.endpoint, token="hf_stand_in")
    space = hub.repos["lab/vqshape-classification"]
    assert (space.kind, space.sdk) == ("space", "gradio")
    files = space.head[2]
    assert set(files) == {"vqshape-classification.py", "app.py", "requirements.txt", "README.md"}
    assert files["vqshape-classification.py"] == Path(CLASSIFICATION_METRIC).read_bytes()  # evaluate.load reads it
    card = files["README.md"].decode()
    assert card.startswith("---\n") and "sdk: gradio" in card and "app_file: app.py" in card
    assert 'evaluate.load("lab/vqshape-classification")' in files["app.py"].decode()
    assert b"scikit-learn" in files["requirements.txt"]

