"""edgeprune exporter: LLaVA checkpoints to ONNX graphs and TensorRT engines with in-graph
visual token pruning."""
