"""Resampling of repeats: a thin bright structure keeps more of its contrast with Lanczos."""
import ants
import numpy as np

from nmbids.registration import resample_sharp


def _sheet(shift_mm: float) -> ants.ANTsImage:
    """A smooth-edged bright sheet across a 2 mm-slice volume, centred at z = 20 + shift mm."""
    z = (np.arange(20) * 2.0)[None, None, :]
    arr = 100 + 30 * np.exp(-0.5 * ((z - 20 - shift_mm) / 1.2) ** 2) * np.ones((16, 16, 1))
    return ants.from_numpy(arr.astype(np.float32), spacing=(1.0, 1.0, 2.0))


def test_resample_sharp_keeps_a_thin_structure_where_linear_blurs_it(tmp_path):
    fixed, moving = _sheet(0.0), _sheet(1.0)  # the repeat moved by half a slice
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    tx.set_parameters([1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1.0])  # fixed -> moving: +1 mm in z
    path = str(tmp_path / "shift.mat")
    ants.write_transform(tx, path)
    sharp = resample_sharp(fixed, moving, [path]).numpy()[8, 8, 3:17]
    linear = ants.apply_transforms(fixed=fixed, moving=moving, transformlist=[path],
                                   interpolator="linear").numpy()[8, 8, 3:17]
    truth = fixed.numpy()[8, 8, 3:17]
    # the sheet is back where the fixed image has it, and its peak is kept better than by linear
    assert np.argmax(sharp) == np.argmax(truth)
    assert abs(sharp.max() - truth.max()) < abs(linear.max() - truth.max())
    assert np.abs(sharp - truth).max() < 0.6 * np.abs(linear - truth).max()
