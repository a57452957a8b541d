"""Rigid transforms, affines applied to points, ellipsoids and voxel grids (scanner or template mm)."""
from __future__ import annotations

import numpy as np


def rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rotation matrix (degrees about x, then y, then z)."""
    rx, ry, rz = np.deg2rad([rx, ry, rz])
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


def rigid(rot_deg, trans_mm, center=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 rigid transform rotating about ``center`` then translating."""
    m = np.eye(4)
    r = rotation(*rot_deg)
    c = np.asarray(center, float)
    m[:3, :3] = r
    m[:3, 3] = c - r @ c + np.asarray(trans_mm, float)
    return m


def apply(aff: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 4x4 affine to points of shape (3, N)."""
    return aff[:3, :3] @ pts + aff[:3, 3:4]


def ellipsoid_mask(pts: np.ndarray, center, semi, margin: float = 0.0) -> np.ndarray:
    """Points (3, N) inside the axis-aligned ellipsoid, its semi-axes enlarged by ``margin``."""
    d = (pts - np.asarray(center, float)[:, None]) / (np.asarray(semi, float)[:, None] + margin)
    return (d ** 2).sum(0) <= 1.0


def grid_affine(axes: np.ndarray, zooms, shape, center) -> np.ndarray:
    """Voxel -> scanner affine with unit ``axes`` (columns), voxel ``zooms`` and ``center``."""
    aff = np.eye(4)
    aff[:3, :3] = axes * np.asarray(zooms, float)[None, :]
    aff[:3, 3] = np.asarray(center, float) - aff[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return aff
