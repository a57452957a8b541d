"""Checking input images before any work is spent on them."""
from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np

from .contract.exits import EXIT_DATA, NmbidsError


def check_image(path: str | Path, *, participant: str, rel: str, kind: str, allow_4d: bool) -> tuple:
    """Open ``path`` and refuse, with one clear line, what cannot be processed.

    Returns the image shape. Refuses: unreadable or truncated files, empty (zero-size or
    all-zero) images, images with NaN or infinite values, 4D images when not allowed, and
    images of other dimensionality.
    """
    def fail(problem):
        raise NmbidsError(problem, code=EXIT_DATA, participant=f"sub-{participant}", path=rel)

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            fail(f"the {kind} file is empty (0 bytes)")
        img = nb.load(str(path))
        data = np.asanyarray(img.dataobj)
    except NmbidsError:
        raise
    except Exception as err:  # nibabel raises many types for broken files
        fail(f"the {kind} image cannot be read ({err.__class__.__name__}: {str(err)[:120]})")
    shape = data.shape
    if data.ndim == 4 and shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 4 and not allow_4d:
        fail(f"the {kind} image is 4D {shape}; a 3D image was expected")
    if data.ndim not in (3, 4) or min(shape[:3]) < 2:
        fail(f"the {kind} image has an unexpected shape {shape}")
    if data.size == 0 or not np.any(data):
        fail(f"the {kind} image is empty (all voxels are zero)")
    if not np.all(np.isfinite(data)):
        fail(f"the {kind} image contains NaN or infinite values")
    zooms = img.header.get_zooms()[:3]
    if not all(np.isfinite(zooms)) or min(zooms) <= 0:
        fail(f"the {kind} image has invalid voxel sizes {zooms}")
    if abs(np.linalg.det(img.affine[:3, :3])) < 1e-6:
        fail(f"the {kind} image has a singular orientation matrix")
    return shape
