"""The old path of `modeling_vqshape.sharing.hub`: still works, with a FutureWarning (see `_moved.py`)."""

from ._moved import moved

moved(__name__, __spec__)
