"""The phantom's regions as the pipeline defines them: ROI names, labels, reference regions.

Nothing here is the phantom's own: the names and label numbers are those of the pipeline's
built-in atlas (``nmbids.builtin_atlas.region_definitions``: 1-6 the nuclei SN/VTA/LC L and R, 7-9
the reference regions CC_L, CC_R and PT), the reference region of each ROI is that of the
acquisition profiles (``nmbids.acquisitions.PROFILES``), and the places of the reference
regions are the atlas's CC and PT ellipsoids. The truth label images use the same numbers.
"""
from __future__ import annotations

import numpy as np

from ..acquisitions import PROFILES
from ..builtin_atlas import region_definitions
from .geometry import ellipsoid_mask

_REGIONS = region_definitions()
_TARGETS = [r for r in _REGIONS if r.kind == "target"]
_REFERENCES = [r for r in _REGIONS if r.kind == "reference"]

ROIS = tuple(dict.fromkeys(r.roi for r in _TARGETS))  # ("SN", "VTA", "LC")
HEMIS = tuple(dict.fromkeys(r.hemi for r in _TARGETS))  # ("L", "R")
NUCLEI = tuple(r.name for r in _TARGETS)  # labels 1..6: SN_L, SN_R, VTA_L, VTA_R, LC_L, LC_R
if [r.index for r in _TARGETS] != list(range(1, len(NUCLEI) + 1)):
    raise RuntimeError("nmbids.phantom expects the atlas's nuclei to be labels 1..6")
REF_LABELS = {r.name: r.index for r in _REFERENCES}  # CC_L 7, CC_R 8, PT 9
REF_ROIS = tuple(dict.fromkeys(r.roi for r in _REFERENCES))  # ("CC", "PT")
LABELS = {r.index: r.name for r in _REGIONS}  # every label of the truth dseg

# ROI -> its reference region ("SN": "CC", ...). The phantom records one reference per ROI
# (truth.json "reference") and paints one tissue per reference region, so every acquisition
# profile must agree.
REFERENCE = dict(next(iter(PROFILES.values())).references)
if any(p.references != REFERENCE for p in PROFILES.values()) or set(REFERENCE) != set(ROIS):
    raise RuntimeError("nmbids.phantom needs one reference region per ROI for every acquisition "
                      f"type; the profiles give {[p.references for p in PROFILES.values()]}")

# The reference ellipsoids (template mm), in label order: (label, ROI, centre, semi-axes).
REF_ELLIPSOIDS = tuple((r.index, r.roi, tuple(float(c) for c in r.centre), tuple(float(x) for x in r.radii))
                       for r in _REFERENCES)
if any(not np.allclose(r.axes, np.eye(3)) for r in _REFERENCES):
    raise RuntimeError("nmbids.phantom paints axis-aligned reference ellipsoids only")


def ref_region_at(pts: np.ndarray) -> np.ndarray:
    """Label 7/8/9 (CC_L, CC_R, PT) of the pipeline's reference ellipsoids at points (3, N)."""
    lab = np.zeros(pts.shape[1], np.uint8)
    for label, _, centre, semi in REF_ELLIPSOIDS:
        lab[ellipsoid_mask(pts, centre, semi)] = label
    return lab
