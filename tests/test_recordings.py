"""modeling_vqshape.corpora.recordings: whole recordings -> Parquet token table, streamed, resumable, checked."""

import logging
from datetime import datetime, timedelta

import numpy as np
import pytest
import torch
from transformers import pipeline

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")
datasets = pytest.importorskip("datasets")

from modeling_vqshape import VQShapeConfig, VQShapeFeatureExtractor, VQShapeForPreTraining  # noqa: E402
from modeling_vqshape.corpora import recordings as recordings_module  # noqa: E402
from modeling_vqshape.corpora.geneactiv import (  # noqa: E402
    GENEActivRecording,
    build_geneactiv_dataset,
    iter_geneactiv_bin,
    read_geneactiv_bin,
    write_geneactiv_bin,
)
from modeling_vqshape.corpora.recordings import iter_windows, open_recording, tokenize_recordings  # noqa: E402
from modeling_vqshape.sharing.visualization import explain_series  # noqa: E402

from .conftest import TINY  # noqa: E402

START = datetime(2021, 5, 6, 7, 8, 9)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VQShapeForPreTraining(VQShapeConfig(**TINY)).eval()


@pytest.fixture
def recording(tmp_path):
    """Two minutes at 50 Hz (20 pages) of a wrist-like signal, as a .bin, and its values in g."""
    t = np.arange(20 * 300) / 50
    rng = np.random.default_rng(0)
    g = np.stack([np.sin(2 * np.pi * 1.8 * t), 0.5 * np.cos(2 * np.pi * 0.3 * t), -1 + 0.1 * t / t[-1]])
    raw = np.round(g * 256 + rng.normal(0, 3, g.shape)).astype(int)
    path = write_geneactiv_bin(tmp_path / "wrist.bin", raw, frequency=50, start=START)
    return path, read_geneactiv_bin(path).values


def device_file(path, page_times, frequency=50.0):
    """A .bin of len(page_times) pages whose pages carry the given times (seconds from START), as a device writes
    them when its clock jitters, drifts or jumps against the nominal rate."""
    t = np.arange(len(page_times) * 300) / frequency
    g = np.stack([np.sin(2 * np.pi * 0.9 * t), 0.5 * np.cos(2 * np.pi * 0.2 * t), np.full_like(t, -1.0)])
    raw = np.round(g * 256 + np.random.default_rng(2).normal(0, 3, g.shape)).astype(int)
    return write_geneactiv_bin(path, raw, frequency=frequency, start=START, page_times=page_times)


def table_rows(table):
    return table.to_pandas().sort_values(["window", "channel", "token"]).reset_index(drop=True)


def test_the_bin_reader_streams_bounded_pieces_that_join_to_the_whole(recording):
    path, values = recording
    pieces = list(iter_geneactiv_bin(path, pages_per_chunk=3))
    assert [piece.values.shape[1] for piece in pieces] == [900] * 6 + [600]
    np.testing.assert_array_equal(np.concatenate([piece.values for piece in pieces], axis=1), values)
    np.testing.assert_allclose(pieces[1].time[:2], [18.0, 18.02])  # seconds from the file's first page


def test_token_table_holds_the_models_tokens_for_each_window(recording, model, tmp_path):
    path, values = recording
    table = tokenize_recordings(model, [path], tmp_path / "table", window_seconds=8, stride_seconds=4,
                                histogram=True, batch_size=5, windows_per_shard=7, progress=False)
    rows = table_rows(table)
    num_windows = (6000 - 400) // 200 + 1
    assert len(rows) == num_windows * 3 * model.config.num_tokens
    assert sorted(set(rows["window"])) == list(range(num_windows))
    assert set(rows["channel"]) == {"x", "y", "z"} and set(rows["recording"]) == {"wrist"}
    window = 9  # samples 1800..2199, tokenized on its own
    inputs = VQShapeFeatureExtractor(model.config.input_length)(values[None, :, 1800:2200])
    with torch.no_grad():
        outputs = model.vqshape(**inputs)
    part = rows[rows["window"] == window]
    for channel_index, channel in enumerate("xyz"):
        tokens = part[part["channel"] == channel].sort_values("token")
        np.testing.assert_array_equal(tokens["code"], outputs.code_indices[0, channel_index].numpy())
        np.testing.assert_allclose(tokens["start"], outputs.shape_start[0, channel_index].numpy(), atol=1e-6)
        np.testing.assert_allclose(tokens["scale"], outputs.shape_scale[0, channel_index].numpy(), atol=1e-6)
        assert list(tokens["histogram"].iloc[0]) == outputs.histogram[0, channel_index].tolist()
    assert (part["window_start"] == 36.0).all()
    np.testing.assert_allclose(part["token_start"], 36.0 + part["start"] * 8, atol=1e-5)
    np.testing.assert_allclose(part["token_end"], part["token_start"] + part["length"] * 8, atol=1e-5)
    first = part.iloc[0]
    assert first["window_start_time"] == np.datetime64("2021-05-06T07:08:45")
    assert abs((first["token_start_time"] - first["window_start_time"]).total_seconds() - first["start"] * 8) < 1e-5


def test_an_interrupted_run_resumes_to_the_same_table(recording, model, tmp_path, monkeypatch):
    path, _ = recording
    kwargs = dict(window_seconds=6, stride_seconds=3, batch_size=4, windows_per_shard=5, progress=False)
    whole = table_rows(tokenize_recordings(model, [path], tmp_path / "whole", **kwargs))

    write_shard = recordings_module._write_shard
    written = []

    def interrupted(shard_path, tables, schema):
        if len(written) == 2:
            raise KeyboardInterrupt  # the user stops the run while the third shard is being written
        written.append(shard_path.name)
        write_shard(shard_path, tables, schema)

    monkeypatch.setattr(recordings_module, "_write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tokenize_recordings(model, [path], tmp_path / "resumed", **kwargs)
    data = tmp_path / "resumed" / "data"
    assert sorted(file.name for file in data.iterdir()) == ["wrist-00000.parquet", "wrist-00001.parquet"]
    monkeypatch.setattr(recordings_module, "_write_shard", write_shard)
    calls = []
    monkeypatch.setattr(recordings_module, "iter_windows",
                        lambda *args, **kw: calls.append(kw["first_window"]) or iter_windows(*args, **kw))
    resumed = table_rows(tokenize_recordings(model, [path], tmp_path / "resumed", **kwargs))
    assert calls == [10]  # the finished shards' 10 windows were not tokenized again
    assert resumed.equals(whole)


def test_windows_across_a_gap_are_left_out_and_arrays_need_a_rate(model, tmp_path):
    time = np.concatenate([np.arange(1000), np.arange(1000) + 1500]) / 100.0  # a 5 s gap after 10 s
    values = np.random.default_rng(1).normal(size=(3, 2000))
    gapped = GENEActivRecording(name="gapped", start=START, frequency=100.0, values=values, time=time)
    windows = [window for window, *_ in iter_windows(open_recording(gapped), 200, 100)]
    assert windows == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18]  # window 9 spans the gap
    with pytest.raises(ValueError, match="an array needs its sampling rate"):
        tokenize_recordings(model, [values], tmp_path / "array", window_seconds=2, progress=False)
    table = tokenize_recordings(model, [values], tmp_path / "array", window_seconds=2, sampling_rate=100,
                                channel_names=["acc_x", "acc_y", "acc_z"], progress=False)
    assert set(table["channel"]) == {"acc_x", "acc_y", "acc_z"} and "window_start_time" not in table.column_names
    np.save(tmp_path / "day.npy", values)
    again = tokenize_recordings(model, [tmp_path / "day.npy"], tmp_path / "npy", window_seconds=2, sampling_rate=100,
                                channel_names=["acc_x", "acc_y", "acc_z"], progress=False)
    assert again["code"] == table["code"]


def test_bad_settings_are_refused_before_anything_is_written(recording, model, tmp_path):
    path, _ = recording
    output = tmp_path / "table"
    with pytest.raises(ValueError, match="shorter than one 600 s window"):
        tokenize_recordings(model, [path], output, window_seconds=600, progress=False)
    with pytest.raises(ValueError, match="a stride of zero"):
        tokenize_recordings(model, [path], output, window_seconds=4, stride_seconds=0, progress=False)
    with pytest.raises(ValueError, match="sampling_rate 100 Hz disagrees with the file's 50.0 Hz"):
        tokenize_recordings(model, [path], output, window_seconds=4, sampling_rate=100, progress=False)
    assert not output.exists()
    tokenize_recordings(model, [path], output, window_seconds=4, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(stride_seconds, window_seconds differ\)"):
        tokenize_recordings(model, [path], output, window_seconds=5, progress=False)


def test_command_line(recording, model, tmp_path, capsys):
    path, _ = recording
    model.save_pretrained(tmp_path / "model")
    recordings_module.main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "table"), "--window", "10",
                            "--stride", "10", str(path)])
    assert "144 token rows" in capsys.readouterr().out  # 12 windows x 3 channels x 4 tokens


# ---- the device's clock: jitter, drift and jumps of the page times ---------------------------------------------------


def assert_timed_from_the_pages(rows, path, window_length, stride):
    """Windows start at the file's own sample times (`read_geneactiv`'s, seconds from its first page), with
    timestamps to match, and every token lies inside its window on those times."""
    recording = read_geneactiv_bin(path)
    first = rows["window"] * stride
    np.testing.assert_allclose(rows["window_start"], recording.time[first], rtol=0, atol=1e-9)
    window_end = recording.time[first + window_length - 1] + 1 / recording.frequency
    assert (rows["token_start"] >= rows["window_start"] - 1e-9).all()
    assert (rows["token_end"] <= window_end + 1e-9).all() and (rows["token_start"] < rows["token_end"]).all()
    for column in ("window_start", "token_start", "token_end"):
        stamps = np.datetime64(recording.start, "us") + (rows[column] * 1e6).round().astype("timedelta64[us]")
        assert (rows[f"{column}_time"] == stamps).all()


def test_jittered_page_times_drop_nothing_and_times_follow_the_pages(model, tmp_path):
    nominal = np.arange(20) * 6.0  # 20 pages at 50 Hz
    jitter = np.random.default_rng(3).uniform(-0.004, 0.004, 20)  # a few ms, the page times' own resolution
    path = device_file(tmp_path / "jitter.bin", nominal + jitter)
    rows = table_rows(tokenize_recordings(model, [path], tmp_path / "table", window_seconds=8, stride_seconds=4,
                                          progress=False))
    assert sorted(set(rows["window"])) == list(range(29))  # every candidate window: jitter is not a gap
    assert_timed_from_the_pages(rows, path, 400, 200)
    starts = rows.groupby("window")["window_start"].first()
    assert np.abs(starts - starts.index * 4.0).max() > 1e-3  # the page times, not the nominal rate


def test_a_clock_fast_by_a_tenth_of_a_percent_over_a_day_is_followed(model, tmp_path):
    """A day at 1 Hz (288 pages of 5 minutes): each page starts 0.1 % later than the nominal rate says, 86.4 s by the
    end of the day; no step between samples is off by half a sample, so nothing is a gap."""
    path = device_file(tmp_path / "day.bin", np.arange(288) * 300 * 1.001, frequency=1.0)
    rows = table_rows(tokenize_recordings(model, [path], tmp_path / "table", window_seconds=600, stride_seconds=3600,
                                          progress=False))
    assert sorted(set(rows["window"])) == list(range(24))
    assert_timed_from_the_pages(rows, path, 600, 3600)
    last = rows[rows["window"] == 23]
    assert last["window_start"].iloc[0] == pytest.approx(23 * 3600 * 1.001)  # not 82800 s: 82.8 s later
    assert last["window_start_time"].iloc[0] == np.datetime64(START + timedelta(seconds=82882.8), "us")


def test_windows_across_a_jump_are_dropped_and_the_rest_timed_from_the_pages(model, tmp_path):
    """The issue's file: 3 pages at 50 Hz whose second page is 0.5 s later than the nominal rate predicts."""
    path = device_file(tmp_path / "jump.bin", [0.0, 6.5, 12.5])
    rows = table_rows(tokenize_recordings(model, [path], tmp_path / "table", window_seconds=10, stride_seconds=1,
                                          progress=False))
    assert sorted(set(rows["window"])) == [6, 7, 8]  # windows 0..5 hold samples 299 and 300, across the jump
    assert rows.groupby("window")["window_start"].first().tolist() == [6.5, 7.5, 8.5]
    assert_timed_from_the_pages(rows, path, 500, 50)
    assert rows["token_end"].max() <= 18.5 + 1e-9  # the recording's end on the device's clock
    # the library function keeps the same windows: one rule for the token table, the Dataset and the demo
    labelled = build_geneactiv_dataset([path], pd.DataFrame({"start": [0.0], "end": [18.5], "label": ["any"]}), 500, 50)
    assert labelled["start"] == [6.5, 7.5, 8.5]


def test_a_file_whose_only_window_spans_the_jump_gives_a_message_and_an_empty_table(model, tmp_path, capsys, caplog):
    path = device_file(tmp_path / "jump.bin", [0.0, 6.5, 12.5])
    model.save_pretrained(tmp_path / "model")
    with caplog.at_level(logging.WARNING, logger="modeling_vqshape.corpora.recordings"):
        recordings_module.main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "table"),
                                "--window", "10", str(path)])  # returns: exit code 0
    assert "0 token rows" in capsys.readouterr().out
    logger = "modeling_vqshape.corpora.recordings"
    [message] = [record.getMessage() for record in caplog.records if record.name == logger]
    assert message == ("recording 'jump': no window to keep: all 1 candidate window(s) of 10 s span a gap in its "
                       "sample times (its page times pause or jump); it has no token rows.")
    table = tokenize_recordings(model, [path], tmp_path / "library", window_seconds=10, progress=False)
    assert len(table) == 0 and table.column_names == table_rows(tokenize_recordings(
        model, [path], tmp_path / "kept", window_seconds=5, progress=False)).columns.tolist()  # a valid empty table
    with pytest.raises(SystemExit, match=r"^error: recording 'jump' lasts 18 s, shorter than one 60 s window"):
        recordings_module.main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "other"),
                                "--window", "60", str(path)])


def test_token_spans_end_inside_their_window_as_the_model_reads_them(tmp_path):
    """The attribute decoder lets start + length reach 1 + min_shape_length; a long-token model shows it often."""
    torch.manual_seed(0)
    model = VQShapeForPreTraining(VQShapeConfig(**TINY)).eval()
    with torch.no_grad():
        model.vqshape.attribute_decoder.start_length_head[-1].bias[1] += 4.0  # lengths near their maximum, 1 - start
    values = np.random.default_rng(4).normal(size=(3, 4000)).cumsum(axis=1)
    rows = table_rows(tokenize_recordings(model, [values], tmp_path / "table", window_seconds=4, sampling_rate=100,
                                          progress=False))
    assert (rows["start"] + rows["length"] > 1).all()  # every token, as the model predicts it, runs past its window
    np.testing.assert_allclose(rows["token_end"], rows["window_start"] + 4, atol=1e-9)  # and ends at the window's end
    # the pipeline and the pictures show the same span
    window = values[:, :400]
    explanation = explain_series(model, window)
    for token in explanation["tokens"]:
        end = min(token["start"] + token["length"], 1.0)
        np.testing.assert_allclose(token["x"][[0, -1]], np.array([token["start"], end]) * (TINY["input_length"] - 1),
                                   rtol=1e-5)
    tokens = pipeline("time-series-tokenization", model=model)([window])[0]
    assert max(token["end_index"] for token in tokens) == 400
    for token in tokens:
        assert token["end_index"] == int(np.ceil(min(token["start"] + token["length"], 1.0) * 400))
