"""What became of one NM image in a run: the one record the run's bookkeeping reads.

The NM sink node writes it (``interfaces/sinks.py``) once the image's derivatives are in place;
the orchestrator (``execute.py``) makes one for an image whose steps failed. The session's
tables, the console lines, ``summary.json`` and the exit code are all made from these records,
never from attributes added to the input plan.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATUSES = ("ok", "refused", "failed", "io_error")


@dataclass
class NMResult:
    """One NM image's outcome.

    ``status``: ``ok`` (measured and written), ``refused`` (written, but its measures are not
    to be trusted: ``message`` says why), ``failed`` (a step failed: ``crash_file``) or
    ``io_error`` (a derivative could not be written: ``io_error`` holds errno, strerror and
    the file)."""

    source: str
    prefix: str
    acq_type: str
    status: str = "failed"
    error: str | None = None  # the short reason, for summary.json
    message: str | None = None  # the user's line about it
    n_repeats: int | None = None
    crash_file: str | None = None
    measures: list = field(default_factory=list)  # rows of the measures table
    qc: dict | None = None  # the row of the QC table
    io_error: dict | None = None

    @property
    def measured(self) -> bool:
        return self.status == "ok"

    def write(self, path: Path) -> None:
        from .outputs import atomic_write_text

        atomic_write_text(Path(path), json.dumps(asdict(self)) + "\n")

    @classmethod
    def read(cls, path: Path) -> "NMResult | None":
        """The record at ``path``, or None when the sink never wrote it."""
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError):
            return None
