"""The header facts of derivative images (images.derivative_image / save_ants_image): integer
labels with unit scaling, MNI xform codes in template space, the source's codes in native
space, mm and no time unit for 3-D images; voxel values and the affine unchanged."""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from nmbids.images import derivative_image, label_dtype, save_ants_image, template_xform_code

ROTATED = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def raw_header(path: Path) -> nb.Nifti1Header:
    """The header as stored (nibabel's load folds scl_slope/scl_inter into the data proxy)."""
    with gzip.open(path, "rb") as fh:
        return nb.Nifti1Header.from_fileobj(io.BytesIO(fh.read(348)))


def _ants_image(path: Path, data: np.ndarray) -> Path:
    ants = pytest.importorskip("ants")
    ants.from_numpy(data.astype(np.float32), origin=(1.5, -2.25, 3.125), spacing=(0.8, 0.8, 1.5),
                    direction=ROTATED).to_file(str(path))
    return path


def finish_image(path: Path, **facts) -> Path:
    """Rewrite the ANTs-written image at ``path`` as the pipeline writes a derivative."""
    ants = pytest.importorskip("ants")
    return save_ants_image(ants.image_read(str(path)), path, **facts)


def _source(path: Path, qcode: int, scode: int) -> Path:
    header = nb.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_qform(np.diag([0.8, 0.8, 1.5, 1]), code=qcode)
    header.set_sform(np.diag([0.8, 0.8, 1.5, 1]), code=scode)
    nb.save(nb.Nifti1Image(np.ones((4, 4, 4), np.int16), None, header), str(path))  # codes as given
    return path


@pytest.mark.parametrize("space, code", [("MNI152NLin2009cAsym", 4), ("MNI152NLin2009aSym", 4),
                                         ("MNI152NLin6Asym", 4), ("OASIS30ANTs", 2), ("fsaverage", 2)])
def test_template_xform_code(space, code):
    assert template_xform_code(space) == code


@pytest.mark.parametrize("labels, dtype", [([0, 1, 12], np.uint8), ([0, 255], np.uint8), ([0, 256], np.int16),
                                           ([-1, 3], np.int16), ([0, 40000], np.int32)])
def test_label_dtype_is_the_smallest_that_holds_the_labels(labels, dtype):
    assert label_dtype(np.array(labels, np.float32)) == np.dtype(dtype)


def test_ants_written_dseg_becomes_exact_integer_labels(tmp_path):
    labels = np.zeros((6, 7, 8))
    labels[1:3, 2:4, 3:5], labels[4, 5, 6] = 11, 12
    path = _ants_image(tmp_path / "dseg.nii.gz", labels)
    before = nb.load(str(path))
    assert before.get_data_dtype() == np.float32 and raw_header(path)["xyzt_units"] & 0x38  # what ANTs writes
    affine = before.affine.copy()
    finish_image(path, source=_source(tmp_path / "src.nii.gz", 1, 1), labels=True)
    img, hdr = nb.load(str(path)), raw_header(path)
    assert img.get_data_dtype() == np.uint8
    assert (float(hdr["scl_slope"]), float(hdr["scl_inter"])) == (1.0, 0.0)
    assert np.array_equal(np.asanyarray(img.dataobj), labels)
    assert np.array_equal(img.affine, affine)
    assert hdr.get_xyzt_units() == ("mm", "unknown")


def test_template_space_image_gets_mni_codes_and_keeps_values_and_affine(tmp_path):
    data = np.random.default_rng(0).random((6, 7, 8))
    path = _ants_image(tmp_path / "map.nii.gz", data)
    b_hdr, b_data = raw_header(path), np.asanyarray(nb.load(str(path)).dataobj).copy()
    finish_image(path, space="MNI152NLin2009cAsym")
    img, hdr = nb.load(str(path)), raw_header(path)
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (4, 4)
    assert hdr.get_xyzt_units() == ("mm", "unknown")
    assert img.get_data_dtype() == np.float32 and np.array_equal(np.asanyarray(img.dataobj), b_data)
    # the stored transforms are those ANTs wrote, bit for bit; only codes and units change
    changed = {k for k in hdr.keys() if not np.array_equal(hdr[k], b_hdr[k], equal_nan=k.startswith("scl"))}
    assert changed == {"qform_code", "sform_code", "xyzt_units"}
    ants = pytest.importorskip("ants")
    again = ants.image_read(str(path))
    assert again.origin == (1.5, -2.25, 3.125) and np.array_equal(again.direction, ROTATED)
    finish_image(path, space="OASIS30ANTs")
    assert (int(raw_header(path)["qform_code"]), int(raw_header(path)["sform_code"])) == (2, 2)


@pytest.mark.parametrize("codes", [(1, 1), (1, 2), (0, 2)])
def test_native_image_keeps_the_source_codes(tmp_path, codes):
    path = _ants_image(tmp_path / "nm.nii.gz", np.ones((5, 5, 5)))
    finish_image(path, source=_source(tmp_path / "src.nii.gz", *codes))
    hdr = raw_header(path)
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == codes
    assert hdr.get_xyzt_units() == ("mm", "unknown")


def test_source_without_codes_keeps_what_was_written(tmp_path):
    path = _ants_image(tmp_path / "nm.nii.gz", np.ones((5, 5, 5)))
    finish_image(path, source=_source(tmp_path / "src.nii.gz", 0, 0))
    assert (int(raw_header(path)["qform_code"]), int(raw_header(path)["sform_code"])) == (1, 1)


def test_nibabel_image_without_qform_gets_both_forms(tmp_path):
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (90, -126, -72)
    img = derivative_image(nb.Nifti1Image(np.arange(8, dtype=np.int16).reshape(2, 2, 2), affine),
                           space="MNI152NLin2009cAsym", labels=True)
    nb.save(img, str(tmp_path / "atlas.nii.gz"))
    back = nb.load(str(tmp_path / "atlas.nii.gz"))
    assert back.get_data_dtype() == np.uint8
    assert (int(back.header["qform_code"]), int(back.header["sform_code"])) == (4, 4)
    assert np.array_equal(back.header.get_qform(), affine) and np.array_equal(back.header.get_sform(), affine)


def test_4d_image_keeps_its_time_unit(tmp_path):
    img = nb.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4))
    img.header.set_xyzt_units("mm", "sec")
    assert derivative_image(img).header.get_xyzt_units() == ("mm", "sec")


def test_non_integer_labels_are_refused():
    with pytest.raises(ValueError, match="whole numbers"):
        derivative_image(nb.Nifti1Image(np.array([[[0.5, 1.0]]], np.float32), np.eye(4)), labels=True)


@pytest.mark.parametrize("facts", [dict(space="MNI152NLin2009cAsym"), dict(labels=True)])
def test_save_ants_image_writes_what_write_then_finish_writes(tmp_path, facts):
    """One compression instead of two (ITK's, then nibabel's after reading it back): the same
    voxels and the same header, no file left."""
    ants = pytest.importorskip("ants")
    data = np.rint(np.random.default_rng(1).random((6, 7, 8)) * 5)
    img = ants.from_numpy(data.astype(np.float32), origin=(1.5, -2.25, 3.125), spacing=(0.8, 0.8, 1.5),
                          direction=ROTATED)
    two_step = tmp_path / "a" / "img.nii.gz"
    two_step.parent.mkdir()
    img.to_file(str(two_step))
    nb.save(derivative_image(nb.load(str(two_step)), **facts), str(two_step))
    once = tmp_path / "b" / "img.nii.gz"
    once.parent.mkdir()
    save_ants_image(img, once, **facts)
    assert sorted(p.name for p in once.parent.iterdir()) == ["img.nii.gz"]
    a, b = nb.load(str(two_step)), nb.load(str(once))
    assert a.get_data_dtype() == b.get_data_dtype()
    assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
    ha, hb = raw_header(two_step), raw_header(once)
    differ = {k for k in ha.keys() if not np.array_equal(ha[k], hb[k], equal_nan=k.startswith("scl"))}
    assert differ == set()
