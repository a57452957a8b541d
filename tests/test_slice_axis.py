"""Where an NM slab's slices lie in its voxel grid (``registration.slice_axis``) and putting
them on the third axis without resampling (``registration.slices_last``)."""
import ants
import numpy as np
import pytest

from nmbids.registration import slice_axis, slices_last


def _img(shape, spacing, direction=None):
    arr = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    return ants.from_numpy(arr, origin=(10.0, -20.0, 5.0), spacing=spacing,
                           direction=np.eye(3) if direction is None else direction)


def _point(img, idx):
    """Physical (LPS) point of voxel ``idx``: origin + D diag(spacing) idx."""
    d, s = np.asarray(img.direction), np.asarray(img.spacing)
    return np.asarray(img.origin) + d @ (s * np.asarray(idx, float))


@pytest.mark.parametrize("spacing, axis", [((0.8, 0.8, 2.0), 2), ((2.0, 0.8, 0.8), 0), ((0.5, 3.0, 0.5), 1),
                                           ((0.5, 0.8, 2.0), 2)])
def test_the_thickest_axis_holds_the_slices(spacing, axis):
    assert slice_axis(_img((6, 7, 8), spacing)) == axis


def test_near_isotropic_voxels_take_the_axis_closest_to_superior_inferior():
    # axis 0 points mostly superior (LPS row 2), axes 1 and 2 lie in the axial plane
    tilt = np.deg2rad(20)
    d = np.array([[0.0, 1.0, 0.0],
                  [np.sin(tilt), 0.0, np.cos(tilt)],
                  [np.cos(tilt), 0.0, -np.sin(tilt)]])
    assert slice_axis(_img((6, 7, 8), (0.8, 0.8, 0.8), d)) == 0
    # within 10 % of the largest counts as the same size
    assert slice_axis(_img((6, 7, 8), (0.85, 0.8, 0.8), d)) == 0
    assert slice_axis(_img((6, 7, 8), (0.8, 0.8, 0.8))) == 2


def test_slices_last_moves_the_slices_and_keeps_every_voxel_in_place():
    img = _img((5, 6, 7), (2.0, 0.8, 0.7))
    out = slices_last(img)
    assert out.shape == (6, 7, 5) and tuple(out.spacing) == pytest.approx((0.8, 0.7, 2.0))
    assert slice_axis(out) == 2
    src, dst = img.numpy(), out.numpy()
    for i, j, k in [(0, 0, 0), (4, 5, 6), (2, 1, 3)]:
        # voxel (i, j, k) of the file is voxel (j, k, i) of the result: same value, same place
        assert dst[j, k, i] == src[i, j, k]
        assert np.allclose(_point(out, (j, k, i)), _point(img, (i, j, k)))
    # already slices last: the image itself
    axial = _img((5, 6, 7), (0.8, 0.8, 2.0))
    assert slices_last(axial) is axial


def test_slice_tilt_against_superior_inferior():
    """0 for axial slices, the tilt of an oblique axial slab, 90 for sagittal or coronal ones."""
    from nmbids.registration import slice_tilt_deg

    assert slice_tilt_deg(_img((5, 6, 7), (0.8, 0.8, 2.0))) == pytest.approx(0.0)
    t = np.deg2rad(20)  # tilted about L-R (LPS x): the slice axis leans towards A-P
    oblique = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(t), np.sin(t)], [0.0, -np.sin(t), np.cos(t)]])
    assert slice_tilt_deg(_img((5, 6, 7), (0.8, 0.8, 2.0), oblique)) == pytest.approx(20.0)
    sagittal = slices_last(_img((7, 6, 5), (2.0, 0.8, 0.8)))  # slices along L-R, put third
    assert slice_tilt_deg(sagittal) == pytest.approx(90.0)


def test_a_profile_for_slices_that_are_not_axial():
    """The slice-wise ROIs (the LC of GRE-MT and FSE) move to the template's axial slices;
    nothing else moves, and an MT pair, whose LC is not measured slice by slice, keeps its own."""
    from nmbids.acquisitions import PROFILES

    for name in ("GREMT", "FSE"):
        p = PROFILES[name]
        assert p.for_slices(axial=True) is p
        q = p.for_slices(axial=False)
        assert q.space_of("LC") == "template" and q.space_of("SN") == q.space_of("VTA") == "native"
    assert PROFILES["MTR"].for_slices(axial=False) is PROFILES["MTR"]
