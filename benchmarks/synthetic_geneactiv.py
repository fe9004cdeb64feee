"""A synthetic GENEActiv-style protocol: 14 activities, scored as 14 classes or as 7 (`bench_distillation.py`).

SYNTHETIC: no person wore anything. Every subject "performs" each of 14 activities once, for `bout_seconds`, in a
random order; the wrist's 3-axis acceleration is drawn from a simple model, written as raw counts to a GENEActiv
`.bin` with the package's writer (`write_geneactiv_bin`), and labelled with an annotation table, exactly as a real
study's files would be; `build_geneactiv_dataset` then cuts and labels the windows. The fine activities come in pairs
that one coarse class joins (`COARSE`), as the 14-activity GENEActiv protocol is scored as 7 classes.

The model of an activity (`ACTIVITIES`): gravity along the forearm's posture, plus a periodic motion (a fundamental
frequency with harmonics, per-axis amplitudes, and for gait a heel-strike impact once a cycle), plus sensor noise.
The two activities of a pair differ in pace, amplitude or posture by 15-40%, and subjects differ by about as much
(tempo x0.85-1.15, amplitude x0.75-1.25, the watch rotated by up to 20 degrees on the wrist), so the 14-class task
is harder than the 7-class one and test subjects are not copies of training subjects. The numbers are plausible
for a wrist (gait at 1.5-3 steps a second, running impacts of 1-2 g), not fitted to any data.
"""

from pathlib import Path

import numpy as np

FREQUENCY = 25.0  # Hz
WINDOW_SECONDS = 4

# name: (coarse class, gravity direction (x, y, z), fundamental Hz, axis amplitudes in g, harmonics, impact g, noise g)
ACTIVITIES = {
    "lying on back": ("lying", (0.0, 0.1, -1.0), 0.25, (0.0, 0.005, 0.01), (1.0,), 0.0, 0.01),
    "lying on side": ("lying", (-1.0, 0.0, 0.1), 0.25, (0.01, 0.005, 0.0), (1.0,), 0.0, 0.01),
    "sitting still": ("sitting", (0.2, -0.6, -0.75), 0.3, (0.01, 0.01, 0.01), (1.0,), 0.0, 0.015),
    "typing": ("sitting", (0.1, -0.4, -0.9), 4.5, (0.03, 0.01, 0.04), (1.0, 0.3), 0.0, 0.03),
    "standing still": ("standing", (0.0, -1.0, 0.1), 0.3, (0.02, 0.01, 0.02), (1.0,), 0.0, 0.02),
    "standing and talking": ("standing", (0.3, -0.9, 0.3), 0.6, (0.15, 0.1, 0.15), (1.0, 0.5, 0.3), 0.0, 0.03),
    "walking slowly": ("walking", (0.0, -1.0, 0.15), 1.5, (0.2, 0.35, 0.2), (1.0, 0.4), 0.2, 0.05),
    "walking briskly": ("walking", (0.0, -1.0, 0.15), 1.9, (0.3, 0.5, 0.3), (1.0, 0.5), 0.35, 0.05),
    "climbing stairs": ("stairs", (0.1, -1.0, 0.2), 1.3, (0.25, 0.45, 0.25), (1.0, 0.6, 0.3), 0.3, 0.05),
    "descending stairs": ("stairs", (0.0, -1.0, 0.05), 1.6, (0.25, 0.4, 0.25), (1.0, 0.3), 0.8, 0.05),
    "jogging": ("running", (0.2, -0.9, 0.3), 2.5, (0.5, 1.0, 0.4), (1.0, 0.5), 0.8, 0.08),
    "running": ("running", (0.3, -0.8, 0.4), 2.9, (0.7, 1.5, 0.6), (1.0, 0.6), 1.5, 0.1),
    "sweeping": ("household", (0.5, -0.8, 0.3), 0.8, (0.6, 0.2, 0.3), (1.0, 0.2), 0.0, 0.05),
    "washing dishes": ("household", (0.3, -0.5, 0.8), 1.2, (0.15, 0.1, 0.15), (1.0, 0.4, 0.2), 0.0, 0.04),
}
COARSE = {name: spec[0] for name, spec in ACTIVITIES.items()}
GAIN, OFFSET = np.array([25548, 25693, 25148]), np.array([574, -2652, 626])  # the writer's default calibration


def random_rotation(rng, max_degrees: float) -> np.ndarray:
    """A rotation matrix about a random axis by a random angle of at most `max_degrees` (Rodrigues' formula)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_degrees, max_degrees))
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def activity_signal(name: str, seconds: float, subject: dict, rng) -> np.ndarray:
    """`(3, seconds * FREQUENCY)` acceleration in g of one bout of activity `name` by `subject`."""
    _, gravity, frequency, amplitudes, harmonics, impact, noise = ACTIVITIES[name]
    time = np.arange(int(round(seconds * FREQUENCY))) / FREQUENCY
    # the pace drifts a little within a bout: phase of a slowly modulated frequency
    pace = frequency * subject["tempo"] * rng.uniform(0.95, 1.05)
    phase = 2 * np.pi * np.cumsum(pace * (1 + 0.05 * np.sin(2 * np.pi * time / rng.uniform(5, 12)))) / FREQUENCY
    motion = np.zeros((3, time.size))
    for axis in range(3):
        offsets = rng.uniform(0, 2 * np.pi, size=len(harmonics))
        motion[axis] = amplitudes[axis] * sum(weight * np.sin((h + 1) * phase + offset)
                                              for h, (weight, offset) in enumerate(zip(harmonics, offsets)))
    motion[1] -= impact * np.maximum(np.sin(phase), 0.0) ** 12  # a heel strike once a cycle, along the forearm
    direction = np.asarray(gravity) / np.linalg.norm(gravity)
    values = direction[:, None] + subject["amplitude"] * motion + noise * rng.normal(size=motion.shape)
    return subject["rotation"] @ values


def write_subject(folder: Path, index: int, bout_seconds: float, rng) -> tuple:
    """One subject's recording (`subjectNN.bin`, every activity once in a random order) and its annotation rows."""
    subject = {"tempo": rng.uniform(0.85, 1.15), "amplitude": rng.uniform(0.75, 1.25),
               "rotation": random_rotation(rng, 20.0)}
    name = f"subject{index:02d}"
    order = rng.permutation(list(ACTIVITIES))
    values = np.concatenate([activity_signal(activity, bout_seconds, subject, rng) for activity in order], axis=1)
    pad = -values.shape[1] % 300  # the writer takes whole pages; the tail stays unannotated
    values = np.pad(values, ((0, 0), (0, pad)), mode="edge")
    raw = np.clip(np.round((values * GAIN[:, None] + OFFSET[:, None]) / 100), -2048, 2047).astype(np.int64)
    from modeling_vqshape.corpora.geneactiv import write_geneactiv_bin

    path = write_geneactiv_bin(folder / f"{name}.bin", raw, frequency=FREQUENCY)
    rows = [{"recording": name, "start": position * bout_seconds, "end": (position + 1) * bout_seconds,
             "label": activity} for position, activity in enumerate(order)]
    return path, rows


def write_protocol(folder, num_train_subjects: int = 4, num_test_subjects: int = 3, bout_seconds: float = 24.0,
                   seed: int = 0) -> dict:
    """Write the recordings, `annotations.csv`, `coarse.json` (14 -> 7) and two `DatasetDict`s of 4-second windows
    (`fine`: the 14 activities, `coarse`: the 7 classes; the same windows in the same order), with train and test
    splits by subject. Returns the paths: `{"fine", "coarse", "label_map", "annotations"}`."""
    import json

    import datasets
    import pandas as pd

    from modeling_vqshape.corpora.geneactiv import build_geneactiv_dataset

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    subjects = [write_subject(folder, index, bout_seconds, rng)
                for index in range(num_train_subjects + num_test_subjects)]
    annotations = pd.DataFrame([row for _, rows in subjects for row in rows])
    annotations.to_csv(folder / "annotations.csv", index=False)
    (folder / "coarse.json").write_text(json.dumps(COARSE, indent=1))
    paths = {"split": {"train": [path for path, _ in subjects[:num_train_subjects]],
                       "test": [path for path, _ in subjects[num_train_subjects:]]}}
    window = int(WINDOW_SECONDS * FREQUENCY)
    for kind, label_map, classes in (("fine", None, sorted(ACTIVITIES)),
                                     ("coarse", COARSE, sorted(set(COARSE.values())))):
        splits = datasets.DatasetDict({
            split: build_geneactiv_dataset(recordings, annotations[annotations["recording"].isin(
                [Path(path).stem for path in recordings])], window_length=window, label_map=label_map,
                class_names=classes)
            for split, recordings in paths["split"].items()})
        splits.save_to_disk(str(folder / kind))
    return {"fine": str(folder / "fine"), "coarse": str(folder / "coarse"), "label_map": str(folder / "coarse.json"),
            "annotations": str(folder / "annotations.csv")}
