"""What the multimodal VQShape is for, once aligned: codes and tokens in words (`describe_codes`, `token_phrases`),
codes for a text (`retrieve_codes`), zero-shot classification from class names or descriptions with an optional
hubness correction (`zero_shot_classify`), its explanation token by token (`explain`), and search of series by free
text (`search`). A mixin of `VQShapeForTextAlignment`: it reads the model's text bank, heads and `encode`."""

from dataclasses import dataclass

import numpy as np
import torch
from transformers.utils import ModelOutput

from .configuration_vqshape_text import ATTRIBUTES
from .modeling_vqshape import code_histogram
from .text_captions import RHYTHM_VALUES, SHAPE_VALUES, rhythm_numbers

HUBNESS_METHODS = ("inverted_softmax", "csls")


def hubness_corrected_logits(similarity: torch.Tensor, reference_similarity: torch.Tensor, method: str,
                             scale: torch.Tensor, neighbours: int = 10) -> torch.Tensor:
    """Zero-shot logits corrected for hubness (a few class prompts being nearest to most series).

    Args:
        similarity: `(batch_size, num_classes)` cosines of the series to classify with each class prompt.
        reference_similarity: `(num_reference, num_classes)` cosines of unlabelled reference series.
        method: `"inverted_softmax"` (Smith et al. 2017: each class's exp-similarities are normalised over the
            reference series, so a class close to everything loses its advantage) or `"csls"` (Conneau et al. 2018:
            twice the cosine minus the class's mean cosine to its `neighbours` nearest reference series).
        scale: the logit scale.
    """
    if method == "inverted_softmax":
        return scale * similarity - torch.logsumexp(scale * reference_similarity, dim=0)
    if method == "csls":
        nearest = reference_similarity.topk(min(neighbours, reference_similarity.shape[0]), dim=0).values
        return scale * (2 * similarity - nearest.mean(dim=0))
    raise ValueError(f"hubness must be None or one of {HUBNESS_METHODS}, got {method!r}.")



@dataclass
class VQShapeZeroShotOutput(ModelOutput):
    """
    Args:
        logits: `(batch_size, num_classes)` scaled cosine similarities of series and class prompts.
        probabilities: `(batch_size, num_classes)` their softmax.
        predictions: `(batch_size,)` index of the best class.
        class_names: the classes, in column order.
    """

    logits: torch.FloatTensor | None = None
    probabilities: torch.FloatTensor | None = None
    predictions: torch.LongTensor | None = None
    class_names: list | None = None


class TextInterpretationMixin:
    """The interpretation API of `VQShapeForTextAlignment`."""

    @torch.no_grad()
    def describe_codes(self, top_k: int = 3, past_values: torch.Tensor | None = None) -> list:
        """Each code in words: its `top_k` shape phrases with cosine scores, its rule label and its usage count (on
        `past_values` when given, else in the training batches seen). Needs only the stored bank.

        Returns:
            one dict per code: `code`, `phrases` [(text, score)], `rule_label`, `usage`.
        """
        self.text_bank.require_built()
        indices = self.text_bank.phrase_indices("shape")
        scores = self.code_embeddings() @ self.text_bank.phrase_embeddings[indices].t()  # (num_codes, num_phrases)
        top = scores.topk(min(top_k, len(indices)), dim=-1)
        if past_values is not None:
            code_indices = self.backbone.vqshape(past_values, return_dict=True).code_indices
            usage = code_histogram(code_indices.reshape(-1), scores.shape[0])
        else:
            usage = self.code_counts
        rule = self.code_shape_labels()
        return [
            {
                "code": code,
                "phrases": [(self.text_bank.phrases[indices[j]].text, round(float(s), 4))
                            for s, j in zip(top.values[code], top.indices[code])],
                "rule_label": SHAPE_VALUES[int(rule[code])],
                "usage": int(usage[code]),
            }
            for code in range(scores.shape[0])
        ]

    @torch.no_grad()
    def retrieve_codes(self, text, top_k: int = 5) -> dict:
        """The codes nearest to a text (`str` or list): `{"codes": (num_texts, top_k), "scores": (num_texts, top_k)}`
        as lists. Bank phrases need no text encoder; free text does."""
        queries = self.text_bank.embed_text(text)
        scores = queries @ self.code_embeddings().t()
        top = scores.topk(min(top_k, scores.shape[1]), dim=-1)
        if isinstance(text, str):
            return {"codes": top.indices[0].tolist(), "scores": top.values[0].tolist()}
        return {"codes": top.indices.tolist(), "scores": top.values.tolist()}

    @torch.no_grad()
    def zero_shot_classify(self, past_values: torch.Tensor, class_names=None, templates=None,
                           intensity_thresholds=None, hubness: str | None = None,
                           reference_values: torch.Tensor | None = None,
                           reference_thresholds=None) -> VQShapeZeroShotOutput:
        """Classify series by the cosine of their pooled embedding with each class's prompts (CLIP-style).

        Args:
            past_values: `(batch_size, sequence_length)` or `(batch_size, sequence_length, num_channels)`, in their
                own units when the model's intensity is calibrated (`calibrate_intensity`).
            class_names: the classes (the stored ones when not given): a list of names, prompted with `templates`
                ("{}" is the name), or `{name: [descriptions]}`, whose descriptions are averaged per class.
            intensity_thresholds: per-row intensity calibration (see `forward`); the stored one when not given.
            hubness: `None` (plain cosines), `"inverted_softmax"` or `"csls"`: correct for classes that are near
                every series (see `hubness_corrected_logits`), using `reference_values`.
            reference_values: unlabelled series like `past_values` for the hubness correction; `past_values`
                themselves when not given.
            reference_thresholds: the per-row intensity calibration of `reference_values`; the stored one when not
                given (with `past_values` as the reference, `intensity_thresholds`).
        """
        class_names, prompts = self.text_bank.class_prompts(class_names, templates)
        series = self.encode(past_values, intensity_thresholds).series_embeddings
        prompts = prompts.to(series)
        similarity = series @ prompts.t()
        if hubness is None:
            logits = self.logit_scale_value() * similarity
        else:
            reference = series if reference_values is None else \
                self.encode(reference_values, reference_thresholds).series_embeddings
            logits = hubness_corrected_logits(similarity, reference @ prompts.t(), hubness, self.logit_scale_value())
        probabilities = logits.softmax(dim=-1)
        return VQShapeZeroShotOutput(logits=logits, probabilities=probabilities,
                                     predictions=probabilities.argmax(dim=-1), class_names=class_names)

    @staticmethod
    def _window_seconds(past_values, sampling_rate, window_seconds):
        """Each series' duration in seconds `(batch_size,)`, from `window_seconds` or `sampling_rate`; None when
        neither is given."""
        from .processing_vqshape import check_sampling_rate

        sampling_rate = check_sampling_rate(sampling_rate)
        if window_seconds is not None:
            if sampling_rate is not None:
                raise ValueError("give sampling_rate or window_seconds, not both: each says how long the series last.")
            seconds = torch.as_tensor(window_seconds, dtype=torch.float64).reshape(-1)
            if len(seconds) not in (1, len(past_values)) or not bool((seconds > 0).all()):
                raise ValueError(f"window_seconds must be one positive duration or one per series "
                                 f"({len(past_values)}), got {window_seconds!r}.")
            return seconds.expand(len(past_values))
        if sampling_rate is not None:
            return torch.full((len(past_values),), past_values.shape[1] / sampling_rate, dtype=torch.float64)
        return None

    def _past_values(self, series) -> torch.Tensor:
        """Model input from a `past_values` tensor, a `datasets.Dataset` with a `past_values` column of
        `(channels, time)` windows (as `build_geneactiv_dataset` gives), or raw series for the feature extractor."""
        if isinstance(series, torch.Tensor):
            return series
        if hasattr(series, "column_names"):
            if "past_values" not in series.column_names:
                raise ValueError(f"the dataset has no 'past_values' column (columns: {series.column_names}).")
            series = np.asarray(series.with_format("numpy")["past_values"], dtype=np.float32)
        from .processing_vqshape import VQShapeFeatureExtractor

        return VQShapeFeatureExtractor(self.config.vqshape_config.input_length)(series)["past_values"]

    @torch.no_grad()
    def search(self, texts, series, top_k: int = 10, intensity_thresholds=None, batch_size: int = 256,
               phrases_per_result: int = 2) -> list:
        """Rank series (or windows of a recording) by free-text queries such as "vigorous irregular bursts".

        Args:
            texts: a query or a list of them.
            series: a `past_values` tensor, a `datasets.Dataset` of windows (`build_geneactiv_dataset`), or raw series
                in any form `VQShapeFeatureExtractor` takes.
            top_k: results per query.
            intensity_thresholds: a per-row intensity calibration `(num_series, 2)` or `(num_series, channels, 2)`
                (see `forward`); the stored one when not given.
        Returns:
            one dict per query: `query`, `indices` (best first), `scores` (cosine of the series embedding with the
            query), and `phrases`: for each result, the captions of its `phrases_per_result` tokens nearest the query.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(text, str) and text.strip() for text in texts):
            raise ValueError(f"texts must be non-empty queries, got {texts!r}.")
        if top_k < 1:
            raise ValueError(f"top_k must be positive, got {top_k}.")
        past_values = self._past_values(series)

        def thresholds(rows):  # a per-row calibration follows its rows; None means the stored one
            if intensity_thresholds is None:
                return None
            return torch.as_tensor(intensity_thresholds, dtype=torch.float32)[rows]

        queries = self.text_bank.embed_text(texts)  # (num_queries, text_dim), unit norm
        series_embeddings = torch.cat([
            self.encode(past_values[start : start + batch_size],
                        thresholds(slice(start, start + batch_size))).series_embeddings
            for start in range(0, len(past_values), batch_size)])
        scores = queries.to(series_embeddings) @ series_embeddings.t()  # (num_queries, num_series)
        best = scores.topk(min(top_k, scores.shape[1]), dim=-1)
        results = []
        for query, text in enumerate(texts):
            indices = best.indices[query].tolist()
            encoded = self.encode(past_values[indices], thresholds(indices))
            batch, channels, tokens = encoded.outputs.code_indices.shape
            vectors = encoded.token_vectors.reshape(batch, channels * tokens, -1)
            nearest = (vectors @ queries[query].to(vectors)).topk(min(phrases_per_result, channels * tokens),
                                                                  dim=-1).indices
            embeddings = encoded.token_embeddings.reshape(batch, channels * tokens, len(ATTRIBUTES), -1)
            results.append({"query": text, "indices": indices, "scores": best.values[query].tolist(),
                            "phrases": [self.token_phrases(embeddings[row, nearest[row]]) for row in range(batch)]})
        return results

    def _best_phrases(self, attribute: str, embeddings: torch.Tensor) -> list:
        """`(n, text_dim)` -> for each row, the first paraphrase of the value of its best `attribute` bank phrase."""
        indices = self.text_bank.phrase_indices(attribute)
        best = (embeddings @ self.text_bank.phrase_embeddings[indices].t()).argmax(dim=-1).tolist()
        return [self.text_bank.value_phrase(attribute, self.text_bank.phrases[indices[j]].value) for j in best]

    def _rhythm_phrase(self, encoded, row: int, channel: int, window_seconds) -> str:
        """A channel's rhythm as the model reads it, with the rule's cycles per window (and Hz) when it has one."""
        phrase = self._best_phrases("rhythm", encoded.rhythm_embeddings[row, channel, None])[0]
        cycles = float(encoded.cycles[row, channel])
        if phrase == self.text_bank.value_phrase("rhythm", RHYTHM_VALUES.index("none")):
            return phrase
        return phrase + rhythm_numbers(cycles, None if window_seconds is None else float(window_seconds[row]))

    def token_phrases(self, token_embeddings: torch.Tensor) -> list:
        """`(num_tokens, num_attributes, text_dim)` -> one caption per token: per attribute the value of the best
        bank phrase, written with that value's first paraphrase."""
        words = [self._best_phrases(attribute, token_embeddings[:, index])
                 for index, attribute in enumerate(ATTRIBUTES)]
        return [f"{shape} {position}, {duration}, {amplitude}, {level}"
                for shape, position, duration, amplitude, level in zip(*words)]

    @torch.no_grad()
    def explain(self, past_values: torch.Tensor, class_names=None, templates=None, top_k: int = 3,
                intensity_thresholds=None, sampling_rate: float | None = None, window_seconds=None) -> list:
        """Why each series gets its zero-shot class: the `top_k` tokens that most support it, each as a phrase.

        A token's support is its vector's similarity to the predicted class's prompt minus its mean similarity to the
        other classes (the series embedding is the mean token vector, so supports add up to the score margin, up to
        the normalisation). With the stored class names (`set_class_names`) no text encoder is needed. With an
        intensity calibration (`calibrate_intensity`) each phrase ends with its channel's intensity, and with rhythm
        phrases in the bank with its channel's rhythm: its cycles per window, and its frequency in Hz when the
        duration of the series is known.

        Args:
            sampling_rate: samples per second of `past_values` as given (each series lasts `length / sampling_rate`).
            window_seconds: or each series' duration, `(batch_size,)` or one number (the feature extractor gives it
                for raw series resampled to the model's length, from its `sampling_rate`).
        Returns:
            one dict per series: `predicted_class`, `probability`, `tokens`, a list of dicts with `phrase`, `code`,
            `channel`, `start`, `end` (relative positions), `score`; and, for a model with channel names, a
            calibration and series of those channels, `moves_most`: which channel moves most, in words.
        """
        window_seconds = self._window_seconds(past_values, sampling_rate, window_seconds)
        class_names, prompts = self.text_bank.class_prompts(class_names, templates)
        encoded = self.encode(past_values, intensity_thresholds)
        outputs, token_embeddings = encoded.outputs, encoded.token_embeddings
        series = encoded.series_embeddings
        prompts = prompts.to(series)
        probabilities = (self.logit_scale_value() * series @ prompts.t()).softmax(dim=-1)
        batch_size, num_channels, num_tokens = outputs.code_indices.shape
        vectors = encoded.token_vectors.reshape(batch_size, num_channels * num_tokens, -1)
        similarity = vectors @ prompts.t()  # (batch_size, channels * tokens, num_classes)
        explanations = []
        for row in range(batch_size):
            predicted = int(probabilities[row].argmax())
            others = [c for c in range(len(class_names)) if c != predicted]
            support = similarity[row, :, predicted] - (similarity[row][:, others].mean(dim=-1) if others else 0)
            order = support.argsort(descending=True)[:top_k].tolist()
            phrases = self.token_phrases(
                token_embeddings[row].reshape(num_channels * num_tokens, len(ATTRIBUTES), -1)[order])
            tokens = []
            for phrase, flat_index in zip(phrases, order):
                channel, token = divmod(flat_index, num_tokens)
                if encoded.intensity is not None and encoded.intensity[row, channel] >= 0:
                    phrase += "; " + self._best_phrases("intensity",
                                                        encoded.intensity_embeddings[row, channel, None])[0]
                if encoded.rhythm is not None:
                    phrase += "; " + self._rhythm_phrase(encoded, row, channel, window_seconds)
                start = float(outputs.shape_start[row, channel, token])
                tokens.append({
                    "phrase": phrase,
                    "code": int(outputs.code_indices[row, channel, token]),
                    "channel": channel,
                    "start": round(start, 4),
                    "end": round(min(start + float(outputs.shape_length[row, channel, token]), 1.0), 4),
                    "score": round(float(support[flat_index]), 4),
                })
            explanations.append({"predicted_class": class_names[predicted],
                                 "probability": round(float(probabilities[row, predicted]), 4), "tokens": tokens})
            if encoded.channel is not None and encoded.channel[row] >= 0:
                explanations[-1]["moves_most"] = self._best_phrases("channel", encoded.channel_embeddings[row, None])[0]
        return explanations
