"""N4 with block subsampling (the T1w's bias correction): the coarse grid and its linear
interpolation are exact on a linear ramp, and the field is the one N4 gives without it."""
import ants
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

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
