"""GENEActiv wrist-worn accelerometer recordings -> labelled windows as a `datasets.Dataset`.

Two readers give the same `GENEActivRecording` (x, y, z in g, seconds from the first sample):

- `.bin`, the device's own file: text lines (CRLF or LF). A header of `key:value` lines in sections ("Device
  Identity", ..., "Calibration Data", "Memory Status") is followed by pages. Each page is a "Recorded Data" line, its
  own `key:value` lines ("Sequence Number", "Page Time:2019-05-29 10:31:12:000", "Temperature", "Measurement
  Frequency:100.0 Hz", ...) and one line of 300 samples x 12 hex characters. A sample is 48 bits: x, y, z as 12-bit
  two's complement, then light (10 bits), button (1 bit) and a reserved bit. Acceleration in g is
  (raw * 100 - offset) / gain with each axis' "gain" and "offset" from "Calibration Data"; light in lux is
  raw * Lux / Volts. Sample i of a page is at page time + i / frequency. Pages are counted from 1 in errors.
- `.csv`, a GENEActiv PC software export: header lines up to the first row that parses as
  `timestamp (%Y-%m-%d %H:%M:%S:%f, milliseconds), x, y, z[, lux, button, temperature]`. The frequency is
  1 / the median step between timestamps.

`build_geneactiv_dataset` cuts every recording into windows of `window_length` samples every `stride` samples and
labels them from an annotation table (`start`, `end`, `label`, and `recording` when there are several recordings;
times in seconds from the recording's first sample, or ISO timestamps). A window gets a label when it lies wholly
inside one annotation; windows that no annotation covers (unlabelled time, or straddling two annotations) and windows
that span a gap are dropped. A JSON map `{"fine label": "coarse label"}` can merge classes (for example
a 14-class protocol scored as 7 classes).

Times follow the device's clock: sample i of a page lies at the page's time + i / frequency. A gap is a step between
two consecutive samples that is not one sample period give or take half a period (`time_gaps`): ms jitter in page
times and a slow clock drift (below 1/600, 0.17 %, whatever the rate: a page boundary then moves by less than half a
sample) are not gaps; a pause, a jump of the page times, or time going backwards is. Every window is cut on sample
counts and kept only when it spans no gap; the token tables of `recordings` and the demo apply the same rule.
"""

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from ..processing_vqshape import resample_series
from ..saving_vqshape import atomic_write

SAMPLES_PER_PAGE = 300
HEX_PER_SAMPLE = 12
CHANNELS = ("x", "y", "z")
CALIBRATION_KEYS = ("x gain", "x offset", "y gain", "y offset", "z gain", "z offset")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S:%f"  # GENEActiv writes milliseconds after a colon: 10:31:12:000
TOLERANCE_S = 1e-6  # float slack when comparing window and annotation times
GAP_TOLERANCE = 0.5  # in sample periods: a step between samples further than this from one period is a gap

# ASCII code -> value of the hex digit, 255 for anything that is not one
_HEX_VALUE = np.full(256, 255, dtype=np.uint8)
for _digit in "0123456789abcdefABCDEF":
    _HEX_VALUE[ord(_digit)] = int(_digit, 16)


@dataclass
class GENEActivRecording:
    """One recording. `values` is `(3, num_samples)` x, y, z in g; `time` `(num_samples,)` seconds from `start`."""

    name: str
    start: datetime
    frequency: float
    values: np.ndarray
    time: np.ndarray
    light: np.ndarray | None = None
    button: np.ndarray | None = None
    temperature: np.ndarray | None = None
    header: dict = field(default_factory=dict)

    @property
    def duration(self) -> float:
        """Seconds from the first sample to the end of the last one."""
        return float(self.time[-1]) + 1.0 / self.frequency if len(self.time) else 0.0


# ---- .bin ------------------------------------------------------------------------------------------------------------


def _key_value(line: str):
    key, _, value = line.partition(":")
    return key.strip(), value.strip()


def _parse_time(text: str, where: str) -> datetime:
    try:
        return datetime.strptime(text.strip(), TIME_FORMAT)
    except ValueError as error:
        raise ValueError(f"{where}: time {text!r} does not match {TIME_FORMAT!r}.") from error


def _leading_number(text: str, where: str) -> float:
    match = re.match(r"[-+]?\d+(\.\d*)?", text.strip())
    if match is None:
        raise ValueError(f"{where}: expected a number, got {text!r}.")
    return float(match.group())


def _read_bin_header(file, path: Path):
    """Read the header lines of an open `.bin` file up to its first "Recorded Data" line; returns the header dict,
    the calibration and the light calibration `(lux, volts)` (None without both, or with zero volts)."""
    header = {}
    for line in file:
        line = line.strip()
        if line == "Recorded Data":
            break
        if ":" in line:
            key, value = _key_value(line)
            header[key] = value
    else:
        raise ValueError(f"{path}: no 'Recorded Data' line; not a GENEActiv .bin file, or it has no pages.")
    missing = [key for key in CALIBRATION_KEYS if key not in header]
    if missing:
        raise ValueError(f"{path}: header (before page 1) lacks calibration keys {missing} under 'Calibration Data'.")
    calibration = {key: _leading_number(header[key], f"{path}: header {key!r}") for key in CALIBRATION_KEYS}
    if any(calibration[f"{axis} gain"] == 0 for axis in CHANNELS):
        raise ValueError(f"{path}: header has a zero calibration gain.")
    light_factor = None
    if "Lux" in header and "Volts" in header and _leading_number(header["Volts"], str(path)) != 0:
        light_factor = (_leading_number(header["Lux"], str(path)), _leading_number(header["Volts"], str(path)))
    return header, calibration, light_factor


def _bin_pages(file, path: Path):
    """Yield `(number, fields, data_line)` for each page of an open `.bin` file positioned after page 1's "Recorded
    Data" line, reading one page at a time."""
    number, block = 1, []
    for line in file:
        line = line.strip()
        if line != "Recorded Data":
            if line:
                block.append(line)
            continue
        yield _parse_page(number, block, path)
        number, block = number + 1, []
    yield _parse_page(number, block, path)


def _parse_page(number: int, block: list, path: Path):
    fields = dict(_key_value(line) for line in block if ":" in line)
    data = [line for line in block if ":" not in line]
    if "Page Time" not in fields or "Measurement Frequency" not in fields or len(data) != 1:
        raise ValueError(f"{path}: page {number}: incomplete page (needs 'Page Time', 'Measurement Frequency' and one "
                         "hex data line); the file may be truncated.")
    if len(data[0]) != SAMPLES_PER_PAGE * HEX_PER_SAMPLE:
        raise ValueError(f"{path}: page {number}: data line has {len(data[0])} hex characters, expected "
                         f"{SAMPLES_PER_PAGE * HEX_PER_SAMPLE} ({SAMPLES_PER_PAGE} samples); truncated page?")
    return number, fields, data[0]


def _decode_pages(hex_lines: list, first_number: int, path: Path, calibration: dict, light_factor):
    """Hex data lines of consecutive pages -> x, y, z in g `(3, num_samples)`, light in whole lux (rounded down, as
    the device software exports it; raw counts without a light factor) and the button."""
    # hex characters -> 4-bit digits, one row of 12 per sample: (num_pages * 300, 12)
    digits = _HEX_VALUE[np.frombuffer("".join(hex_lines).encode("latin-1"), dtype=np.uint8)]
    bad = np.flatnonzero(digits == 255)
    if bad.size:
        page, offset = divmod(int(bad[0]), SAMPLES_PER_PAGE * HEX_PER_SAMPLE)
        raise ValueError(f"{path}: page {first_number + page}: bad hex character {hex_lines[page][offset]!r} at "
                         f"sample {offset // HEX_PER_SAMPLE} (column {offset + 1} of the data line).")
    digits = digits.reshape(-1, HEX_PER_SAMPLE).astype(np.int64)
    words = [(digits[:, i] << 8) | (digits[:, i + 1] << 4) | digits[:, i + 2] for i in (0, 3, 6, 9)]
    raw = np.stack(words[:3])  # (3, num_samples), unsigned 12 bits
    raw = np.where(raw >= 2048, raw - 4096, raw)  # two's complement
    gain = np.array([calibration[f"{axis} gain"] for axis in CHANNELS])[:, None]
    offset = np.array([calibration[f"{axis} offset"] for axis in CHANNELS])[:, None]
    values = (raw * 100.0 - offset) / gain
    light = (words[3] >> 2).astype(np.float64)
    if light_factor is not None:  # counts * lux / volts, multiplied first so that whole values stay whole
        lux, volts = light_factor
        light = np.floor(light * lux / volts)
    return values, light, ((words[3] >> 1) & 1).astype(bool)


def iter_geneactiv_bin(path, pages_per_chunk: int = 300):
    """Read a GENEActiv `.bin` file piece by piece: yields `GENEActivRecording`s of up to `pages_per_chunk` pages
    (300 samples each), whose `time` counts seconds from the file's first page, so that memory stays bounded whatever
    the recording's length. `read_geneactiv_bin` is these pieces joined."""
    path = Path(path)
    if pages_per_chunk < 1:
        raise ValueError(f"pages_per_chunk must be positive, got {pages_per_chunk}.")
    with open(path, encoding="latin-1") as file:  # text mode reads CRLF and LF alike
        header, calibration, light_factor = _read_bin_header(file, path)
        start = frequency = None
        pages, last_number = [], 0

        def piece():
            times, temperatures, hex_lines = zip(*((time, temperature, data) for time, temperature, data in pages))
            values, light, button = _decode_pages(list(hex_lines), last_number - len(pages) + 1, path, calibration,
                                                  light_factor)
            page_seconds = np.array([(time - start).total_seconds() for time in times])
            return GENEActivRecording(
                name=path.stem, start=start, frequency=frequency, values=values,
                time=(page_seconds[:, None] + np.arange(SAMPLES_PER_PAGE) / frequency).reshape(-1), light=light,
                button=button, temperature=np.repeat(temperatures, SAMPLES_PER_PAGE), header=header)

        for number, fields, data in _bin_pages(file, path):
            where = f"{path}: page {number}"
            page_frequency = _leading_number(fields["Measurement Frequency"], f"{where} 'Measurement Frequency'")
            if frequency is not None and page_frequency != frequency:
                raise ValueError(f"{where}: measurement frequency {page_frequency} Hz differs from page 1's "
                                 f"{frequency}.")
            if page_frequency <= 0:
                raise ValueError(f"{where}: measurement frequency must be positive, got {page_frequency}.")
            frequency = page_frequency
            page_time = _parse_time(fields["Page Time"], f"{where} 'Page Time'")
            start = page_time if start is None else start
            temperature = fields.get("Temperature")
            pages.append((page_time, _leading_number(temperature, f"{where} 'Temperature'") if temperature else np.nan,
                          data))
            last_number = number
            if len(pages) == pages_per_chunk:
                yield piece()
                pages = []
        if "Number of Pages" in header and last_number < int(_leading_number(header["Number of Pages"], str(path))):
            raise ValueError(f"{path}: header says {header['Number of Pages']} pages but the file ends after page "
                             f"{last_number}; truncated file.")
        if pages:
            yield piece()


def read_geneactiv_bin(path) -> GENEActivRecording:
    """Read a GENEActiv `.bin` file (see the module docstring for the format) into calibrated x, y, z in g."""
    pieces = list(iter_geneactiv_bin(path))
    first = pieces[0]

    def joined(name):
        return np.concatenate([getattr(piece, name) for piece in pieces], axis=-1)

    return GENEActivRecording(
        name=first.name, start=first.start, frequency=first.frequency, values=joined("values"), time=joined("time"),
        light=joined("light"), button=joined("button"), temperature=joined("temperature"), header=first.header)


def write_geneactiv_bin(path, raw, frequency: float = 100.0, start: datetime = datetime(2020, 1, 1, 9, 0),
                        calibration: dict | None = None, light=None, button=None, temperature: float = 25.0,
                        page_times=None) -> Path:
    """Write a GENEActiv-style `.bin` file from raw 12-bit counts; for tests and synthetic data.

    `raw` is `(3, num_samples)` integers in [-2048, 2047] with num_samples a multiple of 300; `light` (10-bit counts)
    and `button` (0/1) are optional `(num_samples,)`. `calibration` holds the `CALIBRATION_KEYS`, "Volts" and "Lux".
    `page_times` are the pages' times in seconds from `start`, `(num_pages,)`, written to the millisecond as the
    device does (default: page * 300 / frequency, the nominal rate). Lines end with CRLF, as the device writes them.
    """
    raw = np.asarray(raw, dtype=np.int64)
    if raw.ndim != 2 or raw.shape[0] != 3 or raw.shape[1] % SAMPLES_PER_PAGE:
        raise ValueError(f"raw must be (3, num_samples) with num_samples a multiple of 300, got {raw.shape}.")
    if raw.min(initial=0) < -2048 or raw.max(initial=0) > 2047:
        raise ValueError("raw counts must lie in [-2048, 2047] (12-bit two's complement).")
    num_samples = raw.shape[1]
    light = np.zeros(num_samples, np.int64) if light is None else np.asarray(light, dtype=np.int64)
    button = np.zeros(num_samples, np.int64) if button is None else np.asarray(button, dtype=np.int64)
    calibration = {"x gain": 25548, "x offset": 574, "y gain": 25693, "y offset": -2652, "z gain": 25148,
                   "z offset": 626, "Volts": 300, "Lux": 800, **(calibration or {})}
    num_pages = num_samples // SAMPLES_PER_PAGE
    page_times = np.arange(num_pages) * SAMPLES_PER_PAGE / frequency if page_times is None else np.asarray(page_times)
    if page_times.shape != (num_pages,):
        raise ValueError(f"page_times must hold one time per page, shape ({num_pages},), got {page_times.shape}.")
    lines = [
        "Device Identity", "Device Unique Serial Code:000000", "Device Type:GENEActiv", "Device Model:1.1",
        "Device Firmware:synthetic", "Calibration Date:2020-01-01 00:00:00:000", "",
        "Device Capability", "Accelerometer Range:-8 to 8", "Accelerometer Units:g", "",
        "Configuration Info", f"Measurement Frequency:{frequency:g} Hz",
        f"Start Time:{start:%Y-%m-%d %H:%M:%S}:000", "",
        "Trial Info", "Study Code:synthetic", "",
        "Subject Info", "Subject Code:synthetic", "",
        "Calibration Data", *(f"{key}:{value}" for key, value in calibration.items()), "",
        "Memory Status", f"Number of Pages:{num_pages}", "",
    ]
    hex_digits = np.frombuffer(b"0123456789ABCDEF", dtype=np.uint8)
    path = Path(path)
    # page by page, so that a day's recording needs no day of strings
    with atomic_write(path) as temporary, open(temporary, "wb") as file:
        file.write(("\r\n".join(lines) + "\r\n").encode("latin-1"))
        for page in range(num_pages):
            window = slice(page * SAMPLES_PER_PAGE, (page + 1) * SAMPLES_PER_PAGE)
            words = np.concatenate([raw[:, window] & 0xFFF, ((light[window] << 2) | (button[window] << 1))[None]])
            # (4, 300) 12-bit words -> per sample "XXXYYYZZZWWW": 3 hex digits per word, most significant first
            digits = np.stack([(words >> shift) & 0xF for shift in (8, 4, 0)], axis=-1)  # (4, 300, 3)
            data = hex_digits[digits.transpose(1, 0, 2).reshape(-1)].tobytes().decode("latin-1")
            page_time = start + timedelta(seconds=float(page_times[page]))
            block = [
                "Recorded Data", "Device Unique Serial Code:000000", f"Sequence Number:{page}",
                f"Page Time:{page_time:%Y-%m-%d %H:%M:%S}:{page_time.microsecond // 1000:03d}", "Unassigned:",
                f"Temperature:{temperature}", "Battery voltage:4.0", "Device Status:Recording",
                f"Measurement Frequency:{frequency:g} Hz", data,
            ]
            file.write(("\r\n".join(block) + "\r\n").encode("latin-1"))
    return path


# ---- .csv ------------------------------------------------------------------------------------------------------------


def _parse_csv_row(line: str):
    cells = [cell.strip() for cell in line.split(",")]
    if len(cells) < 4:
        return None
    try:
        return datetime.strptime(cells[0], TIME_FORMAT), [float(cell) for cell in cells[1:4]]
    except ValueError:
        return None


def read_geneactiv_csv(path) -> GENEActivRecording:
    """Read a GENEActiv CSV export: header lines, then rows `timestamp, x, y, z[, lux, button, temperature]` in g."""
    import pandas as pd

    path = Path(path)
    with open(path, encoding="latin-1") as file:
        lines = [line.strip() for line in file]
    first = next((index for index, line in enumerate(lines) if _parse_csv_row(line)), None)
    if first is None:
        raise ValueError(f"{path}: no data row 'timestamp ({TIME_FORMAT}), x, y, z' found.")
    header = dict(line.split(",", 1) for line in lines[:first] if "," in line)
    table = pd.read_csv(path, skiprows=first, header=None, encoding="latin-1", skip_blank_lines=True)
    try:
        stamps = pd.to_datetime(table[0].astype(str).str.strip(), format=TIME_FORMAT)
        values = table[[1, 2, 3]].to_numpy(dtype=np.float64).T
    except ValueError as error:
        raise ValueError(f"{path}: a data row after line {first + 1} does not parse as timestamp, x, y, z "
                         f"({error}).") from error
    if len(stamps) < 2:
        raise ValueError(f"{path}: needs at least two data rows to infer the sampling frequency.")
    start = stamps.iloc[0].to_pydatetime()
    time = (stamps - stamps.iloc[0]).dt.total_seconds().to_numpy()
    step = float(np.median(np.diff(time)))
    if step <= 0:
        raise ValueError(f"{path}: timestamps do not increase.")

    def optional(column):
        return table[column].to_numpy(dtype=np.float64) if column in table.columns else None

    button = optional(5)
    return GENEActivRecording(
        name=path.stem, start=start, frequency=1.0 / step, values=values, time=time, light=optional(4),
        button=None if button is None else button.astype(bool), temperature=optional(6), header=header,
    )


def read_geneactiv(path) -> GENEActivRecording:
    """Read a `.bin` or `.csv` GENEActiv file."""
    path = Path(path)
    if path.suffix.lower() == ".bin":
        return read_geneactiv_bin(path)
    if path.suffix.lower() == ".csv":
        return read_geneactiv_csv(path)
    raise ValueError(f"{path}: unsupported GENEActiv file type; use .bin or .csv.")


# ---- annotations and label maps --------------------------------------------------------------------------------------


def read_annotations(annotations):
    """A CSV path or a pandas DataFrame -> DataFrame with columns `start`, `end`, `label` (str) and, when present,
    `recording` (str). Times stay as written (seconds or ISO timestamps) until matched to a recording."""
    import pandas as pd

    name = str(annotations) if not isinstance(annotations, pd.DataFrame) else "annotations"
    table = annotations.copy() if isinstance(annotations, pd.DataFrame) else pd.read_csv(annotations)
    table = table.reset_index(drop=True)  # errors name rows 0, 1, ... in file order
    table.columns = [str(column).strip() for column in table.columns]
    missing = [column for column in ("start", "end", "label") if column not in table.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}; expected start, end, label[, recording].")
    if table.empty:
        raise ValueError(f"{name}: has no annotation rows.")
    if table["label"].isna().any():
        raise ValueError(f"{name}: row {int(table['label'].isna().to_numpy().argmax())} has no label.")
    table["label"] = table["label"].astype(str).str.strip()
    if "recording" in table.columns:
        table["recording"] = table["recording"].astype(str).str.strip()
    table.attrs["name"] = name
    return table


def _seconds(column, recording: GENEActivRecording, name: str) -> np.ndarray:
    """Annotation times -> seconds from the recording's first sample (numbers are taken as seconds already)."""
    import pandas as pd

    numbers = pd.to_numeric(column, errors="coerce")
    if not numbers.isna().any():
        return numbers.to_numpy(dtype=np.float64)
    try:
        stamps = pd.to_datetime(column.astype(str).str.strip(), format="ISO8601")
    except ValueError as error:
        raise ValueError(f"{name}: times must all be seconds or all ISO timestamps ({error}).") from error
    return (stamps - pd.Timestamp(recording.start)).dt.total_seconds().to_numpy()


def load_label_map(label_map) -> dict:
    """A dict or a JSON file `{"fine label": "coarse label"}` -> dict of str to str."""
    name = "label_map"
    if not isinstance(label_map, dict):
        name = str(label_map)
        with open(label_map, encoding="utf-8") as file:
            label_map = json.load(file)
    if not isinstance(label_map, dict) or not all(isinstance(value, (str, int)) for value in label_map.values()):
        raise ValueError(f"{name}: must be a JSON object mapping each fine label to a coarse label name.")
    return {str(fine).strip(): str(coarse).strip() for fine, coarse in label_map.items()}


# ---- windows -> Dataset ----------------------------------------------------------------------------------------------


def time_gaps(time: np.ndarray, frequency: float) -> np.ndarray:
    """`(len(time) - 1,)` bool: True where the step from a sample to the next is a gap, i.e. further than
    `GAP_TOLERANCE` sample periods from one period (a pause, a jump of the page times, time going backwards). Jitter
    and slow drift of the page times move a step by less than that, so they are not gaps."""
    return np.abs(np.diff(time) * frequency - 1.0) > GAP_TOLERANCE


def gap_free(time: np.ndarray, frequency: float, starts: np.ndarray, window_length: int) -> np.ndarray:
    """`(len(starts),)` bool: whether the window of `window_length` samples at each start index spans no gap."""
    gaps_before = np.concatenate([[0], np.cumsum(time_gaps(time, frequency))])  # gaps among steps 0 .. i - 1
    return gaps_before[starts + window_length - 1] == gaps_before[starts]


def window_starts(recording: GENEActivRecording, window_length: int, stride: int) -> np.ndarray:
    """Sample indices at which windows of `window_length` start, every `stride` samples; windows that span a gap
    (`time_gaps`) are left out."""
    starts = np.arange(0, len(recording.time) - window_length + 1, stride)
    return starts[gap_free(recording.time, recording.frequency, starts, window_length)]


def _label_windows(recording, table, starts, window_length, name):
    """Annotation label (str) of each window, or None where no single annotation holds the whole window."""
    start_s = _seconds(table["start"], recording, f"{name} column 'start'")
    end_s = _seconds(table["end"], recording, f"{name} column 'end'")
    rows = table.index.to_numpy()
    for row, begin, end in zip(rows, start_s, end_s):
        if not begin < end:
            raise ValueError(f"{name} row {row}: start {begin} s is not before end {end} s.")
        if begin < -TOLERANCE_S or end > recording.duration + TOLERANCE_S:
            raise ValueError(f"{name} row {row}: [{begin:g}, {end:g}] s lies outside recording {recording.name!r} "
                             f"(0 to {recording.duration:g} s).")
    order = np.argsort(start_s, kind="stable")
    start_s, end_s, rows = start_s[order], end_s[order], rows[order]
    overlap = np.flatnonzero(start_s[1:] < end_s[:-1] - TOLERANCE_S)
    if overlap.size:
        raise ValueError(f"{name}: rows {rows[overlap[0]]} and {rows[overlap[0] + 1]} overlap in recording "
                         f"{recording.name!r}; a window could get two labels.")
    labels = table["label"].to_numpy()[order]
    window_begin = recording.time[starts]
    window_end = recording.time[starts + window_length - 1] + 1.0 / recording.frequency
    index = np.searchsorted(start_s, window_begin + TOLERANCE_S, side="right") - 1  # last annotation starting before
    inside = (index >= 0) & (window_end <= end_s[np.maximum(index, 0)] + TOLERANCE_S)
    return [labels[i] if ok else None for i, ok in zip(index, inside)], window_begin, window_end


def build_geneactiv_dataset(recordings, annotations, window_length: int, stride: int | None = None,
                            label_map=None, class_names=None, input_length: int | None = None):
    """Labelled windows of GENEActiv recordings -> `datasets.Dataset`.

    Args:
        recordings: paths (`.bin`/`.csv`) or `GENEActivRecording`s; a recording's name is its file stem.
        annotations: CSV path or DataFrame with `start`, `end`, `label` and, for several recordings, `recording`
            (the name). Times are seconds from the recording's first sample or ISO timestamps.
        window_length, stride: in samples; `stride` defaults to `window_length` (no overlap).
        label_map: dict or JSON file mapping every annotation label to a coarse class.
        class_names: the classes in label order; by default the sorted (mapped) labels of the annotations. Pass the
            same list to train and test sets so that label ids agree.
        input_length: when given, windows are resampled to it with `VQShapeFeatureExtractor`.

    Returns:
        `datasets.Dataset` with `past_values` `(3, window_length or input_length)` float32 (channels x, y, z in g,
        not normalised; the model normalises each series), `label` (`ClassLabel` of `class_names`), `recording`,
        `start` and `end` (seconds from the recording's first sample; `end` exclusive).
    """
    import datasets

    stride = window_length if stride is None else stride
    if window_length < 2 or stride < 1:
        raise ValueError(f"window_length must be >= 2 and stride >= 1, got {window_length} and {stride}.")
    recordings = [item if isinstance(item, GENEActivRecording) else read_geneactiv(item) for item in recordings]
    names = [recording.name for recording in recordings]
    if not recordings or len(set(names)) != len(names):
        raise ValueError(f"recordings must be at least one, with distinct names (file stems), got {names}.")
    table = read_annotations(annotations)
    name = table.attrs["name"]
    if "recording" not in table.columns:
        if len(recordings) > 1:
            raise ValueError(f"{name}: several recordings need a 'recording' column naming each row's recording.")
        table["recording"] = names[0]
    unknown = sorted(set(table["recording"]) - set(names))
    if unknown:
        raise ValueError(f"{name}: column 'recording' names unknown recordings {unknown}; the recordings are {names}.")
    if label_map is not None:
        mapping = load_label_map(label_map)
        missing = sorted(set(table["label"]) - set(mapping))
        if missing:
            source = "label_map" if isinstance(label_map, dict) else str(label_map)
            raise ValueError(f"{source}: has no entry for label(s) {missing} of {name}; map every fine label.")
        table["label"] = table["label"].map(mapping)
    class_names = sorted(set(table["label"])) if class_names is None else [str(label) for label in class_names]
    unlisted = sorted(set(table["label"]) - set(class_names))
    if unlisted:
        raise ValueError(f"{name}: label(s) {unlisted} are not in class_names {class_names}.")

    windows, labels, rows = [], [], {"recording": [], "start": [], "end": []}
    for recording in recordings:
        starts = window_starts(recording, window_length, stride)
        part = table[table["recording"] == recording.name]
        if part.empty or starts.size == 0:
            continue
        window_labels, begin, end = _label_windows(recording, part, starts, window_length, name)
        for start, label, begin_s, end_s in zip(starts, window_labels, begin, end):
            if label is not None:
                windows.append(recording.values[:, start : start + window_length])
                labels.append(class_names.index(label))
                rows["recording"].append(recording.name)
                rows["start"].append(float(begin_s))
                rows["end"].append(float(end_s))
    counts = np.bincount(labels, minlength=len(class_names))
    empty = [label for label, count in zip(class_names, counts) if count == 0]
    if empty:
        raise ValueError(f"empty class: {empty} get no window of {window_length} samples (stride {stride}) from "
                         f"{name}; annotations may be shorter than a window, or a class is absent.")

    past_values = np.stack(windows).astype(np.float32)  # (num_windows, 3, window_length)
    if input_length is not None:
        past_values = resample_series(past_values, input_length)
    length = past_values.shape[-1]
    features = datasets.Features({
        "past_values": datasets.List(datasets.List(datasets.Value("float32"), length=length), length=len(CHANNELS)),
        "label": datasets.ClassLabel(names=class_names),
        "recording": datasets.Value("string"),
        "start": datasets.Value("float64"),
        "end": datasets.Value("float64"),
    })
    return datasets.Dataset.from_dict({"past_values": past_values, "label": labels, **rows}, features=features)


__all__ = [
    "GENEActivRecording",
    "build_geneactiv_dataset",
    "gap_free",
    "iter_geneactiv_bin",
    "load_label_map",
    "read_annotations",
    "read_geneactiv",
    "read_geneactiv_bin",
    "read_geneactiv_csv",
    "time_gaps",
    "window_starts",
    "write_geneactiv_bin",
]
