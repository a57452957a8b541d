"""QC warnings of the reports: values *as written* in the QC and measures tables against
the thresholds of :mod:`nmbids.contract.thresholds`; nothing here recomputes a measure."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..acquisitions import PROFILES
from ..contract.thresholds import (AXIAL_TILT_MAX_DEG, COVERAGE_MIN, CR_MAX, CR_MEASURES, CR_MIN,  # noqa: F401
                                   MOTION_MAX_MM, NM2T1W_SIMILARITY_MIN, SNR_MIN, T1W2TEMPLATE_SIMILARITY_MIN,
                                   THRESHOLDS)

NA = "n/a"


@dataclass(frozen=True)
class QCWarning:
    """A value (as written in a table) that crossed a threshold."""

    session_id: str
    source: str
    what: str  # e.g. "coverage_SN" or "cr SN L"
    value: str  # exactly as written
    rule: str
    table: str  # "qc" or "measures"


def as_float(text: object) -> float | None:
    """Parse a table cell; None for n/a, empty or non-numeric cells."""
    if text is None:
        return None
    s = str(text).strip()
    if not s or s == NA:
        return None
    try:
        value = float(s)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def coverage_low(value: object) -> bool:
    v = as_float(value)
    return v is not None and v < COVERAGE_MIN


def cr_implausible(value: object) -> bool:
    v = as_float(value)
    return v is not None and not (CR_MIN <= v <= CR_MAX)


def unreliable_reason(row: dict[str, str]) -> str | None:
    """Why the CR (MTR for MT pairs) of this measures row's ROI is not yet reliable on its
    acquisition (the profile's ``unreliable``), or None."""
    profile = PROFILES.get(row.get("acq_type", ""))
    return profile.unreliable.get(row.get("roi", "")) if profile else None


def qc_row_warnings(row: dict[str, str]) -> list[QCWarning]:
    """Warnings for one row of *_desc-nm_qc.tsv."""
    out: list[QCWarning] = []

    def add(col: str, rule: str) -> None:
        out.append(QCWarning(row.get("session_id", NA), row.get("source", NA), col,
                             row.get(col, NA), rule, "qc"))

    for col in row:
        if col.startswith("coverage_") and coverage_low(row[col]):
            add(col, f"< {COVERAGE_MIN}")
    v = as_float(row.get("motion_max_mm"))
    if v is not None and v > MOTION_MAX_MM:
        add("motion_max_mm", f"> {MOTION_MAX_MM} mm")
    v = as_float(row.get("snr"))
    if v is not None and v < SNR_MIN:
        add("snr", f"< {SNR_MIN:g}")
    v = as_float(row.get("slice_tilt_deg"))
    if v is not None and v > AXIAL_TILT_MAX_DEG:
        add("slice_tilt_deg", f"> {AXIAL_TILT_MAX_DEG:g} deg: not axial slices, the LC is measured on the template's")
    v = as_float(row.get("nm2t1w_similarity"))
    if v is not None and v < NM2T1W_SIMILARITY_MIN:
        add("nm2t1w_similarity", f"< {NM2T1W_SIMILARITY_MIN}")
    v = as_float(row.get("t1w2template_similarity"))
    if v is not None and v < T1W2TEMPLATE_SIMILARITY_MIN:
        add("t1w2template_similarity", f"< {T1W2TEMPLATE_SIMILARITY_MIN}")
    return out


def measures_row_warnings(row: dict[str, str]) -> list[QCWarning]:
    """Warnings for one row of *_desc-nm_measures.tsv."""
    measure = row.get("measure", "")
    what = f"{measure} {row.get('roi', NA)} {row.get('hemi', NA)}"
    if measure == "coverage" and coverage_low(row.get("value")):
        rule = f"< {COVERAGE_MIN}"
    elif measure in CR_MEASURES and cr_implausible(row.get("value")):
        rule = f"outside {CR_MIN} .. {CR_MAX}"
    elif measure.startswith(("cr", "mtr")) and as_float(row.get("value")) is not None and unreliable_reason(row):
        rule = f"not yet reliable: {unreliable_reason(row)}"
    else:
        return []
    return [QCWarning(row.get("session_id", NA), row.get("source", NA), what,
                      row.get("value", NA), rule, "measures")]


def collect_warnings(qc_rows: list[dict[str, str]],
                     measures_rows: list[dict[str, str]]) -> list[QCWarning]:
    """All threshold warnings for the rows of a QC table and a measures table."""
    out: list[QCWarning] = []
    for row in qc_rows:
        out.extend(qc_row_warnings(row))
    for row in measures_rows:
        out.extend(measures_row_warnings(row))
    return out
