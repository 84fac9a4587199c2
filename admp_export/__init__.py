"""What turns a trained model into what a device runs (PyTorch side): the export formats (TorchScript,
ONNX and their check), the model bundle and contract, the device-side BN step and int8 quantization."""
