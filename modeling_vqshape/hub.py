"""Model cards and publishing to the Hugging Face Hub: the one helper every script and the converter use."""

import json
import os
import re
from pathlib import Path

CITATION = """@inproceedings{wen2024vqshape,
  title     = {Abstracted Shapes as Tokens - A Generalizable and Interpretable Model for Time-series Classification},
  author    = {Wen, Yunshi and Ma, Tengfei and Weng, Tsui-Wei and Nguyen, Lam M. and Julius, Anak Agung},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2024}
}"""

_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def check_repo_id(repo_id: str) -> str:
    """Raise a clear ValueError for a repo id the Hub would refuse, before anything is uploaded."""
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise ValueError(
            f"invalid Hub repo id {repo_id!r}: use 'namespace/name' with letters, digits, '-', '_' or '.', "
            "e.g. 'lab/vqshape-geneactiv'."
        )
    return repo_id


def write_model_card(folder, config, description: str, training: dict | None = None, extra: dict | None = None):
    """Write README.md (a model card with metadata) into `folder`, atomically."""
    from huggingface_hub import ModelCard, ModelCardData

    card_data = ModelCardData(library_name="transformers", tags=["time-series", "time-series-classification", "vqshape"])
    rows = "\n".join(
        f"| `{key}` | {value} |"
        for key, value in sorted(config.to_diff_dict().items())
        if key not in ("auto_map", "architectures", "transformers_version", "id2label", "label2id")
    )
    sections = [
        f"---\n{card_data.to_yaml()}\n---",
        "# VQShape",
        "VQShape turns a time series into interpretable shape tokens from a learned codebook "
        '(Wen et al., "Abstracted Shapes as Tokens", NeurIPS 2024).',
        description,
        "## Usage\n\n```python\nfrom transformers import AutoModel, AutoFeatureExtractor\n\n"
        'model = AutoModel.from_pretrained("<this repo or folder>", trust_remote_code=True)\n'
        'feature_extractor = AutoFeatureExtractor.from_pretrained("<this repo or folder>", trust_remote_code=True)\n'
        "inputs = feature_extractor(series)  # (batch, time) or (batch, channels, time), any length\n"
        "outputs = model(**inputs)  # token_features, histogram, code_indices\n```\n\n"
        "With the `vqshape` package installed, `import modeling_vqshape` first and `trust_remote_code` is not needed.",
    ]
    if training:
        sections.append("## Training\n\n```json\n" + json.dumps(training, indent=2, default=str) + "\n```")
    if extra:
        sections.append("## Checks\n\n```json\n" + json.dumps(extra, indent=2, default=str) + "\n```")
    sections.append("## Configuration\n\n| key | value |\n|---|---|\n" + rows)
    sections.append("## Citation\n\n```bibtex\n" + CITATION + "\n```")
    card = ModelCard("\n\n".join(sections) + "\n")
    path = Path(folder) / "README.md"
    temporary = path.with_suffix(".md.tmp")
    card.save(temporary)
    os.replace(temporary, path)
    return path


def push_folder_to_hub(folder, repo_id: str, private: bool = False, commit_message: str = "Upload VQShape model",
                       token: str | None = None) -> str:
    """Create `repo_id` if needed and upload `folder` to it; returns the commit's URL."""
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message)
    return commit.commit_url if hasattr(commit, "commit_url") else str(commit)
