"""The old path of `modeling_vqshape.tasks.metrics`: still works, with a FutureWarning (see `_moved.py`)."""

from ._moved import moved

moved(__name__, __spec__)
