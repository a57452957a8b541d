"""Worker processes that start with the heavy libraries already imported.

nipype's MultiProc forks its workers from the main process when a participant's workflow
starts, and the main process never imports ANTsPy; so each worker paid for ``import ants``
(about 3 s) on its first node, on the critical path of every participant. Instead, a fork
server started as soon as the run's log file exists imports ANTsPy, nipype's engine and
nmbids's interfaces, on the other core while the main process imports its own modules,
discovers the dataset and builds the workflow; every worker of every participant is then
forked from it, ready to work.
"""
from __future__ import annotations

import logging
import multiprocessing
import os

LOG = logging.getLogger("nmbids")

# the worker logs go to the run's log file: the server reads its path from here
LOG_FILE_ENV = "NMBIDS_WORKER_LOG"
# nipype's loggers: they print to the console unless routed
NIPYPE_LOGGERS = ("nipype.workflow", "nipype.interface", "nipype.utils")
# imported once by the server; the last one routes the worker logs (needs nipype first)
PRELOAD = ("ants", "nipype.pipeline.engine", "nipype.pipeline.plugins.multiproc",
           "nmbids.interfaces.processing", "nmbids.workerlog")


LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


class LogFile(logging.FileHandler):
    """A log file that cannot be written (disk full) must not print tracebacks on the console."""

    def handleError(self, record):
        pass


def route_nipype_logs(handlers: list[logging.Handler]) -> None:
    """Send nipype's messages (node set-up, crashes with tracebacks) to ``handlers`` only."""
    for name in NIPYPE_LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers = list(handlers)
        lg.propagate = False


def start_fork_server(log_file: str | os.PathLike | None = None) -> str | None:
    """Start the preloading fork server now; return the context name for nipype's
    ``mp_context`` (``"forkserver"``), or None where the platform has none (nipype then forks
    its workers from the main process, as before).

    Call it once the environment the workers need is set: they inherit the server's, not later
    changes of the main process's. A module that fails to preload is imported by the worker
    that needs it.
    """
    try:
        ctx = multiprocessing.get_context("forkserver")
    except ValueError:
        return None
    from multiprocessing import forkserver

    ctx.set_forkserver_preload(list(PRELOAD))
    before = os.environ.get(LOG_FILE_ENV)
    os.environ[LOG_FILE_ENV] = str(log_file or "")
    try:
        forkserver.ensure_running()
    except OSError as err:  # e.g. no room for its socket
        LOG.debug("fork server not started: %s", err)
        return None
    finally:  # only the server needs it
        if before is None:
            os.environ.pop(LOG_FILE_ENV, None)
        else:
            os.environ[LOG_FILE_ENV] = before
    return "forkserver"


def preloaded() -> list[str]:
    """The modules of ``PRELOAD`` already imported in this process: all of them in a worker
    forked from the server, none in a fresh interpreter."""
    import sys

    return [name for name in PRELOAD if name in sys.modules]
