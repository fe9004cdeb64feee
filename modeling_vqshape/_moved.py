"""Old module paths that still work for a deprecation period: `modeling_vqshape.training` is
`modeling_vqshape.tasks.training`, with a FutureWarning. Each old module is two lines that call `moved`."""

import importlib
import runpy
import sys
import warnings

# old module -> where it lives now
MOVED = {
    "data": "corpora.data",
    "geneactiv": "corpora.geneactiv",
    "recordings": "corpora.recordings",
    "training": "tasks.training",
    "finetuning": "tasks.finetuning",
    "classification": "tasks.classification",
    "metrics": "tasks.metrics",
    "distillation": "tasks.distillation",
    "teachers": "tasks.teachers",
    "precision": "tasks.precision",
    "hub": "sharing.hub",
    "demo": "sharing.demo",
    "visualization": "sharing.visualization",
    "export_onnx": "sharing.export_onnx",
}


def moved(name: str, spec) -> None:
    """Called by the old module `name` (its `__name__`, with its `__spec__`): warn, then stand for the new module, the
    same object under both names (every name, private ones too, and what a test patches on either). Run with
    `python -m` (`name` is "__main__"), the new module runs as the program."""
    old = spec.name if name == "__main__" else name
    new = f"modeling_vqshape.{MOVED[old.rsplit('.', 1)[-1]]}"
    warnings.warn(f"`{old}` moved to `{new}`: import it from there; the old path will be removed in a later "
                  "version.", FutureWarning, stacklevel=3)
    if name == "__main__":
        runpy.run_module(new, run_name="__main__", alter_sys=True)
    else:
        sys.modules[name] = importlib.import_module(new)
