"""N4: block subsampling (the T1w's bias correction) is exact on a linear ramp and gives the
field N4 gives without it; the NM slab's field (control points every ``NM_N4_SPLINE_MM``)
removes a known field from a thin slab."""
import ants
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from nmbids.acquisitions import NM_N4_SPLINE_MM
from nmbids.registration import _subsample, _upsample_linear, n4_field


def _image(arr, spacing=(1.0, 1.0, 1.0), origin=(10.0, -20.0, 5.0)):
    return ants.from_numpy(arr.astype(np.float32), origin=origin, spacing=spacing)


def test_coarse_grid_and_interpolation_are_exact_on_a_ramp():
    i, j, k = np.meshgrid(np.arange(16), np.arange(12), np.arange(9), indexing="ij")
    ramp = 2.0 * i - 1.0 * j + 0.5 * k + 100.0
    coarse = _subsample(_image(ramp), 4)
    # voxels 1, 5, 9, 13 along x (mid-block), 1, 5, 9 along y and 1, 5 along z
    assert coarse.shape == (4, 3, 2)
    assert coarse.spacing == pytest.approx((4.0, 4.0, 4.0))
    assert coarse.origin == pytest.approx((11.0, -19.0, 6.0))  # voxel (1, 1, 1), identity direction
    assert coarse.numpy()[1, 2, 1] == pytest.approx(ramp[5, 9, 5])
    back = _upsample_linear(coarse.numpy(), ramp.shape, 4)
    inner = (slice(1, 14), slice(1, 10), slice(1, 6))  # between the outermost coarse voxels
    assert np.allclose(back[inner], ramp[inner], atol=1e-4)
    assert back[0, 0, 0] == pytest.approx(ramp[1, 1, 1])  # constant beyond them


def test_block_subsampling_gives_n4s_own_field():
    rng = np.random.default_rng(0)
    shape = (96, 96, 64)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    head = (x ** 2 + y ** 2 + z ** 2) < 0.8
    classes = gaussian_filter(rng.standard_normal(shape), 3) > 0  # coherent tissue patches
    tissue = np.where(head, np.where(classes, 100.0, 140.0), 0.0) + rng.normal(0, 2, shape)
    image = _image(np.clip(tissue, 0, None) * (1.0 + 0.2 * x + 0.1 * y * z))
    plain = n4_field(image, shrink=8).numpy()[head]
    blocks = n4_field(image, shrink=4, block=2).numpy()[head]
    assert np.percentile(plain, 99) / np.percentile(plain, 1) > 1.2  # N4 found the ±30 % field
    ratio = blocks / plain
    assert np.percentile(ratio, 99) / np.percentile(ratio, 1) < 1.005


def test_slab_field_restores_the_contrast_between_a_nucleus_and_its_reference():
    # A 0.8 x 0.8 x 2 mm slab of 20 slices: tissue patches, a nucleus 25 % brighter than
    # its reference 30 mm away, Rician noise, and the phantom's kind of field (exp of a
    # quadratic in scanner mm / 100) that makes the nucleus look 3-5 % brighter still.
    rng = np.random.default_rng(0)
    shape, spacing = (125, 138, 20), (0.8, 0.8, 2.0)
    x, y, z = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
    brain = (x / 45) ** 2 + (y / 50) ** 2 < 1
    patches = gaussian_filter(rng.standard_normal(shape), (4, 4, 1.5)) > 0.3
    tissue = np.where(brain, np.where(patches, 70.0, 100.0), 5.0)
    nucleus = ((x - 8) / 5) ** 2 + ((y + 10) / 4) ** 2 + (z / 4) ** 2 < 1
    reference = (x / 6) ** 2 + ((y - 18) / 5) ** 2 + (z / 4) ** 2 < 1
    tissue[nucleus], tissue[reference] = 125.0, 100.0
    u, v, w = x / 100, y / 100, z / 100
    terms = (u, v, w, u * u - 0.33, v * v - 0.33, w * w - 0.33, u * v, u * w, v * w)
    field = np.exp(sum(c * t for c, t in zip((0.12, -0.10, 0.08, 0.06, -0.05, 0.04, 0.05, -0.04, 0.03), terms)))
    signal = tissue * field
    image = np.sqrt((signal + rng.normal(0, 4, shape)) ** 2 + rng.normal(0, 4, shape) ** 2)

    def ratio_error(img):
        return img[nucleus].mean() / np.median(img[reference]) / 1.25 - 1

    before = ratio_error(image)
    assert before > 0.03  # the field is large enough to matter
    slab = _image(image, spacing=spacing)
    est = n4_field(slab, spline_mm=NM_N4_SPLINE_MM).numpy()
    assert abs(ratio_error(image / est)) < before / 3  # 1.1 % left of 4.5 %
    # the spacing reaches N4: its field is not the one-element field
    one = n4_field(slab).numpy()[brain]
    assert np.abs(est[brain] / one - 1).max() > 0.002
