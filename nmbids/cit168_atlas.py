"""``--atlas cit168``: SN and VTA from the CIT168 probabilistic atlas (Pauli et al. 2018).

CIT168 (Pauli WM, Nili AN, Tyszka JM. A high-resolution probabilistic in vivo atlas of human
subcortical brain nuclei. Sci Data 2018;5:180063; CC BY 4.0) is never downloaded at run time.
Its files are looked for where nilearn's ``fetch_atlas_pauli_2017`` stores them::

    <data dir>/pauli_2017/pauli_2017_prob.nii.gz   4-D, one probability map per nucleus
    <data dir>/pauli_2017/labels.txt               "<index> <name>" per line, in volume order

with ``<data dir>`` the folder named by ``NMBIDS_CIT168_DIR`` (the containers bake the atlas
into ``/opt/cit168`` at build time and set it; the folder itself may also hold the two files),
or else nilearn's own data folders: ``NILEARN_SHARED_DATA``, ``NILEARN_DATA``,
``~/nilearn_data`` (``nilearn.datasets.get_data_dirs``). The 16 maps are, in order, Pu, Ca,
NAC, EXA, GPe, GPi, SNc, RN, SNr, PBP, VTA, VeP, HN, HTH, MN, STH; they are not lateralised,
and lie on the 1 mm MNI152NLin2009cAsym grid (193 x 229 x 193). nmbids reads the names from
``labels.txt`` rather than trusting that order.

What nmbids takes from it, and why:

* **SN = SNc** (pars compacta). The NM-MRI signal of the substantia nigra comes from the
  neuromelanin of its dopaminergic neurons, which lie in the pars compacta; the pars
  reticulata holds few pigmented neurons and much iron (Kitao et al. 2013, Neuroradiology
  55:947, NM-MRI against histology; Sulzer et al. 2018, npj Parkinsons Dis 4:11). Adding SNr
  would dilute the NM-rich voxels with tissue of reference-like signal.
* **VTA = VTA + PBP**. The parabrachial pigmented nucleus is a subdivision of the VTA complex
  (the A10 group) and holds much of its pigmented, neuromelanin-bearing dopaminergic neurons
  (Halliday & Törk 1986, J Comp Neurol 252:423); CIT168 labels it apart from its "VTA" label.
  An NM-MRI VTA region is meant to contain those neurons, so both are taken; their
  probabilities are added (the labels are disjoint parts of one region), at most 1.

Each map is resampled to the template grid by world coordinates with trilinear interpolation
(only the brainstem box, ``builtin_atlas.BRAINSTEM_BOX_MM``, can hold these nuclei), and a
voxel belongs to SN or VTA where that probability is at least ``THRESHOLD`` (0.5); a voxel
that both reach goes to the larger probability (SN on a tie). Left and right are split by the
sign of the world x coordinate (x < 0 left, x > 0 right; voxels on the midsagittal plane
x = 0 belong to neither). CIT168 has no locus coeruleus and no reference regions: LC, CC and
PT are the built-in regions (``builtin_atlas``), which keep every voxel that CIT168's SN and
VTA do not take, so the rest of the pipeline is unchanged. The label numbers are the built-in
atlas's. The atlas table's ``atlas`` column and the atlas sidecar say which atlas produced
each region.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .contract.exits import EXIT_USAGE, NmbidsError

LOG = logging.getLogger("nmbids")

ENV_DIR = "NMBIDS_CIT168_DIR"  # set by the containers (Dockerfile, Singularity.def)
DATASET_DIR = "pauli_2017"  # nilearn's folder of the dataset, below a data dir
PROB_FILE = "pauli_2017_prob.nii.gz"  # nilearn's name of the probabilistic 4-D image
LABELS_FILE = "labels.txt"  # nilearn's name of the labels
LABELS = ("Pu", "Ca", "NAC", "EXA", "GPe", "GPi", "SNc", "RN", "SNr", "PBP", "VTA", "VeP", "HN", "HTH",
          "MN", "STH")  # the order of the CIT168 v1.0 volumes, as nilearn's labels.txt lists them
SPACE = "MNI152NLin2009cAsym"
THRESHOLD = 0.5
INTERPOLATION = "trilinear"
# nmbids ROI -> the CIT168 labels whose probabilities make it (see the module docstring)
COMPOSITION = {"SN": ("SNc",), "VTA": ("VTA", "PBP")}
CITATION = ("Pauli WM, Nili AN, Tyszka JM. A high-resolution probabilistic in vivo atlas of human "
            "subcortical brain nuclei. Sci Data. 2018;5:180063. doi:10.1038/sdata.2018.63")
LICENSE = "CC BY 4.0"
# how to get the files, for the message when they are missing
HOW_TO_GET = (f"build the container with --build-arg WITH_CIT168=1 (the default), or on a machine with "
              f"internet run python -c \"from nilearn.datasets import fetch_atlas_pauli_2017; "
              f"fetch_atlas_pauli_2017(data_dir='DIR')\" and set {ENV_DIR}=DIR; or use --atlas builtin")


@dataclass(frozen=True)
class CIT168Files:
    prob: Path
    labels: Path


def search_dirs(environ=None) -> list[Path]:
    """The folders looked in, in order: ``$NMBIDS_CIT168_DIR/pauli_2017`` and the folder itself
    when the variable is set (and nothing else), else nilearn's data folders + ``pauli_2017``."""
    env = os.environ if environ is None else environ
    if env.get(ENV_DIR):
        root = Path(env[ENV_DIR]).expanduser()
        return [root / DATASET_DIR, root]
    roots = [Path(p).expanduser() for var in ("NILEARN_SHARED_DATA", "NILEARN_DATA")
             for p in (env.get(var) or "").split(os.pathsep) if p]
    roots.append(Path("~/nilearn_data").expanduser())
    return [r / DATASET_DIR for r in roots]


def find_files(environ=None) -> CIT168Files | None:
    """The CIT168 files in the first folder of ``search_dirs`` holding both, or None."""
    for folder in search_dirs(environ):
        prob, labels = folder / PROB_FILE, folder / LABELS_FILE
        if all(p.is_file() and p.stat().st_size > 0 for p in (prob, labels)):
            return CIT168Files(prob, labels)
    return None


def missing_line(environ=None) -> str:
    """The one line saying where the files were looked for and how to get them."""
    env = os.environ if environ is None else environ
    where = ", ".join(str(d) for d in search_dirs(env))
    how = f"{ENV_DIR}={env[ENV_DIR]}" if env.get(ENV_DIR) else f"{ENV_DIR} is not set"
    return (f"--atlas cit168: the CIT168 atlas ({PROB_FILE} and {LABELS_FILE}) was not found ({how}; "
            f"looked in {where}); nmbids never downloads at run time: {HOW_TO_GET}")


def locate(environ=None) -> CIT168Files:
    """The CIT168 files, or a usage error (exit 64) saying where they were looked for."""
    files = find_files(environ)
    if files is None:
        raise NmbidsError(missing_line(environ), code=EXIT_USAGE)
    return files


def read_labels(path: Path) -> list[str]:
    """The names of ``labels.txt`` in volume order: the second field of each line, as nilearn
    reads it (``np.loadtxt(..., dtype=str)[:, 1]``)."""
    try:
        rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise NmbidsError(f"--atlas cit168: cannot read {path}: {err}", code=EXIT_USAGE) from None
    if not rows or any(len(r) < 2 for r in rows):
        raise NmbidsError(f"--atlas cit168: {path} is not a CIT168 labels file (lines of '<index> <name>')",
                          code=EXIT_USAGE)
    return [r[1] for r in rows]


def assign_regions(probs: dict, x_mm, index: dict, threshold: float = THRESHOLD):
    """Labels from probabilities on the same points.

    ``probs``: ROI -> probability per point (ROIs in order of precedence on a tie); ``x_mm``:
    world x of each point; ``index``: ``(roi, "L"|"R")`` -> label. A point gets the ROI of the
    largest probability when that is at least ``threshold``, on its side of x = 0; points at
    x = 0 and below threshold get 0.
    """
    import numpy as np

    rois = list(probs)
    stack = np.stack([np.asarray(probs[r], np.float32) for r in rois])
    best, top = stack.argmax(0), stack.max(0)
    x = np.asarray(x_mm, np.float64)
    keep = top >= threshold
    out = np.zeros(stack.shape[1:], np.int16)
    for i, roi in enumerate(rois):
        for hemi, side in (("L", x < 0), ("R", x > 0)):  # x = 0: neither
            out[keep & (best == i) & side] = index[(roi, hemi)]
    return out


def _volume(img, k: int, path: Path):
    import numpy as np

    try:
        vol = np.asarray(img.dataobj[..., k], dtype=np.float32)
    except Exception as err:  # a truncated or corrupt file
        raise NmbidsError(f"--atlas cit168: cannot read volume {k + 1} of {path}: {err}", code=EXIT_USAGE) from None
    vol = np.nan_to_num(vol, nan=0.0)
    # probabilities, give or take interpolation ringing; percentages or labels are refused
    if vol.max(initial=0.0) > 1.5 or vol.min(initial=0.0) < -0.5:
        raise NmbidsError(f"--atlas cit168: {path} volume {k + 1} holds values outside 0-1: not a probability map",
                          code=EXIT_USAGE)
    return np.clip(vol, 0.0, 1.0)


def build_cit168_atlas(template, files: CIT168Files | None = None):
    """The run's atlas with SN and VTA from CIT168 and the rest built in.

    Returns ``(labels, affine, table, provenance)``: as ``builtin_atlas.build_atlas`` plus the
    table's ``atlas`` column (``cit168`` or ``builtin`` per region) and a dict for the atlas
    sidecar (which atlas, file, threshold and composition gave each region, and its voxels).
    """
    import nibabel as nb
    import numpy as np
    from scipy.ndimage import map_coordinates

    from .atlas import ATLAS_COLUMN, BUILTIN, CIT168
    from .builtin_atlas import _brainstem_box, build_atlas

    files = files or locate()
    names = read_labels(files.labels)
    missing = sorted({lab for parts in COMPOSITION.values() for lab in parts} - set(names))
    if missing:
        raise NmbidsError(f"--atlas cit168: {files.labels} lacks the labels {missing}: not the CIT168 labels",
                          code=EXIT_USAGE)
    try:
        img = nb.load(str(files.prob))
    except Exception as err:
        raise NmbidsError(f"--atlas cit168: cannot read {files.prob}: {err}", code=EXIT_USAGE) from None
    if len(img.shape) != 4 or img.shape[3] != len(names):
        raise NmbidsError(f"--atlas cit168: {files.prob} has shape {img.shape}, expected 4-D with one volume per "
                          f"label of {files.labels.name} ({len(names)})", code=EXIT_USAGE)

    full, affine, table = build_atlas(template)
    box = _brainstem_box(affine, full.shape)
    ijk = np.indices(tuple(s.stop - s.start for s in box), dtype=np.float64).reshape(3, -1)
    ijk += np.array([[s.start] for s in box], np.float64)
    xyz = affine[:3, :3] @ ijk + affine[:3, 3:4]  # world mm of the template voxels
    inv = np.linalg.inv(img.affine)
    src = inv[:3, :3] @ xyz + inv[:3, 3:4]  # where they fall on the CIT168 grid
    probs = {}
    for roi, parts in COMPOSITION.items():
        p = np.zeros(xyz.shape[1], np.float32)
        for part in sorted(parts, key=names.index):  # in file order: a .gz is read forwards
            vol = _volume(img, names.index(part), files.prob)
            p += map_coordinates(vol, src, order=1, mode="constant", cval=0.0, prefilter=False)
        probs[roi] = np.clip(p, 0.0, 1.0)
    index = {(r.roi, r.hemi): int(r.index) for r in table.itertuples() if r.roi in COMPOSITION}
    cit = np.zeros(full.shape, np.int16)
    cit[box] = assign_regions(probs, xyz[0], index).reshape(cit[box].shape)

    labels = full.copy()
    labels[np.isin(labels, list(index.values()))] = 0  # the built-in SN and VTA make way
    taken = {str(r.name): int(((cit > 0) & (labels == r.index)).sum()) for r in table.itertuples()
             if r.roi not in COMPOSITION}
    labels[cit > 0] = cit[cit > 0]

    table = table.copy()
    table[ATLAS_COLUMN] = [CIT168 if roi in COMPOSITION else BUILTIN for roi in table["roi"]]
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    regions = {}
    for r in table.itertuples():
        n = int((labels == r.index).sum())
        entry = {"Atlas": r.atlas, "Voxels": n, "VolumeMm3": round(n * voxel_mm3, 1)}
        if r.roi in COMPOSITION:
            entry["CIT168Labels"] = list(COMPOSITION[r.roi])
            if n == 0:
                LOG.warning("--atlas cit168: %s has no voxel with CIT168 probability >= %g on the %s grid: "
                            "it will not be measured", r.name, THRESHOLD, template.name)
        elif taken.get(str(r.name)):
            entry["VoxelsTakenByCIT168"] = taken[str(r.name)]
        regions[str(r.name)] = entry
    if not any(regions[str(r.name)]["Voxels"] for r in table.itertuples() if r.roi in COMPOSITION):
        raise NmbidsError(f"--atlas cit168: no template voxel reaches CIT168 probability {THRESHOLD:g} for SN or "
                          f"VTA: is {files.prob} the CIT168 probabilistic atlas in MNI space?", code=EXIT_USAGE)
    if template.name != SPACE:
        LOG.info("--atlas cit168: CIT168 (%s) resampled by world coordinates onto %s", SPACE, template.name)
    provenance = {
        "Atlas": CIT168,
        "Sources": [str(files.prob), str(files.labels)],
        "CIT168": {
            "Citation": CITATION, "License": LICENSE, "Space": SPACE, "Threshold": THRESHOLD,
            "Interpolation": INTERPOLATION, "Composition": {k: list(v) for k, v in COMPOSITION.items()},
            "Overlap": "the larger probability (SN on a tie)",
            "Hemispheres": "sign of the world x coordinate; x = 0 belongs to neither",
            "ResampledOnto": template.name,
        },
        "Regions": regions,
    }
    return labels, affine, table, provenance
