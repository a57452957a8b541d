"""The two tables of the participant level, their columns and their data dictionaries.

``*_desc-nm_measures.tsv`` (one row per region, hemisphere and measure) and
``*_desc-nm_qc.tsv`` (one row per NM image) are what the group level reads; their columns and
JSON dictionaries are defined here and nowhere else. The group level's own tables reuse these
column descriptions (``group/outputs.py``).
"""
from __future__ import annotations

from ..acquisitions import MTR_NUCLEUS_METHOD, MTR_TOP_VOLUME_MM3, NEIGHBOUR_BOX, PROFILES, SIMEX, TOP_VOLUME_MM3
from ..measures import SHARED_NOISE_RATIO, SIMEX_DRAWS, SIMEX_LEVELS
from .thresholds import AXIAL_TILT_MAX_DEG, flag_rules

MEASURE_COLUMNS = ["participant_id", "session_id", "source", "acq_type", "roi", "hemi", "measure",
                   "value", "unit", "method", "space", "reference", "ref_stat"]
MEASURE_REQUIRED = ["participant_id", "roi", "hemi", "measure", "value"]  # a table without them is unusable

QC_COLUMNS = ["participant_id", "session_id", "source", "acq_type", "n_repeats", "motion_mean_mm",
              "motion_max_mm", "snr", "neighbour_distance", "slice_tilt_deg", "nm2t1w_similarity",
              "t1w2template_similarity", "coverage_SN", "coverage_VTA", "coverage_LC", "flags"]
QC_REQUIRED = ["participant_id"]
QC_NUMERIC = [c for c in QC_COLUMNS if c not in ("participant_id", "session_id", "source", "acq_type", "flags")]

ACQ_TYPES = {"GREMT": "gradient echo with magnetization transfer", "FSE": "T1-weighted fast/turbo spin echo",
             "MTR": "MT on/off pair"}

# The QC table's ``snr`` column.
SNR_DESCRIPTION = ("SNR of the NM image as measured (repeats averaged, bias-corrected): the reference "
                   "value of the map's reference region (crus cerebri; pontine tegmentum for FSE) over "
                   "the noise sd estimated in that region from each voxel's difference to the mean of its "
                   "R in-plane neighbours at neighbour_distance (R = 8 at 1, 16 at 2; 1.4826 x MAD / "
                   "sqrt(1 + 1/R)); the tissue's own spread does not count as noise")
NEIGHBOUR_DISTANCE_DESCRIPTION = (
    "in-plane distance of the neighbours whose mean chooses the voxels of the neighbour_* CR and "
    "MTR methods and estimates the noise: 1 (the 8 nearest) when adjacent voxels have independent "
    "noise; 2 (the ring of 16 beyond them) when they share it, as in images reconstructed on a finer "
    "grid than acquired (zero-filling, 'interpolation'): the noise sd from the 8 nearest is below "
    f"{SHARED_NOISE_RATIO:g} x the one from the ring of 16 in the reference regions (measures.neighbour_distance). "
    "The LC and VTA voxels are chosen by the 8 nearest on every image (nuclei about 2 mm across)")


def measure_levels(ref_stat: str | None = None) -> dict[str, tuple[str, str]]:
    """Every value of the ``measure`` column: (what it is, its unit)."""
    ref = f"the {ref_stat}" if ref_stat else "the statistic of column ref_stat"
    mtr_sizes = ", ".join(f"{roi} {v:g}" for roi, v in MTR_TOP_VOLUME_MM3.items())
    return {
        "cr": ("contrast ratio with the profile's default method (see 'method'): (I - ref(R)) / ref(R)", "ratio"),
        "cr_roimean": ("mean over all ROI voxels of (I - ref(R)) / ref(R)", "ratio"),
        "cr_threshold": ("mean (I - ref(R)) / ref(R) over the ROI voxels with I > ref(R) + k*sd(R)", "ratio"),
        "cr_top_volume": ("CR of the brightest ROI voxels (method top_volume, the SN and VTA default until "
                          "voxels were chosen by their neighbours): it reads high at low SNR", "ratio"),
        "cr_neighbour_top_volume": ("CR of the ROI voxels chosen by their neighbours (method "
                                    "neighbour_top_volume) without the SIMEX step of the GRE-MT SN default: "
                                    "it reads low at low SNR (0.85 of the truth at SNR 8 per repeat)", "ratio"),
        "cr_max_per_slice": ("slice-wise CR of the brightest voxels per slice (method max_per_slice; the "
                             "LC default before): reads high at low SNR", "ratio"),
        "cr_neighbour_max_per_slice": ("GRE-MT LC: slice-wise CR of the voxels chosen by their 8 in-plane "
                                       "neighbours (method neighbour_max_per_slice, the default before the 3 x 3 x 3 "
                                       "box chose them): it reads low at low SNR (0.38 of the truth at SNR 8 per "
                                       "repeat)", "ratio"),
        "cnr": ("(mean(I) - mean(R)) / sd(R), sd with ddof=1", "ratio"),
        "volume_mm3": ("number of ROI voxels with I > ref(R) + k*sd(R), times the voxel volume", "mm3"),
        "coverage": ("fraction of the template-space ROI inside the NM slab", "fraction"),
        "reference_value": (f"ref(R): {ref} of the reference region intensities", "a.u."),
        "mtr": ("target ROIs: MTR = 100 * (off - on) / off of the nucleus found in the search region (method "
                f"{MTR_NUCLEUS_METHOD}: the mean MTR of the tissue voxels that make up a fixed volume per side "
                f"({mtr_sizes} mm3) and whose 8 in-plane neighbours deviate most, on one side, from the region's "
                "line of neighbour-mean MTR against MT-off); reference regions (CC, PT): the mean over the "
                "region's tissue voxels", "percent"),
        "mtr_roimean": ("mean of 100 * (off - on) / off over the search region's tissue voxels (fluid, MTR < half "
                        "the reference regions' MTR, left out): mixes the nucleus with the tissue around it and "
                        "compresses differences between subjects (the default mtr before the nucleus was found)",
                        "percent"),
        "mtr_threshold": ("mean of 100 * (off - on) / off over the NM-rich ROI voxels (I_on > ref(R) + k*sd(R))",
                          "percent"),
        "mt_enhancement": ("mean of on / off over the ROI's tissue voxels", "ratio"),
    }


def measures_dictionary(ref_stat: str | None = None) -> dict:
    """The JSON data dictionary of the measures table: every column and every measure.

    ``ref_stat``: the run's reference statistic (the participant level's table); None for a
    table that mixes runs (the group level's)."""
    sizes = ", ".join(f"{roi} {v:g}" for roi, v in TOP_VOLUME_MM3.items())
    top_volume = f"make up a fixed volume per side ({sizes} mm3; twice that for bilateral)"
    levels = ", ".join(f"{z:g}" for z in SIMEX_LEVELS)
    return {
        "participant_id": {"Description": "participant label, with 'sub-'"},
        "session_id": {"Description": "session label with 'ses-', or n/a when the dataset has no sessions"},
        "source": {"Description": "the NM image measured, relative to the BIDS root"},
        "acq_type": {"Description": "acquisition type", "Levels": dict(ACQ_TYPES)},
        "roi": {"Description": "region", "Levels": {
            "SN": "substantia nigra (search region; NM-rich voxels found from the data)",
            "VTA": "ventral tegmental area; not yet reliable: " + " ".join(
                f"{p.unreliable['VTA']}." for p in PROFILES.values() if "VTA" in p.unreliable),
            "LC": "locus coeruleus" + "".join(f"; not yet reliable on {p.name}: {p.unreliable['LC']}"
                                              for p in PROFILES.values() if "LC" in p.unreliable),
            "LC_rostral": "superior third of the LC slices", "LC_middle": "middle third",
            "LC_caudal": "inferior third", "CC": "crus cerebri (reference for SN and VTA)",
            "PT": "pontine tegmentum (reference for LC)"}},
        "hemi": {"Description": "hemisphere", "Levels": {"L": "left", "R": "right",
                                                        "bilateral": "left and right pooled voxelwise"}},
        "measure": {"Description": "what was measured",
                    "Levels": {k: what for k, (what, _) in measure_levels(ref_stat).items()}},
        "value": {"Description": "the value; n/a when it cannot be measured honestly (ROI coverage "
                                 "below 0.5, fewer than 5 voxels, no reference)"},
        "unit": {"Description": "unit of value", "Levels": {"ratio": "unitless", "mm3": "cubic millimetres",
                 "fraction": "0 to 1", "percent": "percent", "a.u.": "arbitrary image units"}},
        "method": {"Description": "how the value was made", "Levels": {
            "threshold": "mean CR of the voxels above ref(R) + k*sd(R) (k in the threshold_k<k> label)",
            "top_volume": f"mean CR of the brightest ROI voxels that {top_volume}: the same volume in "
                          "every subject",
            "neighbour_top_volume": f"mean CR of the ROI voxels that {top_volume}, chosen by the mean of "
                                    "their 8 in-plane neighbours (the voxel itself left out; for the SN the "
                                    "ring of 16 beyond them on images of QC neighbour_distance 2), so that "
                                    "the choice does not see the noise of the values averaged",
            SIMEX + "neighbour_top_volume": "neighbour_top_volume taken to no noise by simulation-extrapolation "
                                            f"(measures.simex): re-measured after adding noise of {levels} times "
                                            "the image's noise variance (noise sd of the reference region; "
                                            f"{SIMEX_DRAWS} draws each), a line fitted to the CR against the "
                                            "variance added and extended to minus the image's own",
            MTR_NUCLEUS_METHOD: "MT pairs: mean MTR of the ROI tissue voxels that make up a fixed volume per side "
                                "and deviate most, by the mean of their 8 in-plane neighbours, from the ROI's line "
                                "of MTR against MT-off, on the side that deviates more (measures.mtr_nucleus)",
            "roi_mean": "mean over the whole ROI", "max_per_slice":
            "per slice, the mean of the 3 brightest ROI voxels against the slice's reference; averaged",
            "neighbour_max_per_slice": "per slice, the mean of the 3 ROI voxels with the brightest 8 in-plane "
                                       "neighbours against the slice's reference; averaged over slices",
            NEIGHBOUR_BOX + "max_per_slice": "per slice, the mean of the 3 ROI voxels with the brightest 26 "
                                             "neighbours in their 3 x 3 x 3 box (the 8 in-plane and the 9 in each "
                                             "adjacent slice, the voxel itself left out) against the slice's "
                                             "reference; averaged over slices. Where adjacent slices share their "
                                             "noise the 8 in-plane neighbours choose (neighbour_max_per_slice)",
            "template_roi_in_slab": "template ROI voxels covered by the slab / all ROI voxels",
            "reference": "statistic of the reference region"}},
        "space": {"Description": "where the value was measured", "Levels": {
            "native": "on the NM image's own grid, with the template's regions pulled onto it",
            "template": "on the NM image resampled to the output template, with the template's regions "
                        "and reference regions (where an acquisition profile chooses it, and the LC of slabs "
                        f"whose slices are not axial, QC slice_tilt_deg > {AXIAL_TILT_MAX_DEG:g}); coverage "
                        "is always measured there"}},
        "reference": {"Description": "reference region of the value (CC, PT) or n/a"},
        "ref_stat": {"Description": "statistic of the reference region: mode (Gaussian kernel density "
                                    "estimate), median or mean"},
    }


def qc_dictionary() -> dict:
    """The JSON data dictionary of the QC table."""
    flags = ", ".join(f"{flag} ({rule})" for flag, rule in flag_rules().items())
    return {
        "participant_id": {"Description": "participant label, with 'sub-'"},
        "session_id": {"Description": "session label with 'ses-', or n/a when the dataset has no sessions"},
        "source": {"Description": "the NM image, relative to the BIDS root"},
        "acq_type": {"Description": "acquisition type", "Levels": dict(ACQ_TYPES)},
        "n_repeats": {"Description": "repeats realigned and averaged (runs or volumes)"},
        "motion_mean_mm": {"Description": "mean displacement of the repeats after the first, relative to it",
                           "Units": "mm"},
        "motion_max_mm": {"Description": "largest displacement of any repeat relative to the first", "Units": "mm"},
        "snr": {"Description": SNR_DESCRIPTION, "Units": "ratio"},
        "neighbour_distance": {"Description": NEIGHBOUR_DISTANCE_DESCRIPTION, "Units": "voxels"},
        "slice_tilt_deg": {"Description": "angle between the NM slab's slice normal and the head's superior-inferior "
                                          f"axis (0: axial slices); above {AXIAL_TILT_MAX_DEG:g} the slices are not "
                                          "axial and the LC is measured on the template's axial slices",
                           "Units": "degrees"},
        "nm2t1w_similarity": {"Description": "|Pearson r| between the NM slab and the T1w resampled onto it "
                                             "after rigid registration, inside the slab"},
        "t1w2template_similarity": {"Description": "|Pearson r| between the warped T1w and the template "
                                                   "in the brainstem box"},
        "coverage_SN": {"Description": "fraction of the template SN inside the slab", "Units": "fraction"},
        "coverage_VTA": {"Description": "fraction of the template VTA inside the slab", "Units": "fraction"},
        "coverage_LC": {"Description": "fraction of the template LC inside the slab", "Units": "fraction"},
        "flags": {"Description": f"';'-separated QC warnings, n/a when none: {flags}"},
    }
