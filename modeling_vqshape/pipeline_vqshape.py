"""VQShape behind `transformers.pipeline`: time-series classification and tokenization.

    import modeling_vqshape  # registers the tasks; without the package pass trust_remote_code=True
    from transformers import pipeline

    classifier = pipeline("time-series-classification", model="lab/vqshape-basicmotions")
    classifier(series)                     # [{"label": "walking", "score": 0.93}, ...]
    tokenizer = pipeline("time-series-tokenization", model="lab/vqshape-geneactiv")
    tokenizer(series, return_type="histogram")

Saved folders list both tasks in `config.json`'s `custom_pipelines` and carry this file, so that `pipeline(...)` also
works with `trust_remote_code=True` on a machine without the package.

Series may come in any length and layout (see `series_batch`); every series is resampled to the model's
`input_length` by its feature extractor, and `batch_size=` batches them through the model.
"""

import numpy as np
import torch
from transformers import Pipeline

from .modeling_vqshape import token_span_end, vqshape_model
from .processing_vqshape import VQShapeFeatureExtractor

LAYOUTS = ("auto", "channels_first", "channels_last")
RETURN_TYPES = ("tokens", "histogram", "embedding")


def series_batch(inputs, layout: str = "auto", num_channels: int | None = None) -> list:
    """Split pipeline input into a list of `(channels, time)` float arrays, one per series.

    - a list or tuple holds one series per item (each 1-D, or 2-D read as below);
    - a 3-D array or tensor is a batch: `(batch, channels, time)`, or `(batch, time, channels)` with
      `layout="channels_last"`;
    - a 2-D array or tensor is one series `(channels, time)` (`layout="channels_first"`) or `(time, channels)`
      (`"channels_last"`). With `"auto"`, the axis of size `num_channels` (a classifier's channels) is the channel
      axis, and without one the shorter axis is (series are longer than they are wide). For a univariate classifier
      an array with neither axis of size 1 is a batch of series `(batch, time)`, as `VQShapeFeatureExtractor` reads
      it;
    - a 1-D array is one univariate series; a pandas DataFrame is one series with a column per channel.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
    if hasattr(inputs, "to_numpy") and hasattr(inputs, "columns"):  # a DataFrame: rows are time steps
        return [_as_array(inputs.to_numpy()).T]
    if isinstance(inputs, (list, tuple)):
        if len(inputs) == 0:
            raise ValueError("The pipeline got an empty list; pass at least one series.")
        if all(np.isscalar(value) for value in inputs):
            return [_as_array(inputs)[None]]
        return [_one_series(item, layout, num_channels) for item in inputs]
    values = _as_array(inputs)
    if values.ndim == 3:
        return list(values.transpose(0, 2, 1) if layout == "channels_last" else values)
    if values.ndim == 2 and layout == "auto" and num_channels == 1 and 1 not in values.shape:
        return [row[None] for row in values]  # (batch, time) of univariate series
    return [_one_series(values, layout, num_channels)]


def _as_array(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise ValueError(f"A series must hold real numbers, got an array of dtype {values.dtype}.")
    return values.astype(np.float64)


def _one_series(values, layout: str, num_channels: int | None) -> np.ndarray:
    """One series -> `(channels, time)`."""
    values = _as_array(values)
    if values.ndim == 1:
        return values[None]
    if values.ndim != 2:
        raise ValueError(f"One series must be 1-D (time,) or 2-D, got shape {values.shape}.")
    if layout == "channels_last":
        return values.T
    if layout == "channels_first":
        return values
    if num_channels is not None and values.shape[0] != num_channels and values.shape[1] == num_channels:
        return values.T
    if num_channels is None and values.shape[1] < values.shape[0]:
        return values.T  # (time, channels): series are longer than they are wide
    return values


class _VQShapePipeline(Pipeline):
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = None  # optional: a model object gets its own resampling (see __init__)
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.feature_extractor is None:  # a model object passed without one: the model's own resampling
            self.feature_extractor = VQShapeFeatureExtractor(input_length=vqshape_model(self.model).config.input_length)

    def _expected_channels(self):
        return None

    def __call__(self, inputs, **kwargs):
        """Classify or tokenize one series or a batch (see `series_batch` for the layouts); a single series gives
        one result, a batch a list of them."""
        layout = kwargs.pop("layout", "auto")
        batch = series_batch(inputs, layout, self._expected_channels())
        single = not isinstance(inputs, (list, tuple)) and len(batch) == 1 and np.ndim(inputs) != 3
        results = super().__call__(batch, **kwargs)
        return results[0] if single else results

    def preprocess(self, series: np.ndarray):
        # a list of one (channels, time) series: always (1, input_length, channels), so that batches stack
        past_values = self.feature_extractor([series], return_tensors="pt")["past_values"]
        return {"past_values": past_values.to(self.dtype or torch.float32),
                "series_length": torch.tensor([series.shape[-1]])}


class VQShapeTimeSeriesClassificationPipeline(_VQShapePipeline):
    """Named labels and scores for series, from a fine-tuned VQShape classifier (`VQShapeForTimeSeriesClassification`)
    or, zero-shot, from a text-aligned VQShape (`VQShapeForTextAlignment`) with its stored class names or
    `candidate_labels`.

    Call arguments: `top_k` (default 5, at most the number of classes), `candidate_labels` (text-aligned models only:
    class names or `{name: [descriptions]}`; the stored ones when not given), `layout`, `batch_size`.
    Returns, per series, a list of `{"label", "score"}` sorted by score.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.zero_shot = hasattr(self.model, "zero_shot_classify")
        architectures = self.model.config.architectures or []
        if not self.zero_shot and architectures and type(self.model).__name__ not in architectures:
            raise ValueError(
                f"This checkpoint was saved as {', '.join(architectures)}, without a classification head, so its "
                "classifier would be random. Fine-tune it first (examples/finetune.py), or use the "
                "'time-series-tokenization' pipeline for its tokens and histograms."
            )

    def _expected_channels(self):
        return None if self.zero_shot else self.model.config.num_input_channels

    def _sanitize_parameters(self, top_k=None, candidate_labels=None, **kwargs):
        forward_kwargs, postprocess_kwargs = {}, {}
        if candidate_labels is not None:
            if not self.zero_shot:
                raise ValueError("candidate_labels is for text-aligned (zero-shot) models; this classifier's labels "
                                 "are fixed by its head (config.id2label).")
            # the model reads names or {name: [descriptions]}; the results are labelled with the names
            forward_kwargs["candidate_labels"] = candidate_labels
            postprocess_kwargs["candidate_labels"] = list(candidate_labels)  # names, or the keys of a mapping
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"top_k must be a positive integer, got {top_k!r}.")
            postprocess_kwargs["top_k"] = top_k
        return {}, forward_kwargs, postprocess_kwargs

    def _forward(self, model_inputs, candidate_labels=None):
        model_inputs.pop("series_length")
        past_values = model_inputs["past_values"]
        if self.zero_shot:
            return {"probabilities": self.model.zero_shot_classify(past_values, candidate_labels).probabilities}
        return {"probabilities": self.model(past_values=past_values).logits.float().softmax(dim=-1)}

    def postprocess(self, model_outputs, top_k=5, candidate_labels=None):
        probabilities = model_outputs["probabilities"][0]
        if self.zero_shot:
            labels = candidate_labels or self.model.class_names
        else:
            labels = [self.model.config.id2label[index] for index in range(probabilities.shape[-1])]
        scores, indices = probabilities.topk(min(top_k, probabilities.shape[-1]))
        return [{"label": labels[index], "score": score} for score, index in zip(scores.tolist(), indices.tolist())]


class VQShapeTimeSeriesTokenizationPipeline(_VQShapePipeline):
    """Shape tokens, code histograms or a pooled embedding of series, from any VQShape checkpoint.

    Call arguments: `return_type`:
    - `"tokens"` (default): per series a list of tokens, each `{"channel", "code", "start", "length", "offset",
      "scale", "start_index", "end_index"}`: start and length relative to the series, offset and scale in its
      normalised units (the model's token features), and the samples of the input series the token covers (up to
      the series' end, as the model reads the span: `token_span_end`);
    - `"histogram"`: per series a `(channels, num_codes)` array of code counts;
    - `"embedding"`: per series a `(channels, d_model)` array, the tokenizer's hidden states averaged over tokens.
    Also `layout` and `batch_size`.
    """

    def _sanitize_parameters(self, return_type=None, **kwargs):
        postprocess_kwargs = {}
        if return_type is not None:
            if return_type not in RETURN_TYPES:
                raise ValueError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}.")
            postprocess_kwargs["return_type"] = return_type
        return {}, {}, postprocess_kwargs

    def _forward(self, model_inputs):
        outputs = vqshape_model(self.model)(past_values=model_inputs["past_values"], return_dict=True)
        return {"series_length": model_inputs["series_length"], "code_indices": outputs.code_indices,
                "start": outputs.shape_start, "length": outputs.shape_length, "offset": outputs.shape_offset,
                "scale": outputs.shape_scale, "histogram": outputs.histogram,
                "embedding": outputs.last_hidden_state.float().mean(dim=2)}

    def postprocess(self, model_outputs, return_type="tokens"):
        if return_type != "tokens":
            return model_outputs[return_type][0].numpy()  # the histogram, or the (float32) embedding
        length = int(model_outputs["series_length"][0])
        fields = {name: model_outputs[name][0].float() for name in ("start", "length", "offset", "scale")}
        ends = token_span_end(fields["start"], fields["length"])  # the span the model reads, inside the series
        codes = model_outputs["code_indices"][0]
        tokens = []
        for channel in range(codes.shape[0]):
            for token in range(codes.shape[1]):
                start, span = float(fields["start"][channel, token]), float(fields["length"][channel, token])
                tokens.append({
                    "channel": channel, "code": int(codes[channel, token]), "start": start, "length": span,
                    "offset": float(fields["offset"][channel, token]), "scale": float(fields["scale"][channel, token]),
                    "start_index": int(np.floor(start * length)),
                    "end_index": int(np.ceil(float(ends[channel, token]) * length)),
                })
        return tokens


# task -> (pipeline class, the Auto classes that load its models, in order of trial)
PIPELINES = {
    "time-series-classification": (VQShapeTimeSeriesClassificationPipeline,
                                   ("AutoModelForSequenceClassification", "AutoModel")),
    "time-series-tokenization": (VQShapeTimeSeriesTokenizationPipeline, ("AutoModel",)),
}

def custom_pipelines() -> dict:
    """The `custom_pipelines` entry of a saved config.json: what `pipeline(..., trust_remote_code=True)` reads."""
    return {task: {"impl": f"pipeline_vqshape.{impl.__name__}", "pt": list(auto_classes), "type": "multimodal"}
            for task, (impl, auto_classes) in PIPELINES.items()}


def register_pipelines():
    """Register both tasks with transformers' pipeline registry (importing the package does it)."""
    import transformers
    from transformers.pipelines import PIPELINE_REGISTRY

    for task, (impl, auto_classes) in PIPELINES.items():
        PIPELINE_REGISTRY.register_pipeline(task, pipeline_class=impl,
                                            pt_model=tuple(getattr(transformers, name) for name in auto_classes),
                                            type="multimodal")


__all__ = ["VQShapeTimeSeriesClassificationPipeline", "VQShapeTimeSeriesTokenizationPipeline", "series_batch",
           "custom_pipelines", "register_pipelines"]
