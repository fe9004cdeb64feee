"""The distillation benchmark (benchmarks/bench_distillation.py) and its synthetic GENEActiv protocol
(benchmarks/synthetic_geneactiv.py): the protocol's files and windows, the pieces with known answers, and a tiny run
of the whole benchmark."""

import csv
import json
import sys

import numpy as np
import pytest
import torch

from modeling_vqshape import VQShapeConfig, VQShapeForPreTraining

from .conftest import REPO_ROOT, TINY, run_script

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import bench_distillation  # noqa: E402
import synthetic_geneactiv  # noqa: E402


def test_synthetic_protocol_writes_bin_files_annotations_and_the_same_windows_at_14_and_7_classes(tmp_path):
    from modeling_vqshape.corpora.geneactiv import read_geneactiv
    from modeling_vqshape.tasks.classification import load_classification_dataset

    paths = synthetic_geneactiv.write_protocol(tmp_path, num_train_subjects=1, num_test_subjects=1, bout_seconds=8)
    recording = read_geneactiv(tmp_path / "subject00.bin")
    assert recording.frequency == synthetic_geneactiv.FREQUENCY
    # 14 bouts of 8 s at 25 Hz, padded to whole pages of 300 samples
    assert recording.values.shape == (3, 3000)
    gravity = np.linalg.norm(recording.values[:, :200].mean(1))
    assert 0.8 < gravity < 1.2  # a wrist at rest reads about 1 g
    with open(paths["annotations"]) as handle:
        annotations = list(csv.DictReader(handle))
    assert sorted(row["label"] for row in annotations if row["recording"] == "subject00") == sorted(
        synthetic_geneactiv.ACTIVITIES)
    fine, coarse = load_classification_dataset(paths["fine"]), load_classification_dataset(paths["coarse"])
    for split in ("train", "test"):
        # two 4-second windows per 8-second bout, the same windows in both, labels mapped 14 -> 7
        assert len(fine[split].series) == len(coarse[split].series) == 14 * 2
        assert all(np.array_equal(a, b) for a, b in zip(fine[split].series, coarse[split].series))
        assert [synthetic_geneactiv.COARSE[label] for label in fine[split].labels] == list(coarse[split].labels)
    assert len(set(fine["train"].labels)) == 14 and len(set(coarse["train"].labels)) == 7
    assert json.loads((tmp_path / "coarse.json").read_text()) == synthetic_geneactiv.COARSE


def test_two_class_decision_values_become_the_logits_of_the_second_class():
    logits = bench_distillation.class_logits(np.array([2.0, -1.0]))
    np.testing.assert_array_equal(logits, [[0.0, 2.0], [0.0, -1.0]])
    assert np.allclose(torch.tensor(logits).softmax(-1)[:, 1].numpy(), 1 / (1 + np.exp(-np.array([2.0, -1.0]))))
    three = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(bench_distillation.class_logits(three), three)


def test_the_cost_of_each_weighting_is_a_ratio_within_each_task_and_seed():
    def entry(task, seed, student, seconds, weights):
        return {"dataset": task, "seed": seed, "method": f"student from both, {student}", "seconds_per_step": seconds,
                "mean_teacher_weights": json.dumps(weights)}

    two = bench_distillation.TWO_STAGES
    rows = [entry("A", 0, f"equal, {two}", 1.0, [0.5, 0.5]), entry("A", 0, f"mtkd_rl, {two}", 1.2, [0.7, 0.3]),
            entry("B", 0, f"equal, {two}", 0.1, [0.5, 0.5]), entry("B", 0, f"mtkd_rl, {two}", 0.14, [0.9, 0.1]),
            entry("A", 0, "confidence", None, [0.6, 0.4]), entry("B", 0, "confidence", None, [0.8, 0.2]),
            {"dataset": "A", "seed": 0, "method": "student alone", "seconds_per_step": None}]
    lines = bench_distillation.cost_and_weights(rows).splitlines()[2:]
    # ratios 1.2 and 1.4 average to 1.30, where the ratio of mean times would be 1.34 / 1.1 = 1.22; the probe alone
    # (no training steps) has its weights and no cost
    assert lines == [f"| equal, {two} | 0.5500 | 1.00 | 0.50, 0.50 |",
                     f"| mtkd_rl, {two} | 0.6700 | 1.30 | 0.80, 0.20 |", "| confidence | - | - | 0.70, 0.30 |"]


# a teacher alone, both teachers on the cross-validated probe, mtkd_rl in two stages and its equal-weighted baseline
METHODS = [f"student from {bench_distillation.RAW}", "student from both, confidence",
           bench_distillation.EQUAL_TWO_STAGES, f"student from both, mtkd_rl, {bench_distillation.TWO_STAGES}"]


def test_seeds_are_zero_to_num_seeds_unless_named():
    assert bench_distillation.parse_args(["--num_seeds", "3"]).seeds == [0, 1, 2]
    assert bench_distillation.parse_args(["--seeds", "3", "4"]).seeds == [3, 4]


def test_too_few_training_subjects_to_cross_fit_the_teachers_are_refused(capsys):
    with pytest.raises(SystemExit):
        bench_distillation.parse_args(["--geneactiv_subjects", "2", "1"])
    assert "cross-fitted by subject, on 3 training subjects or more; got 2" in capsys.readouterr().err


def test_unknown_students_are_refused_by_name(capsys):
    assert bench_distillation.parse_args(["--methods", *METHODS]).methods == METHODS
    with pytest.raises(SystemExit):
        bench_distillation.parse_args(["--methods", "student from both, equl"])
    assert "unknown students ['student from both, equl']" in capsys.readouterr().err


def test_finished_units_are_kept_and_a_run_with_the_same_settings_goes_on_from_them(tmp_path, monkeypatch):
    """Each unit's rows are written as it finishes; a second run takes them instead of running the unit, including
    one cut short by a failing unit, and a run with other settings runs them again."""
    torch.manual_seed(0)
    VQShapeForPreTraining(VQShapeConfig(**TINY)).save_pretrained(tmp_path / "tiny")
    ran = []

    def fake_unit(args, unit, seed, folder, input_length):
        if (unit[0][0], seed) in fail:
            raise RuntimeError("cut short")
        ran.append((unit[0][0], seed))
        return [{"dataset": unit[0][0], "method": bench_distillation.ALONE, "seed": seed, "accuracy": 0.5 + seed / 10,
                 "balanced_accuracy": 0.5, "macro_f1": 0.5, "seconds_per_step": None}]

    monkeypatch.setattr(bench_distillation, "run_unit", fake_unit)
    argv = ["--model_name_or_path", str(tmp_path / "tiny"), "--datasets", "BasicMotions", "GunPoint", "--no_geneactiv",
            "--num_seeds", "2", "--output_dir", str(tmp_path / "bench")]
    fail = {("GunPoint", 1)}
    with pytest.raises(RuntimeError, match="cut short"):
        bench_distillation.main(argv)
    assert ran == [("BasicMotions", 0), ("BasicMotions", 1), ("GunPoint", 0)]
    assert len(list((tmp_path / "bench" / "units").glob("*.json"))) == 3
    fail, ran[:] = set(), []
    rows = bench_distillation.main(argv)
    assert ran == [("GunPoint", 1)]  # the three finished units are taken as they were
    assert [(row["dataset"], row["seed"], row["accuracy"]) for row in rows] == [
        ("BasicMotions", 0, 0.5), ("BasicMotions", 1, 0.6), ("GunPoint", 0, 0.5), ("GunPoint", 1, 0.6)]
    ran[:] = []
    bench_distillation.main([*argv, "--two_stage_epochs", "3"])
    assert len(ran) == 4


@pytest.mark.slow
def test_distillation_benchmark_runs_every_teacher_and_student_on_a_bundled_set_and_the_geneactiv_protocol(tmp_path):
    # two processes, one per task-seed unit (BasicMotions; the 14- and 7-class tasks, which share their teachers): the
    # rows still come out in the order of one process; four of the students (--methods), for time; 3 training
    # subjects, the fewest the teachers can be cross-fitted on (by recording), with 2 windows of each activity
    torch.manual_seed(0)
    VQShapeForPreTraining(VQShapeConfig(**TINY)).save_pretrained(tmp_path / "tiny")
    output = tmp_path / "bench"
    run_script([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_distillation.py"), "--model_name_or_path",
                str(tmp_path / "tiny"), "--datasets", "BasicMotions", "--geneactiv_subjects", "3", "1",
                "--geneactiv_bout_seconds", "8",
                "--num_seeds", "1", "--jobs", "2", "--two_stage_epochs", "1", "--teacher_epochs", "1",
                "--methods", *METHODS, "--output_dir", str(output), "--script_args", "--classifier_features", "tokens",
                "statistics", "--probe_folds", "2"],
               timeout=900)
    with open(output / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    methods = [f"teacher: {bench_distillation.RAW}", f"teacher: {bench_distillation.TOPOLOGY}",
               *bench_distillation.ALONE_RECIPES, *METHODS]
    tasks = ["BasicMotions", "GENEActiv 14 (synthetic)", "GENEActiv 7 (synthetic)"]
    assert [(row["dataset"], row["method"]) for row in rows] == [(task, method) for task in tasks for method in methods]
    for row in rows:
        assert 0.0 <= float(row["accuracy"]) <= 1.0
        if row["method"].startswith("student from"):
            weights = json.loads(row["mean_teacher_weights"])
            assert len(weights) == len(bench_distillation.STUDENTS[row["method"]][0])
            assert sum(weights) == pytest.approx(1.0, abs=1e-4)
            # training steps for the two-stage students only; the cross-validated probe takes none
            two_stages = bench_distillation.STUDENTS[row["method"]][2]
            assert (float(row["seconds_per_step"]) > 0) if two_stages else row["seconds_per_step"] == ""
            assert row["selected_epoch"] == "0" or two_stages
    equal = [json.loads(row["mean_teacher_weights"]) for row in rows
             if row["method"] == bench_distillation.EQUAL_TWO_STAGES]
    assert equal == [[0.5, 0.5]] * 3
    markdown = (output / "results.md").read_text()
    assert "Time per training step" in markdown and f"| mtkd_rl, {bench_distillation.TWO_STAGES} |" in markdown
    students = [row for row in rows if "teacher:" not in row["method"]]
    assert all(0.0 <= float(row["validation_accuracy"]) <= 1.0 for row in students)


@pytest.mark.slow
def test_teachers_only_scores_both_teachers_and_trains_no_student(tmp_path):
    torch.manual_seed(0)
    VQShapeForPreTraining(VQShapeConfig(**TINY)).save_pretrained(tmp_path / "tiny")
    output = tmp_path / "teachers"
    bench_distillation.main(["--model_name_or_path", str(tmp_path / "tiny"), "--datasets", "BasicMotions",
                             "--no_geneactiv", "--num_seeds", "1", "--teachers_only", "--teacher_epochs", "1",
                             "--output_dir", str(output)])
    with open(output / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["method"] for row in rows] == [f"teacher: {bench_distillation.RAW}",
                                               f"teacher: {bench_distillation.TOPOLOGY}"]
    assert all(0.0 <= float(row["accuracy"]) <= 1.0 for row in rows)
    assert "Time per training step" not in (output / "results.md").read_text()
