"""Experiment tracking for small PyTorch models: YAML specs in, TensorBoard logs out."""

__version__ = "0.1.0"
