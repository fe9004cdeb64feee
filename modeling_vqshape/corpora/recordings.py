"""Whole recordings -> a token table: one row per shape token, written to Parquet shard by shard.

    from modeling_vqshape.corpora.recordings import tokenize_recordings
    table = tokenize_recordings(model, ["day1.bin", "day2.bin"], "tokens/", window_seconds=10, stride_seconds=5)

    python -m modeling_vqshape.corpora.recordings --model lab/vqshape-geneactiv --output tokens/ --window 10 \
        --stride 5 day1.bin

A recording is a GENEActiv `.bin` (read page by page, so a day at 100 Hz never sits in memory whole) or `.csv`, a
`.npy` array `(channels, time)` (memory-mapped), or an array with its sampling rate. It is cut into windows of
`window_seconds` every `stride_seconds` (counted in samples at the stated rate); windows that span a gap in the
sample times are left out (`geneactiv.time_gaps`: jitter and slow drift of the page times are not gaps, a pause or a
jump is). Each window is tokenized as one multichannel series (every channel resampled to the model's input length).
Every time in the table is on the recording's own clock: a GENEActiv sample lies at its page's time + its place in
the page / frequency, as `read_geneactiv` gives it, not at its index / the nominal rate. Rows hold:

- `recording`, `window` (the window's number, counted over all candidate windows), `window_start` (seconds from the
  recording's first sample: the time of the window's first sample) and `window_start_time` (a timestamp when the
  recording has a start time);
- `channel` (its name), `token` (its number in the window), `code`, `start`, `length` (relative to the window),
  `offset`, `scale` (in the window channel's normalised units: the model's token features);
- `token_start`, `token_end` (seconds from the recording's first sample: the token's absolute time span) and their
  timestamps `token_start_time`, `token_end_time` when the recording has a start time. The span is the one the
  model reads (`token_span_end`): from `start` to `start + length` clamped at the window's end, a relative position
  p lying p * n samples after the window's first sample of n, read on the samples' times;
- with `histogram=True`, the window channel's code counts `histogram` (the same list on each of its token rows).

A recording none of whose windows is kept (every one spans a gap) gets no rows and a one-line warning; when no
recording has any, the table is empty (its columns, no rows).

Shards of `windows_per_shard` windows are written to `<output_dir>/data/<recording>-<shard>.parquet` through a
temporary file, then renamed, so a shard on disk is always complete. Run again with the same settings and it resumes:
finished recordings and shards are skipped, and the table equals an uninterrupted run's. `tokenize_config.json` holds
the settings; another run into the same folder with other settings is refused.
"""

import argparse
import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..modeling_vqshape import token_span_end, vqshape_model
from ..processing_vqshape import VQShapeFeatureExtractor
from ..saving_vqshape import atomic_write, write_json
from .geneactiv import (
    CHANNELS,
    SAMPLES_PER_PAGE,
    GENEActivRecording,
    _leading_number,
    gap_free,
    iter_geneactiv_bin,
    read_geneactiv_csv,
)

TABLE_CONFIG = "tokenize_config.json"
RATE_TOLERANCE = 1e-6  # relative: a sampling rate given for a file must equal the file's

logger = logging.getLogger(__name__)


@dataclass
class RecordingSource:
    """A recording read piece by piece: `pieces()` yields `(values (channels, n), time (n,) seconds from the first
    sample)`; `num_samples` is known up front for every supported source."""

    name: str
    sampling_rate: float
    num_samples: int
    channel_names: list
    start: datetime | None
    pieces: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]

    @property
    def duration(self) -> float:
        return self.num_samples / self.sampling_rate


def _array_source(name, values, sampling_rate, channel_names, start=None, time=None) -> RecordingSource:
    if sampling_rate is None or not sampling_rate > 0:
        raise ValueError(f"recording {name!r}: an array needs its sampling rate (sampling_rate > 0 in Hz), got "
                         f"{sampling_rate!r}.")
    values = values[None] if values.ndim == 1 else values
    if values.ndim != 2:
        raise ValueError(f"recording {name!r}: an array must be (time,) or (channels, time), got {values.shape}.")
    num_samples = values.shape[1]

    def pieces(chunk: int = 2**20):
        for begin in range(0, num_samples, chunk):
            part = np.asarray(values[:, begin : begin + chunk], dtype=np.float64)
            seconds = np.arange(begin, begin + part.shape[1]) / sampling_rate if time is None \
                else time[begin : begin + chunk]
            yield part, seconds

    names = list(channel_names) if channel_names else [f"channel_{index}" for index in range(values.shape[0])]
    if len(names) != values.shape[0]:
        raise ValueError(f"recording {name!r}: {len(names)} channel names for {values.shape[0]} channels.")
    return RecordingSource(name, float(sampling_rate), num_samples, names, start, pieces)


def _check_rate(name, given, found):
    if given is not None and abs(given - found) > RATE_TOLERANCE * found:
        raise ValueError(f"recording {name!r}: sampling_rate {given} Hz disagrees with the file's {found} Hz; leave "
                         "sampling_rate out for files that state their own.")


def open_recording(recording, sampling_rate: float | None = None, name: str | None = None,
                   channel_names=None) -> RecordingSource:
    """A path (`.bin`, `.csv`, `.npy`), a `GENEActivRecording`, or an array `(channels, time)` with `sampling_rate`
    -> `RecordingSource` (a `RecordingSource` is returned as it is). Files state their own rate; a `sampling_rate`
    given with one must agree with it."""
    if isinstance(recording, RecordingSource):
        _check_rate(recording.name, sampling_rate, recording.sampling_rate)
        return recording
    if isinstance(recording, GENEActivRecording):
        _check_rate(recording.name, sampling_rate, recording.frequency)
        return _array_source(name or recording.name, recording.values, recording.frequency,
                             channel_names or CHANNELS, recording.start, recording.time)
    if isinstance(recording, (np.ndarray, torch.Tensor)):
        values = recording.numpy() if isinstance(recording, torch.Tensor) else recording
        return _array_source(name or "recording", values, sampling_rate, channel_names)
    path = Path(recording)
    if not path.is_file():
        raise ValueError(f"recording {str(path)!r} is not a file.")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _array_source(name or path.stem, np.load(path, mmap_mode="r", allow_pickle=False), sampling_rate,
                             channel_names)
    if suffix == ".csv":
        return open_recording(read_geneactiv_csv(path), sampling_rate, name or path.stem, channel_names)
    if suffix != ".bin":
        raise ValueError(f"{path}: unsupported recording type {suffix!r}; use .bin, .csv or .npy, or pass an array.")
    pages = iter_geneactiv_bin(path, pages_per_chunk=1)
    first = next(pages)  # the header and page 1 only
    pages.close()
    if "Number of Pages" not in first.header:
        raise ValueError(f"{path}: header has no 'Number of Pages' under 'Memory Status'; cannot size the recording.")
    _check_rate(path.stem, sampling_rate, first.frequency)
    num_samples = int(_leading_number(first.header["Number of Pages"], str(path))) * SAMPLES_PER_PAGE

    def pieces():
        for piece in iter_geneactiv_bin(path):
            yield piece.values, piece.time

    return RecordingSource(name or path.stem, first.frequency, num_samples, list(channel_names or CHANNELS),
                           first.start, pieces)


def iter_windows(source: RecordingSource, window_length: int, stride: int, first_window: int = 0):
    """Yield `(window, start_sample, values (channels, window_length), times (window_length,))` every `stride` samples,
    from candidate window `first_window` on, holding at most one window plus one piece in memory. `times` are the
    window's sample times, seconds from the recording's first sample. Windows that span a gap in the sample times
    (`geneactiv.time_gaps`) are skipped, but keep their number."""
    buffer = np.empty((len(source.channel_names), 0))
    times = np.empty(0)
    offset = 0  # sample index of buffer[:, 0]
    window = first_window
    for values, seconds in source.pieces():
        buffer = np.concatenate([buffer, values], axis=1)
        times = np.concatenate([times, seconds])
        fitting = np.arange(window, (offset + buffer.shape[1] - window_length) // stride + 1)  # now wholly buffered
        begins = fitting * stride - offset
        kept = gap_free(times, source.sampling_rate, begins, window_length)
        for number, begin in zip(fitting[kept], begins[kept]):
            yield int(number), int(number) * stride, buffer[:, begin : begin + window_length], \
                times[begin : begin + window_length]
        window += fitting.size
        keep = max(0, min(window * stride - offset, buffer.shape[1]))  # drop what no later window reads
        buffer, times, offset = buffer[:, keep:], times[keep:], offset + keep


def _settings_digest(model) -> str:
    """A fingerprint of the model's weights and config, so that a resumed table comes from the same model."""
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _seconds_at(times: np.ndarray, relative: np.ndarray, sampling_rate: float) -> np.ndarray:
    """Seconds of relative positions in windows, on the samples' own times: position p of a window of n samples lies
    p * n samples after its first sample (p = 1 is the window's end, one period after its last sample), linearly
    between the times of the samples around it.

    Args:
        times: `(num_windows, n)` the windows' sample times. relative: `(num_windows, ...)` positions in [0, 1].
    Returns:
        seconds, shaped like `relative`.
    """
    num_windows, n = times.shape
    edges = np.concatenate([times, times[:, -1:] + 1.0 / sampling_rate], axis=1)  # (num_windows, n + 1)
    position = relative.reshape(num_windows, -1).astype(np.float64) * n
    index = np.clip(np.floor(position).astype(np.int64), 0, n - 1)
    left, right = np.take_along_axis(edges, index, 1), np.take_along_axis(edges, index + 1, 1)
    return (left + (position - index) * (right - left)).reshape(relative.shape)


def _token_rows(source, outputs, windows, times, schema):
    """A pyarrow table of a batch of windows' tokens: rows `(windows, channels, tokens)` flattened in that order;
    `times` `(num_windows, window_length)` are the windows' sample times."""
    import pyarrow as pa

    num_windows, num_channels, num_tokens = outputs.code_indices.shape
    shape = (num_windows, num_channels, num_tokens)

    def spread(values):  # a per-window value for each of its rows
        return np.broadcast_to(np.asarray(values)[:, None, None], shape).reshape(-1)

    start = outputs.shape_start.float().numpy()
    length = outputs.shape_length.float().numpy()
    end = token_span_end(outputs.shape_start.float(), outputs.shape_length.float()).numpy()
    columns = {
        "recording": [source.name] * int(np.prod(shape)),
        "window": spread(windows).astype(np.int64),
        "window_start": spread(times[:, 0]),
        "channel": np.broadcast_to(np.array(source.channel_names)[None, :, None], shape).reshape(-1).tolist(),
        "token": np.broadcast_to(np.arange(num_tokens)[None, None], shape).reshape(-1).astype(np.int32),
        "code": outputs.code_indices.numpy().reshape(-1).astype(np.int32),
        "start": start.reshape(-1),
        "length": length.reshape(-1),
        "offset": outputs.shape_offset.float().numpy().reshape(-1),
        "scale": outputs.shape_scale.float().numpy().reshape(-1),
        "token_start": _seconds_at(times, start, source.sampling_rate).reshape(-1),
        "token_end": _seconds_at(times, end, source.sampling_rate).reshape(-1),
    }
    if source.start is not None:
        origin = np.datetime64(source.start, "us")
        for column in ("window_start", "token_start", "token_end"):
            columns[f"{column}_time"] = origin + (columns[column] * 1e6).round().astype("timedelta64[us]")
    if "histogram" in schema.names:
        counts = outputs.histogram.numpy().astype(np.int32)  # (windows, channels, codes)
        columns["histogram"] = list(np.repeat(counts.reshape(-1, counts.shape[-1]), num_tokens, axis=0))
    return pa.table({name: pa.array(columns[name], type=schema.field(name).type) for name in schema.names},
                    schema=schema)


def _schema(with_time: bool, histogram: bool):
    import pyarrow as pa

    fields = [("recording", pa.string()), ("window", pa.int64()), ("window_start", pa.float64()),
              ("channel", pa.string()), ("token", pa.int32()), ("code", pa.int32()), ("start", pa.float32()),
              ("length", pa.float32()), ("offset", pa.float32()), ("scale", pa.float32()),
              ("token_start", pa.float64()), ("token_end", pa.float64())]
    if with_time:
        fields += [(f"{column}_time", pa.timestamp("us")) for column in ("window_start", "token_start", "token_end")]
    if histogram:
        fields.append(("histogram", pa.list_(pa.int32())))
    return pa.schema(fields)


def _write_shard(path: Path, tables: list, schema):
    """Write the rows of `tables` (pyarrow tables of `schema`) to `path` all at once (`atomic_write`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_write(path) as temporary:
        pq.write_table(pa.concat_tables(tables) if tables else schema.empty_table(), temporary)


def _check_settings(output_dir: Path, settings: dict):
    path = output_dir / TABLE_CONFIG
    if path.exists():
        stored = json.loads(path.read_text())
        if stored != settings:
            changed = sorted(key for key in set(stored) | set(settings) if stored.get(key) != settings.get(key))
            raise ValueError(f"{output_dir} holds a token table made with other settings ({', '.join(changed)} "
                             "differ); resume with the same ones, or choose another output folder.")
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


def tokenize_recordings(model, recordings, output_dir, window_seconds: float, stride_seconds: float | None = None,
                        sampling_rate: float | None = None, channel_names=None, histogram: bool = False,
                        batch_size: int = 64, windows_per_shard: int = 1024, progress: bool = True):
    """Tokenize whole recordings into a Parquet token table (see the module docstring); returns it as a
    `datasets.Dataset` (memory-mapped, not loaded).

    Args:
        model: any VQShape model (`VQShapeModel`, a head, or a text-aligned model); it runs in eval mode.
        recordings: paths (`.bin`, `.csv`, `.npy`), `GENEActivRecording`s or `(channels, time)` arrays; names (file
            stems) must be distinct.
        window_seconds, stride_seconds: window length and step in seconds; the stride defaults to the window.
        sampling_rate: Hz, needed for arrays; for files it is read from the file and, if given, must agree.
        channel_names: names of the channels (GENEActiv: x, y, z; arrays: channel_0, ...).
        histogram: also store each window channel's code counts.
        batch_size: windows per model call; windows_per_shard: windows per Parquet file.
    """
    from tqdm.auto import tqdm

    stride_seconds = window_seconds if stride_seconds is None else stride_seconds
    if not window_seconds > 0 or not stride_seconds > 0:
        raise ValueError(f"window_seconds and stride_seconds must be positive, got {window_seconds} and "
                         f"{stride_seconds}; a stride of zero would repeat the same window forever.")
    if batch_size < 1 or windows_per_shard < 1:
        raise ValueError(f"batch_size and windows_per_shard must be positive, got {batch_size} and "
                         f"{windows_per_shard}.")
    items = recordings if isinstance(recordings, (list, tuple)) else [recordings]
    sources = [open_recording(item, sampling_rate, None, channel_names) for item in items]
    names = [source.name for source in sources]
    if not sources or len(set(names)) != len(names):
        raise ValueError(f"recordings must be at least one, with distinct names (file stems), got {names}.")
    plans = []
    for source in sources:  # every recording is checked before anything is written
        window_length = int(round(window_seconds * source.sampling_rate))
        stride = int(round(stride_seconds * source.sampling_rate))
        if window_length < 2 or stride < 1:
            raise ValueError(f"recording {source.name!r}: {window_seconds} s windows every {stride_seconds} s are "
                             f"{window_length} and {stride} samples at {source.sampling_rate} Hz; windows need at "
                             "least 2 samples and the stride at least 1.")
        if source.num_samples < window_length:
            raise ValueError(f"recording {source.name!r} lasts {source.duration:g} s, shorter than one "
                             f"{window_seconds:g} s window; use shorter windows or leave it out.")
        plans.append((source, window_length, stride, (source.num_samples - window_length) // stride + 1))

    output_dir = Path(output_dir)
    model = model.eval()
    _check_settings(output_dir, {
        "model": _settings_digest(model), "window_seconds": window_seconds, "stride_seconds": stride_seconds,
        "histogram": histogram, "windows_per_shard": windows_per_shard,
        "recordings": {source.name: {"samples": source.num_samples, "sampling_rate": source.sampling_rate,
                                     "channels": source.channel_names} for source in sources},
    })
    data_dir = output_dir / "data"
    data_dir.mkdir(exist_ok=True)
    backbone = vqshape_model(model)
    extractor = VQShapeFeatureExtractor(input_length=backbone.config.input_length)
    bar = tqdm(total=sum(plan[3] for plan in plans), unit="window", disable=not progress, desc="tokenizing")
    shards = {}  # recording name -> its shard paths
    for source, window_length, stride, num_windows in plans:
        counted = bar.n + num_windows  # the bar counts candidate windows, kept or left out
        schema = _schema(source.start is not None, histogram)
        num_shards = -(-num_windows // windows_per_shard)
        shard_paths = [data_dir / f"{source.name}-{shard:05d}.parquet" for shard in range(num_shards)]
        shards[source.name] = shard_paths
        done = 0
        while done < num_shards and shard_paths[done].exists():
            done += 1
        bar.update(min(done * windows_per_shard, num_windows))
        if done == num_shards:
            continue
        shard, batches, pending = done, [], []

        def run(pending):
            # windows (batch,), values (batch, channels, window_length), times (batch, window_length)
            windows, values, times = (np.stack(column) for column in zip(*pending))
            with torch.no_grad():
                outputs = backbone(**extractor(values), return_dict=True)
            batches.append(_token_rows(source, outputs, windows, times, schema))
            bar.update(len(pending))

        for window, _, values, times in iter_windows(source, window_length, stride,
                                                     first_window=done * windows_per_shard):
            while window >= (shard + 1) * windows_per_shard:  # the window opens a later shard: close this one
                if pending:
                    run(pending)
                    pending = []
                _write_shard(shard_paths[shard], batches, schema)
                shard, batches = shard + 1, []
            pending.append((window, values.copy(), times.copy()))
            if len(pending) == batch_size:
                run(pending)
                pending = []
        if pending:
            run(pending)
        for index in range(shard, num_shards):  # the last shard, and any a gap left without windows
            _write_shard(shard_paths[index], batches if index == shard else [], schema)
        bar.update(counted - bar.n)
    bar.close()
    return _read_table(shards, plans, window_seconds, output_dir)


def _read_table(shards: dict, plans: list, window_seconds: float, output_dir: Path):
    """The shards (recording name -> paths) as one `datasets.Dataset`; a one-line warning for each recording that got
    no window (every one spans a gap), and an empty table with the columns when none did."""
    import datasets
    import pyarrow.parquet as pq

    files = [path for paths in shards.values() for path in paths]
    rows = {path: pq.read_metadata(path).num_rows for path in files}
    for source, _, _, num_windows in plans:
        if not any(rows[path] for path in shards[source.name]):
            logger.warning(f"recording {source.name!r}: no window to keep: all {num_windows} candidate window(s) of "
                           f"{window_seconds:g} s span a gap in its sample times (its page times pause or jump); it "
                           "has no token rows.")
    kept = [str(path) for path in files if rows[path]]
    if not kept:
        return datasets.Dataset(pq.read_table(files[0]))  # no rows, the table's columns
    return datasets.Dataset.from_parquet(kept, cache_dir=str(output_dir / "cache"))


def main(argv=None):
    parser = argparse.ArgumentParser(description="Tokenize whole recordings into a Parquet token table.")
    parser.add_argument("recordings", nargs="+", help=".bin, .csv or .npy files (.npy needs --sampling_rate).")
    parser.add_argument("--model", required=True, help="A VQShape folder or Hub id.")
    parser.add_argument("--output", required=True, help="Folder of the table (data/*.parquet); resumes if it exists.")
    parser.add_argument("--window", type=float, required=True, help="Window length in seconds.")
    parser.add_argument("--stride", type=float, default=None, help="Step between windows in seconds.")
    parser.add_argument("--sampling_rate", type=float, default=None, help="Hz; for .npy recordings.")
    parser.add_argument("--channel_names", default=None, help="Comma-separated channel names.")
    parser.add_argument("--histogram", action="store_true", help="Also store each window channel's code counts.")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--windows_per_shard", type=int, default=1024)
    parser.add_argument("--trust_remote_code", action="store_true")
    args = parser.parse_args(argv)
    from ..sharing.loading import load_vqshape

    model = load_vqshape(args.model, trust_remote_code=args.trust_remote_code)
    try:
        table = tokenize_recordings(model, args.recordings, args.output, args.window, args.stride, args.sampling_rate,
                                    args.channel_names.split(",") if args.channel_names else None, args.histogram,
                                    args.batch_size, args.windows_per_shard)
    except ValueError as error:  # a recording or a setting the table cannot use: say why, without a trace
        sys.exit(f"error: {error}")
    print(f"{len(table)} token rows in {Path(args.output) / 'data'}")


if __name__ == "__main__":
    main()
