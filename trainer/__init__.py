"""Experiment tracking for PyTorch: YAML specs in, TensorBoard logs out."""

from trainer.core.errors import StopRun

__all__ = ["StopRun", "load_model"]
__version__ = "0.1.0"


def load_model(run_folder, map_location="cpu", which="final"):
    """The trained model of a finished run (its config, and its final weights or, with
    which="best", those of its best evaluation), in eval mode."""
    from trainer.runs.checkpoint import load_model as load

    return load(run_folder, map_location, which)
