"""The group level of nmbids: collect participant tables, model them, test maps, report.

Entry point: :func:`run_group` (returns an exit code of :mod:`nmbids.contract.exits`).
"""
from ..contract.exits import EXIT_CANTCREAT, EXIT_DATA, EXIT_FAILURE, EXIT_IOERR, EXIT_NO_INPUT, EXIT_OK, EXIT_USAGE
from .run import run_group

__all__ = ["run_group", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_DATA", "EXIT_NO_INPUT", "EXIT_CANTCREAT",
           "EXIT_IOERR"]
