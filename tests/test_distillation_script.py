"""The distillation scripts end to end (examples/train_persistence_teacher.py, examples/distill.py) on the tiny config
and small subsets of BasicMotions: the persistence-image teacher trains and saves with its class names; the student
distilled from a saved classifier and an outputs file saves and reloads with identical logits, reports its metrics and
mean teacher weights; on two ranks the MTKD-RL agent stays identical on both; each of its rewards measures what it
says (the head twice, or one measuring pass, or neither); with `--label_map` a teacher of fine classes teaches a
student trained and scored on coarse ones, and a map naming unknown classes is refused. Also the teachers precomputed
over TRAIN (modeling_vqshape.tasks.teachers.training_teachers)."""

import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("gudhi")

from modeling_vqshape import (  # noqa: E402
    PersistenceImageConfig,
    PersistenceImageForClassification,
    VQShapeConfig,
    VQShapeForPreTraining,
)
from modeling_vqshape.tasks.classification import ClassificationSplit, load_classification_dataset  # noqa: E402
from modeling_vqshape.tasks.teachers import OutputsTeacher, load_teacher, save_teacher_outputs, training_teachers  # noqa: E402

from .conftest import REPO_ROOT, TINY, TWO_CPU_RANKS, run_script  # noqa: E402

NAMES = ["badminton", "running", "standing", "walking"]
SMALL_RUN = ["--dataset", "BasicMotions", "--max_train_samples", "16", "--max_eval_samples", "8",
             "--per_device_train_batch_size", "3", "--per_device_eval_batch_size", "3"]


def outputs_file(path, cross_fitted: bool = False):
    """A teacher outputs file for every TRAIN series of BasicMotions (keyed by row number): logits that favour the
    true class, and features; `cross_fitted`: with 3 folds (row number modulo 3) whose logits are the same."""
    train = load_classification_dataset("BasicMotions")["train"]
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(train), 4)) + 3 * np.eye(4)[np.searchsorted(NAMES, train.labels)]
    folds = dict(folds=np.arange(len(train)) % 3, fold_logits=np.stack([logits] * 3)) if cross_fitted else {}
    save_teacher_outputs(path, train.sample_ids, logits, NAMES, features=rng.normal(size=(len(train), 5)), **folds)
    return path


@pytest.fixture
def tiny_student(tmp_path):
    torch.manual_seed(0)
    VQShapeForPreTraining(VQShapeConfig(**TINY)).save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_training_teachers_are_computed_once_over_train_by_row(tmp_path):
    torch.manual_seed(0)
    config = PersistenceImageConfig(num_input_channels=1, input_length=20, num_labels=2, resolution=8, hidden_size=4,
                                    id2label={0: "down", 1: "up"})
    PersistenceImageForClassification(config).save_pretrained(tmp_path / "pi")
    rng = np.random.default_rng(0)
    split = ClassificationSplit([rng.normal(size=(1, 30)) for _ in range(6)], np.array(["up", "down"] * 3),
                                np.array(["r0", "r1", "r2", "r3", "r4", "r5"]))
    save_teacher_outputs(tmp_path / "t.safetensors", ["r5", "r4", "r3", "r2", "r1", "r0", "extra"],
                         np.arange(14.0).reshape(7, 2), ["up", "down"])
    pi, from_file = training_teachers([tmp_path / "pi", tmp_path / "t.safetensors"], split, ["down", "up"],
                                      input_length=64, batch_size=4)
    assert isinstance(pi, OutputsTeacher) and isinstance(from_file, OutputsTeacher)
    rows = torch.tensor([4, 1])
    # the file's rows follow the split's ids, its columns the label order
    torch.testing.assert_close(from_file(sample_index=rows).logits, torch.tensor([[3.0, 2.0], [9.0, 8.0]]))
    # the classifier ran on the series resampled to its own input_length (20), not the student's (64)
    from modeling_vqshape.tasks.finetuning import labelled_tensors

    direct = load_teacher(tmp_path / "pi", ["down", "up"])(labelled_tensors(split, ["down", "up"], 20)[0][rows])
    answer = pi(sample_index=rows)
    torch.testing.assert_close(answer.logits, direct.logits)
    torch.testing.assert_close(answer.features, direct.features)


@pytest.mark.slow
def test_persistence_teacher_and_mtkd_rl_student_end_to_end(tiny_student, tmp_path):
    from transformers import AutoModelForSequenceClassification

    teacher_dir, student_dir = tmp_path / "pi-teacher", tmp_path / "student"
    run_script([sys.executable, str(REPO_ROOT / "examples" / "train_persistence_teacher.py"), *SMALL_RUN,
                "--input_length", "64", "--resolution", "8", "--hidden_size", "8", "--num_train_epochs", "2",
                "--output_dir", str(teacher_dir)])
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    assert isinstance(teacher, PersistenceImageForClassification) and teacher.config.id2label == dict(enumerate(NAMES))
    teacher_results = json.loads((teacher_dir / "eval_results.json").read_text())
    assert {"accuracy", "macro_f1"} <= teacher_results.keys()
    teacher_card = (teacher_dir / "README.md").read_text()  # its own card, not VQShape's
    assert "A persistence-image classifier" in teacher_card and "VQShape turns" not in teacher_card
    assert "AutoModelForSequenceClassification.from_pretrained" in teacher_card
    assert "Topological Persistence" in teacher_card and "wen2024vqshape" not in teacher_card  # its own citation
    assert "# pi-teacher" in teacher_card and "- vqshape" not in teacher_card  # its own name and tags
    assert f"value: {teacher_results['accuracy']}" in teacher_card  # the model-index holds its test accuracy

    result = run_script([sys.executable, str(REPO_ROOT / "examples" / "distill.py"), *SMALL_RUN,
                         "--student_model_name_or_path", str(tiny_student), "--teacher", str(teacher_dir),
                         "--teacher", str(outputs_file(tmp_path / "raw.npz")), "--weighting", "mtkd_rl",
                         "--reward", "improvement", "--classifier_features", "tokens", "--num_train_epochs", "2",
                         "--output_dir", str(student_dir)])
    assert "mean teacher weights over training (mtkd_rl)" in result.stdout
    reported = json.loads((student_dir / "eval_results.json").read_text())
    assert {"accuracy", "macro_f1"} <= reported.keys() and reported["weighting"] == "mtkd_rl"
    assert reported["reward"] == "improvement"  # the whole student's, measured by one more forward pass
    weights = reported["mean_teacher_weights"]
    assert len(weights) == 2 and sum(weights) == pytest.approx(1, abs=1e-5)
    card = (student_dir / "README.md").read_text()
    assert "mtkd_rl" in card and "raw.npz" in card and str(teacher_dir) in card

    student = AutoModelForSequenceClassification.from_pretrained(student_dir).eval()
    assert student.config.id2label == dict(enumerate(NAMES)) and student.config.num_input_channels == 6
    past_values = torch.randn(3, TINY["input_length"], 6, generator=torch.Generator().manual_seed(0))
    again = AutoModelForSequenceClassification.from_pretrained(student_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(past_values).logits, student(past_values).logits, rtol=0, atol=0)
    # the reloaded student predicts what the script measured on the same test subset
    from modeling_vqshape.tasks.classification import classification_metrics
    from modeling_vqshape.tasks.finetuning import labelled_tensors

    test = load_classification_dataset("BasicMotions")["test"].subset(8, seed=0)
    with torch.no_grad():
        predicted = student(labelled_tensors(test, NAMES, TINY["input_length"])[0]).logits.argmax(-1)
    measured = classification_metrics(test.labels, np.asarray(NAMES)[predicted.numpy()])
    assert reported["accuracy"] == pytest.approx(measured["accuracy"])


@pytest.mark.slow
def test_two_rank_mtkd_rl_keeps_the_agent_identical_on_both_ranks(tiny_student, tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    config = PersistenceImageConfig(num_input_channels=6, input_length=32, num_labels=4, resolution=8, hidden_size=4,
                                    id2label=dict(enumerate(NAMES)))
    PersistenceImageForClassification(config).save_pretrained(tmp_path / "pi")
    run_script([sys.executable, *TWO_CPU_RANKS, str(REPO_ROOT / "examples" / "distill.py"), *SMALL_RUN,
                "--student_model_name_or_path", str(tiny_student), "--teacher", str(tmp_path / "pi"), "--teacher",
                str(outputs_file(tmp_path / "raw.safetensors")), "--weighting", "mtkd_rl", "--classifier_features",
                "tokens", "--num_train_epochs", "2", "--output_dir", str(tmp_path / "student"),
                "--debug_agent_dir", str(tmp_path / "agents")])
    first, second = (load_file(str(tmp_path / "agents" / f"agent.rank{rank}.safetensors")) for rank in (0, 1))
    saved = load_file(str(tmp_path / "student" / "mtkd_rl_agent.safetensors"))  # the main process's, in the folder
    assert first.keys() == second.keys() == saved.keys()
    for key in first:
        assert torch.equal(first[key], second[key]) and torch.equal(first[key], saved[key]), key
    assert first["score.1.weight"].abs().sum() > 0  # it did learn (the last layer starts at zero)


def distill_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("distill_script", REPO_ROOT / "examples" / "distill.py")
    distill = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(distill)
    return distill


def test_reward_is_refused_without_the_mtkd_rl_agent(capsys):
    distill = distill_script()
    common = ["--teacher", "a.npz", "--student_model_name_or_path", "tiny"]
    with pytest.raises(SystemExit):
        distill.parse_args([*common, "--weighting", "equal", "--reward", "loss"])
    assert "--reward is MTKD-RL's" in capsys.readouterr().err
    assert distill.parse_args([*common, "--weighting", "mtkd_rl"]).reward == "head_improvement"


def test_mtkd_rl_alone_trains_the_whole_model_by_default_and_needs_training_steps(capsys):
    """The default student is the cross-validated probe (no training steps); mtkd_rl's agent learns from training
    steps, so its default is 10 epochs, and 0 is refused with what to do."""
    distill = distill_script()
    common = ["--teacher", "a.npz", "--student_model_name_or_path", "tiny"]
    assert distill.parse_args([*common, "--weighting", "equal"]).num_train_epochs == 0
    assert distill.parse_args([*common, "--weighting", "confidence", "--num_train_epochs", "3"]).num_train_epochs == 3
    assert distill.parse_args([*common, "--weighting", "mtkd_rl"]).num_train_epochs == 10
    with pytest.raises(SystemExit):
        distill.parse_args([*common, "--weighting", "mtkd_rl", "--num_train_epochs", "0"])
    assert "give --num_train_epochs 1 or more" in capsys.readouterr().err


@pytest.mark.slow
def test_default_student_is_the_cross_validated_probe(tiny_student, tmp_path):
    """Without --num_train_epochs: k-fold cross-validation over TRAIN chooses the head (labels alone or taught) and
    it is trained on all of TRAIN, as finetune.py's default; the backbone stays frozen, no training step is taken,
    the mean weights are those the probe was taught with, and the temperature comes from the out-of-fold logits.
    A cross-fitted teacher brings its folds (3), which judge the taught heads."""
    from transformers import AutoModelForSequenceClassification

    teachers = [outputs_file(tmp_path / "a.npz"), outputs_file(tmp_path / "b.safetensors", cross_fitted=True)]
    run_script([sys.executable, str(REPO_ROOT / "examples" / "distill.py"), *SMALL_RUN,
                "--student_model_name_or_path", str(tiny_student), "--teacher", str(teachers[0]),
                "--teacher", str(teachers[1]), "--weighting", "confidence",
                "--classifier_features", "tokens", "statistics", "--output_dir", str(tmp_path / "student")])
    reported = json.loads((tmp_path / "student" / "eval_results.json").read_text())
    assert reported["selected_epoch"] == 0 and reported["seconds_per_step"] is None
    assert reported["calibration"]["temperature"] > 0
    # both files hold the same logits: confidence weighs them equally on every row
    assert reported["mean_teacher_weights"] == [0.5, 0.5]
    card = (tmp_path / "student" / "README.md").read_text()
    # the taught heads judged on the cross-fitted teacher's 3 folds, the label heads on the 4 the student alone's
    # cross-validation fits (16 series, 4 per class)
    members = [json.loads(member) for member in re.findall(r'\{[^{}]*"share"[^{}]*\}', card)]  # probe_members
    assert members and all(member["folds"] == (3 if member["taught"] else 4) for member in members)
    assert any(member["taught"] for member in members)  # a taught head is kept here: the teachers' folds are read
    # ... because nested cross-validation admitted the teachers, by the scores reported
    admission = reported["probe_admission"]
    with_teachers, label_heads = ((admission[name]["accuracy"], -admission[name]["cross_entropy"])
                                  for name in ("with_teachers", "label_heads"))
    assert reported["probe_taught"] and with_teachers > label_heads
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student")
    assert student.config.freeze_backbone and student.config.id2label == dict(enumerate(NAMES))


@pytest.mark.parametrize("reward", ["head_improvement", "loss", "improvement"])
def test_each_mtkd_rl_reward_is_measured_as_it_says(reward, tiny_student, tmp_path, monkeypatch):
    """Per agent update: the head reward evaluates the head twice (before and after the step) and runs no measuring
    forward pass; the loss reward neither; the whole student's reward one measuring pass with the training forward's
    random state."""
    from modeling_vqshape.tasks import distillation as library

    distill = distill_script()
    calls = {"head": 0, "measuring pass": 0, "agent updates": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    # what the rewards (`reward_baseline`, `step_rewards`) call
    monkeypatch.setattr(library, "head_cross_entropy", counted("head", library.head_cross_entropy))
    monkeypatch.setattr(library, "student_cross_entropy", counted("measuring pass", library.student_cross_entropy))
    monkeypatch.setattr(distill, "agent_update", counted("agent updates", distill.agent_update))
    distill.main([*SMALL_RUN, "--student_model_name_or_path", str(tiny_student), "--teacher",
                  str(outputs_file(tmp_path / "a.npz")), "--teacher", str(outputs_file(tmp_path / "b.npz")),
                  "--weighting", "mtkd_rl", "--reward", reward, "--classifier_features", "tokens",
                  "--num_train_epochs", "2", "--num_threads", "1", "--output_dir", str(tmp_path / "student"),
                  "--debug_agent_dir", str(tmp_path / "agents"), "--no-calibrate"])
    steps = calls["agent updates"]
    assert steps > 0
    assert calls["head"] == {"head_improvement": 2 * steps}.get(reward, 0)
    assert calls["measuring pass"] == {"improvement": steps}.get(reward, 0)
    reported = json.loads((tmp_path / "student" / "eval_results.json").read_text())
    assert reported["weighting"] == "mtkd_rl" and reported["reward"] == reward
    assert reported["calibration"] is None  # --no-calibrate
    assert f'"reward": "{reward}"' in (tmp_path / "student" / "README.md").read_text()
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "agents" / "agent.rank0.safetensors"))["score.1.weight"].abs().sum() > 0


@pytest.mark.slow
def test_equal_weighting_reports_equal_mean_weights(tiny_student, tmp_path):
    result = run_script([sys.executable, str(REPO_ROOT / "examples" / "distill.py"), *SMALL_RUN,
                         "--student_model_name_or_path", str(tiny_student),
                         "--teacher", str(outputs_file(tmp_path / "a.npz")),
                         "--teacher", str(outputs_file(tmp_path / "b.safetensors")),
                         "--weighting", "equal", "--classifier_features", "tokens", "--num_train_epochs", "1",
                         "--output_dir", str(tmp_path / "student")])
    reported = json.loads((tmp_path / "student" / "eval_results.json").read_text())
    assert reported["weighting"] == "equal" and reported["mean_teacher_weights"] == [0.5, 0.5]
    assert reported["reward"] is None  # no agent
    # whether the validation rows chose the first-stage head taught by the teachers, as the script said
    assert reported["probe_taught"] is ("taught by the teachers" in result.stdout)
    assert reported["calibration"]["temperature"] > 0  # fitted on the validation rows, folded into the head
    assert not (tmp_path / "student" / "mtkd_rl_agent.safetensors").exists()


# ---- --label_map: fine teacher classes, coarse student labels --------------------------------------------------------

FINE = ["lie", "sit", "walk_fast", "walk_slow"]
COARSE_MAP = {"lie": "resting", "sit": "resting", "walk_fast": "moving", "walk_slow": "moving"}


def fine_dataset(path, num_train=24, num_test=12):
    """A saved DatasetDict of 2-channel series with four fine classes (moving: loud, resting: quiet), and a teacher
    outputs file over its TRAIN rows (sample ids: row numbers) whose logits favour the true fine class."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

    features = Features({"past_values": List(List(Value("float32"))), "label": ClassLabel(names=FINE)})
    rng = np.random.default_rng(0)

    def split(num_series):
        labels = np.arange(num_series) % len(FINE)
        loud = np.isin(labels, [2, 3])[:, None, None]
        values = rng.normal(size=(num_series, 2, TINY["input_length"])) * (1 + 4 * loud) + 3 * loud
        return Dataset.from_dict({"past_values": values.tolist(), "label": labels.tolist()}, features=features), labels

    (train, train_labels), (test, _) = split(num_train), split(num_test)
    DatasetDict(train=train, test=test).save_to_disk(path / "fine")
    logits = rng.normal(size=(num_train, len(FINE))) + 3 * np.eye(len(FINE))[train_labels]
    save_teacher_outputs(path / "fine_teacher.npz", [str(row) for row in range(num_train)], logits, FINE)
    return path / "fine", path / "fine_teacher.npz"


def test_label_map_relabels_both_splits_and_refuses_unknown_classes(tmp_path):
    from modeling_vqshape.tasks.finetuning import labelled_splits
    from modeling_vqshape.tasks.teachers import read_label_map, teacher_label_names

    dataset, teacher = fine_dataset(tmp_path)
    (tmp_path / "map.json").write_text(json.dumps(COARSE_MAP))
    assert read_label_map(str(tmp_path / "map.json")) == read_label_map(json.dumps(COARSE_MAP)) == COARSE_MAP
    with pytest.raises(ValueError, match="neither a JSON file nor inline JSON"):
        read_label_map("{lie: resting")
    with pytest.raises(ValueError, match="of strings"):
        read_label_map('{"lie": 1}')
    assert teacher_label_names(teacher) == FINE
    args = SimpleNamespace(dataset=str(dataset), series_column="past_values", label_column="label",
                           max_train_samples=None, max_eval_samples=None, seed=0)
    train, test, label_names = labelled_splits(args, COARSE_MAP)
    assert label_names == ["moving", "resting"] and set(test.labels) == {"moving", "resting"}
    assert train.sample_ids == [str(row) for row in range(24)]  # the teacher file's keys are unchanged
    # a class of a teacher only is known; a misspelt one is refused by name
    assert labelled_splits(args, {**COARSE_MAP, "cycling": "moving"}, known_classes=["cycling"])[2] == label_names
    with pytest.raises(ValueError, match=r"neither the dataset nor any teacher has: \['walk_fsat'\]"):
        labelled_splits(args, {"lie": "resting", "sit": "resting", "walk_fsat": "moving"})


@pytest.mark.slow
def test_label_map_distils_a_fine_teacher_into_a_coarse_student(tiny_student, tmp_path):
    from transformers import AutoModelForSequenceClassification

    dataset, teacher = fine_dataset(tmp_path)
    (tmp_path / "map.json").write_text(json.dumps(COARSE_MAP))
    command = [sys.executable, str(REPO_ROOT / "examples" / "distill.py"), "--dataset", str(dataset),
               "--student_model_name_or_path", str(tiny_student), "--teacher", str(teacher),
               "--classifier_features", "tokens", "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
               "--output_dir", str(tmp_path / "student")]
    run_script([*command, "--label_map", str(tmp_path / "map.json")])
    reported = json.loads((tmp_path / "student" / "eval_results.json").read_text())
    assert {"accuracy", "macro_f1"} <= reported.keys() and reported["label_map"] == COARSE_MAP
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student")
    assert student.config.id2label == {0: "moving", 1: "resting"}

    # a map naming a class that neither the dataset nor the teacher has stops the script before training
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "1"}
    refused = subprocess.run([*command, "--output_dir", str(tmp_path / "refused"), "--label_map",
                              json.dumps({**COARSE_MAP, "jogging": "moving"})], env=env, cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=240)
    assert refused.returncode != 0
    assert "neither the dataset nor any teacher has: ['jogging']" in refused.stderr
    assert not (tmp_path / "refused").exists()
