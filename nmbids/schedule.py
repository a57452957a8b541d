"""Participants in parallel within one run, each isolated from the others' failures.

A participant's graph is mostly serial (N4 → registration → measures), so one graph cannot
keep many cores busy. ``plan_resources`` splits ``--nprocs`` (and ``--mem``) between several
participants run at once, each in its own process with its own nipype graph, exactly as
one participant runs alone: a crash, a killed worker or a failing node of one participant
touches no other participant's outputs. With one participant (a SLURM array job, CBRAIN),
or when the cores do not split, nothing changes: the participant runs in this process with
every core.
"""
from __future__ import annotations

import copy
import logging
import logging.handlers
import multiprocessing as mp
import os
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from .contract import names
from .contract.exits import EXIT_FAILURE, EXIT_IOERR, EXIT_OK
from .progress import Progress
from .qc import flag_counts

LOG = logging.getLogger("nmbids")

# Peak memory of one participant's graph (docs/performance.md, benchmarks/bench_memory.py:
# 1.73-1.91 GB for a 1 mm T1w and slabs up to 4 M voxels), rounded up: the default share of
# --mem a participant needs before another one is started beside it.
PARTICIPANT_MEM_GB = 2.5
OMP_MAX = 8  # ANTs' threads beyond 8 gain little on one registration


@dataclass(frozen=True)
class Resources:
    at_once: int  # participants run at the same time
    procs: int  # the CPUs of each participant (--nprocs shared out)
    omp: int  # threads of each ANTs step (ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS)
    mem_gb: float | None  # memory_gb of each participant's graph
    graph_procs: int  # nipype n_procs of each participant's graph (see plan_resources)

    def describe(self) -> str:
        mem = f", {self.mem_gb:g} GB" if self.mem_gb else ""
        return (f"{self.at_once} participant(s) at a time, each with {self.procs} CPU(s){mem} "
                f"and {self.omp} thread(s) per ANTs step")


def plan_resources(n_participants: int, nprocs: int, omp_nthreads: int | None = None,
                   mem_gb: float | None = None) -> Resources:
    """How to share ``nprocs`` CPUs and ``mem_gb`` between ``n_participants``.

    Without ``--omp-nthreads`` every CPU runs a participant of its own while there are more
    participants than CPUs (the throughput is best when no step waits for another); with
    fewer participants the CPUs are shared out. ``--omp-nthreads N`` asks for N threads per
    ANTs step: then nprocs // N participants at once. ``--mem`` bounds how many run at once
    (``PARTICIPANT_MEM_GB`` each).

    A participant's graph has a multi-threaded T1w branch (N4, registration: ``omp`` threads,
    declared to nipype) beside a single-threaded NM branch. Sharing the machine, its ANTs
    steps get one CPU less than its share, so that both branches fit in it. Alone (one
    participant, the SLURM-array case) it keeps the threads it had before participants ran in
    parallel, ``min(nprocs, 8)``, and its graph may run the NM branch's one thread beside a
    full-width ANTs step (``graph_procs = nprocs + 1``): on the 2-CPU development machine that
    was faster than either waiting (the steps in series) or one thread per step.
    """
    nprocs = max(1, int(nprocs))
    n = max(1, int(n_participants))
    at_once = nprocs // omp_nthreads if omp_nthreads else nprocs
    at_once = max(1, min(at_once, n))
    if mem_gb:
        at_once = max(1, min(at_once, int(mem_gb // PARTICIPANT_MEM_GB)))
    procs = max(1, nprocs // at_once)
    mem = mem_gb / at_once if mem_gb else None
    if omp_nthreads:
        return Resources(at_once, procs, omp_nthreads, mem, procs)
    if at_once == 1:
        omp = min(procs, OMP_MAX)
        return Resources(1, procs, omp, mem, procs + 1 if 1 < procs == omp else procs)
    return Resources(at_once, procs, max(1, min(procs - 1, OMP_MAX)), mem, procs)


@dataclass
class Result:
    """What the parent needs of one finished participant (picklable: it crosses processes)."""

    participant: str
    code: int
    n_nm: int
    warnings: int
    errors: int
    report: str | None
    outcome: object = None  # participant.Outcome (counts of the final line); None if it crashed
    qc_flags: dict | None = None  # QC flag -> NM images flagged (qc.flag_counts)


class _Counter(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.warnings = self.errors = 0

    def emit(self, record):
        if record.levelno >= logging.ERROR:
            self.errors += 1
        else:
            self.warnings += 1


def _crash_file(output_dir: Path, participant: str, run_id: str) -> Path:
    return names.participant_log_dir(output_dir, participant, run_id) / "crash-participant.txt"


def run_one(participant: str, plans: list, kwargs: dict) -> Result:
    """One participant end to end; never raises (the failure is its result)."""
    from .cli import io_error_line
    from .execute import run_participant

    counter = _Counter()
    LOG.addHandler(counter)
    code, outcome = EXIT_OK, None
    try:
        outcome = run_participant(participant, plans, **kwargs)
        code = outcome.code
    except Exception as err:
        crash = _crash_file(kwargs["output_dir"], participant, kwargs["run_id"])
        try:
            crash.parent.mkdir(parents=True, exist_ok=True)
            crash.write_text(traceback.format_exc())
        except OSError:  # the output disk may be what failed
            crash = getattr(LOG, "logfile", "the log")
            LOG.debug(traceback.format_exc())
        if isinstance(err, OSError):
            LOG.error("%s (see %s)", io_error_line(err, participant), crash)
            code = EXIT_IOERR
        else:
            LOG.error("sub-%s: failed: %s (see %s)", participant, err, crash)
            code = EXIT_FAILURE
    finally:
        LOG.removeHandler(counter)
    report = names.report(kwargs["output_dir"], participant)
    return Result(participant, code, sum(len(p.nm) for p in plans), counter.warnings, counter.errors,
                  report.name if report.exists() else None, outcome, flag_counts(kwargs["output_dir"], participant))


def done_text(res: Result) -> str:
    """``2 NM images, 0 warnings, QC flags low_snr (1), report sub-07.html``: the QC flags (with
    the number of NM images raising each) are there so that a flagged participant stands out
    on the console, not only in its report."""
    parts = [f"{res.n_nm} NM image{'s' * (res.n_nm != 1)}"]
    if res.errors:
        parts.append(f"{res.errors} error{'s' * (res.errors != 1)}")
    parts.append(f"{res.warnings} warning{'s' * (res.warnings != 1)}")
    if res.qc_flags:
        parts.append("QC flags " + ", ".join(f"{flag} ({n})" for flag, n in res.qc_flags.items()))
    parts.append(f"report {res.report}" if res.report else "no report")
    return ", ".join(parts)


def _worker_init(queue, omp: int) -> None:
    """In a pool process: console lines go to the parent (which writes them above its bar);
    the log file handler is inherited (opened for appending: lines from processes interleave
    whole)."""
    console = [h for h in LOG.handlers if not isinstance(h, logging.FileHandler)]
    for h in console:
        LOG.removeHandler(h)
    qh = logging.handlers.QueueHandler(queue)
    qh.setLevel(min((h.level for h in console), default=logging.WARNING))
    LOG.addHandler(qh)
    _set_threads(omp)


def _set_threads(omp: int) -> None:
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(omp)
    os.environ["OMP_NUM_THREADS"] = str(omp)


def run_all(plans: dict, kwargs: dict, resources: Resources, *, stop_on_first_crash: bool = False) -> list[Result]:
    """Run every participant of ``plans`` (participant → session plans); return their results.

    ``kwargs`` are ``run_participant``'s keyword arguments; ``kwargs["options"].nprocs`` and
    the ANTs threads are set from ``resources`` for each participant.
    """
    options = copy.copy(kwargs["options"])
    options.nprocs, options.omp_nthreads = resources.graph_procs, resources.omp
    options.mem = resources.mem_gb
    kwargs = {**kwargs, "options": options}
    results = []
    with Progress(len(plans), "participant") as progress:
        def finished(res: Result):
            progress.done(f"sub-{res.participant}", done_text(res), failed=res.code != EXIT_OK)
            results.append(res)

        if resources.at_once == 1:
            _set_threads(resources.omp)
            for participant, pl in plans.items():
                progress.started(f"sub-{participant}", _plan_text(pl))
                finished(run_one(participant, pl, kwargs))
                if stop_on_first_crash and results[-1].code != EXIT_OK:
                    break
            return results
        ctx = mp.get_context("fork")  # the children inherit the configured loggers
        queue = ctx.Queue()
        console = [h for h in LOG.handlers if not isinstance(h, logging.FileHandler)]
        listener = logging.handlers.QueueListener(queue, *console, respect_handler_level=True)
        listener.start()
        pool = ProcessPoolExecutor(resources.at_once, mp_context=ctx, initializer=_worker_init,
                                   initargs=(queue, resources.omp))
        todo = list(plans.items())
        running = {}
        try:
            while todo or running:
                while todo and len(running) < resources.at_once:
                    participant, pl = todo.pop(0)
                    progress.started(f"sub-{participant}", _plan_text(pl))
                    running[pool.submit(run_one, participant, pl, kwargs)] = participant
                ready, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in ready:
                    participant = running.pop(fut)
                    try:
                        res = fut.result()
                    except Exception as err:  # the worker process died (killed, out of memory)
                        LOG.error("sub-%s: the process running it died: %s", participant, err)
                        res = Result(participant, EXIT_FAILURE, sum(len(p.nm) for p in plans[participant]),
                                     0, 1, None)
                    finished(res)
                    if stop_on_first_crash and res.code != EXIT_OK:
                        todo = []
            pool.shutdown(wait=True)
        except BaseException:  # Ctrl-C: the workers got the signal too; do not wait for them
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            listener.stop()
    return results


def _plan_text(plans: list) -> str:
    n_nm = sum(len(p.nm) for p in plans)
    return f"{len(plans)} session{'s' * (len(plans) != 1)}, {n_nm} NM image{'s' * (n_nm != 1)}"
