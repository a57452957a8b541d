"""Exit codes and the one exception type of the group level.

The codes follow the BIDS execution-spec draft (sysexits.h values):

====  ====================================================================
code  meaning
====  ====================================================================
0     success
1     unexpected failure (a bug: the message is logged, the traceback only
      at DEBUG level)
64    usage error (contradictory options, e.g. both a group column and a
      continuous predictor)
65    bad input data (participants.tsv lacks a named column, duplicated
      participant_id, a group column with fewer than two usable levels,
      an unknown reference group, a non-numeric predictor, ...)
66    required input missing (no measures table at all in OUTPUT_DIR,
      participants.tsv absent although a column of it was named)
73    cannot create an output file (OUTPUT_DIR/group not writable)
74    I/O error while reading or writing (disk full, file vanished, ...)
====  ====================================================================
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 64
EXIT_DATAERR = 65
EXIT_NOINPUT = 66
EXIT_CANTCREAT = 73
EXIT_IOERR = 74


class GroupError(Exception):
    """An error the user can fix, with a one-line message and an exit code."""

    def __init__(self, message: str, code: int = EXIT_DATAERR):
        super().__init__(message)
        self.code = code
