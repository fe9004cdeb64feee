"""modeling_vqshape.corpora.geneactiv: GENEActiv .bin/.csv readers, windows, annotations, label maps ->
datasets.Dataset."""

import json
from datetime import datetime, timedelta

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
datasets = pytest.importorskip("datasets")

from modeling_vqshape.corpora.geneactiv import (  # noqa: E402
    GENEActivRecording,
    build_geneactiv_dataset,
    read_geneactiv,
    read_geneactiv_bin,
    time_gaps,
    write_geneactiv_bin,
)

CALIBRATION = {"x gain": 25548, "x offset": 574, "y gain": 25693, "y offset": -2652, "z gain": 25148, "z offset": 626}
GAIN = np.array([25548, 25693, 25148])[:, None]
OFFSET = np.array([574, -2652, 626])[:, None]
START = datetime(2021, 3, 4, 10, 31, 12)


def random_raw(num_samples=900, seed=0):
    raw = np.random.default_rng(seed).integers(-2048, 2048, (3, num_samples))
    raw[:, :4] = [[-2048, 2047, -1, 0]] * 3  # the extremes of 12-bit two's complement
    return raw


@pytest.fixture
def bin_file(tmp_path):
    """A 3-page recording at 100 Hz (9 s) and its raw counts."""
    raw = random_raw()
    return write_geneactiv_bin(tmp_path / "wrist.bin", raw, start=START, calibration=CALIBRATION), raw


# ---- .bin ------------------------------------------------------------------------------------------------------------


def test_bin_round_trip_is_exact(bin_file):
    path, raw = bin_file
    rng = np.random.default_rng(1)
    light, button = rng.integers(0, 1024, raw.shape[1]), rng.integers(0, 2, raw.shape[1])
    write_geneactiv_bin(path, raw, start=START, calibration={**CALIBRATION, "Volts": 300, "Lux": 800},
                        light=light, button=button)
    recording = read_geneactiv(path)
    assert recording.name == "wrist" and recording.start == START and recording.frequency == 100.0
    assert recording.values.shape == (3, 900)
    np.testing.assert_array_equal(recording.values, (raw * 100.0 - OFFSET) / GAIN)  # g = (raw * 100 - offset) / gain
    np.testing.assert_allclose(recording.time, np.arange(900) / 100.0, atol=1e-9)
    np.testing.assert_array_equal(recording.light, np.floor(light * 800 / 300))  # whole lux, as the software exports
    np.testing.assert_array_equal(recording.button, button.astype(bool))
    assert recording.duration == pytest.approx(9.0)


def test_bin_reads_g_back_to_the_12_bit_quantum(tmp_path):
    g = np.random.default_rng(2).uniform(-7.8, 7.8, (3, 600))  # +-8 g is the 12-bit range
    raw = np.round((g * GAIN + OFFSET) / 100).astype(int)  # the device's quantisation
    values = read_geneactiv_bin(write_geneactiv_bin(tmp_path / "g.bin", raw, calibration=CALIBRATION)).values
    assert (np.abs(values - g) <= 0.5 * 100 / GAIN + 1e-12).all()


def test_bin_reads_lf_and_crlf_alike(bin_file, tmp_path):
    path, _ = bin_file
    lf = tmp_path / "lf.bin"
    lf.write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))
    assert b"\r\n" in path.read_bytes()
    np.testing.assert_array_equal(read_geneactiv_bin(lf).values, read_geneactiv_bin(path).values)


def edit_lines(path, edit):
    lines = path.read_bytes().decode("latin-1").split("\r\n")
    path.write_bytes("\r\n".join(edit(lines)).encode("latin-1"))


def data_line(lines, page):
    """Index of page `page`'s (from 1) hex line: the 10th line of a page block."""
    return [i for i, line in enumerate(lines) if line == "Recorded Data"][page - 1] + 9


def test_bin_samples_are_timed_from_their_page_times(tmp_path):
    page_times = [0.0, 3.004, 6.5, 9.499]  # jitter of a few ms, then a 0.5 s jump; written to the millisecond
    path = write_geneactiv_bin(tmp_path / "paged.bin", random_raw(1200), start=START, page_times=page_times)
    recording = read_geneactiv(path)
    expected = (np.array(page_times)[:, None] + np.arange(300) / 100.0).reshape(-1)  # page time + i / frequency
    np.testing.assert_allclose(recording.time, expected, atol=1e-9)
    with pytest.raises(ValueError, match=r"page_times must hold one time per page, shape \(4,\)"):
        write_geneactiv_bin(path, random_raw(1200), page_times=[0.0, 3.0])


def test_jitter_and_slow_drift_are_not_gaps_but_pauses_and_jumps_are():
    step = np.full(1000, 0.01)  # 100 Hz
    assert not time_gaps(np.cumsum(step), 100.0).any()
    jitter = step.copy()
    jitter[::300] += np.random.default_rng(0).uniform(-0.004, 0.004, len(jitter[::300]))  # ms jitter at pages
    assert not time_gaps(np.cumsum(jitter), 100.0).any()
    drift = step.copy()
    drift[::300] += 300 * 0.01 * 0.0015  # a clock 0.15 % off, caught up at each page boundary
    assert not time_gaps(np.cumsum(drift), 100.0).any()
    for change in (0.5, 0.006, -0.006, -1.0):  # a jump, a step off by more than half a sample, time going back
        irregular = step.copy()
        irregular[300] += change
        assert np.flatnonzero(time_gaps(np.cumsum(irregular), 100.0)).tolist() == [299]


def test_truncated_page_names_file_and_page(bin_file):
    path, _ = bin_file
    edit_lines(path, lambda lines: lines[: data_line(lines, 2)] + [lines[data_line(lines, 2)][:-12]]
               + lines[data_line(lines, 2) + 1 :])
    with pytest.raises(ValueError, match=r"wrist\.bin: page 2: data line has 3588 hex characters"):
        read_geneactiv_bin(path)


def test_file_cut_mid_page_or_after_a_page_is_an_error(bin_file):
    path, _ = bin_file
    edit_lines(path, lambda lines: lines[: data_line(lines, 3) - 3])
    with pytest.raises(ValueError, match=r"wrist\.bin: page 3: incomplete page"):
        read_geneactiv_bin(path)
    edit_lines(path, lambda lines: lines[: data_line(lines, 2) + 1])
    with pytest.raises(ValueError, match=r"wrist\.bin: header says 3 pages but the file ends after page 2"):
        read_geneactiv_bin(path)


def test_bad_hex_names_file_page_and_sample(bin_file):
    path, _ = bin_file

    def corrupt(lines):
        index = data_line(lines, 3)
        lines[index] = lines[index][:25] + "G" + lines[index][26:]
        return lines

    edit_lines(path, corrupt)
    with pytest.raises(ValueError, match=r"wrist\.bin: page 3: bad hex character 'G' at sample 2"):
        read_geneactiv_bin(path)


def test_missing_calibration_names_file_and_key(bin_file):
    path, _ = bin_file
    edit_lines(path, lambda lines: [line for line in lines if not line.startswith("y offset:")])
    with pytest.raises(ValueError, match=r"wrist\.bin: header .* lacks calibration keys \['y offset'\]"):
        read_geneactiv_bin(path)


# ---- .csv ------------------------------------------------------------------------------------------------------------


def test_csv_export_skips_the_header_and_infers_frequency(tmp_path):
    values = np.random.default_rng(3).normal(size=(3, 50)).round(4)
    stamps = [START + timedelta(milliseconds=20 * i) for i in range(50)]
    rows = [f"{t:%Y-%m-%d %H:%M:%S}:{t.microsecond // 1000:03d},{x},{y},{z},12.5,0,24.5"
            for t, (x, y, z) in zip(stamps, values.T)]
    header = ["Device Type,GENEActiv", "Measurement Frequency,50 Hz", "Calibration Date,2020-01-01 00:00:00"]
    path = tmp_path / "export.csv"
    path.write_text("\r\n".join(header + [""] * 3 + rows) + "\r\n")
    recording = read_geneactiv(path)
    assert recording.start == START and recording.frequency == pytest.approx(50.0)
    np.testing.assert_array_equal(recording.values, values)
    np.testing.assert_allclose(recording.time, np.arange(50) * 0.02, atol=1e-9)
    assert recording.header["Measurement Frequency"] == "50 Hz"


# ---- windows, labels, label maps -> Dataset --------------------------------------------------------------------------


ANNOTATIONS = pd.DataFrame({"start": [0.0, 3.0, 6.5], "end": [3.0, 6.0, 9.0], "label": ["walk", "run", "sit"]})


def test_windows_inside_one_annotation_get_its_label_others_are_dropped(bin_file):
    path, raw = bin_file
    data = build_geneactiv_dataset([path], ANNOTATIONS, window_length=100, stride=50)
    assert data.column_names == ["past_values", "label", "recording", "start", "end"]
    assert data.features["label"].names == ["run", "sit", "walk"]
    names = data.features["label"].int2str(data["label"])
    # walk: starts 0..2 s (5); run: 3..5 s (5); sit: 6.5..8 s (4); windows across 3.0, 6.0-6.5 and 6.5 are dropped
    assert names == ["walk"] * 5 + ["run"] * 5 + ["sit"] * 4
    np.testing.assert_allclose(data["start"], [0, .5, 1, 1.5, 2, 3, 3.5, 4, 4.5, 5, 6.5, 7, 7.5, 8], atol=1e-9)
    np.testing.assert_allclose(np.asarray(data["end"]) - np.asarray(data["start"]), 1.0, atol=1e-9)
    assert set(data["recording"]) == {"wrist"}
    window = np.asarray(data[5]["past_values"])  # run, 3.0 s = sample 300
    np.testing.assert_allclose(window, ((raw * 100.0 - OFFSET) / GAIN)[:, 300:400], rtol=1e-6)


def test_iso_timestamps_and_resampling(bin_file):
    path, _ = bin_file
    iso = ANNOTATIONS.assign(start=[(START + timedelta(seconds=s)).isoformat() for s in ANNOTATIONS["start"]],
                             end=[(START + timedelta(seconds=s)).isoformat() for s in ANNOTATIONS["end"]])
    seconds = build_geneactiv_dataset([path], ANNOTATIONS, 100, 50)
    stamped = build_geneactiv_dataset([path], iso, 100, 50, input_length=64)
    assert stamped["label"] == seconds["label"]
    assert np.asarray(stamped.with_format("numpy")["past_values"]).shape == (len(seconds), 3, 64)


def test_label_map_merges_classes_from_json(bin_file, tmp_path):
    path, _ = bin_file
    label_map = tmp_path / "coarse.json"
    label_map.write_text(json.dumps({"walk": "active", "run": "active", "sit": "rest"}))
    data = build_geneactiv_dataset([path], ANNOTATIONS, 100, 50, label_map=label_map)
    assert data.features["label"].names == ["active", "rest"]
    assert data.features["label"].int2str(data["label"]) == ["active"] * 10 + ["rest"] * 4


def test_label_map_missing_a_label_names_it(bin_file, tmp_path):
    path, _ = bin_file
    label_map = tmp_path / "coarse.json"
    label_map.write_text(json.dumps({"walk": "active", "run": "active"}))
    with pytest.raises(ValueError, match=r"coarse\.json: has no entry for label\(s\) \['sit'\]"):
        build_geneactiv_dataset([path], ANNOTATIONS, 100, 50, label_map=label_map)


def test_empty_class_is_an_error(bin_file):
    path, _ = bin_file
    short = pd.DataFrame({"start": [0.0, 3.0], "end": [3.0, 3.5], "label": ["walk", "run"]})  # run < one window
    with pytest.raises(ValueError, match=r"empty class: \['run'\]"):
        build_geneactiv_dataset([path], short, 100)
    with pytest.raises(ValueError, match=r"empty class: \['swim'\]"):
        build_geneactiv_dataset([path], ANNOTATIONS, 100, class_names=["run", "sit", "swim", "walk"])


def test_annotations_outside_the_recording_or_for_unknown_recordings_are_errors(bin_file, tmp_path):
    path, _ = bin_file
    late = pd.DataFrame({"start": [8.0], "end": [12.0], "label": ["walk"]})
    with pytest.raises(ValueError, match=r"row 0: \[8, 12\] s lies outside recording 'wrist' \(0 to 9 s\)"):
        build_geneactiv_dataset([path], late, 100)
    unknown = ANNOTATIONS.assign(recording=["wrist", "wrist", "ankle"])
    with pytest.raises(ValueError, match=r"unknown recordings \['ankle'\]"):
        build_geneactiv_dataset([path], unknown, 100)
    overlapping = pd.DataFrame({"start": [0.0, 2.0], "end": [3.0, 5.0], "label": ["walk", "run"]})
    with pytest.raises(ValueError, match="rows 0 and 1 overlap"):
        build_geneactiv_dataset([path], overlapping, 100)
    csv = tmp_path / "labels.csv"
    ANNOTATIONS.rename(columns={"label": "activity"}).to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"labels\.csv: missing column\(s\) \['label'\]"):
        build_geneactiv_dataset([path], csv, 100)


def test_windows_follow_the_page_times_and_drop_only_across_a_jump(tmp_path):
    page_times = [0.0, 3.003, 6.5, 9.5]  # 3 ms of jitter (kept), then a 0.5 s jump between pages 2 and 3
    path = write_geneactiv_bin(tmp_path / "jump.bin", random_raw(1200), start=START, page_times=page_times)
    whole = pd.DataFrame({"start": [0.0], "end": [12.5], "label": ["walk"]})
    data = build_geneactiv_dataset([path], whole, window_length=200, stride=100)
    # a window every 100 samples but at 500, whose samples 500..699 hold 599 and 600, across the jump; each timed
    # from its page
    time = read_geneactiv(path).time
    np.testing.assert_allclose(data["start"], time[[0, 100, 200, 300, 400, 600, 700, 800, 900, 1000]], atol=1e-9)
    np.testing.assert_allclose(data["end"], time[[199, 299, 399, 499, 599, 799, 899, 999, 1099, 1199]] + 0.01,
                               atol=1e-9)


def test_several_recordings_and_windows_across_page_gaps(bin_file):
    path, raw = bin_file
    time = np.arange(900) / 100.0
    time[300:] += 60.0  # the device paused for a minute after page 1
    gapped = GENEActivRecording("ankle", START, 100.0, (raw * 100.0 - OFFSET) / GAIN, time)
    annotations = pd.concat([ANNOTATIONS.assign(recording="wrist"),
                             pd.DataFrame({"start": [0.0], "end": [69.0], "label": ["sit"], "recording": ["ankle"]})])
    data = build_geneactiv_dataset([path, gapped], annotations, 100, 50)
    ankle = [start for start, name in zip(data["start"], data["recording"]) if name == "ankle"]
    np.testing.assert_allclose(ankle, [0, .5, 1, 1.5, 2] + list(63 + 0.5 * np.arange(11)), atol=1e-9)
