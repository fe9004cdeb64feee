"""What a saved VQShape folder holds beyond transformers' own files, and writing files all at once.

`save_pretrained` writes a folder that loads with every Auto class and `transformers.pipeline`, with or without the
package: the complete `auto_map` (a head lists only itself), the `custom_pipelines` and `preprocessor_config.json`.
`save_pretrained(..., push_to_hub=True, repo_id=...)` uploads that completed folder through transformers' own upload,
so a collaborator who loaded the model with `trust_remote_code=True` publishes it with the Hub repo's files alone.
The codebook atlas and the model card are extras of `modeling_vqshape.sharing.hub.publish`.

Saved folders carry this file: relative imports only.
"""

import contextlib
import json
import os
import shutil
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path, commit: bool = True):
    """Write the file or folder `path` all at once: yields a temporary path beside it (the same file system), to
    write into; when the block ends without error, the temporary replaces `path` (an existing folder is removed
    first), else it is removed. Readers see the old content or the new one, never a partial write.

    The processes of a distributed run may write into the same temporary folder: all but one pass `commit=False`,
    and only the committing one renames (or cleans up).
    """
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        yield temporary
        if commit:
            if temporary.is_dir() and path.is_dir():
                shutil.rmtree(path)
            os.replace(temporary, path)
    finally:
        if commit and temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        elif commit and temporary.exists():
            temporary.unlink()


def write_json(path, content: dict):
    """`content` as indented JSON with sorted keys, written all at once."""
    with atomic_write(path) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=2, sort_keys=True)
        handle.write("\n")


def complete_saved_folder(save_directory, auto_map: dict, input_length: int):
    """After `save_pretrained`: write the complete `auto_map` and the pipelines (`custom_pipelines`, whose code
    `pipeline_vqshape.py` save_pretrained copies with the modeling files through the import below) into config.json,
    and add the feature extractor when the folder has none, so that the folder loads with every Auto class and
    `transformers.pipeline`, with or without the package. Writing it again changes nothing."""
    from .pipeline_vqshape import custom_pipelines

    config_path = os.path.join(save_directory, "config.json")
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    write_json(config_path, {**config, "auto_map": dict(auto_map), "custom_pipelines": custom_pipelines()})
    if not os.path.exists(os.path.join(save_directory, "preprocessor_config.json")):
        from .processing_vqshape import VQShapeFeatureExtractor

        # registered here too, so that a folder saved by remote code (the package's import registers it) gets the
        # feature extractor's `auto_map` and `processing_vqshape.py`
        VQShapeFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
        VQShapeFeatureExtractor(input_length=input_length).save_pretrained(save_directory)


class CompletedFolderMixin:
    """For a `PreTrainedModel`: `save_pretrained` completes the folder (`complete_saved_folder`) with the class's
    `saved_auto_map`, before transformers' own upload when `push_to_hub=True` (every `save_pretrained` argument,
    `repo_id`, `commit_message`, `private`, `token`, ... works as transformers documents it)."""

    saved_auto_map: dict = {}

    def saved_input_length(self) -> int:
        return self.config.input_length

    def complete_folder(self, save_directory):
        complete_saved_folder(save_directory, self.saved_auto_map, self.saved_input_length())

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True) and not kwargs.get("push_to_hub"):
            self.complete_folder(save_directory)

    def _upload_modified_files(self, working_dir, *args, **kwargs):
        # transformers' save_pretrained(push_to_hub=True) and push_to_hub upload through here, after saving
        self.complete_folder(working_dir)
        return super()._upload_modified_files(working_dir, *args, **kwargs)


__all__ = ["CompletedFolderMixin", "atomic_write", "complete_saved_folder", "write_json"]
