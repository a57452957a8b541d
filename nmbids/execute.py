"""The participant level of one participant: run its graph, then account for every NM image.

Each participant is independent: a failure is reported in one line (participant, file,
problem), its traceback goes to a crash file, and the next participant is processed. The
graph's sink nodes write the derivatives; this module reads the one result each NM image left
(``results.NMResult``), writes the session's tables from them, and makes the console lines,
``summary.json`` and the exit code.
"""
from __future__ import annotations

import logging
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import __version__
from .atlas import atlas_name
from .bids import NM_NAMING_HINT, SessionPlan
from .contract import names
from .contract.exits import EXIT_DATA, EXIT_FAILURE, EXIT_NO_INPUT, EXIT_OK
from .contract.tables import MEASURE_COLUMNS, QC_COLUMNS, measures_dictionary, qc_dictionary
from .outputs import atomic_write_json, atomic_write_tsv, remove_stale_temporaries
from .qc import preflight, rel
from .results import NMResult
from .workflows.base import (ANAT_STEPS, NM_STEPS, init_participant_wf, node_names, participant_work_dir,
                             result_file)

LOG = logging.getLogger("nmbids")


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "_" + uuid.uuid4().hex[:8]


@dataclass
class Outcome:
    """What happened to one participant: the exit code it contributes, the messages, and the
    counts of the final console line."""

    participant: str
    code: int = EXIT_OK
    messages: list = field(default_factory=list)
    warnings: list = field(default_factory=list)  # {"session_id", "source", "message"}
    sessions_measured: int = 0
    sessions_skipped: int = 0
    nm_measured: int = 0
    nm_skipped: int = 0
    where: dict = field(default_factory=dict)  # message -> (session_id, source), for summary.json

    def fail(self, code: int, line: str, plan: SessionPlan | None = None, source: str | None = None):
        # the most serious code wins: an unexpected failure over bad data over missing input
        rank = {EXIT_OK: 0, EXIT_NO_INPUT: 1, EXIT_DATA: 2, EXIT_FAILURE: 3}
        if rank.get(code, 3) > rank.get(self.code, 0):
            self.code = code
        self.messages.append(line)
        if plan is not None:
            self.where[line] = (plan.session_id, source or "n/a")
        LOG.error(line)

    def warn(self, plan: SessionPlan, source: str, line: str):
        self.warnings.append({"session_id": plan.session_id, "source": source, "message": line})
        LOG.warning(line)


def session_line(plan: SessionPlan, path: str | None, text: str) -> str:
    """The one format of a line about a session's file: participant, session, file, problem."""
    parts = [f"sub-{plan.participant}"] + ([plan.session_id] if plan.session else []) + ([path] if path else [])
    return ": ".join(parts + [text])


def announce(plan: SessionPlan, outcome: Outcome) -> None:
    """Tell the user about the files left out and the choices made, before any work: broken
    files are errors, the rest (NM-looking files not used, a T1w chosen among several) warnings."""
    for item in plan.ignored:
        line = session_line(plan, item["path"], f"{item['reason']}; the file is skipped")
        if item.get("problem") == "error":
            outcome.fail(EXIT_DATA, line, plan, item["path"])
        elif item.get("problem") == "warning":
            outcome.warn(plan, item["path"], line)
    for item in plan.warnings:
        outcome.warn(plan, item["path"], session_line(plan, item["path"], item["message"]))


def account(plan: SessionPlan, results: list[NMResult], outcome: Outcome) -> None:
    """Count the session's NM images measured and skipped. A session with none measured is a
    line naming it and its first skipped file, and an exit code: 65 when an NM image was there
    but its data were bad (unreadable, empty, broken sidecar, failed, slab off target), else 66
    (required input missing: no NM image, no T1w, hidden, unknown type, filtered out)."""
    measured = [r for r in results if r.measured]
    failed = [(r.source, r.error or "not processed") for r in results if not r.measured]
    refused = [(i["path"], i["reason"]) for i in plan.unused_nm() if i.get("problem") == "error"]
    missing = [(i["path"], i["reason"]) for i in plan.unused_nm() if i.get("problem") != "error"]
    skipped = failed + refused + missing
    outcome.nm_measured += len(measured)
    outcome.nm_skipped += len(skipped)
    if measured:
        outcome.sessions_measured += 1
        return
    outcome.sessions_skipped += 1
    where = "in this session" if plan.session else "for this participant"
    if not skipped:
        folder = f"sub-{plan.participant}/" + (f"{plan.session_id}/" if plan.session else "") + "anat/"
        outcome.fail(EXIT_NO_INPUT, session_line(plan, folder, f"no NM image found {where} ({plan.n_anat} anat "
                                                 f"image(s) seen); {NM_NAMING_HINT}"), plan, folder)
        return
    path, reason = skipped[0]
    more = f" (and {len(skipped) - 1} more NM image(s) skipped)" if len(skipped) > 1 else ""
    # the reason up to its first advice (the file's own line gave that in full)
    outcome.fail(EXIT_DATA if failed or refused else EXIT_NO_INPUT,
                 session_line(plan, path, f"no NM image measured {where}: {reason.split(';')[0]}{more}"),
                 plan, path)


def run_participant(participant: str, plans: list[SessionPlan], *, bids_dir: Path, output_dir: Path,
                    work_dir: Path, template, atlas: Path, atlas_table: Path, options, run_id: str,
                    command: str) -> Outcome:
    """Process one participant end to end and write its derivatives and report."""
    from .plugin import configure_nipype, plugin_settings, preload_step_modules

    outcome = Outcome(participant)
    sub = f"sub-{participant}"
    remove_stale_temporaries(Path(output_dir) / sub)  # left by a job killed while writing
    log_dir = names.participant_log_dir(output_dir, participant, run_id)
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    for plan in plans:  # files left out, and choices made, that the user must hear about
        announce(plan, outcome)
    refused_t1w: dict = {}
    plans = [preflight(p, bids_dir, outcome, refused_t1w) for p in plans]
    if any(p.nm for p in plans):
        configure_nipype(log_dir, options, sub)  # before the workflow: it copies the config when made
        _remove_records(work_dir, participant)  # a record is proof of this run's sink, never an old one's
        wf = init_participant_wf(participant, plans, output_dir=output_dir, work_dir=work_dir, bids_dir=bids_dir,
                                 template=template.name, atlas=atlas, atlas_table=atlas_table,
                                 ref_stat=options.ref_stat, quality=options.registration_quality,
                                 omp_nthreads=getattr(options, "omp_nthreads", None) or 1,
                                 random_seed=getattr(options, "random_seed", None))
        try:
            settings = plugin_settings(options)
            preload_step_modules(settings)
            wf.run(**settings)
        except Exception as err:  # node failures are read from the records and crash files below
            LOG.debug("workflow for %s ended with %s", sub, traceback.format_exc())
            if not _is_node_failure(err):  # not a node failure: the scheduler, a plugin
                LOG.error("%s: the nipype workflow stopped: %s: %s", sub, type(err).__name__,
                          (str(err).strip().splitlines() or [""])[-1])
        if getattr(options, "resource_monitor", False):
            write_resource_table(wf, work_dir, participant, log_dir)
    errors, sessions = [], []
    for plan in plans:
        results, errs = session_results(plan, bids_dir=bids_dir, work_dir=work_dir, log_dir=log_dir, outcome=outcome)
        write_tables(names.SessionFiles.of(output_dir, plan.participant, plan.session, template.name),
                     results, options.ref_stat)
        errors += errs
        sessions.append(_session_summary(plan, results, bids_dir))
        account(plan, results, outcome)  # no session ends without its NM measured, or a line saying why

    from .registration import SEED  # here: the parent process need not import ANTs

    seed = getattr(options, "random_seed", None)
    summary = {
        "participant_id": sub, "run_id": run_id, "command": command, "version": __version__,
        "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "random_seed": {"registration": SEED if seed is None else seed},
        "template": {"name": template.name, "source": template.source},
        "atlas": {"name": atlas_name(getattr(options, "atlas", None)),
                  "sidecar": names.atlas_sidecar(output_dir, template.name).relative_to(output_dir).as_posix()},
        "software": _versions(),
        "sessions": sessions,
        "errors": errors + [{"session_id": outcome.where.get(m, ("n/a", "n/a"))[0],
                             "source": outcome.where.get(m, ("n/a", "n/a"))[1], "message": m, "crash_file": None}
                            for m in outcome.messages if not any(m == e["message"] for e in errors)],
        "warnings": outcome.warnings,
    }
    atomic_write_json(log_dir / names.SUMMARY, summary)
    try:
        from .reports.participant import generate_participant_report
        generate_participant_report(Path(output_dir), participant, n_procs=options.nprocs or 1)
    except Exception:  # a report must never cost the participant its results
        crash = log_dir / "crash-report.txt"
        crash.write_text(traceback.format_exc())
        outcome.fail(EXIT_FAILURE, f"{sub}: the HTML report failed: {last_line(crash)} (see {crash})")
    if getattr(options, "clean_workdir", False) and outcome.code == EXIT_OK:
        # only after a clean run: a failed participant keeps its work folder to resume and debug
        import shutil

        shutil.rmtree(participant_work_dir(work_dir, participant), ignore_errors=True)
    return outcome


def _remove_records(work_dir: Path, participant: str) -> None:
    folder = result_file(work_dir, participant, None).parent
    for path in folder.glob("*.json") if folder.is_dir() else []:
        path.unlink(missing_ok=True)


def _crash_for(log_dir: Path, node: str) -> Path | None:
    hits = sorted(log_dir.glob(f"crash-*-{node}-*"))
    return hits[-1] if hits else None


def _raise_io_error(record: dict) -> None:
    """A sink could not write a derivative: the same OSError, raised here, so that the
    participant ends as every I/O error does (one line naming the file, exit 74)."""
    err = record["io_error"]
    raise OSError(err["errno"], err["strerror"], err["filename"])


def session_results(plan: SessionPlan, *, bids_dir: Path, work_dir: Path, log_dir: Path,
                    outcome: Outcome) -> tuple[list[NMResult], list[dict]]:
    """The result of each NM image of the session (from its sink's record, or from the crash
    file of the step that failed), and the errors for summary.json."""
    import json

    if not plan.nm:
        return [], []
    sub = f"sub-{plan.participant}"
    try:
        anat = json.loads(result_file(work_dir, plan.participant, plan.session).read_text())
    except (OSError, ValueError):
        anat = None
    if anat is not None and anat.get("status") == "io_error":
        _raise_io_error(anat)
    if anat is None:
        steps = node_names(plan.session)
        crash = next(filter(None, (_crash_for(log_dir, steps[k]) for k in ANAT_STEPS)), None)
        t1_rel = rel(plan.t1w, bids_dir)
        line = (f"{sub}: {t1_rel}: T1w to template registration failed" + (f": {last_line(crash)}" if crash else "")
                + f" (see {crash or log_dir})")
        outcome.fail(EXIT_FAILURE, line)
        results = [NMResult(nm.source, nm.prefix, nm.acq_type, error="T1w to template registration failed")
                   for nm in plan.nm]
        return results, [{"session_id": plan.session_id, "source": t1_rel, "message": line,
                          "crash_file": str(crash) if crash else None}]
    results, errors = [], []
    for index, nm in enumerate(plan.nm):
        record = NMResult.read(result_file(work_dir, plan.participant, plan.session, index))
        if record is None:
            steps = node_names(plan.session, index)
            crashes = [(step, _crash_for(log_dir, steps[step])) for step in NM_STEPS]
            step, crash = next(((s, c) for s, c in crashes if c), ("prepare", None))
            what = "output" if step == "ds_nm" else step
            line = (f"{sub}: {nm.source}: {what} step failed" + (f": {last_line(crash)}" if crash else "")
                    + f" (see {crash or log_dir})")
            outcome.fail(EXIT_FAILURE, line)
            results.append(NMResult(nm.source, nm.prefix, nm.acq_type, error=f"{what} step failed",
                                    message=line, crash_file=str(crash) if crash else None))
            errors.append({"session_id": plan.session_id, "source": nm.source, "message": line,
                           "crash_file": str(crash) if crash else None})
            continue
        if record.status == "io_error":
            _raise_io_error({"io_error": record.io_error})
        if record.status == "refused":
            outcome.fail(EXIT_DATA, record.message)
            errors.append({"session_id": plan.session_id, "source": nm.source, "message": record.message,
                           "crash_file": None})
        results.append(record)
    return results, errors


def write_tables(files: names.SessionFiles, results: list[NMResult], ref_stat: str) -> None:
    """The session's measures and QC tables, with their data dictionaries, from the results of
    the NM images that were processed (a refused image keeps its rows: its values say n/a or
    are flagged, and the QC row says why)."""
    rows = [row for r in results for row in r.measures]
    if not rows:
        return
    atomic_write_tsv(files.measures, pd.DataFrame(rows)[MEASURE_COLUMNS])
    atomic_write_json(names.sidecar(files.measures), measures_dictionary(ref_stat))
    atomic_write_tsv(files.qc, pd.DataFrame([r.qc for r in results if r.qc])[QC_COLUMNS])
    atomic_write_json(names.sidecar(files.qc), qc_dictionary())


def last_line(crash: Path | None) -> str:
    """The exception of a crash file (its last non-empty line), for the one-line message."""
    try:
        lines = [ln.strip() for ln in Path(crash).read_text(errors="replace").splitlines() if ln.strip()]
    except (OSError, TypeError):
        return "see the crash file"
    return lines[-1][:300] if lines else "see the crash file"


def write_resource_table(wf, work_dir: Path, participant: str, log_dir: Path) -> None:
    """--resource-monitor: each step's time, peak memory and CPU use, from nipype's monitor."""
    from nipype.utils.filemanip import loadpkl

    declared = {node.name: node for node in wf._get_all_nodes()}
    rows = []
    for path in sorted(participant_work_dir(work_dir, participant).rglob("result_*.pklz")):
        step = path.name[len("result_"):-len(".pklz")]
        try:
            res = loadpkl(path).runtime
        except Exception:  # a node that failed, or a result of another nipype version
            continue
        node = declared.get(step)
        if node is None or res is None:
            continue
        rows.append({"step": step, "duration_s": getattr(res, "duration", None),
                     "mem_peak_gb": getattr(res, "mem_peak_gb", None),
                     "cpu_percent": getattr(res, "cpu_percent", None),
                     "n_procs": node.n_procs, "mem_gb_declared": node.mem_gb})
    if rows:
        atomic_write_tsv(log_dir / names.RESOURCE_MONITOR, pd.DataFrame(rows))


def _is_node_failure(err: Exception) -> bool:
    """Whether ``wf.run`` failed because nodes failed (each is reported from its crash file).

    Depending on the plugin and the nipype version: a NodeExecutionError (Linear), the first
    node's traceback as the message or "N raised. Re-raising first." (MultiProc), or "did not
    execute cleanly" (older nipype)."""
    from nipype.pipeline.engine.nodes import NodeExecutionError

    text = str(err)
    return (isinstance(err, NodeExecutionError) or "did not execute cleanly" in text
            or text.lstrip().startswith("Traceback") or "raised. Re-raising first" in text)


def _session_summary(plan: SessionPlan, results: list[NMResult], bids_dir: Path) -> dict:
    by_source = {r.source: r for r in results}
    nm_entries = []
    for nm in plan.nm:
        r = by_source.get(nm.source)
        nm_entries.append({
            "source": nm.source, "prefix": nm.prefix, "acq_type": nm.acq_type, "evidence": nm.evidence,
            "n_repeats": r.n_repeats if r and r.n_repeats is not None else len(nm.files),
            # a refused image was processed and written: "ok", with its error
            "status": "ok" if r and r.status in ("ok", "refused") else "failed",
            "error": r.error if r else None})
    return {
        "session_id": plan.session_id,
        "t1w": rel(plan.t1w, bids_dir) if plan.t1w else None,
        "t1w_note": plan.t1w_note,
        "nm": nm_entries,
        "ignored": plan.ignored,
    }


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("nmbids", "antspyx", "nipype", "pybids", "nibabel", "nilearn", "numpy", "scipy", "pandas"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
