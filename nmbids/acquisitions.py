"""Acquisition types: how to recognise each one, and one profile per type.

A profile holds everything that differs between acquisitions (which ROIs are measured
against which reference region, the default CR method, the threshold), so that adding an
acquisition type means adding a profile here, not scattering ``if`` statements.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

GREMT, FSE, MTR = "GREMT", "FSE", "MTR"
ACQ_TYPES = (GREMT, FSE, MTR)

# Statistics of a reference region's intensities, ref(R) in CR = (I - ref(R)) / ref(R).
REF_STATS = ("mode", "median", "mean")
# The median: on the phantom validation (docs/validation.md) it gave GRE-MT SN CR a higher
# test-retest ICC (0.85 against 0.81) and correlation with the truth (0.84 against 0.71) than
# the kernel-density mode, a noisier estimate on the ~200 voxels of a reference region.
DEFAULT_REF_STAT = "median"

# B-spline control-point spacing of the NM slab's N4 field (mm). Measured against the true
# bias field of the test-retest phantom (docs/validation.md, bias-field table; 24 averaged
# GRE-MT slabs, field ratio SN/CC): the error's SD was 0.35 % with ANTsPy's default single
# mesh element, 0.21 % at 200 mm (ANTs' usual setting), 0.18 % at 100 mm and 0.30 % at
# 50 mm; SN CR test-retest ICC on the same images 0.85, 0.92, 0.93, 0.90 (0.95 with the
# true field). The field ratio between SN and its reference enters every CR, so the slab
# takes 100 mm (about 2 x 2 x 1 elements).
NM_N4_SPLINE_MM = 100.0


# Prefix of the CR methods that choose their voxels by the mean of each voxel's in-plane
# neighbours instead of by the voxel's own intensity (measures.inplane_neighbour_mean):
# "neighbour_top_volume", "neighbour_max_per_slice". Their selection does not see the noise of
# the values averaged, so they do not read high at low SNR (docs/validation.md, SNR sweep).
NEIGHBOUR = "neighbour_"
# Prefix of the CR methods whose neighbour-chosen estimate is taken to no noise by
# simulation-extrapolation (measures.simex): "simex_neighbour_top_volume",
# "simex_neighbour_max_per_slice". The neighbour choice misses more of the nucleus as the
# noise grows, so that its estimate falls as SNR falls; SIMEX removes that fall.
SIMEX = "simex_"
# Prefix of the slice-wise CR methods whose voxels are chosen by the mean of their 26
# neighbours in the 3 x 3 x 3 box (measures.box_neighbour_mean: the 8 in-plane and the 9 in
# each adjacent slice), for a nucleus that runs through the slices: "box_neighbour_max_per_slice".
# Where adjacent slices share their noise (measures.slices_share_noise) the in-plane
# neighbours choose instead, and the method column says so.
NEIGHBOUR_BOX = "box_" + NEIGHBOUR


# The target ROIs whose voxels are chosen by their 8 nearest neighbours on every image, also
# where the image's noise is shared by adjacent voxels (``measures.neighbour_distance`` 2): a
# ring two voxels out finds only a nucleus at least 5 voxels across, and the LC (a column) and
# the VTA are about 2 mm across, 5 voxels or fewer at NM pixel sizes; the SN band is 3-5 mm.
# On 2x zero-filled phantom images (benchmarks/zero_fill_study.py, 0.4 mm pixels, SNR 14 and
# 28) the ring read GRE-MT LC 0.56-0.61 of the truth (r 0.48-0.68), FSE LC 0.40-0.57, GRE-MT
# VTA 0.85-0.88 (r 0.62-0.74), FSE VTA 0.62-0.65 (r 0.27-0.58); the nearest 1.05-1.18 (r
# 0.46-0.74), 0.94-1.12, 0.99-1.05 (r 0.80-0.83) and 0.83-1.04 (r 0.73-0.81); independent
# noise 0.93, 0.76-0.84, 0.94 and 0.72-0.75. (Since then the GRE-MT LC's box score reads those
# zero-filled images 0.98-1.05, independent noise 0.92-0.94.)
NEAREST_ONLY = frozenset({"LC", "VTA"})

TOP_VOLUME_MM3 = {"SN": 50.0, "VTA": 20.0}
# MT pairs: the ``mtr`` of a target ROI is the MTR of the nucleus found in its search region
# (``measures.mtr_nucleus``), over the profile's fixed volume per side. The LC (about 50 mm³
# per side) gets a third of its volume, as the SN and VTA volumes are at most a third of theirs.
MTR_NUCLEUS_METHOD = "neighbour_residual_top_volume"
MTR_TOP_VOLUME_MM3 = dict(TOP_VOLUME_MM3, LC=15.0)


@dataclass(frozen=True)
class AcquisitionProfile:
    name: str
    # target ROI -> its reference region (labels of the nmbids atlas)
    references: dict = field(default_factory=dict)
    # default method of the ``cr`` measure for each target ROI
    cr_method: dict = field(default_factory=dict)
    threshold_k: float = 3.0  # NM-rich voxels: I > ref + k·sd(ref)
    # where each target ROI is measured (absent: "native", the NM grid; "template": the NM
    # image pushed to the template, with the template's ROIs and reference regions)
    measure_space: dict = field(default_factory=dict)
    # ``top_volume`` methods: the voxels making up this volume per side (mm³), per target ROI.
    # Chosen from first principles, not fitted: at most about a third of the nucleus, so that
    # the voxels chosen lie in its interior, not in the partial-volume rim (SN about 260 mm³
    # per side, VTA about 70 mm³ in AAL3 and in the phantom's builtin nuclei).
    top_volume_mm3: dict = field(default_factory=lambda: dict(TOP_VOLUME_MM3))
    # reference region of the voxelwise CR map (the one Columbia-style maps use)
    map_reference: str = "CC"
    min_coverage: float = 0.5  # below this an ROI is not measured (value n/a)
    min_voxels: int = 5
    # MT pairs: voxels with MTR below this fraction of the reference regions' MTR are fluid,
    # not tissue, and are left out of every ROI measure (None: no such step)
    tissue_mtr_fraction: float | None = None
    # whether the NM image of this type carries NM contrast to report as CR
    report_cr: bool = True
    # target ROI -> why its CR values are not yet reliable on this acquisition (the data
    # dictionary and the report say so beside every such value)
    unreliable: dict = field(default_factory=dict)
    description: str = ""

    def space_of(self, roi: str) -> str:
        return self.measure_space.get(roi, "native")

    def top_volume_of(self, roi: str) -> float:
        return self.top_volume_mm3.get(roi, TOP_VOLUME_MM3["SN"])

    def for_slices(self, axial: bool) -> "AcquisitionProfile":
        """This profile for a slab whose slices are axial or not. The ROIs measured slice by
        slice (``*max_per_slice`` CR methods: the LC and its thirds) are measured on the
        template's axial slices when the slab's are not: sagittal or coronal slices do not cut
        the LC's rostro-caudal column across (on phantom slabs the LC read n/a there)."""
        slicewise = {roi: "template" for roi, method in self.cr_method.items()
                     if method.endswith("max_per_slice") and self.space_of(roi) == "native"}
        if axial or not slicewise:
            return self
        return replace(self, measure_space={**self.measure_space, **slicewise})


PROFILES = {
    GREMT: AcquisitionProfile(
        name=GREMT,
        references={"SN": "CC", "VTA": "CC", "LC": "PT"},
        # The CR methods choose their voxels by the mean of their in-plane neighbours
        # (NEIGHBOUR), so that the choice does not see the noise of the values averaged: the
        # brightest voxels read high by an offset that grows as SNR falls (docs/validation_snr.md:
        # GRE-MT SN measured/true 1.09-2.22 from SNR 40 to 8 per repeat, 0.86-1.03 now). SN: a
        # fixed volume rather than a threshold, whose mean compressed differences between
        # subjects (slope 0.3 against 0.6-1.0, docs/validation.md). LC slice by slice, as in
        # the LC literature (it gives the rostral, middle and caudal thirds). Every ROI on the
        # native grid: with the neighbour choice the VTA read closer to the truth there than
        # on the template's 1 mm grid (GRE-MT measured/true 1.01 against 0.73, r 0.80 against
        # 0.74, at SNR 25 x 3 repeats, AAL3 nuclei). The SN's neighbour-chosen CR is then taken
        # to no noise by SIMEX (``measures.simex``): the neighbour choice misses more of the
        # nucleus as the noise grows (0.85 of the truth at SNR 8 x 1 repeat, 1.00 at 40), and
        # SIMEX removes that fall (0.96-1.03 at every SNR and number of repeats; between-SNR
        # spread 0.14 -> 0.04; ICC and r within 0.01; the same on a second geometry:
        # benchmarks/simex_study.py, docs/validation.md). Not the VTA, FSE or LC: there the
        # correction cost more reliability than the study's rule allowed (ICC or r down by
        # 0.03-0.07 where the correction is large).
        # The LC's 3 voxels per slice are chosen by the 26 neighbours of the 3 x 3 x 3 box
        # (NEIGHBOUR_BOX): the LC runs through the slab's slices, so the score averages more of
        # the nucleus and less noise, and finds it at low SNR where the 8 in-plane neighbours
        # lose it (0.38 of the truth at SNR 8 x 1 repeat). benchmarks/score_study.py, rule fixed
        # before the numbers: worst cell 0.38 -> 0.78, between-SNR spread 0.47 -> 0.08, smallest
        # ICC 0.59 -> 0.72, r at SNR >= 14 0.88 -> 0.88; confirmed on a second cohort (seed 301:
        # worst cell 0.54 -> 0.65, ICC 0.32 -> 0.54, r 0.79 -> 0.88). On the FSE LC (2.5 mm
        # slices) its ICC and r fell, so the FSE keeps the in-plane score.
        cr_method={"SN": SIMEX + "neighbour_top_volume", "VTA": "neighbour_top_volume",
                   "LC": NEIGHBOUR_BOX + "max_per_slice"},
        unreliable={"VTA": "GRE-MT VTA CR compresses differences between subjects on the phantom validation "
                           "(slope 0.28, r 0.60 at 0.8 mm in plane, docs/validation.md; r 0.63-0.85 at 0.5 mm, "
                           "docs/validation_snr.md): read group differences in it with caution"},
        description="2D/3D gradient echo with MT preparation; SN/VTA against the crus cerebri, "
                    "LC against the pontine tegmentum where the slab reaches the pons.",
    ),
    FSE: AcquisitionProfile(
        name=FSE,
        references={"SN": "CC", "VTA": "CC", "LC": "PT"},
        # As GRE-MT's. The FSE VTA does not track the truth well (thick slices, a small dim
        # nucleus: docs/validation_snr.md); its values are flagged as not yet reliable.
        cr_method={"SN": "neighbour_top_volume", "VTA": "neighbour_top_volume", "LC": "neighbour_max_per_slice"},
        unreliable={"VTA": "FSE VTA CR does not track the truth on the phantom validation (r 0.3-0.65, "
                           "measured/true 0.4-0.8 across SNR; docs/validation_snr.md): a small, dim nucleus "
                           "in thick slices"},
        threshold_k=2.0,  # lower contrast than GRE-MT
        map_reference="PT",
        description="T1-weighted fast/turbo spin echo; the classic LC protocol, LC measured "
                    "slice by slice against the pontine tegmentum of the same slice.",
    ),
    MTR: AcquisitionProfile(
        name=MTR,
        references={"SN": "CC", "VTA": "CC", "LC": "PT"},
        cr_method={"SN": "threshold", "VTA": "threshold", "LC": "threshold"},
        tissue_mtr_fraction=0.5,
        top_volume_mm3=dict(MTR_TOP_VOLUME_MM3),
        # The nucleus MTR (``measures.mtr_nucleus``) scales with the truth for the SN only
        # (docs/validation_mtr.md: SN slope 0.70-0.82, measured/true 0.99-1.01).
        unreliable={"VTA": "MT-pair VTA MTR does not track the truth consistently on the phantom validation "
                           "(slope 0.29-0.86, r 0.36-0.95 across SNR, docs/validation_mtr.md): the VTA search "
                           "region also holds SN, whose voxels are taken when the SN deviates more",
                    "LC": "MT-pair LC MTR does not track the truth on the phantom validation (slope -0.09 to "
                          "0.29, docs/validation_mtr.md): the thin LC is not found in its search region"},
        # The MT-on image of an MTR/MPM/MTsat protocol is often proton-density weighted:
        # grey matter is as bright as the nuclei there, and CR on it did not track the truth
        # on the phantom (SN r -0.59). Its measure is the MTR.
        report_cr=False,
        description="MT on/off pair; MTR = 100·(off − on)/off and the MT-enhancement on/off, "
                    "measured in tissue only (CSF is bright on MT-on too); no CR.",
    ),
}

_NM_ACQ = re.compile(r"(nm|neuromelanin|mtw|mt|fse|tse|lc|locus|melanin)", re.I)
_FSE_ACQ = re.compile(r"(fse|tse)", re.I)
# an NM word as a whole token of a file name (``.sub-01_acq-NM_T1w``, ``sub-01_NM-MRI``): used
# only to point the user at hidden or misnamed files, never to choose what is processed
_NM_NAME = re.compile(r"neuromelanin|melanin|locus|(?<![a-z])(nm|mtw?|fse|tse|lc)(?![a-z])", re.I)

# A T1w that can carry a head to the template covers the whole brain: an adult brain is about
# 140 mm wide, 170 mm long and 120 mm from vertex to foramen magnum, and head T1w images cover
# 150 mm or more along every axis. NM slabs cover 15-80 mm across their slices (10-40 slices of
# 1.5-3 mm, docs/nm-mri.md). Less than 100 mm along any axis cannot hold a brain.
HEAD_MIN_EXTENT_MM = 100.0
# ... and it has many slices along every axis: an NM slab has at most about 40 (docs/nm-mri.md),
# a head T1w more than 60 even at 3 mm. A 120 mm stack of 40 thick slices is still a slab.
HEAD_MIN_SLICES = 48


def slab_shape(shape, zooms) -> str | None:
    """``"10 slices, 30 mm"`` when an image of this grid is a slab (too few slices or too small
    an extent along some axis to hold a head), else None."""
    shape, zooms = tuple(int(n) for n in shape[:3]), tuple(float(z) for z in zooms[:3])
    if len(shape) < 3 or len(zooms) < 3:
        return None
    extents = [n * z for n, z in zip(shape, zooms)]
    axis = min(range(3), key=lambda i: (shape[i], extents[i]))  # the slice axis: fewest voxels
    thin = min(range(3), key=lambda i: extents[i])
    if shape[axis] < HEAD_MIN_SLICES:
        return f"{shape[axis]} slices, {extents[axis]:.0f} mm"
    if extents[thin] < HEAD_MIN_EXTENT_MM:
        return f"{shape[thin]} slices, {extents[thin]:.0f} mm"
    return None


def _sequence(meta: dict) -> tuple[str, str]:
    """(ScanningSequence upper-cased, SequenceName or PulseSequenceType lower-cased)."""
    seq = str(meta.get("ScanningSequence", "") or "").upper()
    name = str(meta.get("SequenceName", "") or meta.get("PulseSequenceType", "") or "").lower()
    return seq, name


def _is_spin_echo(seq: str, name: str) -> bool:
    return bool(("SE" in seq and "GR" not in seq) or re.search(r"tse|fse|turbo.?spin|\bse\b|spin", name))


def _is_gradient(seq: str, name: str) -> bool:
    return bool("GR" in seq or re.search(r"fl\d|flash|gre|ffe|spgr|fl3d|fl2d", name))


def _mt_on(meta: dict) -> bool:
    return meta.get("MTState") in (True, "true", "True", 1, "ON", "on")


def says_spin_echo(meta: dict) -> bool:
    """The sidecar says spin echo (and not gradient echo)."""
    seq, name = _sequence(meta)
    return _is_spin_echo(seq, name) and not _is_gradient(seq, name)


def looks_like_nm(entities: dict, meta: dict, slab: str | None = None) -> bool:
    """True if the file is an NM-sensitive image (and so must never be taken as the T1w).

    ``slab``: the image's ``slab_shape`` when known. A T1w-suffixed slab whose sidecar says
    spin echo is the classic FSE/TSE LC scan, whatever its name (``sub-X_run-2_T1w``).
    """
    if entities.get("mt") in ("on", "off"):
        return True
    if _mt_on(meta):
        return True
    if slab and entities.get("suffix") == "T1w" and says_spin_echo(meta):
        return True
    return bool(_NM_ACQ.search(str(entities.get("acquisition", ""))))


def name_looks_like_nm(name: str) -> bool:
    """A file name (hidden or not parseable as BIDS) with an NM word in it."""
    return bool(_NM_NAME.search(name.split(".nii")[0]))


def head_t1w_rank(meta: dict) -> tuple[int, str]:
    """How well a T1w-suffixed, head-sized image's sidecar fits a head anatomy, best first:
    0 a 3D gradient echo or inversion recovery (MPRAGE, SPGR, MP2RAGE), 1 the sidecar does not
    say, 2 a 2D or spin-echo image. Returns (rank, the evidence)."""
    seq, name = _sequence(meta)
    mode = str(meta.get("MRAcquisitionType", "") or "").upper()
    facts = [f"{k}={meta[k]}" for k in ("MRAcquisitionType", "ScanningSequence", "InversionTime")
             if meta.get(k) not in (None, "")]
    evidence = ", ".join(facts) or "no sequence metadata"
    gradient_or_ir = _is_gradient(seq, name) or "IR" in seq or meta.get("InversionTime") is not None
    if mode == "2D" or says_spin_echo(meta):
        return 2, evidence
    if mode == "3D" and gradient_or_ir:
        return 0, evidence
    return 1, evidence


def classify(entities: dict, meta: dict) -> tuple[str | None, list[str]]:
    """Classify an NM image from its sidecar and entities.

    Order of evidence: the ``mt-`` entity (a pair → MTR); ``ScanningSequence`` (SE vs GR),
    ``SequenceName`` (Siemens ``*tse``/``*fl``, GE ``FSE``/``GRE``, Philips ``TSE``/``FFE``),
    ``EchoTrainLength``, ``MTState``; the ``acq-`` label as a fallback.
    Returns ``(acq_type or None, evidence)``.
    """
    evidence = []
    if entities.get("mt") in ("on", "off"):
        return MTR, [f"mt-{entities['mt']} entity"]
    seq, name = _sequence(meta)
    etl = meta.get("EchoTrainLength")
    if seq:
        evidence.append(f"ScanningSequence={seq}")
    if name:
        evidence.append(f"SequenceName={name}")
    spin_echo, gradient = _is_spin_echo(seq, name), _is_gradient(seq, name)
    if seq and not spin_echo and not gradient:  # e.g. EP, IR alone: not a sequence we know
        return None, evidence + ["ScanningSequence is neither SE nor GR"]
    if spin_echo and not gradient:
        if isinstance(etl, (int, float)):
            evidence.append(f"EchoTrainLength={etl}")
        return FSE, evidence
    if gradient:
        if meta.get("MTState") is not None:
            evidence.append(f"MTState={meta.get('MTState')}")
        return GREMT, evidence
    if meta.get("MTState") in (True, "true", "True"):
        return GREMT, evidence + ["MTState=true"]
    acq = str(entities.get("acquisition", ""))
    if _FSE_ACQ.search(acq):
        return FSE, evidence + [f"acq-{acq} label (fallback)"]
    if _NM_ACQ.search(acq):
        return GREMT, evidence + [f"acq-{acq} label (fallback)"]
    return None, evidence
