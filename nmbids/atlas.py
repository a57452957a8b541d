"""The ROI label image a run uses: the built-in atlas, CIT168's SN and VTA, or a user's (``--atlas``).

``--atlas`` takes a keyword, ``builtin`` (the default: ``builtin_atlas``) or ``cit168``
(``cit168_atlas``: SN and VTA from CIT168, the rest built in), or the path of a label image
(a file named like a keyword is given as ``./cit168``). The atlas is written once into
``OUTPUT_DIR/atlas/`` (label image, label table, JSON sidecar) so that participants, reports
and the group level all read the same file. Concurrent participant jobs may race to write it:
the write is atomic and the content identical, so the last rename wins harmlessly.

The label table has the columns ``REQUIRED_COLUMNS`` and ``atlas``: which atlas produced each
region (``builtin``, ``cit168`` or ``user``). The sidecar says the same, with the files read.
Heavy imports stay inside the functions: the command-line parser imports this module.
"""
from __future__ import annotations

from pathlib import Path

from .contract.exits import EXIT_USAGE, NmbidsError

REQUIRED_COLUMNS = ("index", "name", "roi", "hemi", "kind")
ATLAS_COLUMN = "atlas"  # the table column naming the atlas each region comes from
BUILTIN = "builtin"
CIT168 = "cit168"
USER = "user"
KEYWORDS = (BUILTIN, CIT168)


def atlas_choice(text: str) -> str | Path:
    """``--atlas``: a keyword (any case) or the path of a label image."""
    key = str(text).strip().lower()
    return key if key in KEYWORDS else Path(text)


def atlas_name(choice) -> str:
    """``builtin``, ``cit168`` or ``user`` for a value of ``--atlas`` (None: the default)."""
    if choice is None or choice == BUILTIN:
        return BUILTIN
    return CIT168 if choice == CIT168 else USER


def check_atlas(choice) -> None:
    """Refuse, before any work, an atlas that cannot be had (exit 64, one line)."""
    if atlas_name(choice) == CIT168:
        from .cit168_atlas import locate

        locate()


def prepare_atlas(output_dir: Path, template, atlas=None) -> tuple[Path, Path]:
    """Write the run's atlas (``atlas``: a value of ``--atlas``) and return (image, table)."""
    import gzip
    import io

    import nibabel as nb
    import numpy as np

    from .contract.names import atlas_paths, atlas_sidecar
    from .images import derivative_image
    from .outputs import atomic_write_bytes, atomic_write_json, atomic_write_tsv

    name = atlas_name(atlas)
    nii, tsv = atlas_paths(output_dir, template.name)
    side = atlas_sidecar(output_dir, template.name)
    if name == BUILTIN and nii.exists() and tsv.exists() and _recorded_atlas(side) == BUILTIN:
        return nii, tsv
    if name == USER:
        labels, affine, table = _read_user_atlas(Path(atlas), template)
        table[ATLAS_COLUMN] = USER
        provenance = {"Atlas": USER, "Sources": [str(atlas)]}
    elif name == CIT168:
        from .cit168_atlas import build_cit168_atlas

        labels, affine, table, provenance = build_cit168_atlas(template)
    else:
        from .builtin_atlas import build_atlas

        labels, affine, table = build_atlas(template)
        table[ATLAS_COLUMN] = BUILTIN
        provenance = {"Atlas": BUILTIN, "Sources": []}
    provenance = {"Atlas": provenance.pop("Atlas"), "Space": template.name, **provenance}
    provenance.setdefault("Regions", {str(r["name"]): {"Atlas": r[ATLAS_COLUMN]} for _, r in table.iterrows()})
    img = derivative_image(nb.Nifti1Image(labels.astype(np.int16), affine), space=template.name, labels=True)
    buf = io.BytesIO()
    file_map = nb.Nifti1Image.make_file_map({"image": buf, "header": buf})
    img.to_file_map(file_map)
    atomic_write_bytes(nii, gzip.compress(buf.getvalue(), mtime=0))
    atomic_write_tsv(tsv, table)
    atomic_write_json(side, provenance)
    return nii, tsv


def recorded_atlas(output_dir: Path, space: str) -> str | None:
    """The atlas (``builtin``, ``cit168``, ``user``) that ``OUTPUT_DIR/atlas`` says it holds for
    ``space``, or None when there is no readable sidecar."""
    from .contract.names import atlas_sidecar

    return _recorded_atlas(atlas_sidecar(output_dir, space))


def _recorded_atlas(path: Path) -> str | None:
    import json

    try:
        value = json.loads(Path(path).read_text()).get("Atlas")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _read_user_atlas(path: Path, template):
    import nibabel as nb
    import numpy as np
    import pandas as pd

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
    return np.asarray(img.dataobj).astype(np.int16), tpl.affine, table[list(REQUIRED_COLUMNS)].copy()
