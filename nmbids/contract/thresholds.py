"""QC thresholds: the one place where each is defined.

The participant level raises its QC flags (``nmbids.qc``) with them, the reports warn with
them, and the data dictionaries (``nmbids.contract.tables``) and docs/reports.md quote them.
docs/reports.md gives the same reasons; change both together.
"""
from __future__ import annotations

from dataclasses import dataclass

#: Fraction of an ROI (atlas weight) inside the NM slab below which its measures are
#: unreliable (partial coverage biases CR toward whatever part of the nucleus was imaged).
COVERAGE_MIN = 0.5
#: Largest displacement between repeats (QC motion_max_mm), in mm. Above about one
#: and a half voxels of a typical 1.5-3 mm NM slice, averaging repeats blurs the nuclei.
MOTION_MAX_MM = 1.5
#: SNR of the measured NM image (QC snr, unitless; roi_measures.qc_snr) below which the CR
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
#: Angle, in degrees, between an NM slab's slice normal and the head's superior-inferior
#: axis (QC slice_tilt_deg) above which its slices are not axial (a sagittal or coronal slab):
#: the LC, measured slice by slice across its rostro-caudal column, is then measured on the
#: template's axial slices (measures rows space == template). Half way between axial and not.
AXIAL_TILT_MAX_DEG = 45.0
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
    Threshold("unreliable", "measures rows measure cr* or mtr* of a ROI its acquisition profile marks",
              "warn on every value",
              "the validation shows the value does not track the truth well (VTA; LC MTR of MT pairs)"),
    Threshold("nm2t1w_similarity", "QC nm2t1w_similarity",
              f"warn when < {NM2T1W_SIMILARITY_MIN}",
              "the NM slab is probably misregistered to the T1w; ROIs may be misplaced "
              "(provisional value, see docs/reports.md)"),
    Threshold("t1w2template_similarity", "QC t1w2template_similarity",
              f"warn when < {T1W2TEMPLATE_SIMILARITY_MIN}",
              "the T1w → template registration probably failed; every ROI is misplaced"),
    Threshold("slice_tilt_deg", "QC slice_tilt_deg", f"warn when > {AXIAL_TILT_MAX_DEG:g} deg",
              "the slab's slices are not axial: its slice-wise LC values are measured on the template's "
              "axial slices (space template), not on the slab's own, and read lower (0.24-0.40 of the truth "
              "on phantom slabs, r 0.69-0.91): compare them only with each other"),
    Threshold("cr", "measures rows measure in " + ", ".join(CR_MEASURES),
              f"warn when outside {CR_MIN} .. {CR_MAX}",
              "implausible contrast ratio: wrong reference region, misplaced ROI or artefact"),
)


def flag_rules() -> dict[str, str]:
    """Each QC flag of the QC table's ``flags`` column and the rule that raises it (the
    participant level raises them in :func:`nmbids.qc.qc_flags`; the dictionary quotes them)."""
    return {
        "low_coverage_<ROI>": f"coverage_<ROI> < {COVERAGE_MIN:g}",
        "high_motion": f"motion_max_mm > {MOTION_MAX_MM:g} mm",
        "low_snr": f"snr < {SNR_MIN:g}",
        "poor_nm2t1w_registration": f"nm2t1w_similarity < {NM2T1W_SIMILARITY_MIN:g}",
        "poor_t1w2template_registration": f"t1w2template_similarity < {T1W2TEMPLATE_SIMILARITY_MIN:g}",
        "non_axial_slices": f"slice_tilt_deg > {AXIAL_TILT_MAX_DEG:g}",
    }
