"""The built-in nmbids atlas: search regions for the nuclei and their reference regions.

nmbids does not copy any atlas. Its regions are generous ellipsoids placed in MNI space from
published coordinates and extents, shaped by the template's own tissue maps:

* **SN** (substantia nigra): the NM-rich band dorsal to the cerebral peduncle runs from
  anterolateral (about x ±14, y −13) to posteromedial (about x ±6, y −25) at z −8 to −20
  (Chen et al. 2014; Cassidy et al. 2019 voxelwise maps; Pauli et al. 2018, CIT168).
  An oblique ellipsoid along that line, grey matter or mixed tissue (CSF excluded).
* **VTA** (ventral tegmental area): medial to the SN, lateral to the interpeduncular
  fossa, centre x ±4, y −19, z −16 (Murty et al. 2014; Trutti et al. 2019).
* **LC** (locus coeruleus): a thin column at the floor of the fourth ventricle, x ±4 to ±6,
  y −35 to −38, z −16 to −34 (Keren et al. 2009; Betts et al. 2017; Ye et al. 2021).
* **CC** (crus cerebri, the SN/VTA reference): the white matter of the cerebral peduncle
  anterolateral to the SN (Cassidy et al. 2019), template WM probability > 0.7.
* **PT** (pontine tegmentum, the LC reference): medial and ventral to the LC on the midline
  (Keren et al. 2009; Tona et al. 2017).

The data decide which voxels of a search region are NM-rich (threshold methods, see
``measures``); the regions only say where to look. Where two regions would overlap, a voxel
belongs to the region whose centre is nearer in normalised ellipsoid distance, so the
labels never overlap.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .templates import Template, tissue_probabilities


@dataclass(frozen=True)
class RegionDef:
    index: int
    name: str  # e.g. "SN_L"
    roi: str  # "SN", "VTA", "LC", "CC", "PT"
    hemi: str  # "L", "R", "bilateral"
    kind: str  # "target" or "reference"
    centre: tuple[float, float, float]  # MNI mm, RAS
    axes: tuple[tuple[float, float, float], ...]  # unit vectors of the ellipsoid axes
    radii: tuple[float, float, float]  # semi-axes in mm along ``axes``
    tissue: str  # "not_csf", "wm" or "any"


def _unit(v):
    v = np.asarray(v, float)
    return tuple(v / np.linalg.norm(v))


def _sn_axes(sign: float):
    # long axis from the anterolateral to the posteromedial end of the SN band
    long = _unit((sign * (6 - 14), -25 + 13, 0.0))
    short = _unit((-long[1], long[0], 0.0))
    return (long, short, (0.0, 0.0, 1.0))


_XYZ = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def region_definitions() -> list[RegionDef]:
    """The regions of the built-in atlas, in label order."""
    regs = []
    for hemi, s in (("L", -1.0), ("R", 1.0)):
        regs.append(RegionDef(0, f"SN_{hemi}", "SN", hemi, "target", (s * 10, -19, -14),
                              _sn_axes(s), (9.0, 4.5, 6.5), "not_csf"))
    for hemi, s in (("L", -1.0), ("R", 1.0)):
        regs.append(RegionDef(0, f"VTA_{hemi}", "VTA", hemi, "target", (s * 4, -19, -16),
                              _XYZ, (3.5, 5.0, 6.0), "not_csf"))
    for hemi, s in (("L", -1.0), ("R", 1.0)):
        regs.append(RegionDef(0, f"LC_{hemi}", "LC", hemi, "target", (s * 5, -36, -25),
                              _XYZ, (3.0, 3.0, 10.0), "not_ventricle"))
    for hemi, s in (("L", -1.0), ("R", 1.0)):
        regs.append(RegionDef(0, f"CC_{hemi}", "CC", hemi, "reference", (s * 14, -10, -13),
                              _XYZ, (5.0, 4.0, 5.0), "wm"))
    regs.append(RegionDef(0, "PT", "PT", "bilateral", "reference", (0.0, -29, -27),
                          _XYZ, (4.0, 3.0, 6.0), "not_csf"))
    return [RegionDef(i + 1, *list(r.__dict__.values())[1:]) for i, r in enumerate(regs)]


def atlas_table(regions: list[RegionDef] | None = None) -> pd.DataFrame:
    """The label table written beside the atlas: index, name, roi, hemi, kind."""
    regions = regions or region_definitions()
    return pd.DataFrame(
        [(r.index, r.name, r.roi, r.hemi, r.kind) for r in regions],
        columns=["index", "name", "roi", "hemi", "kind"],
    )


def build_atlas(template: Template) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Rasterise the built-in regions on the template grid.

    Returns ``(labels, affine, table)``: an int16 label array, its affine and the label table.
    """
    gm, wm, csf, affine = tissue_probabilities(template)
    regions = region_definitions()
    # Only the brainstem box can hold a region: rasterise there, not over the whole head.
    box = _brainstem_box(affine, gm.shape)
    gm, wm, csf = gm[box], wm[box], csf[box]
    ijk = np.indices(gm.shape, dtype=np.float32).reshape(3, -1)
    ijk += np.array([[sl.start] for sl in box], np.float32)
    xyz = (affine[:3, :3] @ ijk + affine[:3, 3:4]).T  # world mm, RAS

    best = np.full(xyz.shape[0], np.inf, dtype=np.float32)
    labels = np.zeros(xyz.shape[0], dtype=np.int16)
    tissue_ok = {
        "not_csf": (csf.ravel() < 0.5) & ((gm + wm).ravel() > 0.3),
        "wm": wm.ravel() > 0.7,
        # the LC lines the fourth ventricle: keep partial-volume voxels at its edge
        "not_ventricle": csf.ravel() < 0.8,
        "any": np.ones(xyz.shape[0], bool),
    }
    for reg in regions:
        d = xyz - np.asarray(reg.centre, np.float32)
        dist2 = sum(((d @ np.asarray(ax, np.float32)) / r) ** 2 for ax, r in zip(reg.axes, reg.radii))
        inside = (dist2 <= 1.0) & tissue_ok[reg.tissue] & (dist2 < best)
        labels[inside] = reg.index
        best[inside] = dist2[inside]
    full = np.zeros(tissue_probabilities(template)[0].shape, np.int16)
    full[box] = labels.reshape(gm.shape)
    return full, affine, atlas_table(regions)


# MNI mm (RAS) that contain every built-in region with a margin
BRAINSTEM_BOX_MM = ((-35.0, 35.0), (-55.0, 10.0), (-50.0, 10.0))


def _brainstem_box(affine: np.ndarray, shape) -> tuple[slice, slice, slice]:
    corners = np.array(np.meshgrid(*BRAINSTEM_BOX_MM, indexing="ij")).reshape(3, -1)
    ijk = np.linalg.inv(affine)[:3, :3] @ corners + np.linalg.inv(affine)[:3, 3:4]
    lo = np.clip(np.floor(ijk.min(1)).astype(int), 0, None)
    hi = np.minimum(np.ceil(ijk.max(1)).astype(int) + 1, shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi))
