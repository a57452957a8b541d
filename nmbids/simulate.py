"""The nmbids digital phantom: a BIDS dataset of NM-MRI with known truth.

``nmbids-simulate OUT --n N --seed S [options]`` writes a valid BIDS raw dataset to
``OUT/bids`` and what was put into it to ``OUT/truth.json`` (plus truth label images in
``OUT/truth/``), both outside the BIDS tree. It is the demo users run first and the test bed
for accuracy: run the pipeline on ``OUT/bids`` and compare its measures with the truth.
Same arguments and seed give byte-identical files. The Python entry point is
:func:`simulate_dataset`.

How one subject is made
=======================
*Anatomy.* The template (``nmbids.templates.get_template()``; offline, nilearn's MNI152 2009a
symmetric 1 mm brain with GM/WM maps, CSF = mask - GM - WM) gets a simple head around it
(a CSF layer 0-2.5 mm outside the brain, skull 2.5-7 mm, bright scalp 7-12 mm). A subject is
that head under a random map from subject scanner space (mm, RAS) to template space (mm)::

    t = phi(s) = q + u(q),   q = A s

``A`` is a random affine (rotations up to 8 deg, translations up to 8 mm, per-axis scaling
0.95-1.05, then for sessions after the first a new rigid head position up to 3 deg / 5 mm)
and ``u`` a smooth random displacement in template space (Gaussian-smoothed noise,
sigma 15 mm, i.e. smooth over ~30 mm, scaled so that max |u| in the brain = ``--deform-mm``,
default 3 mm). Every image is made by pulling the template maps through ``phi`` with
``scipy.ndimage.map_coordinates``, only at the voxels of the grid being written.

*T1w.* Template T1 intensity plus the head shell, a smooth multiplicative bias field (fixed
to the scanner), Rician noise (``--t1w-snr``), axial, ``--t1w-res`` mm, LAS orientation
(as dcm2niix writes axial scans), int16.

*NM contrast.* Per acquisition type a signal per tissue class (fractions of S0, the WM signal):

=========  =====  =====  =====  ====================  =====  =====
contrast    WM     GM    CSF    PT (pontine tegm.)    skull  scalp
=========  =====  =====  =====  ====================  =====  =====
GRE-MT     1.00   0.93   0.35   0.96                  0.08   0.90
FSE        1.00   0.86   0.30   0.93                  0.05   1.10
MT-off     1.00   1.12   1.45   1.06                  0.08   1.00
MT-on      MT-off x (1 - MTR/100), MTR: WM 42, GM 33, CSF 3, PT 38, scalp 20 (percent)
=========  =====  =====  =====  ====================  =====  =====

The template's probability maps blur the brainstem, so the phantom makes its two reference
regions homogeneous: inside the pipeline's crus cerebri ellipsoids (CC, centre (+-14, -10, -13),
semi-axes (5, 4, 5) mm) and pontine tegmentum ellipsoid (PT, (0, -29, -27), (4, 3, 6) mm), both
enlarged by 2 mm, brain tissue gets the reference tissue signal (WM for CC, PT for PT); CSF
keeps its own (CSF probabilities under 5 % count as tissue there). Every point inside a
nucleus then gets ``ref x (1 + CR_true)``, where ref is the signal of the nucleus's reference
tissue (CC = WM for SN and VTA, PT for LC).

*Definition of the truth* (also in ``truth.json["definition"]``): CR_true of a nucleus is
``I_nucleus / I_ref - 1`` where ``I_nucleus`` is the signal of the points inside the nucleus
and ``I_ref`` the signal of the reference tissue, both in the noise-free, bias-free,
infinitely resolved object (each is constant by construction). Voxels whose whole volume lies
inside the nucleus (``probseg == 1``) have exactly that contrast over reference-core voxels
(dseg labels 7-9) in a ``--noise-free`` image. Partial volume, bias, noise and motion are what a
pipeline must get through. ``bilateral`` is the mean of L and R weighted by native volume.
Volumes are native (subject scanner space) mm3, integrated through the Jacobian of ``phi``;
for volumes ``bilateral`` is the sum L + R.

*NM acquisition.* An oblique axial slab: scanner axial tilted about the L-R axis by a random
angle up to ``--max-tilt`` (15 deg) with random offsets up to 2 mm, centred on the subject's
anatomy at template (0, -22, -22) for GRE-MT/MTR (20 x 2 mm slices cover about z -2 to -42:
SN, VTA and LC) and (0, -28, -25) for FSE (pons-centred). In-plane ``--nm-inplane`` mm over a
``--nm-fov`` mm field of view. Partial volume: each voxel averages 4+ sub-samples across the
slice thickness (nuclei: 2 x 2 in plane as well). Bias field, Rician noise (sigma = S0 / SNR,
SNR = ``--snr`` in WM per repeat, scaled per site), ``--repeats`` repeats with random rigid
motion between them (up to ``--motion-mm`` / ``--motion-deg``), in one 4D file or as ``run-``
files (``--repeats-layout auto|4d|runs``, ``--repeats-as-runs`` = runs). BIDS requires ``_T1w``
images to be 3D (validator error T1W_FILE_WITH_TOO_MANY_DIMENSIONS), so the default ``auto``
writes ``run-`` files for ``_T1w`` names and one 4D file for the others (``acq-NM_T2starw``);
``4d`` forces one 4D file everywhere, which some real datasets hold but which is not valid
BIDS for ``_T1w``. The header holds the true oblique affine in the same scanner space as the
session's T1w. Truth label images are on the grid of the first repeat.

*Acquisition types* (``--acq gremt,fse,mtr``):

* ``gremt``: ``sub-X_acq-NM_T1w.nii.gz``, sidecar MTState true, ScanningSequence GR,
  SequenceVariant ``SP\\MTC``, SequenceName ``*fl2d1``. CR as drawn.
* ``fse``: ``sub-X_acq-FSE_T1w.nii.gz``, ScanningSequence SE, SequenceName ``*tse2d1_3``,
  EchoTrainLength 3, ``--fse-slice`` (2.5 mm) x ``--fse-slices`` (14), pons-centred; CR x 0.6
  for SN/VTA and x 0.85 for LC.
* ``mtr``: ``sub-X_mt-on_MTR.nii.gz`` + ``sub-X_mt-off_MTR.nii.gz``, identical grid, one volume
  each, small motion between them (mt-on is the reference position). On the MT-on image the
  nuclei have the drawn CR; on the MT-off image 1.05 x ref (a fixed 5 % over MT-off reference).
  The truth has ``mtr`` per ROI = 100 (off - on) / off of the noise-free values.

``--naming-variants`` spreads GRE-MT names seen in the wild over subjects: ``acq-NM_T1w``,
``acq-neuromelanin_T1w``, ``acq-neuromelaninMTw_T1w``, ``acq-NM_T2starw`` (FSE: ``acq-FSE_T1w``,
``acq-TSE_T1w``); all pass the BIDS validator. Left out because they are not valid BIDS:
``_NM`` or ``_MTw`` suffixes, and ``acq-NM_MEGRE`` without an ``echo-`` entity.

Nuclei (``--nuclei``)
=====================
``builtin``: the phantom's own shapes, geometric simplifications placed from published MNI
locations (SN pars compacta and VTA as in the CIT168 atlas, Pauli et al. 2018 Sci Data
5:180063, and AAL3, Rolls et al. 2020 NeuroImage 206:116189; LC as in Keren et al. 2009
NeuroImage 47:1261 and the meta-mask of Betts et al. 2017 NeuroImage 163:150), volumes of
the order of AAL3's (SN_pc 251/270, VTA 71/65, LC 48/53 mm3):

* SN: a bent ellipsoid centred (+-9.5, -18.5, -13.5), long in-plane axis 7 mm along the line
  (+-14, -13) -> (+-6, -25), 2.2 mm across in plane, 4.2 mm supero-inferior, ends bent 1 mm
  anteromedially: 271 mm3 per side;
* VTA: an ellipsoid at (+-4, -17, -14), semi-axes (1.8, 2.6, 3.6) mm: 71 mm3 per side;
* LC: a column of radius 1.07 mm (2.1 mm across) from (+-5, -35.5, -18) to (+-5, -36.5, -32),
  14 mm long: 50 mm3 per side.

All lie wholly inside the pipeline's search ellipsoids and do not overlap. ``PATH``: a label
image (e.g. AAL3's ``tpl-MNI152NLin6Asym_res-01_atlas-AAL3_dseg.nii.gz``) whose world
coordinates are taken as template mm and looked up by nearest neighbour; label numbers come
from ``--nuclei-labels SN_L=161,SN_R=162,...`` (``+`` joins several labels) or else from a
sibling ``*_dseg.tsv`` (``index`` + ``name``/``label`` columns; names like ``SN_pc_L``,
``VTA_R``, ``LC_L``; SN pars reticulata is not SN). AAL3's nuclei are coarser than, and offset
from, the pipeline's search ellipsoids: only about 62-68 % (SN), 38 % (VTA) and 75-85 % (LC) of
their volume lies inside them.

Cohorts
=======
Subject i (0-based) is in group ``groups[i % G]`` and site ``(i // G) % K``; age uniform in
``--age-range`` (integer years), sex M/F at random. Per subject and hemisphere, GRE-MT units::

    CR = site_scale * (base + age_slope * (age - 45) + sex_effect * [sex == M] + group effect)

base ~ U(0.10, 0.30) for SN, U(0.08, 0.25) for VTA, U(0.10, 0.20) for LC, L = m + d and
R = m - d with d ~ N(0, 0.015) clipped to +-0.03. ``--cr-sd SD`` replaces the uniform draw of
``m`` by the middle of that range plus N(0, SD) clipped to +-3 SD (every ROI): a realistic
between-subject spread (published SN CR sd about 0.025 once age is added) for reliability and
power studies; the default (none) keeps the wide uniform spread that suits recovery studies. ``--age-slope`` defaults to 0.001 per year
for SN and VTA, 0 for LC; ``--sex-effect`` to 0. ``--effect [GROUP:]ROI:MEASURE:VALUE``
(repeatable): measure ``cr`` adds VALUE to CR, ``volume`` scales the (builtin) nucleus
volume by 1 + VALUE; GROUP defaults to every group but the first. Site 1 has scale 1 and SNR
factor 1; other sites draw U(1 - s, 1 + s) (``--site-cr-spread`` s, default 0.15) and SNR
factor U(0.8, 1.2).
``--sessions K`` writes ses-1..ses-K: same anatomy and truth CR, new head position, slab,
noise and motion.

truth.json
==========
::

    {"generator": "nmbids-simulate", "version": str, "seed": int, "args": {...options...},
     "template": {"name", "source"}, "nuclei_source": "builtin" | path,
     "definition": str, "units": {...}, "labels": {"1": "SN_L", ... "9": "PT"},
     "reference": {"SN": "CC", "VTA": "CC", "LC": "PT"},
     "contrasts": {tissue signal table}, "acq_cr_scale": {"gremt"|"fse"|"mtr": {ROI: factor}},
     "sites": {"site1": {"cr_scale", "snr_scale"}},
     "subjects": {"sub-01": {
        "group", "age", "sex", "site",
        "cr_gremt": {"SN": {"L", "R", "bilateral"}, "VTA": ..., "LC": ...},
        "volume_template_mm3": {"SN": {"L", "R"}, ...},
        ["volume_scale": {ROI: factor}]  (only with a volume effect),
        "sessions": {"n/a" | "ses-1": {
            "subject_to_template_affine": 4x4 (A above, scanner mm -> template mm),
            "deformation": {"max_mm", "rms_mm", "sigma_mm", "grid_spacing_mm"},
            "t1w": {"source", "res_mm", "snr"},
            "acquisitions": [{
                "source": first file (relative to OUT/bids), "sources": all its files,
                "acq_type": "GREMT" | "FSE" | "MTR", "snr" (per repeat, WM; null if noise-free),
                "n_repeats", "motion_mm": [mean displacement of the slab voxels vs repeat 1],
                "motion_params": [[tx, ty, tz (mm), rx, ry, rz (deg)] per repeat],
                "motion_affines": [4x4 per repeat], "motion_center_scanner_mm",
                "slab_tilt_deg", "slab_center_scanner_mm", "inplane_mm", "slice_mm", "n_slices",
                "intensity_scale" (S0), "reference_value": {"CC", "PT"} (image units),
                "cr": {"SN": {"L", "R", "bilateral"}, "VTA": ..., "LC": ...},
                "mtr": {"SN"|"VTA"|"LC"|"CC": {"L", "R", "bilateral"}, "PT": {"bilateral"}},
                "reference_value_mt_off": {"CC", "PT"}  (these two: MTR only; "cr" and
                       "reference_value" are then those of the mt-on image),
                "volume_mm3": {"SN": {"L", "R", "bilateral"}, ...} (native),
                "coverage": {"SN": {"L", "R"}, ...} (fraction of the nucleus inside the slab),
                "truth_dseg", "truth_probseg", "truth_biasfield" (null without a field): files
                       relative to OUT}]}}}}}

Motion: ``motion_affines[r]`` (scanner mm) maps where a point of the head is in repeat 1 to
where it is in repeat r: rotation by rx, then ry, then rz (degrees, scanner axes) about
``motion_center_scanner_mm``, then translation by (tx, ty, tz). For MTR the repeats are
(mt-on, mt-off). ``motion_mm`` is the mean displacement of the slab's voxel centres.

``truth/.../*_desc-truth_dseg.nii.gz`` (NM grid): 1-6 = SN_L, SN_R, VTA_L, VTA_R, LC_L, LC_R
where at least half of the voxel is nucleus; 7-9 = CC_L, CC_R, PT where the voxel is wholly
reference tissue (centre inside the pipeline's ellipsoid, every sub-sample pure reference tissue,
no nucleus). ``*_desc-truth_probseg``: 4D, the fraction of each voxel inside each of the 6
nuclei (2 x 2 in plane x 5+ through-slice sub-samples). ``*_desc-truth_biasfield``: the
multiplicative field on the NM grid of repeat 1 (fixed to the scanner, 1 at the slab centre;
the same for every repeat), against which a bias correction can be scored.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path

import nibabel as nb
import numpy as np
from scipy import ndimage

from . import __version__
from .templates import get_template, tissue_probabilities

GENERATOR = "nmbids-simulate"
BIDS_VERSION = "1.10.0"
ROIS = ("SN", "VTA", "LC")
HEMIS = ("L", "R")
NUCLEI = ("SN_L", "SN_R", "VTA_L", "VTA_R", "LC_L", "LC_R")  # labels 1..6
REF_LABELS = {"CC_L": 7, "CC_R": 8, "PT": 9}
REFERENCE = {"SN": "CC", "VTA": "CC", "LC": "PT"}
REF_AGE = 45.0

# The pipeline's reference regions (template mm): centre, semi-axes.
CC_CENTER = (14.0, -10.0, -13.0)
CC_SEMI = (5.0, 4.0, 5.0)
PT_CENTER = (0.0, -29.0, -27.0)
PT_SEMI = (4.0, 3.0, 6.0)
REF_PAINT_MARGIN_MM = 2.0

# Tissue signal per contrast, as fractions of S0 (the WM signal; MT-on is derived).
CONTRASTS: dict[str, dict[str, float]] = {
    "gremt": {"WM": 1.00, "GM": 0.93, "CSF": 0.35, "PT": 0.96, "skull": 0.08, "scalp": 0.90},
    "fse": {"WM": 1.00, "GM": 0.86, "CSF": 0.30, "PT": 0.93, "skull": 0.05, "scalp": 1.10},
    "mt_off": {"WM": 1.00, "GM": 1.12, "CSF": 1.45, "PT": 1.06, "skull": 0.08, "scalp": 1.00},
}
MTR_TISSUE = {"WM": 42.0, "GM": 33.0, "CSF": 3.0, "PT": 38.0, "skull": 0.0, "scalp": 20.0}
CONTRASTS["mt_on"] = {k: v * (1 - MTR_TISSUE[k] / 100) for k, v in CONTRASTS["mt_off"].items()}
MT_OFF_NUCLEUS_CR = 0.05  # nuclei on the MT-off image: ref_off x 1.05

# CR of an acquisition = subject CR (GRE-MT units) x this factor.
ACQ_CR_SCALE = {
    "gremt": {"SN": 1.0, "VTA": 1.0, "LC": 1.0},
    "fse": {"SN": 0.6, "VTA": 0.6, "LC": 0.85},
    "mtr": {"SN": 1.0, "VTA": 1.0, "LC": 1.0},
}
CR_BASE_RANGE = {"SN": (0.10, 0.30), "VTA": (0.08, 0.25), "LC": (0.10, 0.20)}
HEMI_SD = 0.015

ACQ_TYPES = {"gremt": "GREMT", "fse": "FSE", "mtr": "MTR"}
SLAB_TARGET = {"gremt": (0.0, -22.0, -22.0), "mtr": (0.0, -22.0, -22.0), "fse": (0.0, -28.0, -25.0)}
REPEATS_LAYOUTS = ("auto", "4d", "runs")
# BIDS requires _T1w images to be 3D (validator error T1W_FILE_WITH_TOO_MANY_DIMENSIONS).
SUFFIXES_3D_ONLY = ("T1w",)
GREMT_VARIANTS = (("NM", "T1w"), ("neuromelanin", "T1w"), ("neuromelaninMTw", "T1w"),
                  ("NM", "T2starw"))
FSE_VARIANTS = (("FSE", "T1w"), ("TSE", "T1w"))

# T1w intensities of the head shell (template T1 units, 0-255), scaled by T1W_SCALE.
SHELL_T1 = {"CSF": 45.0, "skull": 15.0, "scalp": 190.0}
SHELL_LAYERS_MM = {"CSF": (0.0, 2.5), "skull": (2.5, 7.0), "scalp": (7.0, 12.0)}
T1W_SCALE = 4.0
PAD_MM = 16
DEFORM_SPACING_MM = 4.0
DEFORM_SIGMA_MM = 15.0

DEFINITION = (
    "CR_true = I_nucleus / I_ref - 1, where I_nucleus is the signal of the points inside the "
    "nucleus and I_ref the signal of its reference tissue (crus cerebri = white matter for SN "
    "and VTA, pontine tegmentum for LC) in the noise-free, bias-free, infinitely resolved object; "
    "both are constant by construction. The phantom makes the reference regions (the pipeline's "
    "CC and PT ellipsoids enlarged by 2 mm) homogeneous reference tissue. Voxels wholly inside a "
    "nucleus (probseg == 1) over reference-core voxels (dseg 7-9) of a --noise-free image give "
    "CR_true exactly. 'bilateral' = mean of L and R weighted by native volume (for volumes: L + R). "
    "Volumes are native scanner-space mm3. MTR = 100 (off - on) / off of the noise-free signals."
)


# ----------------------------------------------------------------------------- options

@dataclass
class Options:
    """Everything that changes what is simulated (recorded in truth.json["args"])."""

    acq: tuple[str, ...] = ("gremt",)
    nuclei: str = "builtin"
    nuclei_labels: str | None = None
    template: str | None = None
    t1w_res: float = 1.0
    t1w_snr: float = 40.0
    nm_inplane: float = 0.8
    nm_slice: float = 2.0
    nm_slices: int = 20
    nm_fov: tuple[float, float] = (180.0, 200.0)
    fse_slice: float = 2.5
    fse_slices: int = 14
    snr: float = 25.0
    repeats: int = 3
    repeats_layout: str = "auto"  # auto | 4d | runs
    max_tilt: float = 15.0
    motion_mm: float = 1.0
    motion_deg: float = 1.0
    deform_mm: float = 3.0
    bias: float = 0.15
    noise_free: bool = False
    naming_variants: bool = False
    sessions: int = 1
    groups: tuple[str, ...] = ("control",)
    effects: tuple[str, ...] = ()
    sites: int = 1
    site_cr_spread: float = 0.15
    cr_sd: float | None = None  # None: base CR ~ U(range); else middle + N(0, cr_sd)
    age_range: tuple[float, float] = (20.0, 70.0)
    age_slope: tuple[str, ...] = ("SN:0.001", "VTA:0.001", "LC:0.0")
    sex_effect: float = 0.0

    def validate(self) -> None:
        bad = [a for a in self.acq if a not in ACQ_TYPES]
        if bad or not self.acq:
            raise ValueError(f"--acq: unknown acquisition type(s) {bad}; use {sorted(ACQ_TYPES)}")
        if len(set(self.acq)) != len(self.acq):
            raise ValueError("--acq: each type at most once")
        for name in ("t1w_res", "nm_inplane", "nm_slice", "fse_slice"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0")
        if self.nm_slices < 1 or self.fse_slices < 1 or self.repeats < 1 or self.sessions < 1:
            raise ValueError("slice counts, --repeats and --sessions must be >= 1")
        if self.repeats_layout not in REPEATS_LAYOUTS:
            raise ValueError(f"--repeats-layout must be one of {REPEATS_LAYOUTS}")
        if self.sites < 1 or not self.groups or len(set(self.groups)) != len(self.groups):
            raise ValueError("--sites must be >= 1 and --groups distinct, non-empty")
        for g in self.groups:
            if not re.fullmatch(r"[A-Za-z0-9]+", g):
                raise ValueError(f"group label {g!r} must be alphanumeric")
        if not self.noise_free and (self.snr <= 0 or self.t1w_snr <= 0):
            raise ValueError("--snr and --t1w-snr must be > 0 (or use --noise-free)")
        if self.age_range[0] > self.age_range[1]:
            raise ValueError("--age-range: LOW,HIGH")
        if self.cr_sd is not None and not self.cr_sd >= 0:
            raise ValueError("--cr-sd must be >= 0")
        parse_effects(self)
        parse_age_slope(self.age_slope)


def parse_effects(opts: Options) -> list[tuple[str, str, str, float]]:
    """``[GROUP:]ROI:MEASURE:VALUE`` -> [(group, roi, measure, value)] (one per target group)."""
    out = []
    for spec in opts.effects:
        parts = spec.split(":")
        if len(parts) == 3:
            targets = list(opts.groups[1:])
            if not targets:
                raise ValueError(f"--effect {spec}: needs a second group (--groups) or GROUP:")
        elif len(parts) == 4:
            targets = [parts.pop(0)]
            if targets[0] not in opts.groups:
                raise ValueError(f"--effect {spec}: group {targets[0]!r} not in --groups")
        else:
            raise ValueError(f"--effect {spec}: expected [GROUP:]ROI:MEASURE:VALUE")
        roi, measure, value = parts
        if roi not in ROIS:
            raise ValueError(f"--effect {spec}: ROI must be one of {ROIS}")
        if measure not in ("cr", "volume"):
            raise ValueError(f"--effect {spec}: MEASURE must be cr or volume")
        if measure == "volume" and opts.nuclei != "builtin":
            raise ValueError("--effect ...:volume:... needs --nuclei builtin")
        try:
            val = float(value)
        except ValueError as exc:
            raise ValueError(f"--effect {spec}: VALUE must be a number") from exc
        if measure == "volume" and val <= -1:
            raise ValueError(f"--effect {spec}: volume change must be > -1")
        out.extend((g, roi, measure, val) for g in targets)
    return out


def parse_age_slope(specs) -> dict[str, float]:
    slopes = {roi: 0.0 for roi in ROIS}
    for spec in specs:
        if ":" in spec:
            roi, val = spec.split(":", 1)
            if roi not in ROIS:
                raise ValueError(f"--age-slope {spec}: ROI must be one of {ROIS}")
            slopes[roi] = float(val)
        else:
            slopes = {roi: float(spec) for roi in ROIS}
    return slopes


# ----------------------------------------------------------------------------- geometry

def _rot(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rotation matrix (degrees about x, then y, then z)."""
    rx, ry, rz = np.deg2rad([rx, ry, rz])
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


def _rigid(rot_deg, trans_mm, center=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 rigid transform rotating about ``center`` then translating."""
    m = np.eye(4)
    r = _rot(*rot_deg)
    c = np.asarray(center, float)
    m[:3, :3] = r
    m[:3, 3] = c - r @ c + np.asarray(trans_mm, float)
    return m


def _apply(aff: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 4x4 affine to points of shape (3, N)."""
    return aff[:3, :3] @ pts + aff[:3, 3:4]


def _ellipsoid_mask(pts: np.ndarray, center, semi, margin: float = 0.0) -> np.ndarray:
    d = (pts - np.asarray(center, float)[:, None]) / (np.asarray(semi, float)[:, None] + margin)
    return (d ** 2).sum(0) <= 1.0


def _ref_region_at(pts: np.ndarray) -> np.ndarray:
    """Label 7/8/9 (CC_L, CC_R, PT) of the pipeline's reference ellipsoids at points (3, N)."""
    lab = np.zeros(pts.shape[1], np.uint8)
    cl = (-CC_CENTER[0], CC_CENTER[1], CC_CENTER[2])
    lab[_ellipsoid_mask(pts, cl, CC_SEMI)] = REF_LABELS["CC_L"]
    lab[_ellipsoid_mask(pts, CC_CENTER, CC_SEMI)] = REF_LABELS["CC_R"]
    lab[_ellipsoid_mask(pts, PT_CENTER, PT_SEMI)] = REF_LABELS["PT"]
    return lab


# ----------------------------------------------------------------------------- nuclei

@dataclass(frozen=True)
class BentEllipsoid:
    """Ellipsoid in local axes (a, b, c); ``b`` is shifted by ``-bend * (a / ra)**2``."""

    center: tuple[float, float, float]
    axes: tuple[tuple[float, float, float], ...]  # three orthonormal rows
    radii: tuple[float, float, float]
    bend: float = 0.0

    def contains(self, pts: np.ndarray) -> np.ndarray:
        d = pts - np.asarray(self.center)[:, None]
        ax = np.asarray(self.axes)
        a, b, c = ax @ d
        ra, rb, rc = self.radii
        b = b - self.bend * (a / ra) ** 2
        return (a / ra) ** 2 + (b / rb) ** 2 + (c / rc) ** 2 <= 1.0

    def bbox(self):
        r = max(self.radii) + abs(self.bend)
        c = np.asarray(self.center)
        return c - r, c + r

    def scaled(self, s: float) -> "BentEllipsoid":
        return BentEllipsoid(self.center, self.axes, tuple(r * s for r in self.radii), self.bend * s)


@dataclass(frozen=True)
class Tube:
    """Cylinder of ``radius`` from ``p0`` to ``p1`` (flat ends)."""

    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    radius: float

    def contains(self, pts: np.ndarray) -> np.ndarray:
        p0, p1 = np.asarray(self.p0), np.asarray(self.p1)
        axis = p1 - p0
        length = np.linalg.norm(axis)
        axis = axis / length
        d = pts - p0[:, None]
        s = axis @ d
        radial = d - np.outer(axis, s)
        return (s >= 0) & (s <= length) & ((radial ** 2).sum(0) <= self.radius ** 2)

    def bbox(self):
        p = np.stack([self.p0, self.p1])
        return p.min(0) - self.radius, p.max(0) + self.radius

    def scaled(self, s: float) -> "Tube":
        p0, p1 = np.asarray(self.p0), np.asarray(self.p1)
        mid = (p0 + p1) / 2
        return Tube(tuple(mid + (p0 - mid) * s), tuple(mid + (p1 - mid) * s), self.radius * s)


def _builtin_shapes() -> dict[str, object]:
    shapes: dict[str, object] = {}
    for hemi, sx in (("L", -1.0), ("R", 1.0)):
        u = np.array([-8.0 * sx, -12.0, 0.0])
        u /= np.linalg.norm(u)  # anterolateral -> posteromedial
        v = np.array([-u[1], u[0], 0.0]) * sx  # in-plane normal, pointing lateral-posterior
        w = np.array([0.0, 0.0, 1.0])
        shapes[f"SN_{hemi}"] = BentEllipsoid(
            (9.5 * sx, -18.5, -13.5), (tuple(u), tuple(v), tuple(w)), (7.0, 2.2, 4.2), bend=-1.0)
        shapes[f"VTA_{hemi}"] = BentEllipsoid(
            (4.0 * sx, -17.0, -14.0), ((1, 0, 0), (0, 1, 0), (0, 0, 1)), (1.8, 2.6, 3.6))
        shapes[f"LC_{hemi}"] = Tube((5.0 * sx, -35.5, -18.0), (5.0 * sx, -36.5, -32.0), 1.07)
    return shapes


class BuiltinNuclei:
    """The phantom's own nuclei (see module docstring), optionally scaled per ROI."""

    source = "builtin"

    def __init__(self, volume_scale: dict[str, float] | None = None):
        shapes = _builtin_shapes()
        scale = volume_scale or {}
        self.shapes = {n: (s.scaled(scale[n.split("_")[0]] ** (1 / 3))
                           if n.split("_")[0] in scale else s) for n, s in shapes.items()}
        self._bboxes = [self.shapes[n].bbox() for n in NUCLEI]

    def bboxes(self):
        return self._bboxes

    def labels_at(self, pts: np.ndarray) -> np.ndarray:
        lab = np.zeros(pts.shape[1], np.uint8)
        for k, name in enumerate(NUCLEI, start=1):
            lo, hi = self._bboxes[k - 1]
            sel = np.all((pts >= lo[:, None]) & (pts <= hi[:, None]), axis=0) & (lab == 0)
            if sel.any():
                idx = np.flatnonzero(sel)
                lab[idx[self.shapes[name].contains(pts[:, idx])]] = k
        return lab

    def points(self, name: str, step: float = 0.25):
        """Points filling the nucleus on a ``step`` grid and the volume of each (mm3)."""
        k = NUCLEI.index(name) + 1
        lo, hi = self._bboxes[k - 1]
        axes = [np.arange(lo[i] + step / 2, hi[i], step) for i in range(3)]
        g = np.stack(np.meshgrid(*axes, indexing="ij")).reshape(3, -1)
        return g[:, self.labels_at(g) == k], step ** 3


def _read_label_table(path: Path) -> dict[str, list[int]]:
    """Read a dseg TSV (index + name/label columns) -> {nucleus: [label numbers]}."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path}: empty label table")
    cols = {c.lower(): c for c in rows[0]}
    icol = cols.get("index")
    ncol = cols.get("name") or cols.get("label") or cols.get("abbreviation")
    if icol is None or ncol is None:
        raise ValueError(f"{path}: needs 'index' and 'name' (or 'label') columns")
    hcol = cols.get("hemi") or cols.get("hemisphere")
    out: dict[str, list[int]] = {n: [] for n in NUCLEI}
    for row in rows:
        name = row[ncol].strip()
        m = re.match(r"^(SN_?pc|SNc|SN|VTA|LC)(?:_([LR]))?(?:_|$)", name, flags=re.IGNORECASE)
        if not m:
            continue
        base = m.group(1).upper()
        roi = "SN" if base.startswith("SN") else base
        hemi = (m.group(2) or (row.get(hcol, "") if hcol else "")).strip().upper()[:1]
        if hemi not in HEMIS:
            continue
        out[f"{roi}_{hemi}"].append(int(row[icol]))
    return out


def _sibling_table(img: Path) -> Path:
    name = img.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    same = img.with_name(name + ".tsv")
    if same.is_file():
        return same
    m = re.search(r"atlas-([A-Za-z0-9]+)", name)
    cands = sorted(img.parent.glob(f"*atlas-{m.group(1)}*_dseg.tsv")) if m else []
    if not cands:
        cands = sorted(img.parent.glob("*dseg.tsv"))
    if len(cands) >= 1:
        return cands[0]
    raise FileNotFoundError(f"no label table beside {img}; give --nuclei-labels SN_L=..,...")


class AtlasNuclei:
    """Nuclei from a label image: world coordinates read as template mm, nearest neighbour."""

    def __init__(self, path: str | Path, mapping: str | None = None):
        self.path = Path(path)
        img = nb.load(str(self.path))
        data = np.asarray(img.dataobj)
        if data.ndim != 3:
            raise ValueError(f"{path}: expected a 3D label image")
        data = np.rint(data).astype(np.int64)
        if mapping:
            labels: dict[str, list[int]] = {n: [] for n in NUCLEI}
            for item in mapping.split(","):
                key, _, vals = item.partition("=")
                key = key.strip()
                if key not in labels:
                    raise ValueError(f"--nuclei-labels: {key!r} is not one of {NUCLEI}")
                labels[key] = [int(v) for v in vals.split("+") if v.strip()]
            self.table = "--nuclei-labels " + mapping
        else:
            tsv = _sibling_table(self.path)
            labels = _read_label_table(tsv)
            self.table = str(tsv)
        missing = [n for n in NUCLEI if not labels[n]]
        if missing:
            raise ValueError(f"{path}: no label for {missing}")
        lut = np.zeros(int(data.max()) + 1, np.uint8)
        for k, name in enumerate(NUCLEI, start=1):
            for lab in labels[name]:
                if lab <= data.max():
                    lut[lab] = k
        self.labels = labels
        self.vol = lut[np.clip(data, 0, None)]
        self.affine = img.affine
        self.inv = np.linalg.inv(img.affine)
        self.voxel_volume = float(abs(np.linalg.det(img.affine[:3, :3])))
        self._bboxes = []
        for k in range(1, len(NUCLEI) + 1):
            ijk = np.argwhere(self.vol == k)
            if len(ijk) == 0:
                raise ValueError(f"{path}: label(s) {labels[NUCLEI[k - 1]]} absent from the image")
            box = np.stack([ijk.min(0) - 0.5, ijk.max(0) + 0.5]).T.astype(float)
            corners = _apply(self.affine, box)
            self._bboxes.append((corners.min(1), corners.max(1)))
        self.source = str(self.path)

    def bboxes(self):
        return self._bboxes

    def labels_at(self, pts: np.ndarray) -> np.ndarray:
        ijk = np.rint(_apply(self.inv, pts)).astype(np.int64)
        ok = np.all((ijk >= 0) & (ijk < np.asarray(self.vol.shape)[:, None]), axis=0)
        lab = np.zeros(pts.shape[1], np.uint8)
        lab[ok] = self.vol[ijk[0, ok], ijk[1, ok], ijk[2, ok]]
        return lab

    def points(self, name: str, sub: int = 2):
        k = NUCLEI.index(name) + 1
        ijk = np.argwhere(self.vol == k).astype(float)
        offs = (np.arange(sub) + 0.5) / sub - 0.5
        o = np.stack(np.meshgrid(offs, offs, offs, indexing="ij")).reshape(3, -1)
        pts = (ijk.T[:, :, None] + o[:, None, :]).reshape(3, -1)
        return _apply(self.affine, pts), self.voxel_volume / sub ** 3


def load_nuclei(spec: str, mapping: str | None = None, volume_scale=None):
    if spec == "builtin":
        return BuiltinNuclei(volume_scale)
    return AtlasNuclei(spec, mapping)


# ----------------------------------------------------------------------------- template model

@dataclass
class TemplateModel:
    name: str
    source: str
    affine: np.ndarray
    inv: np.ndarray
    shape: tuple[int, int, int]
    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    skull: np.ndarray
    scalp: np.ndarray
    m_cc: np.ndarray
    m_pt: np.ndarray
    refclean: np.ndarray
    head_lo: np.ndarray
    head_hi: np.ndarray
    brain_lo: np.ndarray
    brain_hi: np.ndarray
    _contrast: dict = field(default_factory=dict)

    def contrast(self, name: str) -> np.ndarray:
        """Noise-free signal map (fractions of S0) of one contrast, on the template grid."""
        if name not in self._contrast:
            w = CONTRASTS[name]
            tissue = self.gm + self.wm
            base = (w["GM"] * self.gm + w["WM"] * self.wm + w["CSF"] * self.csf
                    + w["skull"] * self.skull + w["scalp"] * self.scalp)
            m = self.m_cc + self.m_pt
            ref = w["WM"] * self.m_cc + w["PT"] * self.m_pt
            # inside the painted regions, CSF probabilities under 5 % count as tissue
            csf_p = np.clip((self.csf - 0.05) / 0.95, 0, 1)
            out = (1 - m) * base + ref * (tissue + self.csf - csf_p) + m * w["CSF"] * csf_p
            self._contrast[name] = out.astype(np.float32)
        return self._contrast[name]


def _soft_layer(d: np.ndarray, a: float, b: float, width: float = 0.5) -> np.ndarray:
    def sig(x):
        return 0.5 * (1 + np.tanh(x / (2 * width)))
    return sig(d - a) - sig(d - b)


def template_model(name: str | None = None) -> TemplateModel:
    """The template's maps on a padded grid around its head (cached per process)."""
    return _template_model(get_template(name))


@lru_cache(maxsize=2)
def _template_model(tpl) -> TemplateModel:
    gm, wm, csf, aff = tissue_probabilities(tpl)
    t1 = np.asarray(nb.load(str(tpl.t1w)).dataobj, dtype=np.float32)
    mask = np.asarray(nb.load(str(tpl.brain_mask)).dataobj) > 0
    ijk = np.argwhere(mask)
    lo_i, hi_i = ijk.min(0), ijk.max(0)
    zooms = np.sqrt((aff[:3, :3] ** 2).sum(0))
    pad = np.ceil(PAD_MM / zooms).astype(int)

    def crop(a):
        sl = tuple(slice(max(lo_i[i] - pad[i], 0), min(hi_i[i] + pad[i] + 1, a.shape[i]))
                   for i in range(3))
        c = a[sl]
        before = [lo_i[i] - pad[i] - sl[i].start for i in range(3)]  # <= 0
        widths = [(-before[i], (hi_i[i] + pad[i] + 1) - sl[i].stop) for i in range(3)]
        return np.pad(c, widths, mode="constant")

    gm, wm, csf, t1, mask = (crop(np.asarray(a)) for a in (gm, wm, csf, t1, mask))
    gm, wm, csf, t1 = (a.astype(np.float32) for a in (gm, wm, csf, t1))
    new_aff = aff.copy()
    new_aff[:3, 3] = _apply(aff, (lo_i - pad).astype(float)[:, None])[:, 0]
    total = gm + wm + csf
    over = total > 1
    for a in (gm, wm, csf):
        a[over] /= total[over]
    gm[~mask] = wm[~mask] = csf[~mask] = 0
    # brain only (TemplateFlow's T1w is a whole head), WM at ~230 as in nilearn's template
    t1 = t1 * mask
    t1 *= np.float32(230.0 / max(float(np.median(t1[wm > 0.9])), 1e-6))

    d = ndimage.distance_transform_edt(~mask, sampling=zooms).astype(np.float32)
    shape = mask.shape
    if not np.allclose(new_aff[:3, :3], np.diag(np.diag(new_aff[:3, :3]))):
        raise ValueError("template grids must be axis-aligned")
    axes = [new_aff[i, i] * np.arange(shape[i]) + new_aff[i, 3] for i in range(3)]
    brain_pts = _apply(new_aff, np.argwhere(mask).T.astype(float))
    brain_lo, brain_hi = brain_pts.min(1), brain_pts.max(1)
    below = (0.5 * (1 + np.tanh((axes[2] - brain_lo[2]) / 1.0))).astype(np.float32)
    outside = (~mask).astype(np.float32) * below[None, None, :]  # no head shell under the cut
    csf_shell = _soft_layer(d, *SHELL_LAYERS_MM["CSF"]) * outside
    skull = _soft_layer(d, *SHELL_LAYERS_MM["skull"]) * outside
    scalp = _soft_layer(d, *SHELL_LAYERS_MM["scalp"]) * outside
    del d, outside
    csf_all = csf + csf_shell
    head = t1 + SHELL_T1["CSF"] * csf_shell + SHELL_T1["skull"] * skull + SHELL_T1["scalp"] * scalp

    # reference paint: the pipeline's CC and PT ellipsoids, enlarged, with soft edges
    m_cc = np.zeros(shape, np.float32)
    m_pt = np.zeros(shape, np.float32)
    sigma = 0.6 / zooms
    for center, semi, target in (((-CC_CENTER[0],) + CC_CENTER[1:], CC_SEMI, m_cc),
                                 (CC_CENTER, CC_SEMI, m_cc), (PT_CENTER, PT_SEMI, m_pt)):
        ext = np.asarray(semi) + REF_PAINT_MARGIN_MM + 3.0
        sl = []
        for i in range(3):
            lo_w, hi_w = sorted([center[i] - ext[i], center[i] + ext[i]])
            a = int(np.floor((lo_w - new_aff[i, 3]) / new_aff[i, i]))
            b = int(np.ceil((hi_w - new_aff[i, 3]) / new_aff[i, i])) + 1
            a, b = sorted((a, b))
            sl.append(slice(max(a, 0), min(b, shape[i])))
        sub = np.stack(np.meshgrid(*[axes[i][sl[i]] for i in range(3)], indexing="ij"))
        inside = _ellipsoid_mask(sub.reshape(3, -1), center, semi, REF_PAINT_MARGIN_MM)
        block = ndimage.gaussian_filter(inside.reshape(sub.shape[1:]).astype(np.float32), sigma)
        target[tuple(sl)] = np.maximum(target[tuple(sl)], block)
    # where a painted voxel is pure reference tissue (see TemplateModel.contrast)
    refclean = np.maximum(m_cc, m_pt) * (gm + wm + csf_all - np.clip((csf_all - 0.05) / 0.95, 0, 1))
    head_lo = brain_lo - np.array([12.0, 12.0, 0.0])
    head_hi = brain_hi + 12.0
    return TemplateModel(
        name=tpl.name, source=tpl.source, affine=new_aff, inv=np.linalg.inv(new_aff), shape=shape,
        t1=head.astype(np.float32), gm=gm, wm=wm, csf=csf_all.astype(np.float32),
        skull=skull.astype(np.float32), scalp=scalp.astype(np.float32), m_cc=m_cc, m_pt=m_pt,
        refclean=refclean.astype(np.float32), head_lo=head_lo, head_hi=head_hi,
        brain_lo=brain_lo, brain_hi=brain_hi)


def _sample_idx(volume: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return ndimage.map_coordinates(volume, idx.reshape(3, -1), order=1, mode="constant",
                                   cval=0.0, prefilter=False)


class _GridDisplacement:
    """``u(q(v))`` on a voxel grid ``v = (i, j, k)``, ``q = C v``.

    ``u`` is evaluated exactly on a coarse lattice of the grid (about every 4 mm) and
    interpolated linearly, axis by axis, in between; ``u`` is smooth over ~15 mm, so the
    error is about 0.01-0.03 mm while the cost is a few array operations per voxel.
    """

    def __init__(self, deform, C, shape, zooms, k_range, step_mm: float = 4.0):
        self.C = C
        self.ax = []
        ranges = ((0.0, shape[0] - 1.0), (0.0, shape[1] - 1.0), k_range)
        for (lo, hi), z in zip(ranges, zooms):
            st = max(step_mm / z, 1.0)
            m = max(int(math.ceil((hi - lo) / st)) + 1, 2)
            self.ax.append(lo + st * np.arange(m))
        g = np.stack(np.meshgrid(*self.ax, indexing="ij")).reshape(3, -1)
        q = _apply(C, g)
        self.U = (deform(q) - q).reshape(3, *[len(a) for a in self.ax]).astype(np.float32)

    def at(self, i, j, k) -> np.ndarray:
        """Displacement (3, len(i), len(j), len(k)) at the grid coordinates given per axis."""
        U = self.U
        for axis, x in ((3, k), (2, j), (1, i)):
            lat = self.ax[axis - 1]
            c = (np.asarray(x, float) - lat[0]) / (lat[1] - lat[0])
            i0 = np.clip(np.floor(c).astype(int), 0, len(lat) - 2)
            w = (c - i0).astype(np.float32)
            shp = [1, 1, 1, 1]
            shp[axis] = -1
            a = np.take(U, i0, axis=axis)
            U = a + (np.take(U, i0 + 1, axis=axis) - a) * w.reshape(shp)
        return U


def _template_index(tm: TemplateModel, C: np.ndarray, U: np.ndarray, i, j, k) -> np.ndarray:
    """Template voxel indices (3, ni, nj, nk) of grid points ``t = C v + U``."""
    M = tm.inv @ C
    R = tm.inv[:3, :3]
    i = np.asarray(i, float)[:, None, None]
    j = np.asarray(j, float)[None, :, None]
    k = np.asarray(k, float)[None, None, :]
    out = np.empty((3,) + U.shape[1:], np.float64)
    for a in range(3):
        out[a] = M[a, 0] * i + M[a, 1] * j + M[a, 2] * k + M[a, 3]
        for b in range(3):
            if R[a, b] != 0:
                out[a] += R[a, b] * U[b]
    return out


def _world_points(C: np.ndarray, U: np.ndarray, i, j, k) -> np.ndarray:
    """Template mm (3, N) of grid points ``t = C v + U``."""
    return _template_index_like(C, U, i, j, k).reshape(3, -1)


def _template_index_like(C, U, i, j, k):
    i = np.asarray(i, float)[:, None, None]
    j = np.asarray(j, float)[None, :, None]
    k = np.asarray(k, float)[None, None, :]
    out = np.empty((3,) + U.shape[1:], np.float64)
    for a in range(3):
        out[a] = C[a, 0] * i + C[a, 1] * j + C[a, 2] * k + C[a, 3] + U[a]
    return out


# ----------------------------------------------------------------------------- subject

@dataclass
class Deformation:
    u: np.ndarray  # (3, gx, gy, gz) displacement, template mm
    affine: np.ndarray  # grid index -> template mm
    inv: np.ndarray
    jac: np.ndarray  # (3, 3, gx, gy, gz) du_i / dx_j
    max_mm: float
    rms_mm: float

    def __call__(self, q: np.ndarray) -> np.ndarray:
        """phi: q (template-affine coordinates, (3, N)) -> t = q + u(q)."""
        idx = _apply(self.inv, q)
        return q + np.stack([ndimage.map_coordinates(self.u[c], idx, order=1, mode="nearest",
                                                     prefilter=False) for c in range(3)])

    def inverse(self, t: np.ndarray, n_iter: int = 6) -> np.ndarray:
        q = t.copy()
        for _ in range(n_iter):
            q = t - (self(q) - q)
        return q

    def det_jacobian(self, q: np.ndarray) -> np.ndarray:
        idx = _apply(self.inv, q)
        j = np.empty((q.shape[1], 3, 3))
        for a in range(3):
            for b in range(3):
                j[:, a, b] = ndimage.map_coordinates(self.jac[a, b], idx, order=1, mode="nearest",
                                                     prefilter=False)
            j[:, a, a] += 1.0
        return np.linalg.det(j)


def make_deformation(tm: TemplateModel, rng: np.random.Generator, max_mm: float) -> Deformation:
    lo = tm.head_lo - 24.0
    hi = tm.head_hi + 24.0
    n = np.ceil((hi - lo) / DEFORM_SPACING_MM).astype(int) + 1
    aff = np.diag([DEFORM_SPACING_MM] * 3 + [1.0])
    aff[:3, 3] = lo
    noise = rng.standard_normal((3, *n)).astype(np.float64)
    sig = DEFORM_SIGMA_MM / DEFORM_SPACING_MM
    u = np.stack([ndimage.gaussian_filter(noise[c], sig, mode="reflect") for c in range(3)])
    # amplitude measured inside the brain box
    b_lo = np.floor((tm.brain_lo - lo) / DEFORM_SPACING_MM).astype(int)
    b_hi = np.ceil((tm.brain_hi - lo) / DEFORM_SPACING_MM).astype(int) + 1
    inner = u[:, b_lo[0]:b_hi[0], b_lo[1]:b_hi[1], b_lo[2]:b_hi[2]]
    mag = np.sqrt((inner ** 2).sum(0))
    scale = (max_mm / mag.max()) if max_mm > 0 else 0.0
    u *= scale
    mag *= scale
    jac = np.stack([np.stack(np.gradient(u[a], DEFORM_SPACING_MM)) for a in range(3)])
    return Deformation(u=u.astype(np.float32), affine=aff, inv=np.linalg.inv(aff),
                       jac=jac.astype(np.float32), max_mm=float(mag.max()),
                       rms_mm=float(np.sqrt((mag ** 2).mean())))


def random_affine(rng: np.random.Generator) -> np.ndarray:
    """Subject scanner mm -> template mm: T R S."""
    rot = rng.uniform(-8, 8, 3)
    trans = rng.uniform(-8, 8, 3)
    scale = rng.uniform(0.95, 1.05, 3)
    m = np.eye(4)
    m[:3, :3] = _rot(*rot) @ np.diag(scale)
    m[:3, 3] = trans
    return m


# ----------------------------------------------------------------------------- images

def _bias_field(rng: np.random.Generator, amplitude: float):
    """Smooth multiplicative field exp(sum c_i P_i(s / 100 mm)), fixed to the scanner."""
    coef = rng.normal(0.0, amplitude / 2.5, 9)

    def field_at(s: np.ndarray) -> np.ndarray:
        x, y, z = s / 100.0
        terms = (x, y, z, x * x - 0.33, y * y - 0.33, z * z - 0.33, x * y, x * z, y * z)
        return np.exp(sum(c * t for c, t in zip(coef, terms)))
    return field_at


def _rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    n1 = rng.standard_normal(signal.shape, dtype=np.float32) * sigma
    n2 = rng.standard_normal(signal.shape, dtype=np.float32) * sigma
    return np.sqrt((signal + n1) ** 2 + n2 ** 2)


def _to_int16(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 32767).astype(np.int16)


def _save(data: np.ndarray, affine: np.ndarray, path: Path, zooms4: float | None = None,
          dtype=None) -> None:
    img = nb.Nifti1Image(data, affine)
    hdr = img.header
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_xyzt_units("mm", "sec")
    if dtype is not None:
        hdr.set_data_dtype(dtype)
    if data.ndim == 3 or zooms4 is not None:
        hdr.set_dim_info(freq=0, phase=1, slice=2)
    if data.ndim == 4 and zooms4 is not None:
        hdr.set_zooms(hdr.get_zooms()[:3] + (zooms4,))
    hdr["descrip"] = b"nmbids-simulate"
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.save(img, str(path))


def _grid_affine(axes: np.ndarray, zooms, shape, center) -> np.ndarray:
    """Voxel -> scanner affine with unit ``axes`` (columns), voxel ``zooms`` and ``center``."""
    aff = np.eye(4)
    aff[:3, :3] = axes * np.asarray(zooms, float)[None, :]
    aff[:3, 3] = np.asarray(center, float) - aff[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return aff


def render_t1w(tm, A, deform, res, rng, snr, bias, noise_free):
    """T1w on an axial LAS grid covering the head; returns (int16 array, affine)."""
    lo, hi = tm.head_lo, tm.head_hi
    corners = np.array(np.meshgrid(*[[lo[i], hi[i]] for i in range(3)], indexing="ij")).reshape(3, -1)
    s = _apply(np.linalg.inv(A), corners)
    s_lo, s_hi = s.min(1) - 6.0, s.max(1) + 6.0
    shape = tuple(int(v) for v in np.ceil((s_hi - s_lo) / res).astype(int))
    center = (s_lo + s_hi) / 2
    aff = _grid_affine(np.diag([-1.0, 1.0, 1.0]), (res,) * 3, shape, center)
    out = np.zeros(shape, np.float32)
    C = A @ aff
    gd = _GridDisplacement(deform, C, shape, (res,) * 3, (0.0, shape[2] - 1.0))
    bias_at = None if noise_free or bias <= 0 else _bias_field(rng, bias)
    ii, jj = np.arange(shape[0]), np.arange(shape[1])
    step = max(1, int(1_000_000 // (shape[0] * shape[1])))
    for k0 in range(0, shape[2], step):
        ks = np.arange(k0, min(k0 + step, shape[2]))
        U = gd.at(ii, jj, ks)
        val = _sample_idx(tm.t1, _template_index(tm, C, U, ii, jj, ks)) * T1W_SCALE
        if bias_at is not None:
            val *= bias_at(_template_index_like(aff, np.zeros_like(U), ii, jj, ks).reshape(3, -1))
        out[:, :, k0:k0 + len(ks)] = val.reshape(shape[0], shape[1], len(ks))
    if not noise_free:
        out = _rician(rng, out, 230.0 * T1W_SCALE / snr)  # template WM ~ 230
    return _to_int16(out), aff


@dataclass
class Slab:
    affine: np.ndarray  # voxel -> scanner (repeat 1 position)
    shape: tuple[int, int, int]
    tilt_deg: float
    center: np.ndarray
    inplane: float
    slice_mm: float


def plan_slab(rng, A, P, deform, target, opts: Options, kind: str) -> Slab:
    t = np.asarray(target, float)[:, None]
    q = deform.inverse(t)
    s = _apply(P @ np.linalg.inv(A), q)[:, 0]
    tilt = float(rng.uniform(-opts.max_tilt, opts.max_tilt))
    rot = _rot(tilt, 0.0, 0.0)
    offset = rng.uniform(-2.0, 2.0, 3)
    axes = rot @ np.diag([-1.0, 1.0, 1.0])  # LAS, tilted about the L-R axis
    center = s + rot @ offset
    slice_mm, n_slices = ((opts.fse_slice, opts.fse_slices) if kind == "fse"
                          else (opts.nm_slice, opts.nm_slices))
    nx = max(1, int(round(opts.nm_fov[0] / opts.nm_inplane)))
    ny = max(1, int(round(opts.nm_fov[1] / opts.nm_inplane)))
    shape = (nx, ny, n_slices)
    aff = _grid_affine(axes, (opts.nm_inplane, opts.nm_inplane, slice_mm), shape, center)
    return Slab(aff, shape, tilt, center, opts.nm_inplane, slice_mm)


def render_nm(tm, nuclei, deform, slab: Slab, C_list, contrasts, values, s0: float = 1.0,
              truth_geometry: bool = True):
    """Noise-free, bias-free NM volumes, one per (C, contrast) pair.

    ``C_list[r]`` maps slab voxel -> template-affine coordinates q for repeat r; ``contrasts[r]``
    is the contrast name (tissue signals in units of ``s0``) and ``values[r]`` the 6 nucleus
    signals (image units). Returns the volumes and, for
    repeat 0, the nucleus fractions (nvox, 6) and the reference-core labels (nvox,).
    """
    shape = slab.shape
    nvox = int(np.prod(shape))
    ii, jj, kk = (np.arange(n) for n in shape)
    zooms = (slab.inplane, slab.inplane, slab.slice_mm)
    n_sub = max(4, int(math.ceil(slab.slice_mm / 0.5)))
    offs = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    n_fine = max(5, int(math.ceil(slab.slice_mm / 0.4)))
    fine_k = (np.arange(n_fine) + 0.5) / n_fine - 0.5
    fine_ij = np.array([-0.25, 0.25])
    fo = np.stack(np.meshgrid(fine_ij, fine_ij, fine_k, indexing="ij")).reshape(3, -1)
    half_diag = 0.5 * np.linalg.norm(slab.affine[:3, :3] @ np.ones(3)) + 0.5
    outs, frac_out, refcore = [], None, None
    for r, (C, cname, vals) in enumerate(zip(C_list, contrasts, values)):
        cmap = tm.contrast(cname)
        gd = _GridDisplacement(deform, C, shape, zooms, (-0.5, shape[2] - 0.5))
        acc = np.zeros(nvox, np.float64)
        rc_min = np.ones(nvox, np.float32) if (r == 0 and truth_geometry) else None
        for o in offs:
            U = gd.at(ii, jj, kk + o)
            idx = _template_index(tm, C, U, ii, jj, kk + o)
            acc += _sample_idx(cmap, idx)
            if rc_min is not None:
                np.minimum(rc_min, _sample_idx(tm.refclean, idx), out=rc_min)
        acc *= s0 / n_sub
        # nuclei: fine sub-samples of the voxels near any nucleus
        tc = _world_points(C, gd.at(ii, jj, kk), ii, jj, kk)
        cand = np.zeros(nvox, bool)
        for lo, hi in nuclei.bboxes():
            cand |= np.all((tc >= (lo - half_diag)[:, None]) & (tc <= (hi + half_diag)[:, None]),
                           axis=0)
        idx = np.flatnonzero(cand)
        frac = np.zeros((len(idx), len(NUCLEI)))
        if len(idx):
            v0 = np.stack(np.unravel_index(idx, shape)).astype(float)
            pts = (v0[:, :, None] + fo[:, None, :]).reshape(3, -1)
            lab = nuclei.labels_at(deform(_apply(C, pts))).reshape(len(idx), fo.shape[1])
            for k in range(len(NUCLEI)):
                frac[:, k] = (lab == k + 1).mean(1)
            tot = frac.sum(1)
            acc[idx] = (1 - tot) * acc[idx] + frac @ np.asarray(vals)
        outs.append(acc.reshape(shape))
        if r == 0 and truth_geometry:
            frac_full = np.zeros((nvox, len(NUCLEI)), np.float32)
            frac_full[idx] = frac
            frac_out = frac_full
            reg = _ref_region_at(tc)
            core = (rc_min >= 0.999) & (frac_full.sum(1) == 0)
            refcore = np.where(core, reg, 0).astype(np.uint8)
    return outs, frac_out, refcore


# ----------------------------------------------------------------------------- BIDS writing

def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


COMMON_META = {"Manufacturer": "Simulated", "ManufacturersModelName": GENERATOR,
               "SoftwareVersions": __version__, "MagneticFieldStrength": 3,
               "ReceiveCoilName": "simulated 32-channel head coil"}


def _sidecar(kind: str, slab: Slab | None, site: str, mt_state: bool | None = None) -> dict:
    meta = dict(COMMON_META, InstitutionName=site, StationName=f"{site}-scanner")
    if kind == "t1w":
        meta.update(MRAcquisitionType="3D", ScanningSequence="GR\\IR", SequenceVariant="SK\\SP\\MP",
                    SequenceName="*tfl3d1_16ns", PulseSequenceType="MPRAGE", RepetitionTime=2.3,
                    EchoTime=0.00298, InversionTime=0.9, FlipAngle=9)
        return meta
    if kind == "gremt":
        meta.update(MRAcquisitionType="2D", ScanningSequence="GR", SequenceVariant="SP\\MTC",
                    SequenceName="*fl2d1", PulseSequenceType="GRE-MT", MTState=True,
                    MTOffsetFrequency=1200, MTPulseShape="GAUSSIAN", MTPulseDuration=0.01,
                    MTPulseBandwidth=300, MTNumberOfPulses=1, FlipAngle=40, EchoTime=0.0039,
                    RepetitionTime=0.26)
    elif kind == "fse":
        meta.update(MRAcquisitionType="2D", ScanningSequence="SE", SequenceVariant="SK\\SP",
                    SequenceName="*tse2d1_3", PulseSequenceType="TSE", EchoTrainLength=3,
                    MTState=False, FlipAngle=120, EchoTime=0.011, RepetitionTime=0.6)
    elif kind == "mtr":
        meta.update(MRAcquisitionType="2D", ScanningSequence="GR",
                    SequenceVariant="SP\\MTC" if mt_state else "SP", SequenceName="*fl2d1",
                    PulseSequenceType="GRE", MTState=bool(mt_state), FlipAngle=20,
                    EchoTime=0.0037, RepetitionTime=0.2)
        if mt_state:
            meta.update(MTOffsetFrequency=1200, MTPulseShape="GAUSSIAN", MTPulseDuration=0.01,
                        MTPulseBandwidth=300, MTNumberOfPulses=1)
    if slab is not None:
        meta["SliceThickness"] = slab.slice_mm
    return meta


def _bilateral(vals: dict[str, float], vols: dict[str, float]) -> float:
    w = vols["L"] + vols["R"]
    return float((vals["L"] * vols["L"] + vals["R"] * vols["R"]) / w) if w > 0 else float("nan")


def _r(x: float, nd: int = 6):
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


def simulate_dataset(out_dir, n_subjects: int = 2, seed: int = 0, overwrite: bool = False,
                     verbose: bool = False, **options) -> Path:
    """Write a phantom BIDS dataset to ``out_dir/bids`` and its truth to ``out_dir/truth.json``.

    ``options`` are the fields of :class:`Options` (``acq=("gremt", "fse")``, ``t1w_res=1.5``,
    ...). Returns ``out_dir`` as a Path.
    """
    if options.pop("repeats_as_runs", False):
        options["repeats_layout"] = "runs"
    if "effect" in options:
        options["effects"] = options.pop("effect")
    known = {f.name for f in fields(Options)}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown option(s): {sorted(unknown)}")
    for key in ("acq", "groups", "effects", "age_slope", "nm_fov", "age_range"):
        if key in options and isinstance(options[key], str):
            sep = r"[,x]" if key == "nm_fov" else ","
            options[key] = tuple(x for x in re.split(sep, options[key]) if x)
        if key in options and key in ("nm_fov", "age_range"):
            options[key] = tuple(float(x) for x in options[key])
        elif key in options:
            options[key] = tuple(options[key])
    opts = Options(**options)
    opts.validate()
    if n_subjects < 1:
        raise ValueError("n_subjects must be >= 1")
    out = Path(out_dir)
    bids = out / "bids"
    targets = (bids, out / "truth", out / "truth.json")
    if not overwrite:
        for p in targets:
            if p.exists():
                raise FileExistsError(f"{p} exists; use --overwrite")
    effects = parse_effects(opts)
    slopes = parse_age_slope(opts.age_slope)
    default_nuclei = load_nuclei(opts.nuclei, opts.nuclei_labels)  # fail before writing
    tm = template_model(opts.template)
    for p in targets:
        if p.exists():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    bids.mkdir(parents=True)
    width = max(2, len(str(n_subjects)))
    site_labels = [f"site{k + 1}" for k in range(opts.sites)]
    srng = np.random.default_rng([seed, 7, 0])
    sites = {}
    for k, lab in enumerate(site_labels):
        cr_s = 1.0 if k == 0 else float(srng.uniform(1 - opts.site_cr_spread, 1 + opts.site_cr_spread))
        snr_s = 1.0 if k == 0 else float(srng.uniform(0.8, 1.2))
        sites[lab] = {"cr_scale": round(cr_s, 6), "snr_scale": round(snr_s, 6)}

    args = asdict(opts)
    args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in args.items()}
    args.update(n=n_subjects, seed=seed)
    truth = {
        "generator": GENERATOR, "version": __version__, "seed": seed, "args": args,
        "template": {"name": tm.name, "source": tm.source},
        "nuclei_source": default_nuclei.source if opts.nuclei == "builtin" else str(opts.nuclei),
        "definition": DEFINITION,
        "units": {"cr": "ratio", "mtr": "percent", "volume_mm3": "mm3", "motion_mm": "mm",
                  "reference_value": "a.u. (image units, before bias and noise)"},
        "labels": {str(k): n for k, n in enumerate(NUCLEI, start=1)}
        | {str(v): k for k, v in REF_LABELS.items()},
        "reference": dict(REFERENCE),
        "contrasts": {k: {t: round(v, 6) for t, v in w.items()} for k, w in CONTRASTS.items()},
        "acq_cr_scale": ACQ_CR_SCALE,
        "sites": sites,
        "subjects": {},
    }
    participants = []
    t_start = time.perf_counter()
    for i in range(n_subjects):
        sub = f"sub-{i + 1:0{width}d}"
        t0 = time.perf_counter()
        entry, row = _simulate_subject(i, sub, seed, opts, tm, default_nuclei, effects, slopes,
                                       site_labels, sites, out)
        truth["subjects"][sub] = entry
        participants.append(row)
        if verbose:
            print(f"{sub}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    _write_dataset_files(bids, opts, participants, tm, seed)
    _write_json(out / "truth.json", truth)
    if verbose:
        print(f"done in {time.perf_counter() - t_start:.1f} s: {bids}", file=sys.stderr)
    return out


def _nucleus_volumes(nuclei, deform, A, P_list):
    """Native volume (mm3) per nucleus and the template points used (for coverage)."""
    vols_tpl, cache = {}, {}
    for name in NUCLEI:
        pts, dv = nuclei.points(name)
        q = deform.inverse(pts)
        det = deform.det_jacobian(q) * np.linalg.det(A[:3, :3])
        w = dv / np.abs(det)
        vols_tpl[name] = float(pts.shape[1] * dv)
        cache[name] = (q, w)
    return vols_tpl, cache


def draw_base_cr(rng: np.random.Generator, roi: str, cr_sd: float | None = None) -> float:
    """A subject's base CR of ``roi`` (GRE-MT units, before age, sex, group and site).

    ``cr_sd`` None: uniform over ``CR_BASE_RANGE[roi]``; else the middle of that range plus
    N(0, cr_sd) clipped to +-3 cr_sd.
    """
    lo, hi = CR_BASE_RANGE[roi]
    if cr_sd is None:
        return float(rng.uniform(lo, hi))
    return (lo + hi) / 2 + float(np.clip(rng.normal(0, cr_sd), -3 * cr_sd, 3 * cr_sd))


def _simulate_subject(i, sub, seed, opts, tm, default_nuclei, effects, slopes, site_labels,
                      sites, out):
    rng = np.random.default_rng([seed, 1, i])
    G = len(opts.groups)
    group = opts.groups[i % G]
    site = site_labels[(i // G) % opts.sites]
    age = int(round(rng.uniform(*opts.age_range)))
    sex = "M" if rng.random() < 0.5 else "F"
    A0 = random_affine(rng)
    deform = make_deformation(tm, rng, opts.deform_mm)
    base = {}
    for roi in ROIS:
        m = draw_base_cr(rng, roi, opts.cr_sd)
        d = float(np.clip(rng.normal(0, HEMI_SD), -2 * HEMI_SD, 2 * HEMI_SD))
        base[roi] = {"L": m + d, "R": m - d}
    vol_scale = {}
    cr = {}
    for roi in ROIS:
        add = slopes[roi] * (age - REF_AGE) + (opts.sex_effect if sex == "M" else 0.0)
        add += sum(v for g, r, meas, v in effects if g == group and r == roi and meas == "cr")
        for g, r, meas, v in effects:
            if g == group and r == roi and meas == "volume":
                vol_scale[roi] = vol_scale.get(roi, 1.0) * (1 + v)
        cr[roi] = {h: sites[site]["cr_scale"] * (base[roi][h] + add) for h in HEMIS}
    nuclei = BuiltinNuclei(vol_scale) if vol_scale else default_nuclei

    ses_labels = [f"ses-{k + 1}" for k in range(opts.sessions)] if opts.sessions > 1 else [None]
    P_list = []
    for k in range(len(ses_labels)):
        if k == 0:
            P_list.append(np.eye(4))
        else:
            r = np.random.default_rng([seed, 2, i, k])
            head_c = _apply(np.linalg.inv(A0), np.array([[0.0, -20.0, 10.0]]).T)[:, 0]
            P_list.append(_rigid(r.uniform(-3, 3, 3), r.uniform(-5, 5, 3), head_c))
    vols_tpl, vcache = _nucleus_volumes(nuclei, deform, A0, P_list)
    native = {n: float(vcache[n][1].sum()) for n in NUCLEI}
    entry = {
        "group": group, "age": age, "sex": sex, "site": site,
        "cr_gremt": {roi: {h: _r(cr[roi][h]) for h in HEMIS}
                     | {"bilateral": _r(_bilateral(cr[roi], {h: native[f"{roi}_{h}"] for h in HEMIS}))}
                     for roi in ROIS},
        "volume_template_mm3": {roi: {h: _r(vols_tpl[f"{roi}_{h}"], 3) for h in HEMIS} for roi in ROIS},
        "sessions": {},
    }
    if vol_scale:
        entry["volume_scale"] = {k: _r(v) for k, v in vol_scale.items()}
    row = {"participant_id": sub, "age": age, "sex": sex, "group": group, "site": site}
    snr_scale = sites[site]["snr_scale"]
    for k, ses in enumerate(ses_labels):
        A = A0 @ np.linalg.inv(P_list[k])  # scanner (session k) -> template affine part
        prefix = sub if ses is None else f"{sub}_{ses}"
        rel_anat = Path(sub) / ses / "anat" if ses else Path(sub) / "anat"
        anat = out / "bids" / rel_anat
        srng = np.random.default_rng([seed, 3, i, k])
        t1, t1_aff = render_t1w(tm, A, deform, opts.t1w_res, srng, opts.t1w_snr, opts.bias,
                                opts.noise_free)
        t1_name = f"{prefix}_T1w.nii.gz"
        _save(t1, t1_aff, anat / t1_name)
        _write_json(anat / f"{prefix}_T1w.json", _sidecar("t1w", None, site))
        ses_entry = {
            "subject_to_template_affine": [[_r(x, 8) for x in row_] for row_ in A],
            "deformation": {"max_mm": _r(deform.max_mm, 4), "rms_mm": _r(deform.rms_mm, 4),
                            "sigma_mm": DEFORM_SIGMA_MM, "grid_spacing_mm": DEFORM_SPACING_MM,
                            "model": "t = q + u(q), q = A s; u trilinear on the grid"},
            "t1w": {"source": str(rel_anat / t1_name), "res_mm": opts.t1w_res,
                    "snr": None if opts.noise_free else opts.t1w_snr},
            "acquisitions": [],
        }
        for a_idx, acq in enumerate(opts.acq):
            arng = np.random.default_rng([seed, 4, i, k, a_idx])
            ses_entry["acquisitions"].append(_simulate_acquisition(
                acq, i, prefix, rel_anat, out, opts, tm, nuclei, deform, A, vcache, cr, site,
                snr_scale, arng))
        entry["sessions"][ses or "n/a"] = ses_entry
    return entry, row


def _simulate_acquisition(acq, i, prefix, rel_anat, out, opts, tm, nuclei, deform, A, vcache,
                          cr, site, snr_scale, rng):
    slab = plan_slab(rng, A, np.eye(4), deform, SLAB_TARGET[acq], opts, acq)
    s0 = float(1000.0 * rng.uniform(0.8, 1.25))
    snr = None if opts.noise_free else float(opts.snr * snr_scale)
    sigma = None if snr is None else s0 / snr
    n_rep = 2 if acq == "mtr" else opts.repeats
    # motion between repeats, about the slab centre
    motions = [np.eye(4)]
    params = [[0.0] * 6]
    for _ in range(1, n_rep):
        tr = np.clip(rng.normal(0, opts.motion_mm / 2, 3), -opts.motion_mm, opts.motion_mm)
        ro = np.clip(rng.normal(0, opts.motion_deg / 2, 3), -opts.motion_deg, opts.motion_deg)
        motions.append(_rigid(ro, tr, slab.center))
        params.append([_r(x, 4) for x in list(tr) + list(ro)])
    vox = np.indices(slab.shape).reshape(3, -1)[:, ::97].astype(float)
    s_vox = _apply(slab.affine, vox)
    motion_mm = [_r(float(np.linalg.norm(_apply(M, s_vox) - s_vox, axis=0).mean()), 4) for M in motions]
    # nucleus signals per contrast
    acq_cr = {roi: {h: cr[roi][h] * ACQ_CR_SCALE[acq][roi] for h in HEMIS} for roi in ROIS}
    if acq == "mtr":
        contrasts = ["mt_on", "mt_off"]
    else:
        contrasts = [acq] * n_rep

    def nucleus_values(cname):
        w = CONTRASTS[cname]
        vals = []
        for name in NUCLEI:
            roi, h = name.split("_")
            ref = w["WM"] if REFERENCE[roi] == "CC" else w["PT"]
            c = MT_OFF_NUCLEUS_CR if cname == "mt_off" else acq_cr[roi][h]
            vals.append(s0 * ref * (1 + c))
        return vals

    C_list = [A @ np.linalg.inv(M) @ slab.affine for M in motions]
    clean, frac, refcore = render_nm(tm, nuclei, deform, slab, C_list, contrasts,
                                     [nucleus_values(c) for c in contrasts], s0=s0)
    imgs, bias = [], 1.0
    if opts.noise_free:
        imgs = [c for c in clean]
    else:
        bias_at = _bias_field(rng, opts.bias) if opts.bias > 0 else None
        if bias_at is not None:
            bias = bias_at(_apply(slab.affine, np.indices(slab.shape).reshape(3, -1).astype(float)))
            bias = (bias / bias_at(slab.center[:, None])).reshape(slab.shape)
        imgs = [_rician(rng, (c * bias).astype(np.float32), sigma) for c in clean]
    imgs = [_to_int16(x) for x in imgs]

    # names
    anat = out / "bids" / rel_anat
    sources = []
    if acq == "mtr":
        names = [f"{prefix}_mt-on_MTR", f"{prefix}_mt-off_MTR"]
        for name, img, mt in zip(names, imgs, (True, False)):
            _save(img, slab.affine, anat / f"{name}.nii.gz")
            _write_json(anat / f"{name}.json", _sidecar("mtr", slab, site, mt))
            sources.append(str(rel_anat / f"{name}.nii.gz"))
    else:
        variants = GREMT_VARIANTS if acq == "gremt" else FSE_VARIANTS
        label, suffix = variants[i % len(variants)] if opts.naming_variants else variants[0]
        meta = _sidecar(acq, slab, site)
        layout = opts.repeats_layout
        if layout == "auto":
            layout = "runs" if suffix in SUFFIXES_3D_ONLY else "4d"
        if layout == "runs" and n_rep > 1:
            for r, img in enumerate(imgs, start=1):
                name = f"{prefix}_acq-{label}_run-{r}_{suffix}"
                _save(img, slab.affine, anat / f"{name}.nii.gz")
                _write_json(anat / f"{name}.json", meta)
                sources.append(str(rel_anat / f"{name}.nii.gz"))
        else:
            name = f"{prefix}_acq-{label}_{suffix}"
            data = imgs[0] if n_rep == 1 else np.stack(imgs, axis=-1)
            _save(data, slab.affine, anat / f"{name}.nii.gz",
                  zooms4=meta["RepetitionTime"] * slab.shape[1] if n_rep > 1 else None)
            _write_json(anat / f"{name}.json", meta)
            sources.append(str(rel_anat / f"{name}.nii.gz"))

    # truth images
    stem = Path(sources[0]).name.replace(".nii.gz", "")
    stem = re.sub(r"_run-1(?=_)", "", stem)
    truth_rel = Path("truth") / rel_anat
    dseg = np.zeros(slab.shape, np.uint8).reshape(-1)
    best = frac.argmax(1)
    has = frac.max(1) >= 0.5
    dseg[has] = best[has] + 1
    dseg[refcore > 0] = refcore[refcore > 0]
    dseg_rel = truth_rel / f"{stem}_desc-truth_dseg.nii.gz"
    prob_rel = truth_rel / f"{stem}_desc-truth_probseg.nii.gz"
    _save(dseg.reshape(slab.shape), slab.affine, out / dseg_rel)
    _save(frac.reshape(*slab.shape, len(NUCLEI)), slab.affine, out / prob_rel)
    bias_rel = None
    if not np.isscalar(bias):
        bias_rel = truth_rel / f"{stem}_desc-truth_biasfield.nii.gz"
        _save(bias.astype(np.float32), slab.affine, out / bias_rel)

    # volumes and coverage (native, through the exact inverse map)
    inv_slab = np.linalg.inv(slab.affine)
    vols, cov = {}, {}
    for name in NUCLEI:
        q, w = vcache[name]
        idx = _apply(inv_slab @ np.linalg.inv(A), q)
        inside = np.all((idx >= -0.5) & (idx <= np.asarray(slab.shape)[:, None] - 0.5), axis=0)
        vols[name] = float(w.sum())
        cov[name] = float(w[inside].sum() / w.sum()) if w.sum() > 0 else 0.0
    volume = {roi: {h: _r(vols[f"{roi}_{h}"], 3) for h in HEMIS}
              | {"bilateral": _r(vols[f"{roi}_L"] + vols[f"{roi}_R"], 3)} for roi in ROIS}
    rv = {roi: {h: vols[f"{roi}_{h}"] for h in HEMIS} for roi in ROIS}
    cr_out = {roi: {h: _r(acq_cr[roi][h]) for h in HEMIS}
              | {"bilateral": _r(_bilateral(acq_cr[roi], rv[roi]))} for roi in ROIS}
    w_main = CONTRASTS[contrasts[0]]
    entry = {
        "source": sources[0], "sources": sources, "acq_type": ACQ_TYPES[acq],
        "snr": _r(snr, 4), "n_repeats": n_rep, "motion_mm": motion_mm, "motion_params": params,
        "motion_affines": [[[_r(x, 8) for x in row] for row in M] for M in motions],
        "motion_center_scanner_mm": [_r(x, 4) for x in slab.center],
        "slab_tilt_deg": _r(slab.tilt_deg, 4),
        "slab_center_scanner_mm": [_r(x, 4) for x in slab.center],
        "inplane_mm": slab.inplane, "slice_mm": slab.slice_mm, "n_slices": slab.shape[2],
        "intensity_scale": _r(s0, 4),
        "reference_value": {"CC": _r(s0 * w_main["WM"], 4), "PT": _r(s0 * w_main["PT"], 4)},
        "cr": cr_out,
    }
    if acq == "mtr":
        on, off = CONTRASTS["mt_on"], CONTRASTS["mt_off"]
        mtr = {}
        for roi in ROIS:
            key = "WM" if REFERENCE[roi] == "CC" else "PT"
            per = {h: 100 * (1 - on[key] * (1 + acq_cr[roi][h]) / (off[key] * (1 + MT_OFF_NUCLEUS_CR)))
                   for h in HEMIS}
            mtr[roi] = {h: _r(per[h]) for h in HEMIS} | {"bilateral": _r(_bilateral(per, rv[roi]))}
        mtr["CC"] = {h: _r(MTR_TISSUE["WM"]) for h in HEMIS + ("bilateral",)}
        mtr["PT"] = {"bilateral": _r(MTR_TISSUE["PT"])}
        entry["mtr"] = mtr
        entry["reference_value_mt_off"] = {"CC": _r(s0 * off["WM"], 4), "PT": _r(s0 * off["PT"], 4)}
    entry["volume_mm3"] = volume
    entry["coverage"] = {roi: {h: _r(cov[f"{roi}_{h}"], 4) for h in HEMIS} for roi in ROIS}
    entry["truth_dseg"] = str(dseg_rel)
    entry["truth_probseg"] = str(prob_rel)
    entry["truth_biasfield"] = None if bias_rel is None else str(bias_rel)
    return entry


def _write_dataset_files(bids: Path, opts: Options, participants, tm, seed) -> None:
    _write_json(bids / "dataset_description.json", {
        "Name": "nmbids digital phantom (synthetic NM-MRI)",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": "Synthetic data derived from the MNI ICBM152 template; see README",
        "Authors": ["nmbids developers"],
        "GeneratedBy": [{"Name": GENERATOR, "Version": __version__,
                         "Description": f"seed {seed}; truth in ../truth.json"}],
    })
    readme = f"""# nmbids digital phantom

Synthetic neuromelanin-sensitive MRI written by `{GENERATOR}` {__version__} (seed {seed}).
Every image is simulated from the {tm.name} template ({tm.source}): a random affine and smooth
deformation per subject, tissue contrast per acquisition type, SN/VTA/LC nuclei at a known
contrast ratio, oblique slabs with partial volume, bias field, Rician noise and motion.
The ground truth (contrast ratios, volumes, transforms) is in `../truth.json`, outside this
dataset. Acquisitions: {", ".join(opts.acq)}.

The anatomy derives from the MNI ICBM152 2009 template: Copyright (C) 1993-2009 Louis Collins,
McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University. Permission
to use, copy, modify, and distribute this software and its documentation for any purpose and
without fee is hereby granted, provided that the above copyright notice appear in all copies.
"""
    (bids / "README").write_text(readme)
    with open(bids / "participants.tsv", "w", newline="") as fh:
        fh.write("participant_id\tage\tsex\tgroup\tsite\n")
        for r in participants:
            fh.write(f"{r['participant_id']}\t{r['age']}\t{r['sex']}\t{r['group']}\t{r['site']}\n")
    _write_json(bids / "participants.json", {
        "age": {"Description": "age at the first session", "Units": "year"},
        "sex": {"Description": "sex", "Levels": {"M": "male", "F": "female"}},
        "group": {"Description": "simulated cohort group", "Levels": {g: g for g in opts.groups}},
        "site": {"Description": "simulated acquisition site (scales CR and SNR, see truth.json)",
                 "Levels": {f"site{k + 1}": f"site {k + 1}" for k in range(opts.sites)}},
    })


# ----------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    d = Options()
    p = argparse.ArgumentParser(
        prog="nmbids-simulate",
        description="Write a synthetic NM-MRI BIDS dataset (OUT/bids) with its truth (OUT/truth.json).")
    p.add_argument("out", type=Path, help="output folder (bids/, truth/ and truth.json go inside)")
    p.add_argument("--n", type=int, default=2, help="number of subjects (default 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/bids and truth")
    p.add_argument("--acq", default="gremt", help="comma list of gremt, fse, mtr (default gremt)")
    p.add_argument("--nuclei", default="builtin",
                   help="builtin, or a label image (e.g. AAL3 dseg .nii.gz) read in template mm")
    p.add_argument("--nuclei-labels", default=None,
                   help="label numbers for --nuclei PATH, e.g. SN_L=161,SN_R=162,VTA_L=159,"
                        "VTA_R=160,LC_L=167,LC_R=168 (default: read the sibling *_dseg.tsv)")
    p.add_argument("--template", default=None, help="template space label (default: best offline)")
    p.add_argument("--t1w-res", type=float, default=d.t1w_res, help="T1w voxel size, mm (1.0)")
    p.add_argument("--t1w-snr", type=float, default=d.t1w_snr, help="T1w SNR in WM (40)")
    p.add_argument("--nm-inplane", type=float, default=d.nm_inplane, help="NM in-plane voxel, mm (0.8)")
    p.add_argument("--nm-slice", type=float, default=d.nm_slice,
                   help="GRE-MT/MTR slice thickness, mm (2.0)")
    p.add_argument("--nm-slices", type=int, default=d.nm_slices, help="GRE-MT/MTR slices (20)")
    p.add_argument("--nm-fov", default="180x200", help="NM in-plane field of view LRxAP, mm (180x200)")
    p.add_argument("--fse-slice", type=float, default=d.fse_slice, help="FSE slice thickness, mm (2.5)")
    p.add_argument("--fse-slices", type=int, default=d.fse_slices, help="FSE slices (14)")
    p.add_argument("--snr", type=float, default=d.snr, help="NM SNR in WM per repeat (25)")
    p.add_argument("--repeats", type=int, default=d.repeats, help="NM repeats (3)")
    p.add_argument("--repeats-layout", choices=REPEATS_LAYOUTS, default="auto",
                   help="repeats as one 4D file (4d), as run- files (runs), or auto: runs for "
                        "_T1w names (BIDS requires them 3D), 4D otherwise (default auto)")
    p.add_argument("--repeats-as-runs", action="store_true", help="same as --repeats-layout runs")
    p.add_argument("--max-tilt", type=float, default=d.max_tilt, help="max slab tilt, deg (15)")
    p.add_argument("--motion-mm", type=float, default=d.motion_mm, help="max motion translation (1)")
    p.add_argument("--motion-deg", type=float, default=d.motion_deg, help="max motion rotation (1)")
    p.add_argument("--deform-mm", type=float, default=d.deform_mm, help="max deformation, mm (3)")
    p.add_argument("--bias", type=float, default=d.bias, help="bias field strength (0.15; 0 = none)")
    p.add_argument("--noise-free", action="store_true", help="no noise and no bias field")
    p.add_argument("--naming-variants", action="store_true",
                   help="spread NM file names seen in the wild across subjects")
    p.add_argument("--sessions", type=int, default=d.sessions, help="sessions per subject (1)")
    p.add_argument("--groups", default="control", help="comma list of groups (control)")
    p.add_argument("--effect", action="append", default=[], metavar="[GROUP:]ROI:MEASURE:VALUE",
                   help="group effect, e.g. SN:cr:0.03 (repeatable; default group: all but the first)")
    p.add_argument("--sites", type=int, default=d.sites, help="number of sites (1)")
    p.add_argument("--site-cr-spread", type=float, default=d.site_cr_spread,
                   help="site CR scale drawn in 1 +- this (0.15)")
    p.add_argument("--cr-sd", type=float, default=None, metavar="SD",
                   help="base CR = middle of its range + N(0, SD) instead of uniform over the range")
    p.add_argument("--age-range", default="20,70", help="LOW,HIGH years (20,70)")
    p.add_argument("--age-slope", action="append", default=None, metavar="[ROI:]VALUE",
                   help="CR change per year (default SN:0.001 VTA:0.001 LC:0)")
    p.add_argument("--sex-effect", type=float, default=d.sex_effect, help="CR added for males (0)")
    p.add_argument("-v", "--verbose", action="store_true", help="print timings")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        fov = tuple(float(x) for x in re.split(r"[x,]", args.nm_fov))
        age = tuple(float(x) for x in args.age_range.split(","))
        if len(fov) != 2 or len(age) != 2:
            raise ValueError("--nm-fov needs LRxAP and --age-range LOW,HIGH")
        options = dict(
            acq=tuple(a.strip().lower() for a in args.acq.split(",") if a.strip()),
            nuclei=args.nuclei, nuclei_labels=args.nuclei_labels, template=args.template,
            t1w_res=args.t1w_res, t1w_snr=args.t1w_snr, nm_inplane=args.nm_inplane,
            nm_slice=args.nm_slice, nm_slices=args.nm_slices, nm_fov=fov,
            fse_slice=args.fse_slice, fse_slices=args.fse_slices, snr=args.snr,
            repeats=args.repeats,
            repeats_layout="runs" if args.repeats_as_runs else args.repeats_layout,
            max_tilt=args.max_tilt,
            motion_mm=args.motion_mm, motion_deg=args.motion_deg, deform_mm=args.deform_mm,
            bias=args.bias, noise_free=args.noise_free, naming_variants=args.naming_variants,
            sessions=args.sessions,
            groups=tuple(g.strip() for g in args.groups.split(",") if g.strip()),
            effects=tuple(args.effect), sites=args.sites, site_cr_spread=args.site_cr_spread, cr_sd=args.cr_sd,
            age_range=age, sex_effect=args.sex_effect)
        if args.age_slope is not None:
            options["age_slope"] = tuple(args.age_slope)
        if args.nuclei != "builtin":
            options["nuclei"] = str(Path(args.nuclei).resolve())
        simulate_dataset(args.out, n_subjects=args.n, seed=args.seed, overwrite=args.overwrite,
                         verbose=args.verbose, **options)
    except (ValueError, FileExistsError, FileNotFoundError, LookupError,
            nb.filebasedimages.ImageFileError) as exc:
        print(f"nmbids-simulate: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / 'bids'} and {args.out / 'truth.json'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
