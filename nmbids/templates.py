"""Resolve the template nmbids registers to, without ever touching the network.

Order of preference:

1. ``MNI152NLin2009cAsym`` from TemplateFlow, when its files are already in
   ``TEMPLATEFLOW_HOME`` (containers bake them in at build time);
2. the MNI152 2009a symmetric template that nilearn ships inside its package
   (space label ``MNI152NLin2009aSym``), so that a fresh offline install works.

The TemplateFlow client downloads on a cache miss, so we look for the files on
disk ourselves instead of calling ``templateflow.api.get``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nb
import numpy as np

TEMPLATEFLOW_DEFAULT = "MNI152NLin2009cAsym"
NILEARN_SPACE = "MNI152NLin2009aSym"


@dataclass(frozen=True)
class Template:
    """A template in which nmbids defines its ROIs and writes voxelwise maps."""

    name: str  # the BIDS ``space-`` label
    t1w: Path
    brain_mask: Path
    gm: Path  # grey-matter probability
    wm: Path  # white-matter probability
    csf: Path | None  # CSF probability, when the template ships one
    source: str  # "templateflow" or "nilearn"


def _templateflow_home() -> Path:
    default = Path.home() / ".cache" / "templateflow"
    return Path(os.environ.get("TEMPLATEFLOW_HOME", default))


def _from_templateflow(name: str) -> Template | None:
    root = _templateflow_home() / f"tpl-{name}"
    stem = f"tpl-{name}_res-01"
    files = {
        "t1w": root / f"{stem}_T1w.nii.gz",
        "brain_mask": root / f"{stem}_desc-brain_mask.nii.gz",
        "gm": root / f"{stem}_label-GM_probseg.nii.gz",
        "wm": root / f"{stem}_label-WM_probseg.nii.gz",
        "csf": root / f"{stem}_label-CSF_probseg.nii.gz",
    }
    # A TemplateFlow skeleton holds zero-byte placeholders until files are fetched.
    if not all(p.is_file() and p.stat().st_size > 0 for p in files.values()):
        return None
    return Template(name=name, source="templateflow", **files)


# The files of nilearn's template, under nilearn/datasets/data/ (nilearn >= 0.10 names)
_NILEARN_FILES = ("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                  "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
                  "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")


def _nilearn_paths() -> tuple[Path, Path, Path]:
    """(T1w, GM, WM) of nilearn's template. Found from nilearn's install folder when the files
    are where nilearn >= 0.10 keeps them: importing ``nilearn.datasets`` costs almost a second
    of every start-up; asked of nilearn itself otherwise."""
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is not None and spec.submodule_search_locations:
        data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
        paths = tuple(data / name for name in _NILEARN_FILES)
        if all(p.is_file() for p in paths):
            return paths
    from nilearn import datasets

    return (Path(datasets.MNI152_FILE_PATH), Path(datasets.GM_MNI152_FILE_PATH),
            Path(datasets.WM_MNI152_FILE_PATH))


def _from_nilearn() -> Template:
    t1w, gm, wm = _nilearn_paths()
    return Template(
        name=NILEARN_SPACE,
        t1w=t1w,
        brain_mask=t1w,  # brain-only image: its support is the mask
        gm=gm,
        wm=wm,
        csf=None,
        source="nilearn",
    )


def available_templates() -> list[str]:
    """Space labels that can be resolved offline on this machine."""
    names = [NILEARN_SPACE]
    if _from_templateflow(TEMPLATEFLOW_DEFAULT) is not None:
        names.insert(0, TEMPLATEFLOW_DEFAULT)
    return names


def get_template(name: str | None = None) -> Template:
    """Return the template ``name`` (default: the best one available offline).

    Raises ``LookupError`` when a named template is not available without a download.
    """
    if name in (None, "", TEMPLATEFLOW_DEFAULT):
        tpl = _from_templateflow(TEMPLATEFLOW_DEFAULT)
        if tpl is not None:
            return tpl
        if name == TEMPLATEFLOW_DEFAULT:
            raise LookupError(
                f"{TEMPLATEFLOW_DEFAULT} is not cached in {_templateflow_home()}; "
                f"fetch it beforehand or use --template {NILEARN_SPACE}"
            )
        return _from_nilearn()
    if name == NILEARN_SPACE:
        return _from_nilearn()
    tpl = _from_templateflow(name)
    if tpl is None:
        raise LookupError(f"template {name!r} is not cached in {_templateflow_home()}")
    return tpl


@lru_cache(maxsize=4)
def tissue_probabilities(template: Template) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (gm, wm, csf, affine) as float32 arrays on the template grid.

    When the template has no CSF map (nilearn's), CSF is what the brain mask leaves
    after grey and white matter: ``clip(mask - gm - wm, 0, 1)``.
    """
    gm_img = nb.load(str(template.gm))
    gm = np.asarray(gm_img.dataobj, dtype=np.float32)
    wm = np.asarray(nb.load(str(template.wm)).dataobj, dtype=np.float32)
    # nilearn stores probabilities scaled to 0..255 in uint8 on some versions
    for arr in (gm, wm):
        if arr.max() > 1.5:
            arr /= arr.max()
    if template.csf is not None:
        csf = np.asarray(nb.load(str(template.csf)).dataobj, dtype=np.float32)
    else:
        mask = np.asarray(nb.load(str(template.brain_mask)).dataobj) > 0
        csf = np.clip(mask.astype(np.float32) - gm - wm, 0, 1)
    return gm, wm, csf, gm_img.affine
