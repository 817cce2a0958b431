"""The local classifier tier's model code: back-ends, calibration, training and ONNX export."""
