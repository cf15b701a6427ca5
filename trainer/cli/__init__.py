"""The command line: sweep, run, check, status, index, merge, report."""

from trainer.cli.commands import EXIT_CLOSED_PIPE, main
from trainer.service import EXIT_FAILED_RUNS, EXIT_INTERRUPTED

__all__ = ["EXIT_CLOSED_PIPE", "EXIT_FAILED_RUNS", "EXIT_INTERRUPTED", "main"]
