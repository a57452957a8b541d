"""The participant level: plan, run the nipype graph, write the derivatives.

Each participant is independent: a failure is reported in one line (participant, file,
problem), its traceback goes to a crash file, and the next participant is processed.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nipype.interfaces.base import isdefined

from . import __version__
from .acquisitions import PROFILES, TOP_VOLUME_MM3
from .bids import NM_NAMING_HINT, NO_T1W_REASON, SessionPlan
from .errors import EXIT_DATA, EXIT_FAILURE, EXIT_NO_INPUT, EXIT_OK, EXIT_USAGE, NmbidsError
from .images import check_image
from .outputs import (anat_dir, atomic_copy, atomic_write_json, atomic_write_tsv, bids_uri,
                      remove_stale_temporaries)
from .quantify import MEASURE_COLUMNS, SNR_DESCRIPTION
from .reports.warnings import (COVERAGE_MIN, MOTION_MAX_MM, NM2T1W_SIMILARITY_MIN, SNR_MIN,
                               T1W2TEMPLATE_SIMILARITY_MIN)
from .workflows.participant import init_participant_wf, node_dir, node_names

LOG = logging.getLogger("nmbids")

QC_COLUMNS = ["participant_id", "session_id", "source", "acq_type", "n_repeats", "motion_mean_mm",
              "motion_max_mm", "snr", "nm2t1w_similarity", "t1w2template_similarity",
              "coverage_SN", "coverage_VTA", "coverage_LC", "flags"]


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


def account(plan: SessionPlan, outcome: Outcome) -> None:
    """Count the session's NM images measured and skipped. A session with none measured is a
    line naming it and its first skipped file, and an exit code: 65 when an NM image was there
    but its data were bad (unreadable, empty, broken sidecar, failed, slab off target), else 66
    (required input missing: no NM image, no T1w, hidden, unknown type, filtered out)."""
    measured = [nm for nm in plan.nm if getattr(nm, "status", None) == "ok" and not getattr(nm, "error", None)]
    failed = [(nm.source, getattr(nm, "error", None) or "not processed") for nm in plan.nm if nm not in measured]
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


def preflight(plan: SessionPlan, bids_dir: Path, outcome: Outcome, refused: dict | None = None) -> SessionPlan:
    """Refuse unreadable, empty or broken images before any work is spent on them.

    ``refused``: T1w path -> its refusal, shared by the participant's sessions, so that a T1w
    lent to another session is checked and reported once."""
    sub = f"sub-{plan.participant}"
    refused = {} if refused is None else refused
    if plan.t1w:
        try:
            if plan.t1w in refused:
                raise refused[plan.t1w]
            check_image(plan.t1w, participant=plan.participant, rel=_rel(plan.t1w, bids_dir),
                        kind="T1w", allow_4d=False)
        except NmbidsError as err:
            if plan.t1w not in refused:
                outcome.fail(err.code, err.line(), plan, _rel(plan.t1w, bids_dir))
                refused[plan.t1w] = err
            plan.ignored.append({"path": _rel(plan.t1w, bids_dir), "reason": err.problem})
            plan.t1w = None
    if plan.nm and not plan.t1w:
        for nm in plan.nm:
            outcome.fail(EXIT_NO_INPUT, f"{sub}: {nm.source}: {NO_T1W_REASON} for this "
                         f"{'session' if plan.session else 'participant'}; the NM image cannot be registered",
                         plan, nm.source)
        plan.ignored += [{"path": nm.source, "reason": NO_T1W_REASON, "nm": True} for nm in plan.nm]
        plan.nm = []
        return plan
    keep = []
    for nm in plan.nm:
        try:
            shapes = [check_image(f, participant=plan.participant, rel=_rel(f, bids_dir), kind="NM",
                                  allow_4d=True) for f in nm.files]
            if nm.mt_off:
                off = check_image(nm.mt_off, participant=plan.participant, rel=_rel(nm.mt_off, bids_dir),
                                  kind="mt-off", allow_4d=False)
                if tuple(off[:3]) != tuple(shapes[0][:3]):
                    raise NmbidsError(f"mt-on {shapes[0][:3]} and mt-off {off[:3]} grids differ; "
                                      "they will be realigned", code=EXIT_OK)
            if len({s[:3] for s in shapes}) > 1:
                raise NmbidsError(f"repeats have different grids {sorted({s[:3] for s in shapes})}",
                                  code=EXIT_DATA, participant=sub, path=nm.source)
            keep.append(nm)
        except NmbidsError as err:
            if err.code == EXIT_OK:  # a warning, not a refusal
                LOG.warning("%s: %s: %s", sub, nm.source, err.problem)
                keep.append(nm)
                continue
            outcome.fail(err.code, err.line(), plan, nm.source)
            plan.ignored.append({"path": nm.source, "reason": err.problem, "nm": True, "problem": "error"})
    plan.nm = keep
    return plan


def _rel(path, bids_dir: Path) -> str:
    try:
        return str(Path(path).relative_to(bids_dir))
    except ValueError:
        return str(path)


def run_participant(participant: str, plans: list[SessionPlan], *, bids_dir: Path, output_dir: Path,
                    work_dir: Path, template, atlas: Path, atlas_table: Path, options, run_id: str,
                    command: str) -> Outcome:
    """Process one participant end to end and write its derivatives and report."""
    outcome = Outcome(participant)
    sub = f"sub-{participant}"
    remove_stale_temporaries(Path(output_dir) / sub)  # left by a job killed while writing
    log_dir = Path(output_dir) / sub / "log" / run_id
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    for plan in plans:  # files left out, and choices made, that the user must hear about
        announce(plan, outcome)
    refused_t1w: dict = {}
    plans = [preflight(p, bids_dir, outcome, refused_t1w) for p in plans]
    errors = []
    if any(p.nm for p in plans):
        _configure_nipype(log_dir, options, sub)  # before the workflow: it copies the config when made
        wf = init_participant_wf(participant, plans, work_dir=work_dir, template=template.name,
                                 atlas=atlas, atlas_table=atlas_table, ref_stat=options.ref_stat,
                                 quality=options.registration_quality,
                                 omp_nthreads=getattr(options, "omp_nthreads", None) or 1,
                                 random_seed=getattr(options, "random_seed", None))
        try:
            wf.run(**_plugin(options))
        except Exception as err:  # node failures are read from the work dir below
            LOG.debug("workflow for %s ended with %s", sub, traceback.format_exc())
            if not _is_node_failure(err):  # not a node failure: the scheduler, a plugin
                LOG.error("%s: the nipype workflow stopped: %s: %s", sub, type(err).__name__,
                          (str(err).strip().splitlines() or [""])[-1])
        if getattr(options, "resource_monitor", False):
            write_resource_table(wf, work_dir, participant, log_dir)
    for plan in plans:
        errors += write_session(plan, bids_dir=bids_dir, output_dir=output_dir, work_dir=work_dir,
                                template=template, options=options, outcome=outcome, log_dir=log_dir)
        account(plan, outcome)  # no session ends without its NM measured, or a line saying why

    from .registration import SEED  # here: the parent process need not import ANTs

    seed = getattr(options, "random_seed", None)
    summary = {
        "participant_id": sub, "run_id": run_id, "command": command, "version": __version__,
        "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "random_seed": {"registration": SEED if seed is None else seed},
        "template": {"name": template.name, "source": template.source},
        "software": _versions(),
        "sessions": [_session_summary(p, bids_dir) for p in plans],
        "errors": errors + [{"session_id": outcome.where.get(m, ("n/a", "n/a"))[0],
                             "source": outcome.where.get(m, ("n/a", "n/a"))[1], "message": m, "crash_file": None}
                            for m in outcome.messages if not any(m == e["message"] for e in errors)],
        "warnings": outcome.warnings,
    }
    atomic_write_json(log_dir / "summary.json", summary)
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

        shutil.rmtree(node_dir(work_dir, participant, ""), ignore_errors=True)
    return outcome


def last_line(crash: Path | None) -> str:
    """The exception of a crash file (its last non-empty line), for the one-line message."""
    try:
        lines = [ln.strip() for ln in Path(crash).read_text(errors="replace").splitlines() if ln.strip()]
    except (OSError, TypeError):
        return "see the crash file"
    return lines[-1][:300] if lines else "see the crash file"


def write_resource_table(wf, work_dir: Path, participant: str, log_dir: Path) -> None:
    """--resource-monitor: each step's time, peak memory and CPU use, from nipype's monitor."""
    rows = []
    for node in wf._graph.nodes():
        res = _load_runtime(work_dir, participant, node.name)
        if res is not None:
            rows.append({"step": node.name, "duration_s": getattr(res, "duration", None),
                         "mem_peak_gb": getattr(res, "mem_peak_gb", None),
                         "cpu_percent": getattr(res, "cpu_percent", None),
                         "n_procs": node.n_procs, "mem_gb_declared": node.mem_gb})
    if rows:
        atomic_write_tsv(log_dir / "resource_monitor.tsv", pd.DataFrame(rows))


def _is_node_failure(err: Exception) -> bool:
    """Whether ``wf.run`` failed because nodes failed (each is reported from its crash file).

    Depending on the plugin and the nipype version: a NodeExecutionError (Linear), the first
    node's traceback as the message or "N raised. Re-raising first." (MultiProc), or "did not
    execute cleanly" (older nipype)."""
    from nipype.pipeline.engine.nodes import NodeExecutionError

    text = str(err)
    return (isinstance(err, NodeExecutionError) or "did not execute cleanly" in text
            or text.lstrip().startswith("Traceback") or "raised. Re-raising first" in text)


def _session_summary(plan: SessionPlan, bids_dir: Path) -> dict:
    return {
        "session_id": plan.session_id,
        "t1w": _rel(plan.t1w, bids_dir) if plan.t1w else None,
        "t1w_note": plan.t1w_note,
        "nm": [{"source": nm.source, "prefix": nm.prefix, "acq_type": nm.acq_type, "evidence": nm.evidence,
                "n_repeats": getattr(nm, "n_repeats", len(nm.files)), "status": getattr(nm, "status", "failed"),
                "error": getattr(nm, "error", None)} for nm in plan.nm],
        "ignored": plan.ignored,
    }


def _load_result(work_dir: Path, participant: str, node: str):
    """Outputs of a finished node, or None when it failed or never ran."""
    from nipype.utils.filemanip import loadpkl

    path = node_dir(work_dir, participant, node) / f"result_{node}.pklz"
    if not path.exists():
        return None
    try:
        return loadpkl(path).outputs
    except Exception:
        return None


def _load_runtime(work_dir: Path, participant: str, node: str):
    from nipype.utils.filemanip import loadpkl

    path = node_dir(work_dir, participant, node) / f"result_{node}.pklz"
    try:
        return loadpkl(path).runtime
    except Exception:
        return None


def _crash_for(log_dir: Path, node: str) -> Path | None:
    hits = sorted(log_dir.glob(f"crash-*{node}*"))
    return hits[-1] if hits else None


def write_session(plan: SessionPlan, *, bids_dir, output_dir, work_dir, template, options, outcome,
                  log_dir) -> list[dict]:
    """Copy one session's results into the derivatives and write its tables."""
    sub = f"sub-{plan.participant}"
    if not plan.nm:
        return []
    errors = []
    out = anat_dir(output_dir, plan.participant, plan.session)
    space = template.name
    names = node_names(plan.session)
    anat = _load_result(work_dir, plan.participant, names["anat"])
    warped = _load_result(work_dir, plan.participant, names["t1w_template"])
    t1_rel = _rel(plan.t1w, bids_dir)
    if anat is None or warped is None:
        crash = next(filter(None, (_crash_for(log_dir, names[k]) for k in ("t1w", "anat", "t1w_template"))), None)
        line = (f"{sub}: {t1_rel}: T1w to template registration failed" + (f": {last_line(crash)}" if crash else "")
                + f" (see {crash or log_dir})")
        outcome.fail(EXIT_FAILURE, line)
        for nm in plan.nm:
            nm.status, nm.error = "failed", "T1w to template registration failed"
        return [{"session_id": plan.session_id, "source": t1_rel, "message": line,
                 "crash_file": str(crash) if crash else None}]
    S = out / plan.prefix
    t1_sources = [bids_uri(t1_rel)]
    _put(anat.t1w_preproc, f"{S}_desc-preproc_T1w.nii.gz", {"Sources": t1_sources, "SkullStripped": False,
         "Description": "N4 bias-corrected T1w"})
    _put(warped.t1w_template, f"{S}_space-{space}_desc-preproc_T1w.nii.gz",
         {"Sources": t1_sources, "SpatialReference": space})
    xfm_meta = {"Sources": t1_sources, "Software": "ANTsPy", "FromSpace": "T1w", "ToSpace": space}
    _put(anat.affine, f"{S}_from-T1w_to-{space}_mode-image_desc-affine_xfm.mat", xfm_meta)
    _put(anat.warp, f"{S}_from-T1w_to-{space}_mode-image_desc-warp_xfm.nii.gz", xfm_meta)
    _put(anat.invwarp, f"{S}_from-{space}_to-T1w_mode-image_desc-warp_xfm.nii.gz",
         {**xfm_meta, "FromSpace": space, "ToSpace": "T1w"})

    rows, qc_rows = [], []
    for index, nm in enumerate(plan.nm):
        names = node_names(plan.session, index)
        res = {step: _load_result(work_dir, plan.participant, node) for step, node in names.items()}
        failed = [step for step in ("prepare", "coreg", "quantify") if res[step] is None]
        if failed:
            crash = _crash_for(log_dir, names[failed[0]])
            line = (f"{sub}: {nm.source}: {failed[0]} step failed" + (f": {last_line(crash)}" if crash else "")
                    + f" (see {crash or log_dir})")
            outcome.fail(EXIT_FAILURE, line)
            nm.status, nm.error = "failed", f"{failed[0]} step failed"
            errors.append({"session_id": plan.session_id, "source": nm.source, "message": line,
                           "crash_file": str(crash) if crash else None})
            continue
        prep, coreg, quant = res["prepare"], res["coreg"], res["quantify"]
        P = out / nm.prefix
        sources = [bids_uri(nm.source)] + ([bids_uri(_rel(nm.mt_off, bids_dir))] if nm.mt_off else [])
        params = {"Sources": sources, "AcquisitionType": nm.acq_type, "ClassificationEvidence": nm.evidence,
                  "Repeats": len(prep.motion)}
        _put(prep.nm_preproc, f"{P}_desc-preproc_NM.nii.gz", {**params, "Description":
             "repeats realigned and averaged, N4 bias-corrected"})
        _put(coreg.nm_t1w, f"{P}_space-T1w_desc-preproc_NM.nii.gz", {**params, "SpatialReference": "T1w"})
        _put(quant.nm_template, f"{P}_space-{space}_desc-preproc_NM.nii.gz", {**params, "SpatialReference": space})
        _put(coreg.rigid, f"{P}_from-NM_to-T1w_mode-image_xfm.mat",
             {"Sources": sources, "Software": "ANTsPy", "FromSpace": "NM", "ToSpace": "T1w",
              "Note": "ANTs convention: maps NM points to T1w points (use inverted to resample NM into T1w)"})
        _put(quant.dseg, f"{P}_desc-rois_dseg.nii.gz", {"Sources": sources, "Atlas": "nmbids",
             "Labels": f"atlas/tpl-{space}_atlas-nmbids_dseg.tsv"})
        results = json.loads(Path(quant.results).read_text())
        profile = PROFILES[nm.acq_type]
        _put(quant.crmap, f"{P}_space-{space}_crmap.nii.gz",
             {**params, "SpatialReference": space, "Units": "ratio",
              "Formula": "(I - ref(R)) / ref(R)", "ReferenceRegion": results["map_reference"],
              "ReferenceStatistic": options.ref_stat,
              "ReferenceValue": results["references"].get(results["map_reference"], {}).get("value")})
        if isdefined(quant.mtr_native):
            _put(quant.mtr_native, f"{P}_MTRmap.nii.gz", {**params, "Units": "percent",
                 "Formula": "100 * (off - on) / off"})
            _put(quant.mtr_template, f"{P}_space-{space}_MTRmap.nii.gz", {**params, "Units": "percent",
                 "SpatialReference": space})
            _put(quant.mte_native, f"{P}_mtemap.nii.gz", {**params, "Units": "ratio",
                 "Formula": "on / off", "Description": "MT enhancement"})
            _put(quant.mte_template, f"{P}_space-{space}_mtemap.nii.gz", {**params, "Units": "ratio",
                 "Formula": "on / off", "Description": "MT enhancement", "SpatialReference": space})
        motion = list(prep.motion)
        if len(motion) > 1:
            atomic_write_tsv(Path(f"{P}_desc-motion_timeseries.tsv"),
                             pd.DataFrame({"repeat": range(1, len(motion) + 1), "displacement_mm": motion}))
        for r in results["rows"]:
            rows.append({"participant_id": sub, "session_id": plan.session_id, "source": nm.source,
                         "acq_type": nm.acq_type, **r})
        cov = results["coverage"]
        flags = _flags(results, motion, coreg.similarity, anat.similarity)
        qc_rows.append({
            "participant_id": sub, "session_id": plan.session_id, "source": nm.source, "acq_type": nm.acq_type,
            "n_repeats": len(motion), "motion_mean_mm": float(np.mean(motion[1:])) if len(motion) > 1 else 0.0,
            "motion_max_mm": float(np.max(motion)), "snr": results["snr"],
            "nm2t1w_similarity": coreg.similarity, "t1w2template_similarity": anat.similarity,
            "coverage_SN": cov.get("SN_bilateral"), "coverage_VTA": cov.get("VTA_bilateral"),
            "coverage_LC": cov.get("LC_bilateral"), "flags": ";".join(flags) if flags else None})
        nm.status, nm.error, nm.n_repeats = "ok", None, len(motion)
        targets = [c for k, c in cov.items() if k.split("_")[0] in profile.references and k.endswith("bilateral")]
        if targets and all((c or 0) < profile.min_coverage for c in targets):
            line = (f"{sub}: {nm.source}: the slab misses the nuclei (coverage "
                    + ", ".join(f"{k.split('_')[0]} {c or 0:.2f}" for k, c in cov.items() if k.endswith('bilateral')
                                and k.split('_')[0] in profile.references) + "); no measures reported")
            outcome.fail(EXIT_DATA, line)
            nm.error = "slab misses the nuclei"
            errors.append({"session_id": plan.session_id, "source": nm.source, "message": line, "crash_file": None})
    if rows:
        table = pd.DataFrame(rows)[MEASURE_COLUMNS]
        atomic_write_tsv(Path(f"{S}_desc-nm_measures.tsv"), table)
        atomic_write_json(Path(f"{S}_desc-nm_measures.json"), measures_dictionary(options.ref_stat))
        atomic_write_tsv(Path(f"{S}_desc-nm_qc.tsv"), pd.DataFrame(qc_rows)[QC_COLUMNS])
        atomic_write_json(Path(f"{S}_desc-nm_qc.json"), qc_dictionary())
    return errors


# QC flag thresholds: one definition, shared with the report (documented in docs/reports.md)
QC_THRESHOLDS = {"coverage": COVERAGE_MIN, "motion_max_mm": MOTION_MAX_MM, "snr": SNR_MIN,
                 "nm2t1w_similarity": NM2T1W_SIMILARITY_MIN,
                 "t1w2template_similarity": T1W2TEMPLATE_SIMILARITY_MIN}


def _flags(results: dict, motion: list, similarity: float, template_similarity: float) -> list[str]:
    flags = []
    for key in ("SN_bilateral", "VTA_bilateral", "LC_bilateral"):
        cov = results["coverage"].get(key)
        if cov is not None and cov < QC_THRESHOLDS["coverage"]:
            flags.append(f"low_coverage_{key.split('_')[0]}")
    if motion and max(motion) > QC_THRESHOLDS["motion_max_mm"]:
        flags.append("high_motion")
    snr = results.get("snr")
    if snr is not None and snr < QC_THRESHOLDS["snr"]:
        flags.append("low_snr")
    if not np.isfinite(similarity) or similarity < QC_THRESHOLDS["nm2t1w_similarity"]:
        flags.append("poor_nm2t1w_registration")
    if not np.isfinite(template_similarity) or template_similarity < QC_THRESHOLDS["t1w2template_similarity"]:
        flags.append("poor_t1w2template_registration")
    return flags


def _put(src, dst: str, sidecar: dict | None = None) -> None:
    dst = Path(dst)
    atomic_copy(Path(str(src)), dst)
    if sidecar is not None:
        stem = dst.name.split(".")[0]
        atomic_write_json(dst.with_name(stem + ".json"), sidecar)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("nmbids", "antspyx", "nipype", "pybids", "nibabel", "nilearn", "numpy", "scipy", "pandas"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _configure_nipype(log_dir: Path, options, sub: str) -> None:
    from nipype import config, logging as nlogging

    from .progress import NodeFinished

    config.update_config({
        "execution": {"crashdump_dir": str(log_dir), "crashfile_format": "txt",
                      "stop_on_first_crash": bool(options.stop_on_first_crash),
                      "remove_unnecessary_outputs": False, "check_version": False,
                      "create_report": False, "write_provenance": False,
                      # the scheduler loop sleeps this long between checks: 2 s (nipype's
                      # default) cost about 4 s per participant; keep it for batch plugins,
                      # whose checks query the cluster
                      "poll_sleep_duration": 2 if options.use_plugin else 0.2},
        # --resource-monitor: nipype samples each node's memory and CPU (summary in the log folder)
        "monitoring": {"enabled": bool(getattr(options, "resource_monitor", False)), "sample_frequency": 0.5},
    })
    if getattr(options, "resource_monitor", False):
        config.enable_resource_monitor()  # nipype caches the setting: set it explicitly
    else:
        config.disable_resource_monitor()
    nlogging.update_logging(config)
    # nipype prints node crashes with tracebacks to the console: route them to our log file only
    # Python warnings of the steps (numpy on a degenerate image, ...) too: the log file only
    logging.captureWarnings(True)
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils", "py.warnings"):
        lg = logging.getLogger(name)
        lg.handlers = [h for h in logging.getLogger("nmbids").handlers if isinstance(h, logging.FileHandler)]
        lg.propagate = False
    logging.getLogger("nipype.workflow").addHandler(NodeFinished(sub))  # -v: one line per finished step


PLUGIN_KEYS = {"plugin", "plugin_args"}


def read_plugin_file(path: Path) -> dict:
    """The ``--use-plugin`` YAML (``plugin:`` and ``plugin_args:``), checked before any work.

    Any problem is a usage error (exit 64) with one line naming the file.
    """
    import yaml
    from nipype.pipeline import plugins

    def bad(problem: str):
        return NmbidsError(f"--use-plugin: {problem}", code=EXIT_USAGE, path=str(path))

    try:
        spec = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise bad(f"cannot read the file ({err.strerror})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise bad(f"not valid YAML{where}") from None
    if not isinstance(spec, dict):
        raise bad("expected a mapping with 'plugin:' and optionally 'plugin_args:'")
    if set(spec) - PLUGIN_KEYS:
        raise bad(f"unknown key(s) {', '.join(sorted(map(str, set(spec) - PLUGIN_KEYS)))} "
                  "(allowed: plugin, plugin_args)")
    name = spec.get("plugin")
    known = sorted(n[:-len("Plugin")] for n in dir(plugins) if n.endswith("Plugin"))
    if not isinstance(name, str) or name not in known:
        raise bad(f"unknown nipype plugin {name!r} (one of: {', '.join(known)})")
    args = spec.get("plugin_args") or {}
    if not isinstance(args, dict):
        raise bad("'plugin_args' must be a mapping")
    return {"plugin": name, "plugin_args": args}


def _user_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (containers run with -u)
        return "nmbids"


def _plugin(options) -> dict:
    nprocs = options.nprocs or 1
    if options.use_plugin:
        spec = read_plugin_file(options.use_plugin)
        # nipype's batch plugins (SLURM, SGE, PBS, ...) name jobs after $LOGNAME, which containers
        # and batch jobs often lack
        os.environ.setdefault("LOGNAME", _user_name())
        if spec["plugin"] in ("MultiProc", "LegacyMultiProc"):  # --nprocs/--mem unless the file says
            spec["plugin_args"].setdefault("n_procs", nprocs)
            spec["plugin_args"].setdefault("raise_insufficient", False)
            if options.mem:
                spec["plugin_args"].setdefault("memory_gb", options.mem)
        return spec
    if nprocs <= 1:
        return {"plugin": "Linear"}
    args = {"n_procs": nprocs, "raise_insufficient": False}
    if options.mem:
        args["memory_gb"] = options.mem
    return {"plugin": "MultiProc", "plugin_args": args}


def measures_dictionary(ref_stat: str) -> dict:
    """The JSON data dictionary of the measures table: every column and every measure."""
    sizes = ", ".join(f"{roi} {v:g}" for roi, v in TOP_VOLUME_MM3.items())
    top_volume = f"make up a fixed volume per side ({sizes} mm3; twice that for bilateral)"
    return {
        "participant_id": {"Description": "participant label, with 'sub-'"},
        "session_id": {"Description": "session label with 'ses-', or n/a when the dataset has no sessions"},
        "source": {"Description": "the NM image measured, relative to the BIDS root"},
        "acq_type": {"Description": "acquisition type", "Levels": {
            "GREMT": "gradient echo with magnetization transfer", "FSE": "T1-weighted fast/turbo spin echo",
            "MTR": "MT on/off pair"}},
        "roi": {"Description": "region", "Levels": {
            "SN": "substantia nigra (search region; NM-rich voxels found from the data)",
            "VTA": "ventral tegmental area; not yet reliable: " + " ".join(
                f"{p.unreliable['VTA']}." for p in PROFILES.values() if "VTA" in p.unreliable),
            "LC": "locus coeruleus",
            "LC_rostral": "superior third of the LC slices", "LC_middle": "middle third",
            "LC_caudal": "inferior third", "CC": "crus cerebri (reference for SN and VTA)",
            "PT": "pontine tegmentum (reference for LC)"}},
        "hemi": {"Description": "hemisphere", "Levels": {"L": "left", "R": "right",
                                                        "bilateral": "left and right pooled voxelwise"}},
        "measure": {"Description": "what was measured", "Levels": {
            "cr": "contrast ratio with the profile's default method (see 'method'): (I - ref(R)) / ref(R)",
            "cr_roimean": "mean over all ROI voxels of (I - ref(R)) / ref(R)",
            "cr_threshold": "mean (I - ref(R)) / ref(R) over the ROI voxels with I > ref(R) + k*sd(R)",
            "cr_top_volume": "CR of the brightest ROI voxels (method top_volume, the SN and VTA default until "
                             "voxels were chosen by their neighbours): it reads high at low SNR",
            "cr_max_per_slice": "slice-wise CR of the brightest voxels per slice (method max_per_slice; the "
                                "LC default before): reads high at low SNR",
            "cnr": "(mean(I) - mean(R)) / sd(R), sd with ddof=1",
            "volume_mm3": "number of ROI voxels with I > ref(R) + k*sd(R), times the voxel volume",
            "coverage": "fraction of the template-space ROI inside the NM slab",
            "reference_value": f"ref(R): the {ref_stat} of the reference region intensities",
            "mtr": "mean of 100 * (off - on) / off over the ROI's tissue voxels (fluid, MTR < half the "
                   "reference regions' MTR, left out)",
            "mtr_threshold": "mean of 100 * (off - on) / off over the NM-rich ROI voxels (I_on > ref(R) + k*sd(R))",
            "mt_enhancement": "mean of on / off over the ROI's tissue voxels"}},
        "value": {"Description": "the value; n/a when it cannot be measured honestly (ROI coverage "
                                 "below 0.5, fewer than 5 voxels, no reference)"},
        "unit": {"Description": "unit of value", "Levels": {"ratio": "unitless", "mm3": "cubic millimetres",
                 "fraction": "0 to 1", "percent": "percent", "a.u.": "arbitrary image units"}},
        "method": {"Description": "how the value was made", "Levels": {
            "threshold": "mean CR of the voxels above ref(R) + k*sd(R) (k in the threshold_k<k> label)",
            "top_volume": f"mean CR of the brightest ROI voxels that {top_volume}: the same volume in "
                          "every subject",
            "neighbour_top_volume": f"mean CR of the ROI voxels that {top_volume}, chosen by the mean of "
                                    "their 8 in-plane neighbours (the voxel itself left out), so that the "
                                    "choice does not see the noise of the values averaged",
            "roi_mean": "mean over the whole ROI", "max_per_slice":
            "per slice, the mean of the 3 brightest ROI voxels against the slice's reference; averaged",
            "neighbour_max_per_slice": "per slice, the mean of the 3 ROI voxels with the brightest 8 in-plane "
                                       "neighbours against the slice's reference; averaged over slices",
            "template_roi_in_slab": "template ROI voxels covered by the slab / all ROI voxels",
            "reference": "statistic of the reference region"}},
        "space": {"Description": "where the value was measured", "Levels": {
            "native": "on the NM image's own grid, with the template's regions pulled onto it",
            "template": "on the NM image resampled to the output template, with the template's regions "
                        "and reference regions (the acquisition profile's choice for the VTA); coverage "
                        "is always measured there"}},
        "reference": {"Description": "reference region of the value (CC, PT) or n/a"},
        "ref_stat": {"Description": "statistic of the reference region: mode (Gaussian kernel density "
                                    "estimate), median or mean"},
    }


def qc_dictionary() -> dict:
    return {
        "participant_id": {"Description": "participant label"},
        "session_id": {"Description": "session label or n/a"},
        "source": {"Description": "the NM image, relative to the BIDS root"},
        "acq_type": {"Description": "GREMT, FSE or MTR"},
        "n_repeats": {"Description": "repeats realigned and averaged (runs or volumes)"},
        "motion_mean_mm": {"Description": "mean displacement of the repeats after the first, relative to it",
                           "Units": "mm"},
        "motion_max_mm": {"Description": "largest displacement of any repeat relative to the first", "Units": "mm"},
        "snr": {"Description": SNR_DESCRIPTION, "Units": "ratio"},
        "nm2t1w_similarity": {"Description": "|Pearson r| between the NM slab and the T1w resampled onto it "
                                             "after rigid registration, inside the slab"},
        "t1w2template_similarity": {"Description": "|Pearson r| between the warped T1w and the template "
                                                   "in the brainstem box"},
        "coverage_SN": {"Description": "fraction of the template SN inside the slab", "Units": "fraction"},
        "coverage_VTA": {"Description": "fraction of the template VTA inside the slab", "Units": "fraction"},
        "coverage_LC": {"Description": "fraction of the template LC inside the slab", "Units": "fraction"},
        "flags": {"Description": "';'-separated QC warnings: low_coverage_<ROI> (< 0.5), high_motion "
                                 f"(> 1.5 mm), low_snr (< {SNR_MIN:g}), poor_nm2t1w_registration (similarity < 0.3), "
                                 "poor_t1w2template_registration (similarity < 0.5)"},
    }
