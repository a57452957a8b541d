"""ROI statistics: one OLS model per roi x hemi x measure, and within-subject change.

Model (statsmodels formula API), for every outcome y = one column of the
cross-sectional wide table::

    y ~ group dummies (each non-reference level vs the reference) + covariates
    y ~ predictor + covariates                     (continuous predictor instead)

* Covariates: numeric columns of participants.tsv enter linearly; any other
  column is categorical, dummy coded against its first level (sorted). A name that
  is not a column of participants.tsv but a numeric column of the QC table (``snr``,
  ``motion_max_mm``, ...) is an *image* covariate: it enters linearly with, in each
  model, the QC value of the NM images that outcome's values come from (the mean
  over the runs averaged), so that an SN CR from GRE-MT is adjusted by the GRE-MT
  image's SNR and an LC CR from FSE by the FSE image's.
* ``robust=True``: HC3 heteroskedasticity-consistent standard errors
  (MacKinnon and White 1985), with t-based p-values and intervals.
* ``effect_size``: Hedges' g for group contrasts (covariate-adjusted mean
  difference / unadjusted pooled SD of the two groups x J, J = 1 - 3/(4N - 9));
  standardized beta b * sd(x) / sd(y) for every other term.
* ``p_fdr``: Benjamini-Hochberg over every group-contrast (or predictor) row
  of the table; covariate rows are not part of the family (n/a).

Rows with a missing value of the outcome or a design variable are dropped per
model; a group level with fewer than ``MIN_PER_LEVEL`` values is dropped from
that model; a model needs ``MIN_DF_RESID`` residual degrees of freedom.
"""
from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..measures import hedges_g
from ..contract.exits import EXIT_DATA, EXIT_NO_INPUT, EXIT_USAGE, NmbidsError
from ..contract.tables import QC_NUMERIC

STATS_COLUMNS = ["roi", "hemi", "measure", "term", "estimate", "se", "ci_low", "ci_high", "p", "p_fdr",
                 "effect_size", "n"]
CHANGE_COLUMNS = ["roi", "hemi", "measure", "session_from", "session_to", "n", "mean_from", "mean_to",
                  "mean_change", "sd_change", "t", "p", "p_fdr"]
# QC measures, not outcomes: kept in the tables, left out of the models (and of the FDR family)
NOT_OUTCOMES = ("coverage", "reference_value")
CONTROL_LABELS = ("control", "controls", "ctrl", "ctl", "hc", "healthy", "healthy_control",
                  "healthy_controls", "healthycontrol", "healthycontrols", "nc", "normal")
MIN_PER_LEVEL = 2
MIN_DF_RESID = 3
MIN_CHANGE_N = 3
OUTLIER_Z = 3.5  # |robust z| above which a value is flagged (Iglewicz and Hoaglin 1993)
ALPHA = 0.05


@dataclass
class Term:
    column: str  # safe column name in the design frame
    label: str  # the ``term`` written to group_stats.tsv
    kind: str  # "group", "predictor", "continuous", "categorical", "image" (a QC column, per outcome)
    level: str | None = None  # for group / categorical dummies


@dataclass
class Design:
    """The model every outcome is fitted with."""

    group_column: str | None = None
    levels: list[str] = field(default_factory=list)  # reference first
    reference: str | None = None
    predictor: str | None = None
    covariates: list[str] = field(default_factory=list)
    categorical: dict[str, list[str]] = field(default_factory=dict)  # covariate -> levels (first = baseline)
    image: list[str] = field(default_factory=list)  # covariates taken from the QC table, per outcome
    terms: list[Term] = field(default_factory=list)
    frame: pd.DataFrame | None = None  # participant_id + safe columns; complete rows only
    excluded: dict[str, str] = field(default_factory=dict)  # participant -> why not in the models
    robust: bool = False

    @property
    def tested(self) -> list[Term]:
        return [t for t in self.terms if t.kind in ("group", "predictor")]

    @property
    def has_test(self) -> bool:
        return bool(self.tested)

    def describe(self) -> str:
        rhs = []
        if self.group_column:
            rhs.append(f"C({self.group_column}, reference={self.reference!r})")
        if self.predictor:
            rhs.append(self.predictor)
        for c in self.covariates:
            rhs.append(f"C({c})" if c in self.categorical else c)
        return "value ~ " + (" + ".join(rhs) if rhs else "1")


def default_reference(levels: list[str]) -> str:
    """'control'-like level when present (case-insensitive), else the first level sorted."""
    levels = sorted(levels)
    for lev in levels:
        if re.sub(r"[\s-]+", "_", lev.strip().lower()) in CONTROL_LABELS:
            return lev
    return levels[0]


def image_covariates(covariates, participants_columns: list[str]) -> list[str]:
    """The covariates taken from the QC table: numeric QC columns that participants.tsv lacks
    (a participants.tsv column of the same name is the user's and wins)."""
    return [c for c in (covariates or ()) if c in QC_NUMERIC and c not in participants_columns]


def build_design(table: pd.DataFrame, participants_present: bool, group_column=None, covariates=(),
                 reference_group=None, predictor=None, extra_categorical=(), robust=False,
                 participants_columns: list[str] | None = None) -> Design:
    """Check the named columns and build the design frame.

    ``table``: one row per participant with participants.tsv columns as strings.
    ``extra_categorical``: columns that must be complete (e.g. the harmonisation
    batch) without entering the model. ``participants_columns``: the columns of
    participants.tsv (default: every column of ``table``); named columns must be among them,
    except image covariates (:func:`image_covariates`), whose values :func:`fit_all` takes per
    outcome. Raises :class:`NmbidsError` for unusable options or columns.
    """
    covariates = [c for c in (covariates or ()) if c]
    if group_column and predictor:
        raise NmbidsError("give either a group column or a continuous --predictor, not both", EXIT_USAGE)
    named = [c for c in [group_column, predictor, *covariates, *extra_categorical] if c]
    if len(set(named)) != len(named):
        raise NmbidsError(f"a column is named twice among group/predictor/covariates: {', '.join(named)}",
                         EXIT_USAGE)
    available = [c for c in (participants_columns if participants_columns is not None else table.columns)
                 if c not in ("participant_id", "sessions")]
    image = image_covariates(covariates, available)
    named = [c for c in named if c not in image]
    if named and not participants_present:
        raise NmbidsError(f"participants.tsv is missing from BIDS_DIR but column(s) {', '.join(named)} were named",
                         EXIT_NO_INPUT)
    lacking = [c for c in named if c not in available or c not in table.columns]
    if lacking:
        raise NmbidsError(f"participants.tsv has no column {', '.join(repr(c) for c in lacking)}"
                         f" (columns: {', '.join(available) or 'none'}; QC columns usable as covariates: "
                         f"{', '.join(QC_NUMERIC)})", EXIT_DATA)
    design = Design(group_column=group_column, predictor=predictor, covariates=list(covariates), image=image,
                    robust=robust)
    frame = pd.DataFrame({"participant_id": table["participant_id"].to_numpy()})
    missing = pd.Series(False, index=table.index)
    reasons: dict[str, list[str]] = {}

    def _flag(col: str, mask: pd.Series) -> None:
        nonlocal missing
        for pid in table.loc[mask & ~missing, "participant_id"]:
            reasons.setdefault(pid, []).append(f"missing value in '{col}'")
        missing = missing | mask

    for col in named:
        _flag(col, table[col].isna())

    if group_column:
        values = table[group_column].astype(object).where(table[group_column].notna())
        levels = sorted({str(v) for v in values.dropna()})
        if reference_group is not None and str(reference_group) not in levels:
            raise NmbidsError(f"reference group {reference_group!r} is not a level of '{group_column}' "
                             f"(levels: {', '.join(levels)})", EXIT_DATA)
        if len(levels) < 2:
            raise NmbidsError(f"column '{group_column}' needs at least two groups among the participants with "
                             f"outputs; found {levels or 'none'}", EXIT_DATA)
        ref = str(reference_group) if reference_group is not None else default_reference(levels)
        design.levels = [ref] + [lev for lev in levels if lev != ref]
        design.reference = ref
        for j, lev in enumerate(design.levels[1:], start=1):
            col = f"g_{j}"
            frame[col] = np.where(values.isna(), np.nan, (values.astype(str) == lev).astype(float))
            design.terms.append(Term(col, f"{group_column}[{lev} vs {ref}]", "group", lev))
        frame["_group"] = values.astype(object).to_numpy()
    if predictor:
        from .collect import numeric_or_none

        num = numeric_or_none(table[predictor])
        if num is None:
            raise NmbidsError(f"--predictor column '{predictor}' is not numeric", EXIT_DATA)
        if num.dropna().nunique() < 2:
            raise NmbidsError(f"--predictor column '{predictor}' is constant", EXIT_DATA)
        frame["x_pred"] = num.to_numpy()
        design.terms.append(Term("x_pred", predictor, "predictor"))
    from .collect import numeric_or_none

    for i, cov in enumerate(covariates):
        if cov in image:
            design.terms.append(Term(f"c_{i}", cov, "image"))
            continue
        num = numeric_or_none(table[cov])
        if num is not None:
            frame[f"c_{i}"] = num.to_numpy()
            design.terms.append(Term(f"c_{i}", cov, "continuous"))
            continue
        values = table[cov].astype(object).where(table[cov].notna())
        levels = sorted({str(v) for v in values.dropna()})
        design.categorical[cov] = levels
        for j, lev in enumerate(levels[1:], start=1):
            col = f"c_{i}_{j}"
            frame[col] = np.where(values.isna(), np.nan, (values.astype(str) == lev).astype(float))
            design.terms.append(Term(col, f"{cov}[{lev} vs {levels[0]}]", "categorical", lev))
        frame[f"_cat_{i}"] = values.to_numpy()
    for col in extra_categorical:
        frame[f"_extra_{col}"] = table[col].astype(object).where(table[col].notna()).to_numpy()

    design.excluded = {pid: "; ".join(r) for pid, r in reasons.items()}
    design.frame = frame.loc[~missing.to_numpy()].reset_index(drop=True)
    if design.has_test and len(design.frame) < 3:
        raise NmbidsError(f"only {len(design.frame)} participant(s) have complete values of "
                         f"{', '.join(named)}; nothing to test", EXIT_DATA)
    if group_column:
        present = sorted(set(design.frame["_group"].astype(str)))
        if len(present) < 2:
            raise NmbidsError(f"column '{group_column}' has fewer than two groups among participants with complete "
                             f"data ({', '.join(present) or 'none'})", EXIT_DATA)
    return design


def fit_outcome(data: pd.DataFrame, y_col: str, design: Design) -> tuple[list[dict], str | None]:
    """Fit one outcome; return (rows without roi/hemi/measure/p_fdr, reason when skipped)."""
    import statsmodels.formula.api as smf

    cols = [t.column for t in design.terms]
    d = data[[y_col] + cols + (["_group"] if design.group_column else [])]
    complete = np.isfinite(d[[y_col] + [t.column for t in design.terms if t.kind == "image"]].to_numpy(dtype=float))
    d = d[complete.all(axis=1)].rename(columns={y_col: "y"})
    if design.group_column:
        counts = d["_group"].value_counts()
        small = [lev for lev in design.levels if counts.get(lev, 0) < MIN_PER_LEVEL]
        if design.reference in small:
            return [], f"fewer than {MIN_PER_LEVEL} values in the reference group"
        if small:
            d = d[~d["_group"].isin(small)]
        if len(design.levels) - len(small) < 2:
            return [], f"fewer than two groups with {MIN_PER_LEVEL} or more values"
    terms = [t for t in design.terms if d[t.column].nunique() > 1]
    if any(t.kind == "predictor" for t in design.terms) and not any(t.kind == "predictor" for t in terms):
        return [], "the predictor is constant"
    n, k = len(d), len(terms) + 1
    if n - k < MIN_DF_RESID:
        return [], f"too few values (n={n}) for {k} parameters"
    y = d["y"].to_numpy(dtype=float)
    if not np.std(y) > 0:
        return [], "the outcome is constant"
    exog = np.column_stack([np.ones(n)] + [d[t.column].to_numpy(dtype=float) for t in terms])
    if np.linalg.matrix_rank(exog) < k:
        return [], "the design is rank deficient (collinear terms)"
    formula = "y ~ " + (" + ".join(t.column for t in terms) if terms else "1")
    fit_kw = {"cov_type": "HC3", "use_t": True} if design.robust else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = smf.ols(formula, data=d).fit(**fit_kw)
        ci = res.conf_int(alpha=ALPHA)
    rows = []
    sd_y = np.std(y, ddof=1)
    ref_mask = (d["_group"] == design.reference).to_numpy() if design.group_column else None
    for t in terms:
        est = float(res.params[t.column])
        if t.kind == "group":
            member = (d[t.column] == 1).to_numpy()
            es = hedges_g(y[member], y[ref_mask], difference=est)
        else:
            es = float(est * np.std(d[t.column].to_numpy(dtype=float), ddof=1) / sd_y)
        rows.append({"term": t.label, "estimate": est, "se": float(res.bse[t.column]),
                     "ci_low": float(ci.loc[t.column, 0]), "ci_high": float(ci.loc[t.column, 1]),
                     "p": float(res.pvalues[t.column]), "effect_size": es, "n": n, "_kind": t.kind})
    return rows, None


def fit_all(table: pd.DataFrame, outcomes: list[tuple[str, str, str, str]], design: Design,
            logger: logging.Logger | None = None,
            image_values: dict[str, pd.DataFrame] | None = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Fit every outcome; return (group_stats table, {outcome column: why skipped}).

    ``image_values``: for each image covariate, one row per participant and one column per
    outcome (``collect.cross_sectional_image_qc``); each model takes its own outcome's column.
    """
    from statsmodels.stats.multitest import multipletests

    log = logger or logging.getLogger("nmbids")
    keep = ["participant_id"] + [c for c, *_ in outcomes if c in table.columns]
    data = design.frame.merge(table[keep], on="participant_id", how="left")
    image_terms = [t for t in design.terms if t.kind == "image"]
    image_values = {name: v.set_index("participant_id") for name, v in (image_values or {}).items()}
    rows: list[dict] = []
    skipped: dict[str, str] = {}
    if design.has_test:
        for col, roi, hemi, measure in outcomes:
            if measure in NOT_OUTCOMES or col not in data.columns:
                continue
            for t in image_terms:
                per = image_values[t.label]
                data[t.column] = (per[col].reindex(data["participant_id"]).to_numpy(dtype=float)
                                  if col in per.columns else np.nan)
            out, why = fit_outcome(data, col, design)
            if why:
                skipped[col] = why
                continue
            for r in out:
                rows.append({"roi": roi, "hemi": hemi, "measure": measure, **r})
    if skipped:
        log.info("%d outcome(s) not modelled (e.g. %s: %s)", len(skipped), *next(iter(skipped.items())))
    df = pd.DataFrame(rows, columns=STATS_COLUMNS + ["_kind"])
    df["p_fdr"] = np.nan
    family = df["_kind"].isin(["group", "predictor"]).to_numpy() & np.isfinite(df["p"].to_numpy(dtype=float))
    if family.any():
        df.loc[family, "p_fdr"] = multipletests(df.loc[family, "p"].to_numpy(dtype=float), method="fdr_bh")[1]
    df = df.drop(columns="_kind")[STATS_COLUMNS]
    df["n"] = df["n"].astype("int64")
    return df, skipped


def within_subject_change(wide: pd.DataFrame, outcomes: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    """Change from each participant's earliest session to each later one (paired t-test).

    ``wide`` is sorted by participant then session (natural order), as built by
    :func:`nmbids.group.collect.wide_table`. Rows are grouped by the pair of
    session labels; pairs with fewer than ``MIN_CHANGE_N`` participants are left out.
    """
    from scipy import stats as sps
    from statsmodels.stats.multitest import multipletests

    rows = []
    t = wide[wide["session_id"] != "n/a"]
    if t["participant_id"].duplicated().any():
        first = t.groupby("participant_id", sort=False).head(1).set_index("participant_id")
        later = t[t["participant_id"].duplicated()]
        for col, roi, hemi, measure in outcomes:
            if measure in NOT_OUTCOMES:
                continue
            base = first[col]
            for ses_to, grp in later.groupby("session_id", sort=False):
                b = base.reindex(grp["participant_id"]).to_numpy(dtype=float)
                a = grp[col].to_numpy(dtype=float)
                ses_from = first["session_id"].reindex(grp["participant_id"]).to_numpy()
                for sf in pd.unique(ses_from):
                    sel = (ses_from == sf) & np.isfinite(a) & np.isfinite(b)
                    if sel.sum() < MIN_CHANGE_N:
                        continue
                    diff = a[sel] - b[sel]
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        res = sps.ttest_rel(a[sel], b[sel])
                    rows.append({"roi": roi, "hemi": hemi, "measure": measure, "session_from": sf,
                                 "session_to": ses_to, "n": int(sel.sum()), "mean_from": float(b[sel].mean()),
                                 "mean_to": float(a[sel].mean()), "mean_change": float(diff.mean()),
                                 "sd_change": float(diff.std(ddof=1)), "t": float(res.statistic),
                                 "p": float(res.pvalue)})
    df = pd.DataFrame(rows, columns=CHANGE_COLUMNS)
    ok = np.isfinite(df["p"].to_numpy(dtype=float))
    if ok.any():
        df.loc[ok, "p_fdr"] = multipletests(df.loc[ok, "p"].to_numpy(dtype=float), method="fdr_bh")[1]
    if len(df):
        from .collect import natural_key

        key = [natural_key(s) for s in df["session_to"]]
        df = df.assign(_k=key).sort_values(["_k"], kind="stable").drop(columns="_k")
        # keep the outcome order within each session pair
        df = df.reset_index(drop=True)
    return df


def robust_z(values: np.ndarray) -> np.ndarray:
    """0.6745 (x - median) / MAD (Iglewicz and Hoaglin 1993); NaN where MAD is 0 or x missing."""
    x = np.asarray(values, dtype=float)
    fin = np.isfinite(x)
    z = np.full(x.shape, np.nan)
    if fin.sum() < 3:
        return z
    med = np.median(x[fin])
    mad = np.median(np.abs(x[fin] - med))
    if mad > 0:
        z[fin] = 0.6745 * (x[fin] - med) / mad
    return z


def find_outliers(wide: pd.DataFrame, outcomes, qc: pd.DataFrame) -> pd.DataFrame:
    frames = []
    for col, *_ in outcomes:
        z = robust_z(wide[col].to_numpy(dtype=float))
        hit = np.abs(np.nan_to_num(z)) > OUTLIER_Z
        if hit.any():
            frames.append(pd.DataFrame({"participant_id": wide["participant_id"].to_numpy()[hit],
                                        "session_id": wide["session_id"].to_numpy()[hit], "variable": col,
                                        "value": wide[col].to_numpy(dtype=float)[hit], "robust_z": z[hit]}))
    from .collect import QC_NUMERIC

    for col in QC_NUMERIC:
        if col not in qc:
            continue
        z = robust_z(qc[col].to_numpy(dtype=float))
        hit = np.abs(np.nan_to_num(z)) > OUTLIER_Z
        if hit.any():
            frames.append(pd.DataFrame({"participant_id": qc["participant_id"].to_numpy()[hit],
                                        "session_id": qc["session_id"].to_numpy()[hit], "variable": col,
                                        "value": qc[col].to_numpy(dtype=float)[hit], "robust_z": z[hit]}))
    cols = ["participant_id", "session_id", "variable", "value", "robust_z"]
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True)[cols]
