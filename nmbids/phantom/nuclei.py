"""The six nuclei (SN, VTA, LC; L and R): the phantom's builtin shapes, or read from an atlas.

Both kinds answer the same questions: which nucleus (label 1-6, ``regions.NUCLEI`` order) is
at given template points (``labels_at``), where each nucleus might be (``bboxes``), and
points filling a nucleus with the volume each stands for (``points``). ``load_nuclei`` makes
the one ``--nuclei`` asks for. The shapes and the atlas reading are documented in the
package docstring (``nmbids.phantom``, "Nuclei").
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np

from .geometry import apply
from .regions import HEMIS, NUCLEI


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
    """The phantom's own nuclei (see the package docstring), optionally scaled per ROI."""

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


def read_label_table(path: Path) -> dict[str, list[int]]:
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
            labels = read_label_table(tsv)
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
            corners = apply(self.affine, box)
            self._bboxes.append((corners.min(1), corners.max(1)))
        self.source = str(self.path)

    def bboxes(self):
        return self._bboxes

    def labels_at(self, pts: np.ndarray) -> np.ndarray:
        ijk = np.rint(apply(self.inv, pts)).astype(np.int64)
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
        return apply(self.affine, pts), self.voxel_volume / sub ** 3


def load_nuclei(spec: str, mapping: str | None = None, volume_scale=None):
    """``--nuclei``: ``"builtin"`` (optionally scaled per ROI) or the path of a label image."""
    if spec == "builtin":
        return BuiltinNuclei(volume_scale)
    return AtlasNuclei(spec, mapping)

