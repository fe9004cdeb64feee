"""Model cards and publishing to the Hugging Face Hub: `publish`, the route every script and the converter take.
`save_pretrained(push_to_hub=True)` is transformers' own upload of the completed folder (it works where only the
Hub repo's files are, with `trust_remote_code`); `publish` adds the extras: the codebook atlas and the model card.

`publish(model, "lab/vqshape-geneactiv")` saves the model (weights, config with the complete `auto_map`, modeling
files for `trust_remote_code`, `preprocessor_config.json`), draws the codebook atlas, writes the model card and
uploads the folder in one commit. `publish("vqshape-small", "lab/vqshape-small")` uploads a folder that is already
saved, completed with the atlas and a card when it lacks them. Everything written is deterministic (no dates), so
pushing an unchanged model uploads nothing: the Hub reports each file's git oid in its pre-upload answer and
`huggingface_hub` drops the files that match.
"""

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ..saving_vqshape import atomic_write

CITATION = """@inproceedings{wen2024vqshape,
  title     = {Abstracted Shapes as Tokens - A Generalizable and Interpretable Model for Time-series Classification},
  author    = {Wen, Yunshi and Ma, Tengfei and Weng, Tsui-Wei and Nguyen, Lam M. and Julius, Anak Agung},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2024}
}"""

TAGS = ["time-series", "time-series-classification", "vqshape"]
ATLAS_FILE = "atlas.png"
DEFAULT_COMMIT_MESSAGE = "Upload VQShape model"

_CONFIG_KEYS_LEFT_OUT = ("auto_map", "architectures", "transformers_version", "id2label", "label2id")


def check_repo_id(repo_id: str) -> str:
    """Raise a clear ValueError for a repo id the Hub would refuse (`huggingface_hub`'s own check), before anything is
    uploaded."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(
            f"invalid Hub repo id {repo_id!r}: use 'namespace/name' with letters, digits, '-', '_' or '.', "
            f"e.g. 'lab/vqshape-geneactiv' ({error})."
        ) from None
    return repo_id


# ---------------------------------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------------------------------


def eval_results(results, model_name: str = "vqshape"):
    """Turn classification-protocol results into `huggingface_hub.EvalResult`s for the card's `model-index`.

    `results` is `{dataset: accuracy}`, `{dataset: {metric: value}}` or a list of
    `{"dataset": ..., "metric": "accuracy", "value": ..., "split": "test"}` dicts.
    """
    from huggingface_hub import EvalResult

    if not results:
        return None
    if isinstance(results, Mapping):
        rows = []
        for dataset, value in results.items():
            metrics = value if isinstance(value, Mapping) else {"accuracy": value}
            rows.extend({"dataset": dataset, "metric": metric, "value": number} for metric, number in metrics.items())
    else:
        rows = list(results)
    evaluations = []
    for row in rows:
        value = row["value"]
        evaluations.append(
            EvalResult(
                task_type="time-series-classification",
                task_name="Time-series classification (linear probe on VQShape features)",
                dataset_type=row.get("dataset_type", row["dataset"]),
                dataset_name=row["dataset"],
                dataset_split=row.get("split", "test"),
                metric_type=row["metric"],
                metric_name=row.get("metric_name", row["metric"]),
                metric_value=float(value) if isinstance(value, (int, float)) else value,
            )
        )
    return evaluations


def _usage_section(repo_id: str | None) -> str:
    source = repo_id or "<this repo or folder>"
    return (
        "## How to load\n\n"
        "With the `vqshape` package installed, importing it registers the model with the Auto classes:\n\n"
        "```python\nimport modeling_vqshape  # noqa: F401\n"
        "from transformers import AutoFeatureExtractor, AutoModel\n\n"
        f'model = AutoModel.from_pretrained("{source}")\n'
        f'feature_extractor = AutoFeatureExtractor.from_pretrained("{source}")\n'
        "inputs = feature_extractor(series)  # (batch, time) or (batch, channels, time), any length\n"
        "outputs = model(**inputs)  # token_features, histogram, code_indices\n```\n\n"
        "Without the package, the modeling files stored in this repo are used:\n\n"
        "```python\nfrom transformers import AutoFeatureExtractor, AutoModel\n\n"
        f'model = AutoModel.from_pretrained("{source}", trust_remote_code=True, revision="<commit sha>")\n'
        f'feature_extractor = AutoFeatureExtractor.from_pretrained("{source}", trust_remote_code=True, '
        'revision="<commit sha>")\n```\n\n'
        "`trust_remote_code=True` runs the Python files of this repo on your machine: read them first, and pin "
        "`revision` to the commit you read (the full sha from the repo's history), so that neither the weights nor "
        "the code can change under you. `revision` also works with the package installed, to reproduce a result "
        "with the exact weights it came from."
    )


def _atlas_section() -> str:
    return (
        "## Codebook atlas\n\n"
        f"![codebook atlas]({ATLAS_FILE})\n\n"
        "Every code of the codebook decoded to its (standardised) shape; the number is how many tokens used the "
        "code when counts were given. Draw it again with "
        "`python -m modeling_vqshape.sharing.visualization atlas --model <repo or folder> --output atlas.png`."
    )


def write_model_card(folder, config, description: str, training: dict | None = None, extra: dict | None = None, *,
                     results=None, dataset_names=None, base_model=None, license: str = "mit",
                     repo_id: str | None = None,
                     results_description: str = "Linear probe on the frozen VQShape features (the classification "
                                                "protocol of `examples/classify.py`).",
                     summary: str | None = None, usage: str | None = None, citation: str = CITATION,
                     tags=TAGS):
    """Write README.md (a model card with metadata) into `folder`, atomically, and return its path.

    Args:
        config: the model's `VQShapeConfig`; its non-default values fill a table.
        description: a paragraph on where the model comes from.
        training, extra: dicts shown as JSON (training settings; checks such as the conversion report).
        results: classification-protocol results for the `model-index` (see `eval_results`).
        results_description: the sentence above the results table, saying how they were obtained.
        dataset_names, base_model, license: card metadata.
        repo_id: the repo the card is for, used in the loading snippets.
        summary, usage, citation, tags: the card's opening sentence, its "How to load" section, its BibTeX and its
            tags, for a model of the package that is not VQShape (the persistence-image teacher); by default VQShape's.
    The card refers to the codebook atlas when `folder` holds `atlas.png`. Nothing in it depends on the time, so an
    unchanged model gives an unchanged card.
    """
    from huggingface_hub import ModelCard, ModelCardData

    model_name = (repo_id or "vqshape").split("/")[-1]
    card_data = ModelCardData(
        library_name="transformers",
        tags=list(tags),
        license=license,
        datasets=list(dataset_names) if dataset_names else None,
        base_model=base_model,
        model_name=model_name if results else None,
        eval_results=eval_results(results, model_name),
        pipeline_tag=None,
    )
    rows = "\n".join(
        f"| `{key}` | {json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else value} |"
        for key, value in sorted(config.to_diff_dict().items())
        if key not in _CONFIG_KEYS_LEFT_OUT
    )
    sections = [
        f"---\n{card_data.to_yaml()}\n---",
        f"# {model_name}",
        summary or "VQShape turns a time series into interpretable shape tokens from a learned codebook "
        '(Wen et al., "Abstracted Shapes as Tokens", NeurIPS 2024).',
        description,
        usage or _usage_section(repo_id),
    ]
    if results:
        lines = ["| dataset | split | metric | value |", "|---|---|---|---|"]
        lines += [f"| {r.dataset_name} | {r.dataset_split} | {r.metric_type} | {r.metric_value} |"
                  for r in card_data.eval_results]
        sections.append(f"## Results\n\n{results_description}\n\n" + "\n".join(lines))
    if (Path(folder) / ATLAS_FILE).exists():
        sections.append(_atlas_section())
    if training:
        settings = json.dumps(training, indent=2, sort_keys=True, default=str)
        sections.append("## Training\n\n```json\n" + settings + "\n```")
    if extra:
        sections.append("## Checks\n\n```json\n" + json.dumps(extra, indent=2, sort_keys=True, default=str) + "\n```")
    sections.append("## Configuration\n\n| key | value |\n|---|---|\n" + rows)
    sections.append("## Citation\n\n```bibtex\n" + citation + "\n```")
    card = ModelCard("\n\n".join(sections) + "\n")
    path = Path(folder) / "README.md"
    with atomic_write(path) as temporary:
        card.save(temporary)
    return path


def _add_atlas_to_card(folder):
    """Insert the atlas section into an existing card that lacks it (a folder saved before the atlas was drawn)."""
    path = Path(folder) / "README.md"
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    if f"]({ATLAS_FILE})" in text:
        return
    marker = "\n## Configuration"
    section = _atlas_section() + "\n\n"
    text = text.replace(marker, "\n" + section + marker.lstrip("\n"), 1) if marker in text else text + "\n" + section
    path.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------------
# Saving and uploading
# ---------------------------------------------------------------------------------------------------------------------


def write_atlas(model, folder, atlas_dataset=None, feature_extractor=None) -> Path:
    """Draw the codebook atlas (usage counts from `atlas_dataset` when given) into `folder/atlas.png`."""
    from .visualization import plot_codebook_atlas

    path = Path(folder) / ATLAS_FILE
    was_training = model.training
    model.eval()
    try:
        plot_codebook_atlas(model, dataset=atlas_dataset, feature_extractor=feature_extractor, output=path)
    finally:
        model.train(was_training)
    return path


def _upload(folder, repo_id: str, private: bool = False, commit_message: str = DEFAULT_COMMIT_MESSAGE,
            token: str | None = None, revision: str | None = None, endpoint: str | None = None,
            repo_type: str | None = None, space_sdk: str | None = None):
    """Create `repo_id` if needed (private when asked) and upload `folder` in one commit; returns the `CommitInfo`.
    Files identical to the ones on the Hub are not uploaded; when none changed, no commit is made and the info of the
    current head is returned. `repo_type="space"` (with `space_sdk`) makes it a Space, as metrics and demos are."""
    from huggingface_hub import HfApi

    api = HfApi(token=token, endpoint=endpoint)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type, space_sdk=space_sdk).repo_id
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type=repo_type)
    return api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message,
                             revision=revision, repo_type=repo_type)


def write_space_card(folder, title: str, tags: list, body: str, models=()) -> Path:
    """The README.md of a gradio Space with `app.py` (`huggingface_hub.SpaceCard`): its metadata (title, SDK, app
    file, the `models` it shows, tags), then `# title` and `body`."""
    from huggingface_hub import SpaceCard, SpaceCardData

    data = SpaceCardData(title=title, sdk="gradio", app_file="app.py", pinned=False, models=list(models) or None,
                         tags=list(tags))
    path = Path(folder) / "README.md"
    SpaceCard(f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n" + body).save(path)
    return path


METRIC_APP = """import evaluate
from evaluate.utils import launch_gradio_widget

launch_gradio_widget(evaluate.load("{repo_id}"))
"""


def push_metric_to_hub(repo_id: str, private: bool = False, token: str | None = None, endpoint: str | None = None,
                       commit_message: str = "Add the VQShape classification metric") -> str:
    """Publish the package's classification metric (`modeling_vqshape.tasks.metrics.CLASSIFICATION_METRIC`) as an
    `evaluate` metric Space, so that `evaluate.load(repo_id)` finds it: the script under the repo's name, a metric
    card, the widget app and its requirements. Returns the commit's URL."""
    from ..tasks.metrics import CLASSIFICATION_METRIC

    check_repo_id(repo_id)
    name = repo_id.split("/")[-1]  # evaluate.load(repo_id) reads the script named after the repo
    with tempfile.TemporaryDirectory(prefix="vqshape-metric-") as folder:
        folder = Path(folder)
        shutil.copyfile(CLASSIFICATION_METRIC, folder / f"{name}.py")
        (folder / "app.py").write_text(METRIC_APP.format(repo_id=repo_id), encoding="utf-8")
        (folder / "requirements.txt").write_text("evaluate>=0.4\ndatasets>=2.18\nscikit-learn>=1.3\n", encoding="utf-8")
        write_space_card(
            folder, name, ["evaluate", "metric", "time-series-classification"],
            "VQShape's classification metrics: accuracy, balanced accuracy, macro-F1 (never-predicted classes count as "
            "0) and a per-class report of precision, recall, F1 and support, with scikit-learn's definitions. Labels "
            "may be class names or integers.\n\n"
            "```python\nimport evaluate\n\n"
            f'metric = evaluate.load("{repo_id}")\n'
            'metric.compute(predictions=["walking", "running"], references=["walking", "walking"])\n```\n')
        commit = _upload(folder, repo_id, private, commit_message, token, endpoint=endpoint, repo_type="space",
                         space_sdk="gradio")
    return commit.commit_url if hasattr(commit, "commit_url") else str(commit)


SPACE_TEMPLATE = Path(__file__).resolve().parent / "space"  # app.py and requirements.txt of the demo Space


def write_demo_space(folder, model_id: str) -> Path:
    """Fill `folder` with the demo Space for `model_id`: `app.py` and `requirements.txt`
    (`modeling_vqshape/sharing/space/`), `model_id.txt`, a Space card, and a copy of this package's code (the Space
    imports it from there)."""
    folder = Path(folder)
    for name in ("app.py", "requirements.txt"):
        shutil.copyfile(SPACE_TEMPLATE / name, folder / name)
    (folder / "model_id.txt").write_text(model_id + "\n", encoding="utf-8")
    package = Path(__file__).resolve().parents[1]  # modeling_vqshape/, less the space template
    shutil.copytree(package, folder / package.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "space"))
    write_space_card(
        folder, model_id.split("/")[-1], ["time-series", "vqshape"],
        f"Shape tokens of your recordings with [{model_id}](https://huggingface.co/{model_id}): upload a GENEActiv "
        "`.bin` or `.csv`, a `.npy` array or a `.csv` with one column per channel, and see the tokens drawn on it, the "
        "codebook atlas with its usage, the predicted class, and download the token table.\n", models=[model_id])
    return folder


def publish_demo(space_id: str, model_id: str, private: bool = False, token: str | None = None,
                 endpoint: str | None = None, commit_message: str = "Upload the VQShape demo"):
    """Push the Gradio demo of `model_id` as the Space `space_id` (see `write_demo_space`); returns the CommitInfo."""
    check_repo_id(space_id)
    check_repo_id(model_id)
    with tempfile.TemporaryDirectory(prefix="vqshape-space-") as folder:
        write_demo_space(folder, model_id)
        return _upload(folder, space_id, private, commit_message, token, endpoint=endpoint, repo_type="space",
                       space_sdk="gradio")


def save_model_folder(model, folder, feature_extractor=None, atlas_dataset=None, **card) -> Path:
    """Write everything a Hub repo holds into `folder`: `save_pretrained` output (complete `auto_map`, modeling files),
    the feature extractor, the codebook atlas and the model card (`card`: `write_model_card`'s arguments)."""
    from ..processing_vqshape import VQShapeFeatureExtractor

    model.save_pretrained(folder)
    feature_extractor = feature_extractor or VQShapeFeatureExtractor(input_length=model.config.input_length)
    feature_extractor.save_pretrained(folder)
    write_atlas(model, folder, atlas_dataset, feature_extractor)
    write_model_card(folder, model.config, card.pop("description") or "A VQShape model.", **card)
    return Path(folder)


def _completed_folder(folder: Path, staging, repo_id: str, atlas_dataset=None) -> Path:
    """`folder` itself when it is complete, or not a VQShape model's (a text-aligned model's is uploaded as saved);
    else a copy in `staging` with the codebook atlas, and a model card when it has none (the atlas section is added to
    a card it has). `folder` itself is not changed."""
    config = folder / "config.json"
    is_vqshape = config.exists() and json.loads(config.read_text(encoding="utf-8")).get("model_type") == "vqshape"
    card = folder / "README.md"
    if not is_vqshape or ((folder / ATLAS_FILE).exists() and card.exists()):
        return folder
    from .loading import load_vqshape

    staged = Path(staging) / folder.name
    shutil.copytree(folder, staged)
    model = load_vqshape(folder)
    if not (staged / ATLAS_FILE).exists():
        write_atlas(model, staged, atlas_dataset)
    if card.exists():
        _add_atlas_to_card(staged)
    else:
        write_model_card(staged, model.config, "A VQShape model.", repo_id=repo_id)
    return staged


def publish(model_or_folder, repo_id: str, feature_extractor=None, private: bool = False,
            commit_message: str = DEFAULT_COMMIT_MESSAGE, description: str | None = None, training=None, extra=None,
            results=None, dataset_names=None, base_model=None, license: str = "mit", atlas_dataset=None,
            token: str | None = None, revision: str | None = None, endpoint: str | None = None,
            demo_space: str | None = None):
    """Publish a model, or a folder it was saved into, to the Hub in one commit; returns the
    `huggingface_hub.CommitInfo` (a string, the commit's URL; `.oid` is the commit sha to pin with
    `from_pretrained(..., revision=...)`).

    The repo ids are checked before anything is written or sent. A model is saved into a temporary folder with its
    feature extractor, the codebook atlas (usage counts from `atlas_dataset`, raw series, when given) and a model card
    (`description`, `training`, `extra`, `results` for its `model-index`, `dataset_names`, `base_model`, `license`; see
    `write_model_card`). A folder (a path) is uploaded as it was saved, with the atlas and a card added to a temporary
    copy when it lacks them; the card arguments and `feature_extractor` are for a model only. The upload goes to
    `revision` (default: main). With `demo_space` (a Space id), the Gradio demo of the model is pushed there too
    (`publish_demo`).
    """
    check_repo_id(repo_id)
    if demo_space is not None:
        check_repo_id(demo_space)
    card = dict(description=description, training=training, extra=extra, results=results,
                dataset_names=dataset_names, base_model=base_model)
    is_folder = isinstance(model_or_folder, (str, os.PathLike))
    if is_folder and (feature_extractor is not None or any(value is not None for value in card.values())):
        raise ValueError("publish(folder, ...) uploads the folder's own feature extractor and card; pass the model "
                         "to publish it with a new card, or write the card into the folder first (write_model_card).")
    with tempfile.TemporaryDirectory(prefix="vqshape-publish-") as staging:
        if is_folder:
            folder = _completed_folder(Path(model_or_folder), staging, repo_id, atlas_dataset)
        else:
            folder = save_model_folder(model_or_folder, staging, feature_extractor, atlas_dataset, license=license,
                                 repo_id=repo_id, **card)
        commit = _upload(folder, repo_id, private, commit_message, token, revision, endpoint)
    if demo_space is not None:
        publish_demo(demo_space, repo_id, private, token, endpoint)
    return commit


__all__ = [
    "CITATION",
    "check_repo_id",
    "eval_results",
    "publish",
    "publish_demo",
    "save_model_folder",
    "push_metric_to_hub",
    "write_atlas",
    "write_model_card",
]
