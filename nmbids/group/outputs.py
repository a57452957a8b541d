"""Atomic writers for the group outputs, and the data dictionaries of its tables.

Every file is written to a temporary file in the destination folder and then
renamed over the destination with :func:`os.replace`, so a killed job never
leaves a truncated file that looks complete (``docs/outputs.md``).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from ..outputs import atomic_path as _atomic_path
from ..contract import names
from ..contract.exits import EXIT_CANTCREAT, NmbidsError
from ..contract.tables import measure_levels, measures_dictionary, qc_dictionary

NA = "n/a"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """``nmbids.outputs.atomic_path``, with a failure to create the file as a NmbidsError."""
    try:
        with _atomic_path(path) as tmp:
            yield tmp
    except OSError as exc:
        if Path(path).exists() or not isinstance(exc, (PermissionError, FileNotFoundError)):
            raise
        raise NmbidsError(f"cannot create {path}: {exc.strerror or exc}", EXIT_CANTCREAT) from exc


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: Path, data: dict) -> Path:
    return write_text(path, json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n")


def _jsonable(obj):
    """Make numpy scalars, NaN and paths JSON-safe (NaN becomes null)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _column_strings(series: pd.Series) -> list[str]:
    """One column as TSV cells: floats with 10 significant digits, ``n/a`` for missing."""
    if pd.api.types.is_float_dtype(series):
        return [NA if x != x else "%.10g" % x for x in series.to_numpy(dtype=float).tolist()]
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    labels = np.array([str(u) for u in uniques] + [NA], dtype=object)
    return labels[codes].tolist()  # code -1 (missing) picks the trailing n/a


def iter_tsv(df: pd.DataFrame, chunk: int = 50_000):
    """Yield the TSV text of ``df`` in blocks of ``chunk`` rows (bounded memory)."""
    yield "\t".join(map(str, df.columns)) + "\n"
    for start in range(0, len(df), chunk):
        part = df.iloc[start:start + chunk]
        cols = [_column_strings(part.iloc[:, j]) for j in range(part.shape[1])]
        yield "".join("\t".join(row) + "\n" for row in zip(*cols))


def tsv_text(df: pd.DataFrame) -> str:
    """The TSV text nmbids writes: tab-separated, ``n/a`` for missing, 10 significant digits.

    Same text as ``df.to_csv(sep="\\t", na_rep="n/a", float_format="%.10g")``, about twice as
    fast on large tables (pandas' writer formats cell by cell).
    """
    return "".join(iter_tsv(df))


def write_tsv(path: Path, df: pd.DataFrame, dictionary: dict, extra: dict | None = None) -> Path:
    """Write ``df`` and its JSON data dictionary (``path`` with ``.json``).

    ``dictionary`` maps column name to ``{"Description": ..., ["Units": ...]}``;
    every column of ``df`` must be described. ``extra`` adds top-level keys
    (e.g. the model that made the table).
    """
    missing = [c for c in df.columns if c not in dictionary]
    if missing:
        raise ValueError(f"columns without a description in the data dictionary: {missing}")
    meta = {c: dictionary[c] for c in df.columns}
    if extra:
        meta.update(extra)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for block in iter_tsv(df):
            fh.write(block)
    write_json(Path(str(path)[: -len(".tsv")] + ".json"), meta)
    return Path(path)


def save_with(path: Path, writer: Callable[[Path], None]) -> Path:
    """Run ``writer(tmp_path)`` and rename the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def save_figure(fig, path: Path) -> Path:
    """Save a matplotlib figure atomically (SVG without a date, so reruns are identical)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".")
    metadata = {"Date": None} if fmt == "svg" else None

    def _write(tmp: Path) -> None:
        # constrained layout does the fitting; bbox_inches="tight" would draw the figure twice
        fig.savefig(tmp, format=fmt, metadata=metadata, dpi=100)

    return save_with(path, _write)


def save_nifti(img, path: Path, sidecar: dict | None = None) -> Path:
    save_with(path, lambda tmp: img.to_filename(str(tmp)))
    if sidecar is not None:
        write_json(names.sidecar(path), sidecar)
    return Path(path)


# ---------------------------------------------------------------------------
# Data dictionaries (also the source of docs/group.md)
# ---------------------------------------------------------------------------

# the participant tables' columns, as the participant level describes them (one definition)
MEASURE_COLUMNS_DOC = measures_dictionary()
QC_COLUMNS_DOC = qc_dictionary()

STATS_COLUMNS_DOC = {
    "roi": MEASURE_COLUMNS_DOC["roi"],
    "hemi": MEASURE_COLUMNS_DOC["hemi"],
    "measure": MEASURE_COLUMNS_DOC["measure"],
    "term": {"Description": "Model term. Group contrasts are '<column>[<level> vs <reference>]'; a continuous "
                            "predictor or covariate is its column name; a categorical covariate is "
                            "'<column>[<level> vs <first level>]'."},
    "estimate": {"Description": "OLS coefficient of the term: the covariate-adjusted mean difference for a group "
                                "contrast, the change in the outcome per unit of a continuous term.",
                 "Units": "unit of the measure (per unit of the term for continuous terms)"},
    "se": {"Description": "Standard error of the estimate (classical OLS, or HC3 heteroskedasticity-consistent "
                          "when the robust option is on)."},
    "ci_low": {"Description": "Lower bound of the 95% confidence interval of the estimate (t distribution)."},
    "ci_high": {"Description": "Upper bound of the 95% confidence interval of the estimate (t distribution)."},
    "p": {"Description": "Two-sided p-value of the t-test of the estimate."},
    "p_fdr": {"Description": "Benjamini-Hochberg FDR-adjusted p over the family of all group-contrast (or "
                             "predictor) rows of this table; n/a for covariate rows."},
    "effect_size": {"Description": "Hedges' g for group contrasts (covariate-adjusted mean difference divided by "
                                   "the unadjusted pooled within-group SD of the two groups, times the small-sample "
                                   "correction 1 - 3/(4(n1+n2)-9)); standardized beta b*sd(x)/sd(y) for every other "
                                   "term (x the design column, 0/1 for a categorical level)."},
    "n": {"Description": "Number of participants in the model."},
}

CHANGE_COLUMNS_DOC = {
    "roi": MEASURE_COLUMNS_DOC["roi"],
    "hemi": MEASURE_COLUMNS_DOC["hemi"],
    "measure": MEASURE_COLUMNS_DOC["measure"],
    "session_from": {"Description": "Baseline session: the participant's earliest session (natural sort of labels)."},
    "session_to": {"Description": "The later session compared with session_from."},
    "n": {"Description": "Participants with a value in both sessions."},
    "mean_from": {"Description": "Mean value in session_from over those participants."},
    "mean_to": {"Description": "Mean value in session_to over those participants."},
    "mean_change": {"Description": "Mean within-participant change, value(session_to) - value(session_from)."},
    "sd_change": {"Description": "Standard deviation (ddof=1) of the within-participant change."},
    "t": {"Description": "Paired t statistic (scipy.stats.ttest_rel)."},
    "p": {"Description": "Two-sided p-value of the paired t-test."},
    "p_fdr": {"Description": "Benjamini-Hochberg FDR-adjusted p over all rows of this table."},
}

PARTICIPANTS_COLUMNS_DOC = {
    "participant_id": MEASURE_COLUMNS_DOC["participant_id"],
    "sessions": {"Description": "Sessions whose measures were collected, ';'-separated (n/a: none, or no sessions)."},
    "has_measures": {"Description": "yes when at least one readable measures table with a finite value was found."},
    "in_stats": {"Description": "yes when the participant entered the ROI models (group_stats.tsv); "
                                "n/a when no model was fitted."},
    "in_voxelwise": {"Description": "yes when the participant's contrast-ratio map entered a voxelwise test "
                                    "that was run; n/a when no voxelwise test was run."},
    "reason": {"Description": "Why the participant (or part of its data) was left out, n/a when nothing was."},
}

OUTLIER_COLUMNS_DOC = {
    "participant_id": MEASURE_COLUMNS_DOC["participant_id"],
    "session_id": MEASURE_COLUMNS_DOC["session_id"],
    "variable": {"Description": "The flagged variable: '<roi>_<hemi>_<measure>' or a QC metric."},
    "value": {"Description": "The flagged value."},
    "robust_z": {"Description": "0.6745 (value - median) / MAD over all participants and sessions; flagged when "
                                "|robust_z| > 3.5 (Iglewicz and Hoaglin 1993)."},
}

CLUSTER_COLUMNS_DOC = {
    "cluster_id": {"Description": "Cluster number (sub-peaks get a letter suffix), from "
                                  "nilearn.reporting.get_clusters_table."},
    "x": {"Description": "Peak x coordinate (template space).", "Units": "mm"},
    "y": {"Description": "Peak y coordinate (template space).", "Units": "mm"},
    "z": {"Description": "Peak z coordinate (template space).", "Units": "mm"},
    "peak_t": {"Description": "t statistic at the peak (sign gives the direction of the contrast)."},
    "cluster_size_mm3": {"Description": "Volume of the cluster of FWE-significant voxels.", "Units": "mm3"},
    "region": {"Description": "nmbids atlas region at the peak (n/a outside the atlas)."},
}

CLUSTERLEVEL_COLUMNS_DOC = {
    "cluster_id": {"Description": "Cluster number, 1 = smallest cluster-size FWE p (ties: the larger cluster)."},
    "n_voxels": {"Description": "Number of voxels of the cluster: 6-connected voxels of the tested mask whose "
                                "two-sided p is below the cluster-forming threshold (ClusterFormingThreshold), "
                                "positive and negative t apart."},
    "size_mm3": {"Description": "Volume of the cluster.", "Units": "mm3"},
    "peak_t": {"Description": "Largest |t| of the cluster, with its sign (the direction of the contrast)."},
    "x": {"Description": "x coordinate of the peak (template space).", "Units": "mm"},
    "y": {"Description": "y coordinate of the peak (template space).", "Units": "mm"},
    "z": {"Description": "z coordinate of the peak (template space).", "Units": "mm"},
    "region": {"Description": "nmbids atlas region at the peak (n/a in the dilation rim of the mask)."},
    "p_fwe_size": {"Description": "Cluster-level FWE-corrected p of the cluster's size: the fraction of the "
                                  "permutations whose largest cluster is at least as large (nilearn "
                                  "non_parametric_inference, logp_max_size)."},
    "p_fwe_mass": {"Description": "Cluster-level FWE-corrected p of the cluster's mass (sum of |t| minus the "
                                  "cluster-forming t over its voxels; nilearn logp_max_mass)."},
    "peak_p_fwe": {"Description": "Voxel-level FWE-corrected p at the peak (maximum |t| over the mask; "
                                  "the voxelwise_<contrast>_logp_fwe map)."},
}


def outcome_doc(column: str, roi: str, hemi: str, measure: str) -> dict:
    desc, unit = measure_levels().get(measure, (measure, None))
    out = {"Description": f"{desc}; region {roi}, hemisphere {hemi}."}
    if unit:
        out["Units"] = unit
    return out
