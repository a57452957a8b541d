"""What a run prints while it works: start/done lines, time left, a live bar on a terminal.

One ``Progress`` per long loop (participants, voxelwise contrasts). Its lines go to the
``nmbids`` logger at the PROGRESS level, which the console shows by default (between INFO
and WARNING) and the log file keeps; on a terminal a tqdm bar sits below them. Not on a
terminal (SLURM logs, CBRAIN) there is no bar: the same lines, plain.

nipype's node-finished messages become one short line each (``-v``), see ``NodeFinished``.
"""
from __future__ import annotations

import logging
import re
import sys
import time

LOG = logging.getLogger("nmbids")

# between INFO (-v) and WARNING: progress lines are shown without -v, hidden by nothing
PROGRESS = 25
logging.addLevelName(PROGRESS, "PROGRESS")

_BAR = None  # the live bar, when one is on the screen: console lines are written above it


def _on_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def duration(seconds: float) -> str:
    """41 s, 3 min 20 s, 2 h 05 min: what a person reads at a glance."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class ConsoleHandler(logging.StreamHandler):
    """The console: one-line messages, written above the live bar when there is one."""

    def emit(self, record):
        if _BAR is None:
            return super().emit(record)
        try:
            _BAR.write(self.format(record), file=self.stream)
        except Exception:  # pragma: no cover - the console must never raise
            self.handleError(record)


def console_format(record: logging.LogRecord) -> str:
    # every console line starts with "nmbids" (progress like the run's last line, "nmbids: ...")
    if record.levelno == PROGRESS:
        return f"nmbids: {record.getMessage()}"
    return f"nmbids {record.levelname}: {record.getMessage()}"


class _ConsoleFormatter(logging.Formatter):
    def format(self, record):
        return console_format(record)


def console_handler(verbose: int, stream=None) -> logging.Handler:
    handler = ConsoleHandler(stream or sys.stderr)
    handler.setLevel(PROGRESS if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG)
    handler.setFormatter(_ConsoleFormatter())
    return handler


class Progress:
    """Counts items of a loop that may finish in any order (participants run in parallel).

    ``started(name)`` and ``done(name, text)`` print ``[3/40] sub-07 done in 41 s: ...``;
    after the first item is done each done line also says the elapsed time and an estimate of
    the time left (see ``_left``).
    """

    def __init__(self, total: int, what: str, *, stream=None, logger=None):
        self.total, self.what = total, what
        self.log = logger or LOG
        self.t0 = time.monotonic()
        self.starts: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.durations: list[float] = []
        self.finished = 0
        self.slots = 1  # most items seen running at once
        self.bar = None
        stream = stream or sys.stderr
        if total > 1 and _on_terminal(stream) and self.log.isEnabledFor(PROGRESS):
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=what, file=stream, leave=False, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")
            global _BAR
            _BAR = self.bar

    def _line(self, text: str) -> None:
        self.log.log(PROGRESS, text)

    def started(self, name: str, detail: str = "") -> None:
        self.starts[name] = self.running[name] = time.monotonic()
        self.slots = max(self.slots, len(self.running))
        n = len(self.starts)
        self._line(f"[{n}/{self.total}] {name} started" + (f": {detail}" if detail else ""))

    def done(self, name: str, text: str = "", *, failed: bool = False) -> float:
        """Report ``name`` finished; returns its duration in seconds."""
        took = time.monotonic() - self.running.pop(name, self.t0)
        self.finished += 1
        word = "FAILED after" if failed else "done in"
        line = f"[{self.finished}/{self.total}] {name} {word} {duration(took)}" + (f": {text}" if text else "")
        now = time.monotonic()
        self.durations.append(took)
        elapsed = now - self.t0
        if self.finished < self.total:
            line += f" (elapsed {duration(elapsed)}, about {duration(self._left(now))} left)"
        else:
            line += f" (elapsed {duration(elapsed)})"
        self._line(line)
        if self.bar is not None:
            self.bar.update(1)
        return took

    def _left(self, now: float) -> float:
        """Time left: the items still running need the mean duration minus what they have
        had; those not started need the mean; all spread over the items run at once."""
        mean = sum(self.durations) / len(self.durations)
        work = sum(max(mean - (now - t), 0.0) for t in self.running.values())
        work += (self.total - len(self.starts)) * mean
        return work / self.slots

    def close(self) -> None:
        global _BAR
        if self.bar is not None:
            self.bar.close()
            if _BAR is self.bar:
                _BAR = None
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_FINISHED = re.compile(r'\[Node\] Finished "(?P<node>[^"]+)", elapsed time (?P<secs>[0-9.]+)s')


class NodeFinished(logging.Handler):
    """nipype's ``[Node] Finished "anat_nosession", elapsed time 12.3s.`` as
    ``sub-01: step anat_nosession finished in 12 s`` on the nmbids logger (shown with -v).

    Installed on nipype's workflow logger by the process that runs one participant's graph,
    so ``who`` names that participant (nipype's message gives only the node's own name)."""

    def __init__(self, who: str, logger=None):
        super().__init__(logging.INFO)
        self.who, self.log = who, logger or LOG

    def emit(self, record):
        m = _FINISHED.search(record.getMessage())
        if m:
            self.log.info("%s: step %s finished in %s", self.who, m["node"].rsplit(".", 1)[-1],
                          duration(float(m["secs"])))
