"""Exit codes (BIDS execution-spec draft, sysexits.h values) and the one error type users see.

The one definition of every exit code of both analysis levels: the participant level, the
group level, ``--help``'s epilog (``EXIT_MEANINGS``) and docs/usage.md read them from here.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # some participant or step failed; see the crash files
EXIT_VALIDATION = 16  # dataset failed BIDS validation
EXIT_UNKNOWN_LEVEL = 17  # unknown analysis level
EXIT_NO_FILES = 18  # filters selected no files / no NM data in the dataset
EXIT_USAGE = 64  # command-line usage error
EXIT_DATA = 65  # bad input data (also: a selected session whose NM images were bad data)
EXIT_NO_INPUT = 66  # required input missing (also: a selected session with no usable NM image)
EXIT_CANTCREAT = 73  # cannot create output
EXIT_IOERR = 74  # I/O error
EXIT_TEMPFAIL = 75  # temporary failure
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C (SIGINT), as shells report it

# what each code means, for --help and the docs
EXIT_MEANINGS = {
    EXIT_OK: "every selected participant (or the group level) finished without error",
    EXIT_FAILURE: "some participant or step failed (one line each; crash files under sub-<label>/log/)",
    EXIT_VALIDATION: "the dataset failed BIDS validation (see --skip-bids-validation)",
    EXIT_UNKNOWN_LEVEL: "unknown analysis level",
    EXIT_NO_FILES: "the selection found no NM images",
    EXIT_USAGE: "command-line usage error (also: --atlas cit168 without the CIT168 files)",
    EXIT_DATA: "bad input data (an image or table that cannot be used)",
    EXIT_NO_INPUT: "a required input is missing",
    EXIT_CANTCREAT: "cannot create the output or work directory",
    EXIT_IOERR: "I/O error (for example a full disk)",
    EXIT_TEMPFAIL: "temporary failure; try again",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


class NmbidsError(Exception):
    """An error with a one-line message for the user and an exit code.

    ``participant`` and ``path`` name what the problem is about, so that the line a user
    reads always says which participant and which file.
    """

    def __init__(self, problem: str, code: int = EXIT_DATA, *, participant: str | None = None,
                 path: str | None = None):
        self.problem, self.code, self.participant, self.path = problem, code, participant, path
        super().__init__(self.line())

    def line(self) -> str:
        parts = [p for p in (self.participant, str(self.path) if self.path else None) if p]
        return (": ".join(parts) + ": " if parts else "") + self.problem
