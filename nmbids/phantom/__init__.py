"""The nmbids digital phantom: a BIDS dataset of NM-MRI with known truth.

``nmbids-simulate OUT --n N --seed S [options]`` writes a valid BIDS raw dataset to
``OUT/bids`` and what was put into it to ``OUT/truth.json`` (plus truth label images in
``OUT/truth/``), both outside the BIDS tree. It is the demo users run first and the test bed
for accuracy: run the pipeline on ``OUT/bids`` and compare its measures with the truth.
Same arguments and seed give byte-identical files. The Python entry point is
:func:`simulate_dataset`; the command line is ``nmbids.phantom.cli``.

The phantom takes from the pipeline, not from copies: the ROI names and label numbers of
the built-in atlas (``nmbids.builtin_atlas``: nuclei 1-6, reference regions CC_L, CC_R, PT 7-9), the
places of its CC and PT ellipsoids, the reference region of each ROI and the acquisition
types (``nmbids.acquisitions.PROFILES`` and ``ACQ_TYPES``); see ``regions``.

Modules, one job each:

* ``regions``: the ROI names, labels and reference regions, from the pipeline;
* ``geometry``: rigid transforms, affines, ellipsoids, voxel grids;
* ``nuclei``: the six nuclei, builtin shapes or read from a label image;
* ``contrast``: the signal of each tissue and nucleus per contrast;
* ``anatomy``: the template's head and the map (affine + deformation) that makes a subject;
* ``cohort``: group, site, age, sex and the true CR of each subject (``--effect``, ``--age-slope``);
* ``acquisition``: the T1w and NM images (slab, motion, partial volume, bias, noise), sidecars;
* ``truth``: truth.json (true CR, MTR, volumes, coverage, transforms) and the truth labels;
* ``writer``: file names, layouts and the BIDS dataset files;
* ``options``: ``Options`` and their checks;
* ``dataset``: ``simulate_dataset``, the loop over subjects, sessions and acquisitions and
  the random streams it draws from;
* ``cli``: the ``nmbids-simulate`` command.

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
from .cohort import draw_base_cr
from .dataset import simulate_dataset
from .nuclei import AtlasNuclei, BuiltinNuclei, load_nuclei
from .options import Options
from .regions import HEMIS, NUCLEI, REFERENCE, ROIS
from .truth import DEFINITION

__all__ = ["AtlasNuclei", "BuiltinNuclei", "DEFINITION", "HEMIS", "NUCLEI", "Options", "REFERENCE",
           "ROIS", "draw_base_cr", "load_nuclei", "simulate_dataset"]
