"""ONNX graph passes: cleanup (folding, dead code, fusions) and parity checks."""
