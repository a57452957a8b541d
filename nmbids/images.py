"""Images: checking the inputs before any work is spent on them, and the header facts
(xform codes, label types, units) of every derivative image written (``derivative_image``)."""
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


# ---------------------------------------------------------------------------
# The header facts of the derivative images, set in one place
# ---------------------------------------------------------------------------

# NIfTI-1 xform codes (nifti1.h)
XFORM_UNKNOWN, XFORM_SCANNER, XFORM_ALIGNED, XFORM_MNI152 = 0, 1, 2, 4


def template_xform_code(space: str) -> int:
    """The qform/sform code of an image in template space ``space``: ``NIFTI_XFORM_MNI_152``
    (4) for an MNI152 template (nmbids' default, MNI152NLin2009cAsym, and nilearn's
    MNI152NLin2009aSym), ``NIFTI_XFORM_ALIGNED_ANAT`` (2: aligned to another image) otherwise."""
    return XFORM_MNI152 if space.startswith("MNI152") else XFORM_ALIGNED


def label_dtype(labels: np.ndarray) -> np.dtype:
    """The smallest integer type that holds every label of ``labels`` exactly."""
    lo, hi = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    raise ValueError(f"labels {lo}..{hi} do not fit a 32-bit integer")


def derivative_image(img: nb.Nifti1Image, *, space: str | None = None, source: str | Path | None = None,
                     labels: bool = False) -> nb.Nifti1Image:
    """``img`` with the header a derivative must carry; voxel values and the affine unchanged.

    * xform codes: in template space ``space``, qform and sform code ``template_xform_code``;
      in a native space, the codes of the ``source`` image the derivative is on the grid of
      (kept as written when the source has none);
    * ``labels`` (a dseg): the smallest integer type holding the labels, scl_slope 1 and
      scl_inter 0, so that labels read back exactly (the values must be whole numbers);
    * units: mm, and no time unit for a 3-D image (ANTs writes seconds into every image).
    """
    data = np.asanyarray(img.dataobj)
    header = img.header.copy()
    if labels:
        if not np.all(np.isfinite(data)) or not np.array_equal(np.rint(data), data):
            raise ValueError("a label image must hold whole numbers")
        dtype = label_dtype(data)
        data = data.astype(dtype)
        header.set_data_dtype(dtype)
    out = nb.Nifti1Image(data, img.affine, header)
    hdr = out.header
    if labels:
        hdr.set_slope_inter(1.0, 0.0)
    if space is not None:
        codes = (template_xform_code(space),) * 2
    elif source is not None:
        src = nb.load(str(source)).header
        codes = (int(src["qform_code"]), int(src["sform_code"]))
        if codes == (XFORM_UNKNOWN, XFORM_UNKNOWN):
            codes = (int(hdr["qform_code"]), int(hdr["sform_code"]))
    else:
        codes = (int(hdr["qform_code"]), int(hdr["sform_code"]))
    # a form without a code may hold no transform: set it from the affine; otherwise only the
    # code changes, so that the stored transform (as ANTs wrote it) stays bit for bit
    if codes[0] and not hdr["qform_code"]:
        hdr.set_qform(img.affine, code=codes[0])
    if codes[1] and not hdr["sform_code"]:
        hdr.set_sform(img.affine, code=codes[1])
    hdr["qform_code"], hdr["sform_code"] = codes
    space_unit = "mm"
    time_unit = hdr.get_xyzt_units()[1] if data.ndim > 3 else "unknown"
    hdr.set_xyzt_units(space_unit, time_unit)
    return out


def save_ants_image(img, path: str | Path, **facts) -> Path:
    """Write the ANTs image ``img`` to ``path`` (``.nii.gz``) with ``derivative_image``'s header
    (``facts``: its keywords).

    Why: ITK compresses at a high zlib level, several seconds for a 1 mm head, and the header
    fix must then decompress and compress again. ITK writes an uncompressed sibling instead,
    and nibabel compresses it once (at its default level 1) while writing the header.
    """
    import os

    path = Path(path)
    raw = path.with_name(f".raw-{os.getpid()}-{path.name.removesuffix('.gz')}")
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        img.to_file(str(raw))
        nb.save(derivative_image(nb.load(str(raw)), **facts), str(tmp))
        os.replace(tmp, path)
    finally:
        raw.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return path

