"""Loading a saved model with and without the package installed, from a folder and from an offline Hub cache."""

import ast
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from modeling_vqshape import VQShapeForPreTraining

from .conftest import REPO_ROOT

REPO_ID = "lab/vqshape-geneactiv"
# exactly what a saved VQShape folder holds: weights, configs and the modules remote code imports (flat, relative
# imports only); a text-aligned model's folder also carries the text modules
CARRIED_FILES = {
    "config.json", "model.safetensors", "preprocessor_config.json", "configuration_vqshape.py", "modeling_vqshape.py",
    "pipeline_vqshape.py", "processing_vqshape.py", "saving_vqshape.py",
}
TEXT_CARRIED_FILES = CARRIED_FILES | {
    "configuration_vqshape_text.py", "modeling_vqshape_text.py", "text_attributes.py", "text_bank.py",
    "text_calibration.py", "text_captions.py", "text_interpretation.py", "text_loss.py",
}
# the topology teacher of the distillation (modeling_persistence_image.py) carries its own modules
PERSISTENCE_CARRIED_FILES = {
    "config.json", "model.safetensors", "configuration_persistence_image.py", "modeling_persistence_image.py",
    "persistence.py",
}
COMMIT = "0123456789abcdef0123456789abcdef01234567"

# the start of a loader run in a fresh process as `python -c LOADER mode source expected_path`: in "remote" mode the
# package cannot be imported (a machine without it), in "package" mode it is imported and registers its classes
PACKAGE_OR_REMOTE = textwrap.dedent(
    """
    import importlib.abc, sys
    mode, source, expected_path = sys.argv[1:4]
    if mode == "remote":
        class BlockPackage(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("modeling_vqshape", "conversion"):
                    raise ImportError(f"{name} is blocked: this process stands for a machine without the package")
        sys.meta_path.insert(0, BlockPackage())
    else:
        import modeling_vqshape  # noqa: F401  registers the Auto classes and the pipelines
    """
)

LOADER = PACKAGE_OR_REMOTE + textwrap.dedent(
    """
    if mode == "remote":
        try:
            import modeling_vqshape  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("the package is importable")
    import numpy as np, torch
    from safetensors.torch import load_file
    from transformers import AutoFeatureExtractor, AutoModel
    kwargs = {"trust_remote_code": True} if mode == "remote" else {}
    model = AutoModel.from_pretrained(source, **kwargs).eval()
    extractor = AutoFeatureExtractor.from_pretrained(source, **kwargs)
    expected = load_file(expected_path)
    inputs = extractor([np.sin(np.linspace(0, 9, 50)), np.linspace(-3, 3, 200)])
    with torch.no_grad():
        out = model(**inputs, output_reconstruction=True)
    for name, value in expected.items():
        torch.testing.assert_close(getattr(out, name), value, rtol=0, atol=0)
    print("loaded", type(model).__module__, type(model).__name__)
    """
)


def save_expected_outputs(model, path):
    """The outputs LOADER compares against: the model's on LOADER's two series."""
    import numpy as np

    from modeling_vqshape import VQShapeFeatureExtractor

    series = [np.sin(np.linspace(0, 9, 50)), np.linspace(-3, 3, 200)]
    inputs = VQShapeFeatureExtractor(model.config.input_length)(series)
    with torch.no_grad():
        out = model.vqshape(**inputs, output_reconstruction=True)
    save_file({name: getattr(out, name).contiguous() for name in ("token_features", "histogram", "reconstruction")},
              str(path))
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from modeling_vqshape import VQShapeConfig

    from .conftest import TINY

    root = tmp_path_factory.mktemp("loading")
    model = VQShapeForPreTraining(VQShapeConfig(**TINY)).eval()
    folder = root / "vqshape-geneactiv"
    model.save_pretrained(folder)
    expected = save_expected_outputs(model, root / "expected.safetensors")
    # an offline Hub cache holding the folder as the repo's main revision
    hub_cache = root / "hf_home" / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    (hub_cache / "refs").mkdir(parents=True)
    (hub_cache / "refs" / "main").write_text(COMMIT)
    shutil.copytree(folder, hub_cache / "snapshots" / COMMIT)
    return root, folder, expected


def run_loader(root, mode, source, expected):
    workdir = root / f"run-{mode}"
    workdir.mkdir(exist_ok=True)
    env = {key: value for key, value in os.environ.items()
           if key not in ("HF_HUB_CACHE", "TRANSFORMERS_CACHE", "PYTHONPATH")}
    env.update(HF_HOME=str(root / "hf_home"), HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(root / "modules"))
    if mode == "package":
        env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run(
        [sys.executable, "-c", LOADER, mode, str(source), str(expected)],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow  # a fresh Python process per case
@pytest.mark.parametrize("mode", ["package", "remote"])
def test_load_from_folder(saved, mode):
    root, folder, expected = saved
    printed = run_loader(root, mode, folder, expected)
    assert ("transformers_modules" in printed) == (mode == "remote")


@pytest.mark.slow  # a fresh Python process per case
@pytest.mark.parametrize("mode", ["package", "remote"])
def test_load_by_repo_id_from_offline_hub_cache(saved, mode):
    root, _, expected = saved
    printed = run_loader(root, mode, REPO_ID, expected)
    assert "VQShapeModel" in printed
    assert ("transformers_modules" in printed) == (mode == "remote")


def test_a_saved_folder_carries_exactly_these_files(saved, tmp_path):
    from modeling_vqshape import VQShapeForTextAlignment, VQShapeForTimeSeriesClassification

    from .conftest import FIXTURES

    _, folder, _ = saved
    assert {path.name for path in folder.iterdir()} == CARRIED_FILES
    classifier = VQShapeForTimeSeriesClassification.from_pretrained(FIXTURES / "saved_folders" / "classifier")
    classifier.save_pretrained(tmp_path / "classifier")
    assert {path.name for path in (tmp_path / "classifier").iterdir()} == CARRIED_FILES
    text_aligned = VQShapeForTextAlignment.from_pretrained(FIXTURES / "saved_folders" / "text_aligned")
    text_aligned.save_pretrained(tmp_path / "text_aligned")
    assert {path.name for path in (tmp_path / "text_aligned").iterdir()} == TEXT_CARRIED_FILES
    from modeling_vqshape import PersistenceImageConfig, PersistenceImageForClassification

    PersistenceImageForClassification(PersistenceImageConfig(num_labels=2)).save_pretrained(tmp_path / "topology")
    assert {path.name for path in (tmp_path / "topology").iterdir()} == PERSISTENCE_CARRIED_FILES
    # the carried modules import each other by flat relative imports only (remote code has no package)
    package = REPO_ROOT / "modeling_vqshape"
    carried = CARRIED_FILES | TEXT_CARRIED_FILES | PERSISTENCE_CARRIED_FILES
    for name in carried - {"config.json", "model.safetensors", "preprocessor_config.json"}:
        for node in ast.walk(ast.parse((package / name).read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 1 or not node.module.startswith(("modeling_vqshape", "conversion")), name
                assert node.level == 0 or "." not in (node.module or "."), f"{name}: not a flat relative import"
            elif isinstance(node, ast.Import):
                assert not any(alias.name.startswith("modeling_vqshape") for alias in node.names), name


def test_saved_config_has_the_complete_auto_map(saved):
    import json

    _, folder, _ = saved
    config = json.loads((folder / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForPreTraining",
                                       "AutoModelForSequenceClassification"}
    assert config["architectures"] == ["VQShapeForPreTraining"]
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    assert preprocessor["auto_map"]["AutoFeatureExtractor"] == "processing_vqshape.VQShapeFeatureExtractor"


def test_load_vqshape_gives_any_saved_model_in_eval_mode(saved, tmp_path):
    """The one loader of the package's tools (plots, demo, token tables, probe, publishing): the base model of any
    head, a classifier's own head when asked, a text-aligned model, by folder or Hub id, with its feature extractor."""
    from modeling_vqshape import (
        VQShapeConfig,
        VQShapeFeatureExtractor,
        VQShapeForTextAlignment,
        VQShapeForTimeSeriesClassification,
        VQShapeModel,
    )
    from modeling_vqshape.sharing.loading import load_vqshape

    from .conftest import FIXTURES, TINY

    root, folder, _ = saved
    for source in (folder, str(folder)):
        model = load_vqshape(source)
        assert type(model) is VQShapeModel and not model.training
        assert type(load_vqshape(source, keep_classifier=True)) is VQShapeModel  # a pre-training head: no classifier
    classifier_folder = FIXTURES / "saved_folders" / "classifier"
    assert type(load_vqshape(classifier_folder)) is VQShapeModel
    classifier = load_vqshape(classifier_folder, keep_classifier=True)
    assert type(classifier) is VQShapeForTimeSeriesClassification and not classifier.training
    assert classifier.config.id2label == VQShapeForTimeSeriesClassification.from_pretrained(
        classifier_folder).config.id2label
    text_aligned = load_vqshape(FIXTURES / "saved_folders" / "text_aligned", keep_classifier=True)
    assert type(text_aligned) is VQShapeForTextAlignment and not text_aligned.training
    # a Hub id, from the offline cache: the location arguments reach the config and the feature extractor too
    model, feature_extractor = load_vqshape(REPO_ID, keep_classifier=True, with_feature_extractor=True,
                                            cache_dir=root / "hf_home" / "hub", local_files_only=True)
    assert type(model) is VQShapeModel and isinstance(feature_extractor, VQShapeFeatureExtractor)
    torch.testing.assert_close(model.state_dict(), load_vqshape(folder).state_dict())
    # a folder without preprocessor_config.json gets the extractor for the model's input length
    bare = tmp_path / "bare"
    VQShapeModel(VQShapeConfig(**{**TINY, "input_length": 32, "num_patches": 4})).save_pretrained(bare)
    (bare / "preprocessor_config.json").unlink(missing_ok=True)
    model, feature_extractor = load_vqshape(bare, with_feature_extractor=True, device="cpu")
    assert feature_extractor.input_length == model.config.input_length == 32


@pytest.mark.slow  # a fresh Python process, with a modules cache of its own
def test_load_vqshape_takes_trust_remote_code(saved):
    """`recordings --trust_remote_code` passes it on; with the package imported its registered classes load."""
    root, folder, _ = saved
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(root / "mods")}
    code = ("import sys; from modeling_vqshape.sharing.loading import load_vqshape; "
            "model, extractor = load_vqshape(sys.argv[1], True, True, trust_remote_code=True); "
            "print(type(model).__name__, type(extractor).__name__)")
    result = subprocess.run([sys.executable, "-c", code, str(folder)], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "VQShapeModel VQShapeFeatureExtractor" in result.stdout.splitlines(), result.stdout
