"""Experiment tracking for PyTorch: YAML specs in, TensorBoard logs out.

From Python: trainer.sweep() runs a sweep; trainer.runs(), trainer.curves(), trainer.report() and
trainer.compare() read log folders as pandas DataFrames (trainer.api); trainer.load_model()
rebuilds a run's model. Each raises trainer.UserError, a sentence, for anything to fix.
"""

from trainer.api import compare, curves, report, runs, sweep
from trainer.core.errors import StopRun, UserError
from trainer.core.version import __version__ as __version__

__all__ = ["StopRun", "UserError", "compare", "curves", "load_model", "report", "runs", "sweep"]


def load_model(run_folder, map_location="cpu", which="final", *, trust_code=False, code_dir=None, model=None):
    """The trained model of a finished run (its config, and its final weights or, with
    which="best", those of its best evaluation), in eval mode. A model of user code is imported
    only with trust_code=True, from code_dir (default: the current folder); or pass `model`, a
    module of the run's architecture, to load the weights into."""
    from trainer.run.checkpoint import load_model as load

    return load(run_folder, map_location, which, trust_code=trust_code, code_dir=code_dir, model=model)
