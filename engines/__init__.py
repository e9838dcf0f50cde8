"""Inference back ends behind one interface: TensorRT, ONNX Runtime, PyTorch; ONNX export."""
