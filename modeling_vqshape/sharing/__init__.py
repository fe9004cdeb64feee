"""Showing and sharing a model: loading any saved one (`loading`), pictures (`visualization`), the Gradio demo and its
Space (`demo`, `space/`), publishing to the Hub (`hub`) and ONNX export (`export_onnx`). These modules never travel with
a saved model."""
