"""``run_group``: the group level of nmbids, from participant outputs to reports."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from ..contract import names
from . import outputs
from .collect import (MEASURE_COLUMNS, NA, QC_COLUMNS, Collection, collect, cross_sectional,
                      cross_sectional_image_qc, long_table, participant_columns, read_exclusions, wide_table)
from ..contract.exits import EXIT_FAILURE, EXIT_IOERR, EXIT_NO_INPUT, EXIT_OK, EXIT_USAGE, NmbidsError
from .stats import (NOT_OUTCOMES, OUTLIER_Z, build_design, find_outliers, fit_all, image_covariates,
                    within_subject_change)

DEFAULT_GROUP_COLUMN = "group"
DEFAULT_PERMUTATION_SEED = 0  # when --random-seed is not given


def run_group(bids_dir: Path, output_dir: Path, *, participant_label=None, session_label=None,
              group_column=None, covariates=(), reference_group=None, predictor=None,
              robust=False, harmonize=None, n_permutations=1000, seed=None, voxelwise=True,
              exclude=None, logger=None) -> int:
    """Run the group level; return an exit code (see :mod:`nmbids.contract.exits`).

    0 ok, 1 unexpected failure, 64 usage error, 65 bad input data, 66 required input
    missing, 73 cannot create output, 74 I/O error.

    ``exclude``: a TSV of participant_id, session_id, source and reason (``--exclude``);
    those rows are left out and listed with their reason in group_participants.tsv.

    Errors are logged as one line on ``logging.getLogger("nmbids")`` (or
    ``logger``); tracebacks only at DEBUG level.
    """
    log = logger or logging.getLogger("nmbids")
    if isinstance(covariates, str):  # "age,sex" or "age sex"
        covariates = [c for c in covariates.replace(",", " ").split() if c]
    try:
        return _run(Path(bids_dir), Path(output_dir), participant_label, session_label, group_column,
                    tuple(covariates or ()), reference_group, predictor, bool(robust), harmonize,
                    n_permutations, DEFAULT_PERMUTATION_SEED if seed is None else seed, bool(voxelwise),
                    exclude, log)
    except NmbidsError as exc:
        log.error("%s", exc)
        return exc.code
    except OSError as exc:
        log.error("group level I/O error: %s", exc)
        log.debug("traceback of the failure", exc_info=True)
        return EXIT_IOERR
    except Exception as exc:  # a bug: one line for the user, the traceback for developers
        log.error("group level failed: %s: %s", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        log.debug("traceback of the failure", exc_info=True)
        return EXIT_FAILURE


def _participants_dictionary(coll: Collection, columns: list[str]) -> dict:
    out = {}
    for c in columns:
        desc = coll.participants_sidecar.get(c)
        out[c] = desc if isinstance(desc, dict) else {"Description": f"Column '{c}' of participants.tsv."}
    return out


def _run(bids_dir, output_dir, participant_label, session_label, group_column, covariates, reference_group,
         predictor, robust, harmonize, n_permutations, seed, voxelwise, exclude, log) -> int:
    t0 = time.perf_counter()
    if not output_dir.is_dir():
        raise NmbidsError(f"OUTPUT_DIR {output_dir} does not exist (run the participant level first)", EXIT_NO_INPUT)
    if not bids_dir.is_dir():
        raise NmbidsError(f"BIDS_DIR {bids_dir} does not exist", EXIT_NO_INPUT)
    try:
        n_permutations = int(n_permutations)
        seed = int(seed)
    except (TypeError, ValueError):
        raise NmbidsError("--n-permutations and --random-seed must be integers", EXIT_USAGE) from None
    if n_permutations < 1:
        raise NmbidsError("--n-permutations must be at least 1", EXIT_USAGE)
    files = names.GroupFiles.of(output_dir)
    group_dir = files.root

    coll = collect(bids_dir, output_dir, participant_label, session_label, log,
                   exclusions=read_exclusions(Path(exclude)) if exclude else None)
    included = coll.included
    log.info("group level: %d participant(s) with measures, %d left out", len(included), len(coll.excluded))

    # ---- tables and design (all checks before anything is written) ---------------------------------
    long = long_table(coll)
    measures_ok = coll.measures[coll.measures["participant_id"].isin(included)]
    parts = participant_columns(coll, [])
    image = image_covariates(covariates, [] if parts is None else list(parts.columns))
    wide = wide_table(measures_ok, log, qc=coll.qc, image_qc=tuple(image))
    parts = participant_columns(coll, list(wide.table.columns) + ["sessions"])
    cross = cross_sectional(wide)
    if parts is not None:
        cross = cross.merge(parts, on="participant_id", how="left")
    if (group_column is None and predictor is None and parts is not None and DEFAULT_GROUP_COLUMN in cross
            and cross[DEFAULT_GROUP_COLUMN].dropna().nunique() >= 2):
        group_column = DEFAULT_GROUP_COLUMN
        log.info("using the '%s' column of participants.tsv as the group column", group_column)
    design = build_design(cross, coll.participants is not None, group_column=group_column,
                          covariates=covariates, reference_group=reference_group, predictor=predictor,
                          extra_categorical=[harmonize] if harmonize else [], robust=robust,
                          participants_columns=[] if parts is None else list(parts.columns))
    if not design.has_test:
        log.warning("no group column or predictor: statistics skipped (tables and QC only)")
    for pid, why in sorted(design.excluded.items()):
        log.warning("%s left out of the models: %s", pid, why)
    # ---- tables --------------------------------------------------------------------------------
    pcols = [c for c in long.columns if c not in MEASURE_COLUMNS]
    outputs.write_tsv(files.measures, long,
                      {**outputs.MEASURE_COLUMNS_DOC, **_participants_dictionary(coll, pcols)},
                      {"Description": "Every participant's measure rows (long form), participants.tsv joined."})
    wide_out = wide.table if parts is None else wide.table.merge(parts, on="participant_id", how="left")
    wide_doc = {"participant_id": outputs.MEASURE_COLUMNS_DOC["participant_id"],
                "session_id": outputs.MEASURE_COLUMNS_DOC["session_id"],
                "acq_type": {"Description": "Acquisition type(s) the row's values come from, ';'-separated."}}
    wide_doc.update({c: outputs.outcome_doc(c, r, h, m) for c, r, h, m in wide.outcomes})
    wide_doc.update(_participants_dictionary(coll, [c for c in wide_out.columns if c not in wide_doc]))
    outputs.write_tsv(files.measures_wide, wide_out, wide_doc, {
        "Description": "One row per participant and session, one column per <roi>_<hemi>_<measure>.",
        "AcquisitionTypes": wide.acq_types,
        "SourceSelection": "When several sources give a value, the acquisition type measured in the most "
                           "participants for that column is used (runs averaged); others only when a "
                           "participant lacks it."})
    qc = coll.qc[coll.qc["participant_id"].isin(included)]
    outputs.write_tsv(files.qc, qc[QC_COLUMNS], outputs.QC_COLUMNS_DOC,
                      {"Description": "QC rows of every participant (one per NM source)."})

    outcome_cols = [c for c, _, _, m in wide.outcomes if m not in NOT_OUTCOMES]

    # ---- harmonisation -----------------------------------------------------------------------
    analysis = cross
    harmonization = {"Applied": False, "Reason": "not requested"}
    if harmonize:
        from .harmonize import combat

        analysis, harmonization = combat(cross, outcome_cols, design, harmonize, log)
        if harmonization.get("Applied"):
            keep = ["participant_id", "sessions"] + outcome_cols
            doc = {"participant_id": outputs.MEASURE_COLUMNS_DOC["participant_id"],
                   "sessions": {"Description": "Sessions of the participant; each value comes from the earliest "
                                               "session that has it."}}
            doc.update({c: outputs.outcome_doc(c, r, h, m) for c, r, h, m in wide.outcomes if c in keep})
            outputs.write_tsv(files.measures_combat, analysis[keep], doc,
                              {"Description": "ComBat-harmonised values, one row per participant (the table "
                                              "group_stats.tsv is fitted on).", "Harmonization": harmonization})

    # ---- statistics ----------------------------------------------------------------------------
    stats_df, skipped = fit_all(analysis, wide.outcomes, design, log, image_values=cross_sectional_image_qc(wide))
    model_meta = {
        "Formula": design.describe(),
        "GroupColumn": design.group_column, "Levels": design.levels, "ReferenceGroup": design.reference,
        "Predictor": design.predictor, "Covariates": design.covariates,
        "CategoricalCovariates": design.categorical,
        "ImageCovariates": {c: "column of the QC table: in each model, the mean over the NM images that outcome's "
                               "values come from" for c in design.image},
        "StandardErrors": "HC3 (heteroskedasticity-consistent), t-based inference" if robust else "classical OLS",
        "EffectSize": "Hedges' g (covariate-adjusted mean difference / unadjusted pooled SD x J) for group "
                      "contrasts; standardized beta b*sd(x)/sd(y) for other terms",
        "FDRFamily": "all rows of the group-contrast (or predictor) terms in this table, Benjamini-Hochberg",
        "Sessions": "cross-sectional: each outcome from the participant's earliest session that has it",
        "OutcomesNotModelled": {"QC measures": list(NOT_OUTCOMES), "skipped": skipped},
        "NumberOfParticipants": int(len(design.frame)) if design.has_test else 0,
    }
    outputs.write_tsv(files.stats, stats_df, outputs.STATS_COLUMNS_DOC,
                      {"Description": "OLS models of each roi x hemi x measure (statsmodels).", "Model": model_meta,
                       "Harmonization": harmonization})
    change = None
    if any(len([s for s in ses if s != NA]) > 1 for ses in coll.sessions.values()):
        change = within_subject_change(wide.table, wide.outcomes)
        outputs.write_tsv(files.change, change, outputs.CHANGE_COLUMNS_DOC,
                          {"Description": "Within-participant change from the earliest session (paired t-test, "
                                          "scipy.stats.ttest_rel); values as measured (not harmonised)."})

    # ---- voxelwise -----------------------------------------------------------------------------
    vox = None
    if voxelwise:
        from .voxelwise import run_voxelwise

        vox = run_voxelwise(output_dir, group_dir, design, measures_ok,
                            {p: coll.sessions[p] for p in included}, n_permutations=n_permutations, seed=seed,
                            batch_column=harmonize, logger=log, qc=coll.qc)

    # ---- participants and outliers -----------------------------------------------------------------
    status = participants_status(coll, design, vox)
    outputs.write_tsv(files.participants, status, outputs.PARTICIPANTS_COLUMNS_DOC,
                      {"Description": "Every participant considered, whether it was used, and why not."})
    outliers = find_outliers(wide.table, wide.outcomes, qc)
    outputs.write_tsv(files.qc_outliers, outliers, outputs.OUTLIER_COLUMNS_DOC,
                      {"Description": f"Values with |robust z| > {OUTLIER_Z}.", "Threshold": OUTLIER_Z})

    # ---- reports ------------------------------------------------------------------------------------
    from .report import write_reports

    write_reports(group_dir, coll=coll, wide=wide, analysis=analysis, design=design, stats=stats_df,
                  change=change, vox=vox, status=status, outliers=outliers, qc=qc, harmonization=harmonization,
                  model_meta=model_meta, n_permutations=n_permutations, logger=log)
    log.info("group level done in %.1f s: %s", time.perf_counter() - t0, group_dir)
    return EXIT_OK


def participants_status(coll: Collection, design, vox) -> pd.DataFrame:
    rows = []
    in_model = set(design.frame["participant_id"]) if design.has_test else set()
    for pid in sorted(coll.sessions):
        reasons = []
        if pid in coll.excluded:
            reasons.append(coll.excluded[pid])
        elif design.has_test and pid in design.excluded:
            reasons.append(f"not in the models: {design.excluded[pid]}")
        if vox is not None and pid in vox.reasons and pid not in coll.excluded:
            # a participant in a test may still have had a map left out (another session, another type)
            what = "voxelwise, a map left out" if vox.included.get(pid) else "not voxelwise"
            reasons.append(f"{what}: {vox.reasons[pid]}")
        reasons += [n for n in coll.notes.get(pid, []) if n not in reasons and pid not in coll.excluded]
        ses = [s for s in coll.sessions[pid] if s != NA]
        has = pid not in coll.excluded
        if vox is None or vox.skipped and not vox.contrasts:
            in_vox = NA
        else:
            in_vox = "yes" if vox.included.get(pid) else "no"
        rows.append({"participant_id": pid, "sessions": ";".join(ses) if ses else NA,
                     "has_measures": "yes" if has else "no",
                     "in_stats": ("yes" if pid in in_model else "no") if design.has_test else NA,
                     "in_voxelwise": in_vox, "reason": "; ".join(reasons) if reasons else NA})
    return pd.DataFrame(rows, columns=list(outputs.PARTICIPANTS_COLUMNS_DOC))
