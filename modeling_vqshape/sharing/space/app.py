"""The VQShape demo as a Hugging Face Space: the model is $VQSHAPE_MODEL, else the id in model_id.txt (written by
`modeling_vqshape.sharing.hub.publish_demo`). Run it locally with `python app.py` next to an installed or copied
package."""

import os
from pathlib import Path

from modeling_vqshape.sharing.demo import MODEL_ENV, build_demo

model_file = Path(__file__).with_name("model_id.txt")
model_id = os.environ.get(MODEL_ENV) or (model_file.read_text().strip() if model_file.exists() else "")
if not model_id:
    raise SystemExit(f"Set {MODEL_ENV} to a VQShape model (folder or Hub id), or write it into {model_file}.")
build_demo(model_id).launch()
