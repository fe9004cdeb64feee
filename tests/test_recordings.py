"""modeling_vqshape.recordings: whole recordings -> Parquet token table, streamed, resumable, checked."""

from datetime import datetime

import numpy as np
import pytest
import torch

pytest.importorskip("pyarrow")
datasets = pytest.importorskip("datasets")

from modeling_vqshape import VQShapeConfig, VQShapeFeatureExtractor, VQShapeForPreTraining  # noqa: E402
from modeling_vqshape import recordings as recordings_module  # noqa: E402
from modeling_vqshape.geneactiv import (  # noqa: E402
    GENEActivRecording,
    iter_geneactiv_bin,
    read_geneactiv_bin,
    write_geneactiv_bin,
)
from modeling_vqshape.recordings import iter_windows, open_recording, tokenize_recordings  # noqa: E402

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
    windows = [window for window, _, _ in iter_windows(open_recording(gapped), 200, 100)]
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
