"""The ROI label image a run uses: the built-in atlas, or a user's (``--atlas``).

Written once into ``OUTPUT_DIR/atlas/`` so that participants, reports and the group level
all read the same file. Concurrent participant jobs may race to write it: the write is
atomic and the content identical, so the last rename wins harmlessly.
"""
from __future__ import annotations

import io
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

from .contract.exits import EXIT_USAGE, NmbidsError
from .contract.names import atlas_paths
from .images import derivative_image
from .outputs import atomic_write_bytes, atomic_write_tsv
from .builtin_atlas import build_atlas

REQUIRED_COLUMNS = ("index", "name", "roi", "hemi", "kind")


def prepare_atlas(output_dir: Path, template, user_atlas: Path | None = None) -> tuple[Path, Path]:
    nii, tsv = atlas_paths(output_dir, template.name)
    if user_atlas:
        labels, affine, table = _read_user_atlas(Path(user_atlas), template)
    else:
        if nii.exists() and tsv.exists():
            return nii, tsv
        labels, affine, table = build_atlas(template)
    img = derivative_image(nb.Nifti1Image(labels.astype(np.int16), affine), space=template.name, labels=True)
    buf = io.BytesIO()
    file_map = nb.Nifti1Image.make_file_map({"image": buf, "header": buf})
    img.to_file_map(file_map)
    import gzip
    atomic_write_bytes(nii, gzip.compress(buf.getvalue(), mtime=0))
    atomic_write_tsv(tsv, table)
    return nii, tsv


def _read_user_atlas(path: Path, template):
    tsv = path.with_name(path.name.split(".")[0] + ".tsv")
    if not path.exists() or not tsv.exists():
        raise NmbidsError(f"--atlas needs the label image and a TSV beside it ({tsv.name})", code=EXIT_USAGE,
                          path=str(path))
    table = pd.read_csv(tsv, sep="\t")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise NmbidsError(f"atlas TSV lacks columns {missing}", code=EXIT_USAGE, path=str(tsv))
    img = nb.load(str(path))
    tpl = nb.load(str(template.t1w))
    if img.shape[:3] != tpl.shape[:3] or not np.allclose(img.affine, tpl.affine, atol=1e-3):
        # resample by world coordinates onto the template grid (nearest label)
        from nilearn.image import resample_to_img
        img = resample_to_img(img, tpl, interpolation="nearest", force_resample=True, copy_header=True)
    return np.asarray(img.dataobj).astype(np.int16), tpl.affine, table[list(REQUIRED_COLUMNS)]
