"""The project's version and where its package lives, for records and `--version`; the package's
top (trainer/__init__.py, the Python API) is above every layer, so the layers read them here."""

from pathlib import Path

__version__ = "0.1.0"
PACKAGE = Path(__file__).resolve().parents[1]  # the trainer/ folder
