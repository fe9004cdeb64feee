"""A Gradio demo of a VQShape model, ready to be a Hub Space: upload a recording, see its shape tokens drawn on it, the
codebook atlas with this recording's usage, the predicted class, and download the token table.

    python -m modeling_vqshape.sharing.demo --model lab/vqshape-basicmotions          # or VQSHAPE_MODEL=... in the env

Uploads: a GENEActiv `.bin` or `.csv` export (their own sampling rate), a `.npy` array `(channels, time)` or
`(time,)`, or a plain `.csv` with one column per channel (a header row is allowed); the last two take the sampling
rate from the form. The recording is cut into windows by the token table's rule (`recordings`: windows that span a
gap in a GENEActiv file's page times are left out, and times follow the device's clock); the first window kept is
explained and classified, with a fine-tuned head (`VQShapeForTimeSeriesClassification`) or zero-shot with a
text-aligned model, from the class names or descriptions in the form or the stored ones, and every window kept goes
into the token table. The model comes from `--model`, `$VQSHAPE_MODEL` or the page's model field.
`modeling_vqshape.sharing.hub.publish_demo` pushes it as a Space (`space/app.py` and its requirements, plus this
package).
"""

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..corpora.geneactiv import read_geneactiv
from ..corpora.recordings import RecordingSource, iter_windows, open_recording, tokenize_recordings
from ..modeling_vqshape import vqshape_model
from .loading import load_vqshape
from .visualization import plot_codebook_atlas, plot_explanation

MODEL_ENV = "VQSHAPE_MODEL"


def _is_number(text) -> bool:
    try:
        float(str(text).split(".")[0] if str(text).count(".") > 1 else str(text))  # pandas renames repeats "1.0.1"
        return True
    except ValueError:
        return False


def read_upload(path, sampling_rate: float | None = None) -> RecordingSource:
    """An uploaded file -> a `recordings.RecordingSource` (values in float64, the sampling rate, channel names, and
    for a GENEActiv file its own sample times and start); a `ValueError` saying what is wrong with anything else."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".bin":
            return open_recording(read_geneactiv(path))
        if suffix == ".npy":
            try:
                values = np.load(path, allow_pickle=False)
            except (ValueError, OSError, EOFError) as error:
                raise ValueError(f"not a readable NumPy array file ({error})") from None
            names = None
        elif suffix == ".csv":
            try:  # a GENEActiv export states its own rate
                return open_recording(read_geneactiv(path))
            except ValueError:
                import pandas as pd

                table = pd.read_csv(path)
                if not all(pd.api.types.is_numeric_dtype(dtype) for dtype in table.dtypes):
                    raise ValueError("every column must be numeric (one column per channel)") from None
                names = [str(column) for column in table.columns]
                if all(_is_number(column) for column in table.columns):  # the first row was data, not a header
                    table, names = pd.read_csv(path, header=None), None
                values = table.to_numpy(dtype=np.float64).T
        else:
            raise ValueError(f"unsupported file type {suffix!r}; upload a GENEActiv .bin or .csv, a .npy or a .csv")
    except (OSError, UnicodeDecodeError, EOFError) as error:
        raise ValueError(f"{path.name} could not be read ({error})") from error
    except ValueError as error:
        raise ValueError(f"{path.name}: {error}") from error
    values = np.asarray(values, dtype=np.float64)
    values = values[None] if values.ndim == 1 else values
    if values.ndim != 2 or values.shape[1] < 2:
        raise ValueError(f"{path.name}: expected (channels, time) or (time,) values, got shape {values.shape}")
    if values.shape[0] > values.shape[1]:
        values = values.T  # a column per channel
        names = names if names and len(names) == values.shape[0] else None
    if not sampling_rate or sampling_rate <= 0:
        raise ValueError(f"{path.name}: give the sampling rate (Hz) of this file")
    return open_recording(values, float(sampling_rate), path.stem, names)


def predict(model, window: np.ndarray, class_names=None) -> dict | None:
    """`{label: probability}` for one window `(channels, time)`, or None when the model has no classifier."""
    from ..processing_vqshape import VQShapeFeatureExtractor

    past_values = VQShapeFeatureExtractor(vqshape_model(model).config.input_length)(window[None])["past_values"]
    with torch.no_grad():
        if hasattr(model, "zero_shot_classify"):
            if not class_names and not model.class_names:
                return None
            output = model.zero_shot_classify(past_values, class_names or None)
            return dict(zip(output.class_names, output.probabilities[0].tolist()))
        if not hasattr(model, "classifier"):
            return None
        probabilities = model(past_values=past_values).logits.softmax(dim=-1)[0]
        return {model.config.id2label[index]: float(value) for index, value in enumerate(probabilities)}


def parse_classes(text: str):
    """The form's classes: names separated by commas (`walking, running`), or one class per line with its
    descriptions after a colon, separated by semicolons (`walking: a regular rhythm; steady steps`) -> a list of
    names, a `{name: [descriptions]}` mapping, or None when empty."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not any(":" in line for line in lines):
        return [name.strip() for line in lines for name in line.split(",") if name.strip()] or None
    classes = {}
    for line in lines:
        name, _, descriptions = line.partition(":")
        if not name.strip() or not descriptions.strip():
            raise ValueError(f"write each class as 'name: description; description', got {line!r}")
        classes[name.strip()] = [text.strip() for text in descriptions.split(";") if text.strip()]
    return classes


def analyse(model, path, sampling_rate=None, class_names_text: str = "", window_seconds: float = 10.0,
            workdir=None) -> dict:
    """Everything the page shows for one upload: `explanation` and `atlas` (matplotlib figures), `prediction`
    (`{label: probability}` or None), `table` (the token table as a CSV path) and `summary` (a line of text).

    Windows follow the token table's rule, so the table equals what
    `python -m modeling_vqshape.corpora.recordings` writes for the same file and window (a recording shorter than the
    window is taken as one window); the window explained is the table's first. No window to keep is a `ValueError`
    saying why."""
    source = read_upload(path, sampling_rate)
    rate, num_channels = source.sampling_rate, len(source.channel_names)
    window_length = min(source.num_samples, max(2, int(round(window_seconds * rate))))
    class_names = parse_classes(class_names_text)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="vqshape-demo-"))
    table = tokenize_recordings(model, [source], workdir / "table", window_seconds=window_length / rate,
                                progress=False).to_pandas()
    shutil.rmtree(workdir / "table")  # the CSV is what the page offers; the Parquet shards are not kept
    candidates = (source.num_samples - window_length) // window_length + 1
    if table.empty:
        raise ValueError(f"no window to keep: all {candidates} window(s) of {window_length / rate:g} s span a gap in "
                         "the recording's sample times (its page times pause or jump); try shorter windows")
    usage = np.bincount(table["code"], minlength=vqshape_model(model).config.num_codes)
    table_path = workdir / f"{Path(path).stem}-tokens.csv"
    table.to_csv(table_path, index=False)
    windows, num_tokens = table["window"].nunique(), len(table)
    number, _, window, times = next(iter_windows(source, window_length, window_length))  # the table's first window
    left_out = f", {candidates - windows} spanning a gap left out" if windows < candidates else ""
    return {
        "explanation": plot_explanation(model, window),
        "atlas": plot_codebook_atlas(model, usage=usage),
        "prediction": predict(model, window, class_names),
        "table": str(table_path),
        "summary": f"{num_channels} channel(s), {source.num_samples} samples at {rate:g} Hz: {windows} window(s) of "
                   f"{window_length / rate:g} s{left_out}, {num_tokens} tokens. Window {number} (from "
                   f"{times[0]:g} s) is explained and classified.",
    }


def build_demo(model_id: str):
    """The Gradio app, starting with the model at `model_id` (folder or Hub repo id); the page's model field can name
    another one."""
    import gradio as gr

    models = {model_id: load_vqshape(model_id, keep_classifier=True)}  # loaded once per id

    def run(chosen_id, upload, sampling_rate, class_names_text, window_seconds):
        if upload is None:
            return None, None, None, None, "Upload a recording first."
        chosen_id = (chosen_id or model_id).strip()
        try:
            if chosen_id not in models:
                models[chosen_id] = load_vqshape(chosen_id, keep_classifier=True)
        except (OSError, ValueError) as error:
            return None, None, None, None, f"**Could not load the model {chosen_id!r}:** {error}"
        try:
            result = analyse(models[chosen_id], upload, sampling_rate, class_names_text or "", window_seconds or 10.0)
        except ValueError as error:  # a message on the page, not a trace
            return None, None, None, None, f"**Could not use this upload:** {error}"
        prediction = result["prediction"] or {"(this model has no classifier)": 1.0}
        return result["explanation"], result["atlas"], prediction, result["table"], result["summary"]

    with gr.Blocks(title="VQShape") as demo:
        gr.Markdown("# VQShape: shape tokens of a time series\nUpload a GENEActiv `.bin` or `.csv`, a `.npy` array "
                    "or a `.csv` with one column per channel.")
        chosen_model = gr.Textbox(label="Model (folder or Hub id)", value=model_id, elem_id="model")
        with gr.Row():
            upload = gr.File(label="Recording", file_types=[".bin", ".csv", ".npy"], type="filepath",
                             elem_id="upload")
            with gr.Column():
                sampling_rate = gr.Number(label="Sampling rate (Hz; .npy and plain .csv)", value=50.0)
                window_seconds = gr.Number(label="Window (seconds)", value=10.0)
                class_names = gr.Textbox(label="Classes for a text-aligned model: names, comma-separated, or a line "
                                         "per class 'name: description; description'", lines=3,
                                         placeholder="walking: a regular rhythm of moderate swings\n"
                                                     "running: vigorous, fast oscillations")
                button = gr.Button("Analyse", variant="primary", elem_id="analyse")
        status = gr.Markdown(elem_id="status")
        prediction = gr.Label(label="Predicted class", elem_id="prediction")
        explanation = gr.Plot(label="Explanation: tokens on the first window kept", elem_id="explanation")
        atlas = gr.Plot(label="Codebook atlas, with this recording's usage", elem_id="atlas")
        table = gr.File(label="Token table (CSV)", elem_id="table")
        button.click(run, [chosen_model, upload, sampling_rate, class_names, window_seconds],
                     [explanation, atlas, prediction, table, status])
    return demo


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run the VQShape Gradio demo.")
    parser.add_argument("--model", default=os.environ.get(MODEL_ENV), help=f"Folder or Hub id (or ${MODEL_ENV}).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)
    if not args.model:
        parser.error(f"give --model or set {MODEL_ENV}.")
    build_demo(args.model).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
