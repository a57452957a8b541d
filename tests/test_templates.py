"""Template lookup: offline, and the same files whichever way they are found."""
from pathlib import Path

from nmbids import templates


def test_nilearn_template_found_without_importing_nilearn_datasets():
    from nilearn import datasets

    t1w, gm, wm = templates._nilearn_paths()
    assert (t1w, gm, wm) == (Path(datasets.MNI152_FILE_PATH), Path(datasets.GM_MNI152_FILE_PATH),
                             Path(datasets.WM_MNI152_FILE_PATH))
    tpl = templates.get_template(templates.NILEARN_SPACE)
    assert tpl.t1w == t1w and tpl.brain_mask == t1w and tpl.source == "nilearn"


def test_nilearn_template_falls_back_to_nilearn(monkeypatch):
    """Files renamed by another nilearn version: nilearn is asked where they are."""
    monkeypatch.setattr(templates, "_NILEARN_FILES", ("not-there.nii.gz",) * 3)
    from nilearn import datasets

    assert templates._nilearn_paths()[0] == Path(datasets.MNI152_FILE_PATH)
