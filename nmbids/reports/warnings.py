"""QC warning thresholds: the one place where they are defined.

The report (and the group report) compare numbers *as written* in the QC and
measures tables against these thresholds; nothing here recomputes a measure.
docs/reports.md lists the same thresholds with their reasons; change both
together.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..acquisitions import PROFILES

NA = "n/a"

#: Fraction of an ROI (atlas weight) inside the NM slab below which its measures are
#: unreliable (partial coverage biases CR toward whatever part of the nucleus was imaged).
COVERAGE_MIN = 0.5
#: Largest displacement between repeats (QC motion_max_mm), in mm. Above about one
#: and a half voxels of a typical 1.5-3 mm NM slice, averaging repeats blurs the nuclei.
MOTION_MAX_MM = 1.5
#: SNR of the measured NM image (QC snr, unitless; quantify.qc_snr) below which the CR
#: estimates drift: on the SNR sweep (docs/validation_snr.md) LC CR read 0.70-0.76 of the
#: truth at image SNR 12.6-14 (0.83-0.88 above 20) and FSE SN 0.49-0.76 at 7-13.
SNR_MIN = 15.0
#: NM -> T1w registration similarity (QC nm2t1w_similarity), below which the slab is
#: probably misregistered. Provisional: set for a correlation-type metric in [-1, 1]
#: computed inside the slab; recalibrate on phantom runs when the metric is fixed.
NM2T1W_SIMILARITY_MIN = 0.3
#: T1w -> template similarity (QC t1w2template_similarity, |Pearson r| in the brainstem box)
#: below which the registration has probably failed: on phantom heads successful runs gave
#: 0.69-0.89 and failed ones (a head pitched by 45 degrees) 0.01-0.07.
T1W2TEMPLATE_SIMILARITY_MIN = 0.5
#: Plausible range of contrast ratios (unitless). Typical SN CR on GRE-MT is 0.1-0.3,
#: FSE lower, LC 0.1-0.2; values outside this range usually mean a wrong reference
#: region, a misplaced ROI or an artefact.
CR_MIN, CR_MAX = -0.1, 0.6
#: Measures (measure column) that are contrast ratios and get the range check.
CR_MEASURES = ("cr", "cr_roimean", "cr_threshold")


@dataclass(frozen=True)
class Threshold:
    """One documented QC threshold, for display."""

    key: str
    applies_to: str
    rule: str
    reason: str


THRESHOLDS: tuple[Threshold, ...] = (
    Threshold("coverage", "QC coverage_<ROI> columns; measures rows measure == coverage",
              f"warn when < {COVERAGE_MIN}",
              "less than half of the ROI lies inside the NM slab; its measures are biased or n/a"),
    Threshold("motion_max_mm", "QC motion_max_mm (between repeats)",
              f"warn when > {MOTION_MAX_MM} mm",
              "repeats moved more than about a voxel; the averaged image is blurred"),
    Threshold("snr", "QC snr", f"warn when < {SNR_MIN:g}",
              "below it the phantom validation's CR estimates read low by more than 20 % "
              "(LC, FSE): average more repeats"),
    Threshold("unreliable", "measures rows measure cr* of a ROI its acquisition profile marks",
              "warn on every value",
              "the validation shows the value does not track the truth well (VTA)"),
    Threshold("nm2t1w_similarity", "QC nm2t1w_similarity",
              f"warn when < {NM2T1W_SIMILARITY_MIN}",
              "the NM slab is probably misregistered to the T1w; ROIs may be misplaced "
              "(provisional value, see docs/reports.md)"),
    Threshold("t1w2template_similarity", "QC t1w2template_similarity",
              f"warn when < {T1W2TEMPLATE_SIMILARITY_MIN}",
              "the T1w → template registration probably failed; every ROI is misplaced"),
    Threshold("cr", "measures rows measure in " + ", ".join(CR_MEASURES),
              f"warn when outside {CR_MIN} .. {CR_MAX}",
              "implausible contrast ratio: wrong reference region, misplaced ROI or artefact"),
)


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
    """Why the CR of this measures row's ROI is not yet reliable on its acquisition (the
    profile's ``unreliable``), or None."""
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
    elif measure.startswith("cr") and as_float(row.get("value")) is not None and unreliable_reason(row):
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
