"""The old path of `modeling_vqshape.sharing.export_onnx`: still works, with a FutureWarning (see `_moved.py`)."""

from ._moved import moved

moved(__name__, __spec__)
