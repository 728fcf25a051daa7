"""Sharing a trained model: the portable folder, its model card and ONNX."""
