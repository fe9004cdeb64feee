"""The text-alignment loss, pure: symmetric multi-positive InfoNCE terms that align (a) codebook entries with their
shape phrases, (b) tokens with each attribute's phrases, channels with their intensity and rhythm phrases and series of
named channels with the channel that moves most, and (c) pooled series with class prompts when labels exist.
Positives come from the caption rules (`text_captions`)."""

import torch

from .configuration_vqshape_text import ATTRIBUTES, BANK_ATTRIBUTES


def multi_positive_info_nce(queries, keys, query_labels, key_labels, logit_scale) -> torch.Tensor:
    """Symmetric InfoNCE where every key with the query's label is a positive (CLIP, with several positives; duplicated
    texts share a label, so they are positives, not negatives). Rows or columns without a positive are left out.

    Args:
        queries: `(num_queries, dim)`, keys: `(num_keys, dim)`, both unit-norm.
        query_labels: `(num_queries,)`, key_labels: `(num_keys,)`.
    """
    logits = logit_scale * queries @ keys.t()
    positives = (query_labels[:, None] == key_labels[None, :]).to(logits.dtype)

    def one_direction(logits, positives):
        has_positive = positives.sum(dim=1) > 0
        per_row = -(logits.log_softmax(dim=1) * positives).sum(dim=1) / positives.sum(dim=1).clamp(min=1)
        return per_row[has_positive].mean() if has_positive.any() else logits.sum() * 0

    return 0.5 * (one_direction(logits, positives) + one_direction(logits.t(), positives.t()))


def text_alignment_loss(
    phrase_embeddings: torch.Tensor,
    phrases: list,
    logit_scale: torch.Tensor,
    weights: dict,
    code_embeddings: torch.Tensor,
    code_labels: torch.Tensor,
    token_embeddings: torch.Tensor,
    token_labels: torch.Tensor,
    channel_attributes: dict | None = None,
    series_embeddings: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    class_embeddings: torch.Tensor | None = None,
) -> dict:
    """The weighted loss and its terms.

    Args:
        phrase_embeddings: `(num_phrases, text_dim)` the bank; `phrases`: its `Phrase`s (attribute, value, held out),
            whose held-out paraphrases are left out.
        logit_scale: the (clamped) InfoNCE logit scale.
        weights: `{"code_text": ..., "token_text": ..., "class_text": ..., "<attribute>_text": ...}`.
        code_embeddings: `(num_codes, text_dim)`; code_labels: `(num_codes,)` shape values.
        token_embeddings: `(..., len(ATTRIBUTES), text_dim)`; token_labels: `(..., len(ATTRIBUTES))` rule values.
        channel_attributes: `{attribute: (embeddings (n, text_dim), values (n,))}` for channel-level attributes, over
            the channels where the attribute is known (n may be 0: no term).
        series_embeddings: `(batch_size, text_dim)`; labels: `(batch_size,)` class indices (negative: unlabelled);
            class_embeddings: `(num_labels, text_dim)` the class prompts.
    Returns:
        `{"loss", "code_text_loss", "token_text_loss", "<attribute>_text_loss" per channel attribute,
        "class_text_loss"}`, a term None when it has no data.
    """
    device = phrase_embeddings.device
    attribute_of = torch.tensor([phrase.attribute for phrase in phrases], device=device)
    value_of = torch.tensor([phrase.value for phrase in phrases], device=device)
    trainable = ~torch.tensor([phrase.heldout for phrase in phrases], device=device)

    def term(attribute: str, queries, query_values):
        keys = trainable & (attribute_of == BANK_ATTRIBUTES.index(attribute))
        return multi_positive_info_nce(queries, phrase_embeddings[keys], query_values, value_of[keys], logit_scale)

    terms = {"code_text_loss": term("shape", code_embeddings, code_labels)}  # (a)
    flat_embeddings = token_embeddings.reshape(-1, len(ATTRIBUTES), token_embeddings.shape[-1])  # (b)
    flat_labels = token_labels.reshape(-1, len(ATTRIBUTES))
    terms["token_text_loss"] = torch.stack([term(attribute, flat_embeddings[:, index], flat_labels[:, index])
                                            for index, attribute in enumerate(ATTRIBUTES)]).mean()
    loss = weights["code_text"] * terms["code_text_loss"] + weights["token_text"] * terms["token_text_loss"]
    for attribute, (embeddings, values) in (channel_attributes or {}).items():
        terms[f"{attribute}_text_loss"] = term(attribute, embeddings, values) if len(values) else None
        if terms[f"{attribute}_text_loss"] is not None:
            loss = loss + weights[f"{attribute}_text"] * terms[f"{attribute}_text_loss"]
        else:  # no known value in the batch: the head still reaches the loss (with zero gradient), as DDP expects
            loss = loss + embeddings.sum() * 0
    terms["class_text_loss"] = None  # (c): every series of a class is a positive of its prompt
    if labels is not None:
        labels = labels.to(device).long()
        labelled = labels >= 0
        if labelled.any():
            present = torch.unique(labels[labelled])
            terms["class_text_loss"] = multi_positive_info_nce(
                series_embeddings[labelled], class_embeddings.to(series_embeddings)[present], labels[labelled],
                present, logit_scale)
            loss = loss + weights["class_text"] * terms["class_text_loss"]
    return {"loss": loss, **terms}
