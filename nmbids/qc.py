"""QC of the participant level: images refused before any work, the flags of the QC table,
and the NM images whose measures are refused after it (the slab misses the nuclei).

The thresholds are :mod:`nmbids.contract.thresholds`'; this module applies them.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .bids import NO_T1W_REASON, SessionPlan
from .contract.exits import EXIT_DATA, EXIT_NO_INPUT, EXIT_OK, NmbidsError
from .contract.names import QC_TAIL
from .contract.thresholds import (AXIAL_TILT_MAX_DEG, COVERAGE_MIN, MOTION_MAX_MM, NM2T1W_SIMILARITY_MIN,
                                  SNR_MIN, T1W2TEMPLATE_SIMILARITY_MIN)
from .images import check_image

LOG = logging.getLogger("nmbids")


def rel(path, bids_dir: Path) -> str:
    """``path`` relative to the BIDS root (as the tables and messages name files)."""
    try:
        return str(Path(path).relative_to(bids_dir))
    except ValueError:
        return str(path)


def preflight(plan: SessionPlan, bids_dir: Path, outcome, refused: dict | None = None) -> SessionPlan:
    """Refuse unreadable, empty or broken images before any work is spent on them.

    ``outcome`` (an ``execute.Outcome``) hears each refusal; ``refused``: T1w path -> its
    refusal, shared by the participant's sessions, so that a T1w lent to another session is
    checked and reported once."""
    sub = f"sub-{plan.participant}"
    refused = {} if refused is None else refused
    if plan.t1w:
        try:
            if plan.t1w in refused:
                raise refused[plan.t1w]
            check_image(plan.t1w, participant=plan.participant, rel=rel(plan.t1w, bids_dir),
                        kind="T1w", allow_4d=False)
        except NmbidsError as err:
            if plan.t1w not in refused:
                outcome.fail(err.code, err.line(), plan, rel(plan.t1w, bids_dir))
                refused[plan.t1w] = err
            plan.ignored.append({"path": rel(plan.t1w, bids_dir), "reason": err.problem})
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
            shapes = [check_image(f, participant=plan.participant, rel=rel(f, bids_dir), kind="NM",
                                  allow_4d=True) for f in nm.files]
            if nm.mt_off:
                off = check_image(nm.mt_off, participant=plan.participant, rel=rel(nm.mt_off, bids_dir),
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


def qc_flags(coverage: dict, snr: float | None, motion: list, similarity: float,
             template_similarity: float, slice_tilt: float | None = None) -> list[str]:
    """The QC table's flags of one NM image (rules: ``contract.thresholds.flag_rules``)."""
    flags = []
    for key in ("SN_bilateral", "VTA_bilateral", "LC_bilateral"):
        cov = coverage.get(key)
        if cov is not None and cov < COVERAGE_MIN:
            flags.append(f"low_coverage_{key.split('_')[0]}")
    if motion and max(motion) > MOTION_MAX_MM:
        flags.append("high_motion")
    if snr is not None and snr < SNR_MIN:
        flags.append("low_snr")
    if not np.isfinite(similarity) or similarity < NM2T1W_SIMILARITY_MIN:
        flags.append("poor_nm2t1w_registration")
    if not np.isfinite(template_similarity) or template_similarity < T1W2TEMPLATE_SIMILARITY_MIN:
        flags.append("poor_t1w2template_registration")
    if slice_tilt is not None and slice_tilt > AXIAL_TILT_MAX_DEG:
        flags.append("non_axial_slices")
    return flags


def qc_row(*, participant: str, session_id: str, source: str, acq_type: str, motion: list, results: dict,
           similarity: float, template_similarity: float) -> dict:
    """The QC table's row of one NM image (columns: ``contract.tables.QC_COLUMNS``)."""
    cov = results["coverage"]
    flags = qc_flags(cov, results.get("snr"), motion, similarity, template_similarity, results.get("slice_tilt_deg"))
    return {
        "participant_id": f"sub-{participant}", "session_id": session_id, "source": source, "acq_type": acq_type,
        "n_repeats": len(motion), "motion_mean_mm": float(np.mean(motion[1:])) if len(motion) > 1 else 0.0,
        "motion_max_mm": float(np.max(motion)), "snr": results["snr"],
        "neighbour_distance": results.get("neighbour_distance"), "slice_tilt_deg": results.get("slice_tilt_deg"),
        "nm2t1w_similarity": similarity, "t1w2template_similarity": template_similarity,
        "coverage_SN": cov.get("SN_bilateral"), "coverage_VTA": cov.get("VTA_bilateral"),
        "coverage_LC": cov.get("LC_bilateral"), "flags": ";".join(flags) if flags else None}


def flag_counts(output_dir: Path, participant: str) -> dict[str, int]:
    """NM images per QC flag in the participant's QC tables as written (every session), in the
    order the flags are first met: what the console's done line reports."""
    import pandas as pd

    counts: dict[str, int] = {}
    for table in sorted((Path(output_dir) / f"sub-{participant}").glob(f"**/anat/*{QC_TAIL}")):
        try:
            flags = pd.read_csv(table, sep="\t", usecols=["flags"], dtype=str, na_values=["n/a"])["flags"]
        except (OSError, ValueError, pd.errors.ParserError):  # unreadable, or no flags column
            continue
        for flag in flags.dropna().str.split(";").explode():
            counts[flag] = counts.get(flag, 0) + 1
    return counts


def slab_refusal(coverage: dict, profile) -> str | None:
    """Why an NM image's measures are refused after it was processed, or None: every nucleus
    the profile measures lies mostly outside the slab (coverage below the profile's minimum)."""
    targets = {k: c for k, c in coverage.items() if k.split("_")[0] in profile.references
               and k.endswith("bilateral")}
    if targets and all((c or 0) < profile.min_coverage for c in targets.values()):
        return ("the slab misses the nuclei (coverage "
                + ", ".join(f"{k.split('_')[0]} {c or 0:.2f}" for k, c in targets.items()) + "); no measures reported")
    return None
