"""Participant report: built from a small synthetic participant output in tmp_path."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from markupsafe import escape

from nmbids.reports import generate_participant_report, write_citation
from nmbids.reports import warnings as qcw
from nmbids.reports.citation import methods_boilerplate

SPACE = "MNI152NLin2009aSym"  # the nilearn template: resolvable offline everywhere
XSS = "<script>alert(1)</script>"
SRC_A = f"sub-01/anat/sub-01_acq-NM{XSS}_T1w.nii.gz"  # hostile source name (GRE-MT)
SRC_B = "sub-01/anat/sub-01_acq-FSE_T1w.nii.gz"
SRC_C = "sub-01/anat/sub-01_acq-NM_run-2_T1w.nii.gz"  # failed: no derivatives
P_A, P_B, P_C = "sub-01_acq-NM", "sub-01_acq-FSE", "sub-01_acq-NM_run-2"

MEASURES_HEADER = ["participant_id", "session_id", "source", "acq_type", "roi", "hemi", "measure",
                   "value", "unit", "method", "space", "reference", "ref_stat"]
QC_HEADER = ["participant_id", "session_id", "source", "acq_type", "n_repeats", "motion_mean_mm",
             "motion_max_mm", "snr", "nm2t1w_similarity", "t1w2template_similarity", "coverage_SN",
             "coverage_VTA", "coverage_LC", "flags"]
LABELS = [(1, "SN_L", "SN", "L", "target"), (2, "SN_R", "SN", "R", "target"),
          (3, "VTA", "VTA", "bilateral", "target"), (4, "LC_L", "LC", "L", "target"),
          (5, "LC_R", "LC", "R", "target"), (6, "CC_L", "CC", "L", "reference"),
          (7, "CC_R", "CC", "R", "reference"), (8, "PT", "PT", "bilateral", "reference")]
# ROI centres (MNI-like RAS mm) and radii used to draw the phantom
BLOBS = {1: ((-10, -18, -10), 3.0), 2: ((10, -18, -10), 3.0), 3: ((0, -17, -10), 2.5),
         4: ((-5, -37, -25), 1.5), 5: ((5, -37, -25), 1.5), 6: ((-15, -12, -10), 3.0),
         7: ((15, -12, -10), 3.0), 8: ((0, -29, -25), 3.5)}
BRIGHT = {1: 130.0, 2: 128.0, 3: 120.0, 4: 118.0, 5: 116.0}


def _grid(affine, shape):
    ijk = np.indices(shape).reshape(3, -1).T
    return nb.affines.apply_affine(affine, ijk).reshape(*shape, 3)


def _rot_x(deg):
    t = np.deg2rad(deg)
    r = np.eye(4)
    r[1:3, 1:3] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return r


def _save(img_or_data, affine, path, dtype=np.float32):
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.Nifti1Image(np.asarray(img_or_data, dtype=dtype), affine).to_filename(str(path))


def _nm_phantom(xyz, rng):
    """NM-like contrast: brainstem tissue 100, CSF 40, bright SN/VTA/LC, label image."""
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    img = np.full(x.shape, 40.0)
    brainstem = ((x / 17.0) ** 2 + ((y + 22) / 15.0) ** 2) <= 1
    img[brainstem] = 100.0
    img[((x / 4.0) ** 2 + ((y + 40) / 3.0) ** 2 <= 1) & (z < -18)] = 40.0  # fourth ventricle
    labels = np.zeros(x.shape, np.int16)
    for idx, (c, r) in BLOBS.items():
        inside = ((x - c[0]) ** 2 + (y - c[1]) ** 2 + ((z - c[2]) / 3.0) ** 2) <= r ** 2
        labels[inside] = idx
        img[inside] = BRIGHT.get(idx, 100.0)
    return img + rng.normal(0, 3.0, x.shape), labels


def _rows(source, acq, rows):
    return [["sub-01", "n/a", source, acq, *r[:6], "native", *r[6:]] for r in rows]


def build_participant(root: Path, run_id: str = "20261122-010203_ab12cd34") -> Path:
    """A participant output (no session) per docs/outputs.md: two NM sources with
    derivatives, one failed source without, summary.json and a crash file."""
    rng = np.random.default_rng(0)
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)

    # atlas label table
    (root / "atlas").mkdir()
    (root / "atlas" / f"tpl-{SPACE}_atlas-nmbids_dseg.tsv").write_text(
        "index\tname\troi\themi\tkind\n" + "".join("\t".join(map(str, r)) + "\n" for r in LABELS))

    # T1w native (2 mm), a simple head-like phantom
    t1_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    t1_aff[:3, 3] = [-46, -76, -60]
    t1_shape = (47, 55, 46)
    xyz = _grid(t1_aff, t1_shape)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    t1 = np.where((x / 44) ** 2 + ((y + 20) / 54) ** 2 + ((z + 8) / 44) ** 2 <= 1, 70.0, 0.0)
    t1[(x / 16) ** 2 + ((y + 22) / 14) ** 2 <= 1] = 105.0
    t1[((x / 4) ** 2 + ((y + 40) / 3) ** 2 <= 1) & (z < -18) & (z > -34)] = 20.0
    t1 += rng.normal(0, 2, t1.shape) * (t1 > 0)
    _save(t1, t1_aff, anat / "sub-01_desc-preproc_T1w.nii.gz")

    # T1w in template space: the template itself on a 2 mm brainstem grid
    from nilearn.datasets import MNI152_FILE_PATH
    from nilearn.image import resample_img

    tpl_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    tpl_aff[:3, 3] = [-40, -70, -60]
    tpl_shape = (41, 51, 41)
    warped = resample_img(MNI152_FILE_PATH, target_affine=tpl_aff, target_shape=tpl_shape,
                          interpolation="linear", force_resample=True, copy_header=True)
    _save(warped.get_fdata(), tpl_aff, anat / f"sub-01_space-{SPACE}_desc-preproc_T1w.nii.gz")

    from nilearn.image import resample_to_img

    for prefix, zc in ((P_A, -14.0), (P_B, -27.0)):
        # native NM slab: 0.8 x 0.8 x 2.5 mm, 12 slices, tilted 8 degrees
        shape = (56, 56, 10)
        aff = np.diag([0.8, 0.8, 2.5, 1.0])
        aff[:3, 3] = [-22.0, -44.0, zc - 12.5]
        aff = _rot_x(8) @ aff
        nm, labels = _nm_phantom(_grid(aff, shape), rng)
        _save(nm, aff, anat / f"{prefix}_desc-preproc_NM.nii.gz")
        _save(labels, aff, anat / f"{prefix}_desc-rois_dseg.nii.gz", np.int16)
        in_t1 = resample_to_img(nb.load(str(anat / f"{prefix}_desc-preproc_NM.nii.gz")),
                                nb.load(str(anat / "sub-01_desc-preproc_T1w.nii.gz")),
                                interpolation="linear", fill_value=0, force_resample=True, copy_header=True)
        _save(in_t1.get_fdata(), t1_aff, anat / f"{prefix}_space-T1w_desc-preproc_NM.nii.gz")
        # CR map in template space: n/a outside the slab
        txyz = _grid(tpl_aff, tpl_shape)
        cr = np.full(tpl_shape, np.nan)
        inside = np.abs(txyz[..., 2] - zc) <= 12
        cr[inside] = rng.normal(0.02, 0.03, inside.sum())
        for idx, (c, r) in BLOBS.items():
            if idx in BRIGHT:
                blob = np.linalg.norm(txyz - np.array(c), axis=-1) <= 2 * r
                cr[blob & inside] = (BRIGHT[idx] - 100) / 100
        _save(cr, tpl_aff, anat / f"{prefix}_space-{SPACE}_crmap.nii.gz")

    # MTR-style extra map for source A, motion for A, LC profile for B
    mtr = np.where(np.isfinite(cr), 30 + 10 * np.nan_to_num(cr), np.nan)
    _save(mtr, tpl_aff, anat / f"{P_A}_space-{SPACE}_MTRmap.nii.gz")
    nm_a = nb.load(str(anat / f"{P_A}_desc-preproc_NM.nii.gz"))  # a native-space map too
    _save(nm_a.get_fdata() / 4.0, nm_a.affine, anat / f"{P_A}_mtemap.nii.gz")
    (anat / f"{P_A}_desc-motion_timeseries.tsv").write_text(
        "repeat\ttrans_x_mm\ttrans_y_mm\ttrans_z_mm\tdisplacement_mm\n"
        "1\t0\t0\t0\t0\n2\t0.3\t-0.2\t0.5\t0.62\n3\t1.1\t-0.4\t1.6\t2.1\n")

    measures = _rows(SRC_A, "GREMT", [
        ["SN", "bilateral", "cr", "0.2513", "ratio", "roi_mean", "CC", "mode"],
        ["SN", "L", "cr", "0.2671", "ratio", "roi_mean", "CC", "mode"],
        ["SN", "R", "cr", "0.75", "ratio", "roi_mean", "CC", "mode"],  # implausible
        ["SN", "bilateral", "volume_mm3", "312.5", "mm3", "threshold", "CC", "mode"],
        ["SN", "bilateral", "coverage", "0.98", "fraction", "atlas_weight", "n/a", "n/a"],
        ["VTA", "bilateral", "cr", "0.1802", "ratio", "roi_mean", "CC", "mode"],
        ["VTA", "bilateral", "coverage", "0.91", "fraction", "atlas_weight", "n/a", "n/a"],
        ["LC", "bilateral", "cr", "n/a", "ratio", "roi_mean", "PT", "mode"],
        ["LC", "bilateral", "coverage", "0.12", "fraction", "atlas_weight", "n/a", "n/a"],
        ["CC", "bilateral", "reference_value", "100.4", "a.u.", "kde_mode", "CC", "mode"],
    ]) + _rows(SRC_B, "FSE", [
        ["LC", "bilateral", "cr", "0.1523", "ratio", "max_per_slice", "PT", "median"],
        ["LC_rostral", "L", "cr", "0.171", "ratio", "max_per_slice", "PT", "median"],
        ["LC_middle", "L", "cr", "0.158", "ratio", "max_per_slice", "PT", "median"],
        ["LC_caudal", "L", "cr", "0.121", "ratio", "max_per_slice", "PT", "median"],
        ["LC_rostral", "R", "cr", "0.162", "ratio", "max_per_slice", "PT", "median"],
        ["LC_middle", "R", "cr", "n/a", "ratio", "max_per_slice", "PT", "median"],
        ["LC_caudal", "R", "cr", "0.110", "ratio", "max_per_slice", "PT", "median"],
        ["LC", "bilateral", "coverage", "1.0", "fraction", "atlas_weight", "n/a", "n/a"],
        ["PT", "bilateral", "reference_value", "100.9", "a.u.", "median", "PT", "median"],
    ])
    (anat / "sub-01_desc-nm_measures.tsv").write_text(
        "\t".join(MEASURES_HEADER) + "\n" + "".join("\t".join(r) + "\n" for r in measures))
    (anat / "sub-01_desc-nm_measures.json").write_text(json.dumps({
        "value": {"Description": "The number, or n/a", "Units": "see unit"},
        "ref_stat": {"Description": "Reference statistic", "Levels": {"mode": "KDE mode <b>bold</b>"}}}))
    qc = [["sub-01", "n/a", SRC_A, "GREMT", "3", "0.9", "2.1", "25.3", "0.62", "0.81", "0.98", "0.91",
           "0.12", f"lowcoverage_LC;{XSS}"],
          ["sub-01", "n/a", SRC_B, "FSE", "1", "n/a", "n/a", "8.2", "0.21", "0.81", "0.0", "0.0", "1.0", "n/a"]]
    (anat / "sub-01_desc-nm_qc.tsv").write_text(
        "\t".join(QC_HEADER) + "\n" + "".join("\t".join(r) + "\n" for r in qc))

    log = root / "sub-01" / "log" / run_id
    log.mkdir(parents=True)
    (log / "crash-20261122-010210_nm.txt").write_text(
        "Traceback (most recent call last):\n  File \"x.py\"\nRuntimeError: registration <b>failed</b>\n")
    summary = {
        "participant_id": "sub-01", "run_id": run_id,
        "command": f"nmbids /data /out participant --participant-label 01 {XSS}",
        "version": "0.1.0", "started": "2026-11-22T01:02:03", "finished": "2026-11-22T01:09:03",
        "template": {"name": SPACE, "source": "nilearn"},
        "software": {"nmbids": "0.1.0", "antspyx": "0.5.4", "nilearn<i>": "0.14.1"},
        "sessions": [{
            "session_id": "n/a", "t1w": "sub-01/anat/sub-01_T1w.nii.gz", "t1w_note": None,
            "nm": [
                {"source": SRC_A, "prefix": P_A, "acq_type": "GREMT",
                 "evidence": ["MTState=true", f"acq label {XSS}"], "n_repeats": 3, "status": "ok", "error": None},
                {"source": SRC_B, "prefix": P_B, "acq_type": "FSE",
                 "evidence": ["ScanningSequence=SE", "EchoTrainLength=4"], "n_repeats": 1, "status": "ok",
                 "error": None},
                {"source": SRC_C, "prefix": P_C, "acq_type": "GREMT", "evidence": [], "n_repeats": 1,
                 "status": "failed", "error": "registration failed"},
            ],
            "ignored": [{"path": "sub-01/anat/sub-01_acq-NM_T1w.nii.gz", "reason": "NM image, not anatomy"}],
        }],
        "errors": [{"session_id": "n/a", "source": SRC_C, "message": "registration <i>failed</i>",
                    "crash_file": "crash-20261122-010210_nm.txt"}],
    }
    (log / "summary.json").write_text(json.dumps(summary, indent=1))
    return root


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs).get("src", ""))
        if tag == "script":
            self.scripts += 1


def _parse(text: str) -> _Collect:
    p = _Collect()
    p.feed(text)
    return p


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """The synthetic participant, built once; tests copy it before changing it."""
    return build_participant(tmp_path_factory.mktemp("pristine"))


@pytest.fixture(scope="module")
def report(pristine, tmp_path_factory):
    root = tmp_path_factory.mktemp("report") / "out"
    shutil.copytree(pristine, root)
    path = generate_participant_report(root, "sub-01")
    return root, path, path.read_text(encoding="utf-8")


def _copy(pristine, tmp_path, drop=()):
    root = tmp_path / "out"
    shutil.copytree(pristine, root)
    for name in drop:
        (root / "sub-01" / "anat" / name).unlink()
    return root


def test_report_written_atomically_with_all_figures(report):
    root, path, text = report
    assert path == root / "sub-01.html"
    assert not [p for p in root.iterdir() if p.name.startswith(".sub-01.html")]  # no temp left
    imgs = _parse(text).imgs
    assert len(imgs) >= 12
    for src in imgs:
        assert src.startswith("sub-01/figures/") and src.endswith(".svg"), src
        f = root / src
        assert f.is_file() and f.stat().st_size > 1000, src
        assert f.read_text().lstrip().startswith("<?xml")
    names = {Path(s).name for s in imgs}
    for expected in (f"{P_A}_desc-coverage_NM.svg", f"{P_A}_desc-nm2t1w_NM.svg", f"{P_A}_desc-rois_NM.svg",
                     f"{P_A}_space-{SPACE}_desc-crmap_NM.svg", f"{P_A}_desc-refhist_NM.svg",
                     f"{P_A}_desc-motion_NM.svg", f"{P_A}_space-{SPACE}_MTRmap.svg",
                     f"{P_A}_mtemap.svg",
                     f"{P_B}_desc-lcprofile_NM.svg", f"sub-01_space-{SPACE}_T1w.svg"):
        assert expected in names, expected


def test_figures_drawn_in_parallel_match_serial(report, pristine, tmp_path):
    """Two drawing processes give the same page and the same figures as one."""
    root, _, text = report
    par = _copy(pristine, tmp_path)
    par_text = generate_participant_report(par, "01", n_procs=2).read_text(encoding="utf-8")
    assert par_text == text
    serial = sorted(p.relative_to(root) for p in (root / "sub-01" / "figures").iterdir())
    parallel = sorted(p.relative_to(par) for p in (par / "sub-01" / "figures").iterdir())
    assert parallel == serial and len(serial) >= 12
    for rel in serial:  # same drawing, so the same bytes (SVG metadata has no date)
        assert (par / rel).read_bytes() == (root / rel).read_bytes(), rel


def test_measures_table_rendered_as_written(report):
    root, _, text = report
    tsv = (root / "sub-01" / "anat" / "sub-01_desc-nm_measures.tsv").read_text().splitlines()
    header = tsv[0].split("\t")
    assert "".join(f"<th>{h}</th>" for h in header) in text
    for line in tsv[1:]:
        cells = [html.escape(c, quote=True) for c in line.split("\t")]
        # every cell of every row, in order, as written (n/a stays n/a, 0.2513 stays 0.2513)
        pattern = r"<tr>\s*" + r"\s*".join(rf"<td[^>]*>{re.escape(c)}</td>" for c in cells)
        assert re.search(pattern, text), line


def test_metadata_is_escaped(report):
    _, _, text = report
    assert "<script" not in text.lower()
    assert _parse(text).scripts == 0
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<b>failed</b>" not in text and "<i>failed</i>" not in text and "<b>bold</b>" not in text


def test_warnings_follow_thresholds(report):
    _, _, text = report
    section = text[text.index('id="warnings"'):text.index('id="errors"')]
    for what in ("motion_max_mm", "coverage_LC", "snr", "nm2t1w_similarity", "cr SN R"):
        assert what in section, what
    assert "cr SN L" not in section  # 0.2671 is plausible
    for t in qcw.THRESHOLDS:
        assert html.escape(t.rule) in section
    assert "lowcoverage_LC" in section


def test_errors_and_methods(report):
    root, _, text = report
    section = text[text.index('id="errors"'):text.index('id="methods"')]
    assert "crash-20261122-010210_nm.txt" in section and "RuntimeError" in section
    assert "registration &lt;i&gt;failed&lt;/i&gt;" in section
    cite = write_citation(root, SPACE, "0.1.0")
    assert cite == root / "logs" / "CITATION.md"
    md = cite.read_text()
    bp = methods_boilerplate(SPACE, "0.1.0")
    for para in bp.paragraphs:
        assert para in md and str(escape(para)) in text
    for ref in bp.references:
        assert ref in md
    assert "[1]" in md and "Fonov" in md
    assert "control points every 100 mm" in md  # the NM slab's N4 setting (NM_N4_SPLINE_MM)


def test_missing_derivatives_do_not_raise(pristine, tmp_path):
    gone = [f"{P_A}_desc-rois_dseg.nii.gz", f"sub-01_space-{SPACE}_desc-preproc_T1w.nii.gz",
            "sub-01_desc-nm_qc.tsv", f"{P_A}_space-{SPACE}_crmap.nii.gz", f"{P_A}_space-T1w_desc-preproc_NM.nii.gz",
            f"{P_A}_space-{SPACE}_MTRmap.nii.gz", f"{P_A}_mtemap.nii.gz",
            f"{P_B}_space-{SPACE}_crmap.nii.gz",
            f"{P_B}_space-T1w_desc-preproc_NM.nii.gz"]
    root = _copy(pristine, tmp_path, gone)
    (root / "sub-01" / "anat" / f"{P_B}_desc-preproc_NM.nii.gz").write_bytes(b"not a nifti")  # unreadable
    (root / "atlas" / f"tpl-{SPACE}_atlas-nmbids_dseg.tsv").unlink()
    text = generate_participant_report(root, "01").read_text()
    assert "This source failed (registration failed); no derivative was written" in text  # source C
    for name in gone:
        if not name.endswith("map.nii.gz") or name.endswith("_crmap.nii.gz"):  # other maps: optional
            assert f"sub-01/anat/{name}" in text, name
    assert "Not shown: missing derivative" in text
    assert "could not be drawn" in text  # the corrupt NM image
    assert "atlas_dseg.tsv" in text or "atlas-nmbids_dseg.tsv" in text
    for src in _parse(text).imgs:
        assert (root / src).is_file()


def test_empty_output_and_no_summary(pristine, tmp_path):
    text = generate_participant_report(tmp_path, "02").read_text()
    assert "sub-02" in text and "No session found" in text
    # derivatives but no summary.json: sources are found on disk (few figures, to stay fast)
    root = _copy(pristine, tmp_path, [f"sub-01_space-{SPACE}_desc-preproc_T1w.nii.gz",
                                      f"{P_A}_space-{SPACE}_crmap.nii.gz", f"{P_B}_space-{SPACE}_crmap.nii.gz",
                                      f"{P_A}_space-{SPACE}_MTRmap.nii.gz",
                                      f"{P_A}_mtemap.nii.gz",
                                      f"{P_A}_space-T1w_desc-preproc_NM.nii.gz",
                                      f"{P_B}_space-T1w_desc-preproc_NM.nii.gz"])
    shutil.rmtree(root / "sub-01" / "log")
    text = generate_participant_report(root, "01").read_text()
    assert "no run log folder" in text
    assert f"{P_A}_desc-rois_NM.svg" in text and f"{P_B}_desc-lcprofile_NM.svg" in text
    assert "&lt;script&gt;" in text and "<script" not in text  # the source name from the tables


def test_read_only_home(tmp_path):
    """Matplotlib must not need a writable HOME (containers run --read-only)."""
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o555)
    root = tmp_path / "out"
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")}
    env.update(HOME=str(home), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    code = ("import sys; from pathlib import Path; from nmbids.reports import figures as f; "
            "import numpy as np, nibabel as nb; p=Path(sys.argv[1]); "
            "f.lc_profile([{'roi':'LC_rostral','hemi':'L','value':'0.1'}], None, p/'x.svg'); "
            "import matplotlib; print(matplotlib.get_backend(), matplotlib.get_configdir())")
    out = subprocess.run([sys.executable, "-c", code, str(root)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert (root / "x.svg").stat().st_size > 0
    assert out.stdout.split()[0].lower() == "agg"
    assert not out.stdout.split()[1].startswith(str(home))
    assert list(home.iterdir()) == []


def test_warning_rules():
    assert qcw.coverage_low("0.49") and not qcw.coverage_low("0.5") and not qcw.coverage_low("n/a")
    assert qcw.cr_implausible("0.61") and qcw.cr_implausible("-0.11") and not qcw.cr_implausible("0.6")
    row = {"motion_max_mm": "1.6", "snr": "14.9", "nm2t1w_similarity": "0.1", "coverage_SN": "0.2",
           "t1w2template_similarity": "0.49"}
    assert {w.what for w in qcw.qc_row_warnings(row)} == {"motion_max_mm", "snr", "nm2t1w_similarity",
                                                          "coverage_SN", "t1w2template_similarity"}
    ok = {"motion_max_mm": "1.5", "snr": "15", "nm2t1w_similarity": "n/a", "coverage_SN": "0.5",
          "t1w2template_similarity": "0.5"}
    assert qcw.qc_row_warnings(ok) == []
    # a CR of a ROI that its acquisition profile marks as not yet reliable (FSE VTA) warns, with why
    fse_vta = {"acq_type": "FSE", "roi": "VTA", "hemi": "L", "measure": "cr", "value": "0.05"}
    (w,) = qcw.measures_row_warnings(fse_vta)
    assert w.rule.startswith("not yet reliable") and "FSE VTA" in w.rule
    assert qcw.measures_row_warnings(dict(fse_vta, roi="SN")) == []
    assert qcw.measures_row_warnings(dict(fse_vta, value="n/a")) == []
    # the MTR of an MT pair's LC and VTA too; the SN's MTR does not warn
    mt_lc = {"acq_type": "MTR", "roi": "LC", "hemi": "L", "measure": "mtr", "value": "33.0"}
    (w,) = qcw.measures_row_warnings(mt_lc)
    assert w.rule.startswith("not yet reliable") and "MT-pair LC MTR" in w.rule
    assert qcw.measures_row_warnings(dict(mt_lc, roi="SN")) == []


# ----------------------------------------------------------------------------- browser
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
        if path:
            return path
    return None


_CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
                 "--virtual-time-budget=5000"]


def _run_chromium(exe, tmp_path, url, *extra):
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    env = dict(os.environ, HOME=str(tmp_path))
    return subprocess.run([exe, *_CHROME_FLAGS, f"--user-data-dir={profile}", *extra, url],
                          capture_output=True, text=True, timeout=120, env=env)


def test_renders_in_headless_chromium(report, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium executable (the Makefile installs it)")
    root, path, text = report
    # 1. the page itself: DOM after load, and the browser console on stderr
    res = _run_chromium(exe, tmp_path, path.as_uri(), "--dump-dom")
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    imgs = _parse(dom).imgs
    assert imgs and len(imgs) == len(_parse(text).imgs)
    for src in imgs:
        f = root / src
        assert f.is_file() and f.stat().st_size > 0, src
    console = [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln
               or "Refused to" in ln or "ERR_FILE_NOT_FOUND" in ln]
    assert not console, "\n".join(console)
    # 2. a copy with a probe script (CSP dropped) reports images the browser failed to decode
    probe = path.with_name("sub-01-probe.html")
    probe.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", text).replace(
        "</body>", "<script>window.addEventListener('load',()=>{const b=[...document.images]"
        ".filter(i=>!i.complete||i.naturalWidth===0).map(i=>i.getAttribute('src'));"
        "document.body.setAttribute('data-broken',b.join('|'));"
        "document.body.setAttribute('data-n',document.images.length);});</script></body>"))
    probe.write_text(probe.read_text().replace(' loading="lazy"', ""))  # load off-screen images too
    res = _run_chromium(exe, tmp_path, probe.as_uri(), "--dump-dom")
    m = re.search(r'<body[^>]*data-broken="([^"]*)"[^>]*data-n="(\d+)"', res.stdout)
    assert m, res.stdout[:500]
    assert m.group(1) == "" and int(m.group(2)) == len(imgs), m.group(1)
    # 3. a screenshot for people (kept beside the report in the temporary folder)
    shot = tmp_path / "sub-01.png"
    res = _run_chromium(exe, tmp_path, path.as_uri(), f"--screenshot={shot}", "--window-size=1280,4000")
    assert shot.is_file() and shot.stat().st_size > 10000


def test_paths_and_prefixes(tmp_path):
    from nmbids.reports.participant import _session_dirs
    from nmbids.contract.names import prefix_of_source, source_prefix
    from nmbids.reports.utils import belongs_to_prefix

    sub = tmp_path / "sub-01"
    assert _session_dirs(sub, "ses-1") == ("sub-01_ses-1", sub / "ses-1" / "anat")
    assert _session_dirs(sub, "n/a") == ("sub-01", sub / "anat")
    # the report's prefix of a source is the pipeline's: runs are repeats (no run- in the
    # derivative), an MT image without acq- is named after its suffix
    assert prefix_of_source("sub-01/ses-1/anat/sub-01_ses-1_acq-NM_run-2_mt-on_T1w.nii.gz") == \
        source_prefix({"subject": "01", "session": "1", "acquisition": "NM", "run": "2", "mt": "on",
                       "suffix": "T1w"}) == "sub-01_ses-1_acq-NM"
    assert prefix_of_source("sub-01/anat/sub-01_mt-on_MTR.nii.gz") == "sub-01_acq-MTR"
    assert belongs_to_prefix("sub-01_acq-NM_space-X_crmap.nii.gz", "sub-01_acq-NM")
    assert not belongs_to_prefix("sub-01_acq-NM_run-2_space-X_crmap.nii.gz", "sub-01_acq-NM")
    with pytest.raises(ValueError):
        generate_participant_report(tmp_path, "../etc")


def test_resample_like_slices_a_box_of_the_same_grid():
    """A crop of an image on the same grid is taken as is (no interpolation); any other grid
    is resampled."""
    import nibabel as nb
    import numpy as np
    from nilearn.image import resample_to_img

    from nmbids.reports.figures import crop, resample_like

    rng = np.random.default_rng(1)
    affine = np.array([[-1.0, 0, 0, 90], [0, 1.0, 0, -126], [0, 0, 1.0, -72], [0, 0, 0, 1]])
    img = nb.Nifti1Image(rng.random((30, 40, 20)).astype(np.float32), affine)
    box = crop(img, [[-10, 5], [-110, -100], [-65, -60]])
    same = resample_like(img, box)
    assert same.shape == box.shape and np.allclose(same.affine, box.affine)
    assert np.array_equal(np.asarray(same.dataobj), np.asarray(box.dataobj))
    shifted = nb.Nifti1Image(np.zeros((5, 5, 5), np.float32), affine @ nb.affines.from_matvec(np.eye(3), [0.5, 0, 0]))
    expected = resample_to_img(img, shifted, interpolation="linear", force_resample=True, copy_header=True)
    assert np.allclose(np.asarray(resample_like(img, shifted).dataobj), np.asarray(expected.dataobj))


def test_t1w_template_flicker_without_script(report):
    """Issue 17: the T1w -> template check as a before/after flicker, CSS only, CSP kept."""
    root, _, text = report
    block = text.split('class="nmb-flicker"', 1)[1].split("</div>", 1)[0]
    srcs = re.findall(r'src="([^"]+)"', block)
    assert [Path(s).name for s in srcs] == [f"sub-01_space-{SPACE}_desc-flicker_T1w.svg",
                                            f"sub-01_space-{SPACE}_desc-flicker_T1w_before.svg"]
    for src in srcs:
        assert (root / src).read_text().lstrip().startswith("<?xml")
    assert 'class="before"' in block and "@keyframes nmb-flicker" in text
    assert _parse(text).scripts == 0
    assert "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'" in text
