"""The group level of nmbids: collect participant tables, model them, test maps, report.

Entry point: :func:`run_group` (returns an exit code, see :mod:`nmbids.group.errors`).
"""
from .errors import (EXIT_CANTCREAT, EXIT_DATAERR, EXIT_FAILURE, EXIT_IOERR, EXIT_NOINPUT, EXIT_OK, EXIT_USAGE,
                     GroupError)
from .run import run_group

__all__ = ["run_group", "GroupError", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_DATAERR", "EXIT_NOINPUT",
           "EXIT_CANTCREAT", "EXIT_IOERR"]
