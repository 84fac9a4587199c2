"""The device runtime: inference with an exported model on numpy and ONNX Runtime only, no torch
(``infer`` is one self-contained file a device can carry on its own)."""
