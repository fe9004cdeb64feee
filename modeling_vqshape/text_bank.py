"""The text side of the multimodal VQShape: the phrase bank and the class prompts, embedded once by a frozen
sentence-transformer and stored as persistent buffers (centred by the bank's mean, unit-norm), so that a saved model
describes, retrieves and classifies with its stored classes without the text encoder. The encoder is loaded only to
embed new free text."""

import os
from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_vqshape_text import BANK_ATTRIBUTES, VQShapeTextConfig
from .text_captions import ATTRIBUTE_VALUES


def load_text_encoder(name_or_path: str):
    """A `sentence_transformers.SentenceTransformer` on CPU, with a clear error when the package is missing."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise ImportError(
            "Embedding new text needs the package `sentence-transformers` (pip install sentence-transformers, or "
            "pip install 'vqshape[multimodal]'). Without it the stored phrase bank still serves describe_codes, "
            "explain with stored class names, and retrieval by bank phrases."
        ) from error
    return SentenceTransformer(str(name_or_path), device="cpu")


def encode_texts(text_encoder, texts) -> torch.Tensor:
    """`len(texts)` unit-norm float32 embeddings `(len(texts), text_dim)` from a sentence-transformer."""
    with torch.no_grad():
        embeddings = text_encoder.encode(list(texts), convert_to_tensor=True, normalize_embeddings=True,
                                         show_progress_bar=False)
    return embeddings.detach().to("cpu", torch.float32)


class Phrase(NamedTuple):
    attribute: int  # index into BANK_ATTRIBUTES
    value: int  # index into the attribute's values
    text: str
    heldout: bool  # one of the last `num_heldout_paraphrases` of its value: never trained on


def check_class_names(class_names) -> list:
    if isinstance(class_names, str):
        raise ValueError(f"class_names must be a list of names, got the string {class_names!r}.")
    class_names = [str(name) for name in class_names] if class_names is not None else []
    if not class_names:
        raise ValueError("class_names is empty: give at least one class name (two for a classification).")
    duplicates = sorted({name for name in class_names if class_names.count(name) > 1})
    if duplicates:
        raise ValueError(f"class_names has duplicates {duplicates}: each class needs its own name.")
    return class_names


def check_descriptions(descriptions: Mapping) -> dict:
    """`{class name: [descriptions]}` -> the same with str keys and lists of non-empty strings."""
    checked = {}
    for name, texts in descriptions.items():
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        if not texts or not all(isinstance(text, str) and text.strip() for text in texts):
            raise ValueError(f"class {name!r} needs a non-empty list of non-empty descriptions, got {texts!r}.")
        if str(name) in checked:
            raise ValueError(f"class {name!r} is given twice; each class needs its own name.")
        checked[str(name)] = texts
    if not checked:
        raise ValueError("class descriptions are empty: give at least one class with its descriptions.")
    return checked


def check_classes(class_names):
    """Classes given as a list of names or as `{name: [descriptions]}` -> `(names, descriptions)`, both checked;
    `descriptions` is None for names."""
    if isinstance(class_names, Mapping):
        descriptions = check_descriptions(class_names)
        return list(descriptions), descriptions
    return check_class_names(class_names), None


class VQShapeTextBank(nn.Module):
    """The stored text side: the phrase bank's embeddings (centred by their mean, unit-norm), that mean (to centre new
    text alike), and the stored classes' prompt embeddings, all persistent buffers; the stored classes themselves
    (names, descriptions, templates) are state the model writes into its config when it saves."""

    def __init__(self, config: VQShapeTextConfig):
        super().__init__()
        self.text_model_name_or_path = config.text_model_name_or_path
        self.text_dim = config.text_dim
        self.channel_names = list(config.channel_names or [])
        # the bank as a flat list, in the order of BANK_ATTRIBUTES and of each attribute's values (what the stored
        # embeddings of saved models follow); the channel templates once per channel name (its value)
        values = {attribute: [(index, config.phrase_bank[attribute][value], None)
                              for index, value in enumerate(ATTRIBUTE_VALUES[attribute])]
                  for attribute in BANK_ATTRIBUTES if attribute in config.phrase_bank and attribute != "channel"}
        if "channel" in config.phrase_bank and self.channel_names:
            values["channel"] = [(index, config.phrase_bank["channel"]["moves most"], name)
                                 for index, name in enumerate(self.channel_names)]
        self.phrases = [
            Phrase(BANK_ATTRIBUTES.index(attribute), value_index, text if name is None else text.format(name),
                   rank >= len(paraphrases) - config.num_heldout_paraphrases)
            for attribute in BANK_ATTRIBUTES if attribute in values
            for value_index, paraphrases, name in values[attribute]
            for rank, text in enumerate(paraphrases)
        ]
        self.class_names = list(config.class_names)
        self.class_descriptions = [list(texts) for texts in config.class_descriptions]
        self.class_templates = list(config.class_templates)
        self.register_buffer("phrase_embeddings", torch.zeros(len(self.phrases), config.text_dim))
        self.register_buffer("text_mean", torch.zeros(config.text_dim))
        self.register_buffer("class_embeddings", torch.zeros(len(config.class_names), config.text_dim))
        self.__dict__["_text_encoder"] = None  # not a submodule: never saved, never moved

    @property
    def is_built(self) -> bool:
        return bool(self.phrase_embeddings.abs().sum() > 0)

    def require_built(self):
        if not self.is_built:
            raise ValueError("The phrase bank is empty: build the model with VQShapeForTextAlignment.from_vqshape(...) "
                             "or call build_text_bank() first.")

    def centre(self, raw_embeddings: torch.Tensor) -> torch.Tensor:
        """Unit-norm encoder embeddings -> centred by the bank mean, unit-norm again."""
        return F.normalize(raw_embeddings.to(self.text_mean) - self.text_mean, dim=-1)

    def value_phrase(self, attribute: str, value: int) -> str:
        """The first paraphrase of an attribute's value: how captions write it."""
        return next(phrase.text for phrase in self.phrases
                    if phrase.attribute == BANK_ATTRIBUTES.index(attribute) and phrase.value == value)

    def phrase_indices(self, attribute: str, heldout: bool | None = None) -> list:
        index = BANK_ATTRIBUTES.index(attribute)
        return [i for i, phrase in enumerate(self.phrases)
                if phrase.attribute == index and (heldout is None or phrase.heldout == heldout)]

    # ---- the text encoder ------------------------------------------------------------------------------------------

    def set_text_encoder(self, text_encoder):
        """Use this `SentenceTransformer` (or a name / path to load) for new text; its size must match the bank's."""
        if isinstance(text_encoder, (str, os.PathLike)):
            text_encoder = load_text_encoder(text_encoder)
        size = encode_texts(text_encoder, ["a probe"]).shape[-1]
        if size != self.text_dim:
            raise ValueError(
                f"The text model embeds into {size} dimensions, but this model's phrase bank and projections use "
                f"text_dim={self.text_dim} (from {self.text_model_name_or_path!r}); use that text model "
                f"or rebuild the alignment with from_vqshape(..., text_dim={size})."
            )
        self.__dict__["_text_encoder"] = text_encoder

    @property
    def text_encoder(self):
        if self._text_encoder is None:
            self.set_text_encoder(load_text_encoder(self.text_model_name_or_path))
        return self._text_encoder

    @torch.no_grad()
    def build(self):
        """Embed the phrase bank (and the stored classes) with the text encoder; store them centred."""
        raw = encode_texts(self.text_encoder, [phrase.text for phrase in self.phrases]).to(self.text_mean)
        self.text_mean.copy_(raw.mean(dim=0))
        self.phrase_embeddings.copy_(self.centre(raw))
        if self.class_names:
            self.set_classes(self.stored_classes(), self.class_templates)

    @torch.no_grad()
    def embed_text(self, texts) -> torch.Tensor:
        """Texts -> `(len(texts), text_dim)` centred unit-norm embeddings; bank phrases come from the stored bank and
        only other text needs the text encoder."""
        self.require_built()
        texts = [texts] if isinstance(texts, str) else list(texts)
        stored = {phrase.text: index for index, phrase in enumerate(self.phrases)}
        embeddings = torch.empty(len(texts), self.text_dim).to(self.text_mean)
        new = [i for i, text in enumerate(texts) if text not in stored]
        for i, text in enumerate(texts):
            if text in stored:
                embeddings[i] = self.phrase_embeddings[stored[text]]
        if new:
            embeddings[new] = self.centre(encode_texts(self.text_encoder, [texts[i] for i in new]))
        return embeddings

    # ---- class prompts -----------------------------------------------------------------------------------------------

    def embed_classes(self, names: list, descriptions: dict | None, templates=None) -> torch.Tensor:
        """`(num_classes, text_dim)`: per class the mean of its descriptions when given, else of `templates` (the
        stored ones when None) with "{}" for the name; unit-norm."""
        if descriptions is not None:
            texts = [text for group in descriptions.values() for text in group]
            embeddings = self.embed_text(texts).split([len(group) for group in descriptions.values()])
            return F.normalize(torch.stack([group.mean(dim=0) for group in embeddings]), dim=-1)
        templates = list(templates or self.class_templates)
        prompts = self.embed_text([template.format(name) for name in names for template in templates])
        return F.normalize(prompts.reshape(len(names), len(templates), -1).mean(dim=1), dim=-1)

    @torch.no_grad()
    def set_classes(self, class_names, templates=None):
        """Embed and store the classes: a list of names (prompted with `templates`) or `{name: [descriptions]}`."""
        names, descriptions = check_classes(class_names)
        self.class_embeddings = self.embed_classes(names, descriptions, templates)
        self.class_names = names
        self.class_descriptions = list(descriptions.values()) if descriptions is not None else []
        self.class_templates = list(templates or self.class_templates)

    def stored_classes(self):
        """The stored classes as given to `set_classes`: `{name: [descriptions]}` or a list of names."""
        if self.class_descriptions:
            return dict(zip(self.class_names, self.class_descriptions))
        return list(self.class_names)

    def class_prompts(self, class_names=None, templates=None):
        """`(names, (num_classes, text_dim) embeddings)` of the given classes, or of the stored ones when None (their
        stored embeddings also serve when the same classes are given again)."""
        if class_names is None:
            if not self.class_names:
                raise ValueError("No class names: pass class_names, or store some with set_class_names(...).")
            return list(self.class_names), self.class_embeddings
        names, descriptions = check_classes(class_names)
        if (names if descriptions is None else descriptions) == self.stored_classes() and templates is None:
            return names, self.class_embeddings
        return names, self.embed_classes(names, descriptions, templates)


class TextBankMixin:
    """For `VQShapeForTextAlignment`: its text side, delegated to its `text_bank`."""

    def set_text_encoder(self, text_encoder):
        """Use this `SentenceTransformer` (or a name / path to load) for new text; its size must match the bank's."""
        self.text_bank.set_text_encoder(text_encoder)

    @property
    def text_encoder(self):
        return self.text_bank.text_encoder

    @property
    def phrases(self) -> list:
        """The phrase bank as `Phrase(attribute, value, text, heldout)`s, in the order of its stored embeddings."""
        return self.text_bank.phrases

    def build_text_bank(self):
        """Embed the phrase bank (and any stored class names) with the text encoder; store them centred."""
        self.text_bank.build()

    def embed_text(self, texts) -> torch.Tensor:
        """Texts -> `(len(texts), text_dim)` centred unit-norm embeddings; bank phrases come from the stored bank and
        only other text needs the text encoder."""
        return self.text_bank.embed_text(texts)

    @torch.no_grad()
    def embed_class_prompts(self, class_names, templates=None) -> torch.Tensor:
        """`(num_classes, text_dim)`: per class, the mean of its prompts: its descriptions when `class_names` maps
        each name to a list of them, else `templates` with "{}" for the name."""
        return self.text_bank.embed_classes(*check_classes(class_names), templates)

    def set_class_names(self, class_names, templates=None):
        """Embed and store class prompts with the model, so that `zero_shot_classify` and `explain` serve them after
        saving, without the text encoder. `class_names` is a list of names (prompted with `templates`) or
        `{name: [descriptions]}`."""
        self.text_bank.set_classes(class_names, templates)

    @property
    def class_names(self) -> list:
        """The stored classes' names (`set_class_names`), in column order."""
        return list(self.text_bank.class_names)
