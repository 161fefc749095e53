"""PyTorch world: X-VLA model definitions, checkpoint I/O, ONNX/TensorRT export."""
