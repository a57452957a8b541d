"""ComBat harmonisation of the cross-sectional wide table (neuroCombat).

ComBat (Johnson et al. 2007; Fortin et al. 2017, 2018) removes additive and
multiplicative batch (site/scanner) effects from each feature while
protecting the variables of interest: here the group (or continuous
predictor) and the covariates of the model, so that harmonisation does not
remove the effect to be tested. QC covariates (``--covariates snr``) are not
protected: they describe the images, and what site does to them is what ComBat
removes; they still enter the models fitted on the harmonised values.

Details:

* features = the outcome columns (roi x hemi x measure) that the models use;
* samples = participants with complete design values (one row each);
* features missing in some participants (e.g. LC outside the slab) are
  harmonised in sets sharing the same participants, so no value is imputed;
  empirical Bayes is used when a set has two or more features (one feature:
  plain location/scale adjustment, ``eb=False``);
* skipped with a warning (values left as measured) when a site has fewer than
  two participants, when there is a single site, or when the protected
  variables are confounded with site (rank-deficient design).
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import pandas as pd

from .stats import Design

MIN_PER_SITE = 2


def _neurocombat_version() -> str:
    try:
        from importlib.metadata import version

        return version("neuroCombat")
    except Exception:  # pragma: no cover - metadata missing
        return "unknown"


def _design_rank_ok(covars: pd.DataFrame, batch: str, cat: list[str], cont: list[str]) -> bool:
    parts = [pd.get_dummies(covars[batch].astype(str)).to_numpy(dtype=float)]
    for c in cat:
        parts.append(pd.get_dummies(covars[c].astype(str), drop_first=True).to_numpy(dtype=float))
    for c in cont:
        parts.append(covars[[c]].to_numpy(dtype=float))
    mat = np.column_stack(parts)
    return np.linalg.matrix_rank(mat) == mat.shape[1]


def combat(table: pd.DataFrame, columns: list[str], design: Design, batch_column: str,
           logger: logging.Logger | None = None) -> tuple[pd.DataFrame, dict]:
    """Harmonise ``columns`` of ``table`` (one row per participant) across ``batch_column``.

    Only participants in ``design.frame`` (complete design) are harmonised and
    returned. Returns (harmonised table, info for group_stats.json).
    """
    from neuroCombat import neuroCombat

    log = logger or logging.getLogger("nmbids")
    frame = design.frame
    rows = frame[["participant_id"]].merge(table, on="participant_id", how="left")
    batch = frame[f"_extra_{batch_column}"].astype(str).to_numpy()
    counts = pd.Series(batch).value_counts().sort_index()
    info = {"Applied": False, "Method": f"ComBat, neuroCombat {_neurocombat_version()}",
            "BatchColumn": batch_column, "ParticipantsPerBatch": counts.to_dict()}
    small = counts[counts < MIN_PER_SITE]
    if len(small):
        info["Reason"] = (f"site(s) with fewer than {MIN_PER_SITE} participants: "
                          f"{', '.join(map(str, small.index))}")
        log.warning("harmonisation skipped: %s", info["Reason"])
        return rows, info
    if len(counts) < 2:
        info["Reason"] = f"a single value of '{batch_column}'"
        log.warning("harmonisation skipped: %s", info["Reason"])
        return rows, info

    covars = pd.DataFrame({"batch": batch})
    cat, cont, protected = [], [], []
    if design.group_column:
        covars["group"] = frame["_group"].astype(str).to_numpy()
        cat.append("group")
        protected.append(design.group_column)
    if design.predictor:
        covars["predictor"] = frame["x_pred"].to_numpy(dtype=float)
        cont.append("predictor")
        protected.append(design.predictor)
    for i, cov in enumerate(design.covariates):
        if cov in design.image:
            continue  # a QC column (snr, motion): a property of the images, which ComBat may adjust
        if cov in design.categorical:
            covars[f"cov{i}"] = frame[f"_cat_{i}"].astype(str).to_numpy()
            cat.append(f"cov{i}")
        else:
            covars[f"cov{i}"] = frame[f"c_{i}"].to_numpy(dtype=float)
            cont.append(f"cov{i}")
        protected.append(cov)
    info["Protected"] = protected
    if not _design_rank_ok(covars, "batch", cat, cont):
        info["Reason"] = f"the protected variables ({', '.join(protected)}) are confounded with '{batch_column}'"
        log.warning("harmonisation skipped: %s", info["Reason"])
        return rows, info

    columns = [c for c in columns if c in rows.columns]
    values = rows[columns].to_numpy(dtype=float)
    finite = np.isfinite(values)
    patterns: dict[bytes, list[int]] = {}
    for j in range(len(columns)):
        if finite[:, j].sum():
            patterns.setdefault(finite[:, j].tobytes(), []).append(j)
    sets, left_alone, dropped = [], [], 0
    out = values.copy()
    for key, feats in patterns.items():
        sel = np.frombuffer(key, dtype=bool).copy()
        sub_counts = pd.Series(batch[sel]).value_counts()
        few = sub_counts[sub_counts < MIN_PER_SITE].index
        if len(few):  # a site with one value cannot be adjusted: its values are dropped
            drop = sel & np.isin(batch, list(few))
            out[np.ix_(drop, feats)] = np.nan
            dropped += int(drop.sum()) * len(feats)
            sel &= ~drop
        names = [columns[j] for j in feats]
        if pd.Series(batch[sel]).nunique() < 2:
            left_alone += names
            continue
        sub = covars.loc[sel].reset_index(drop=True)
        sub_cat = [c for c in cat if sub[c].nunique() > 1]
        sub_cont = [c for c in cont if sub[c].nunique() > 1]
        if not _design_rank_ok(sub, "batch", sub_cat, sub_cont):
            left_alone += names
            continue
        eb = len(feats) >= 2
        try:
            with contextlib.redirect_stdout(io.StringIO()), np.errstate(all="ignore"), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # priors of a one-feature set (eb=False)
                res = neuroCombat(dat=values[np.ix_(sel, feats)].T.copy(), covars=sub, batch_col="batch",
                                  categorical_cols=sub_cat, continuous_cols=sub_cont, eb=eb)
            adjusted = np.asarray(res["data"], dtype=float).T
            if not np.isfinite(adjusted).all():
                raise FloatingPointError("non-finite values")
        except Exception as exc:  # numerical failure of one feature set: leave it as measured
            log.warning("ComBat failed on %d feature(s) (%s); left as measured", len(feats), exc)
            left_alone += names
            continue
        out[np.ix_(sel, feats)] = adjusted
        sets.append({"Features": names, "N": int(sel.sum()), "EmpiricalBayes": eb})
    harmonised = rows.copy()
    harmonised[columns] = out
    info.update({"Applied": True, "FeatureSets": sets,
                 "Features": [f for s in sets for f in s["Features"]],
                 "NotHarmonized": left_alone, "ValuesDropped": dropped,
                 "Note": "ComBat with parametric empirical Bayes (Johnson et al. 2007; Fortin et al. 2018); "
                         "the group/predictor and covariates are protected."})
    if left_alone:
        log.warning("%d feature(s) could not be harmonised and are used as measured", len(left_alone))
    if dropped:
        log.warning("%d value(s) dropped: their site had a single value of that feature", dropped)
    log.info("ComBat harmonised %d feature(s) across %d sites of '%s'", len(info["Features"]), len(counts),
             batch_column)
    return harmonised, info
