"""Unit tests of nmbids.measures against small hand-computed values."""
import math

import numpy as np
import pytest

from nmbids import measures as m

nan = np.nan


# --- reference_value ---------------------------------------------------------

def test_reference_value_median_mean_ignore_nan():
    vals = [nan, 1, 2, 3, 4, 10, np.inf]
    # finite values 1, 2, 3, 4, 10: median 3, mean 20 / 5 = 4
    assert m.reference_value(vals, "median") == 3.0
    assert m.reference_value(vals, "mean") == 4.0


def test_reference_value_too_few_voxels():
    # 4 finite values < default min_voxels 5
    assert math.isnan(m.reference_value([1, 2, 3, 4, nan], "median"))
    assert m.reference_value([1, 2, 3, 4, nan], "median", min_voxels=4) == 2.5
    assert math.isnan(m.reference_value([], "mode"))


def test_reference_value_unknown_stat():
    with pytest.raises(ValueError):
        m.reference_value([1, 2, 3, 4, 5], "max")


def test_reference_value_constant_mode():
    assert m.reference_value([7.5] * 6 + [nan], "mode") == 7.5


def test_mode_symmetric_sample_is_centre():
    # symmetric sample around 3: the density peaks at 3, within one grid step (4 / 511)
    assert m.reference_value([1, 2, 3, 4, 5], "mode") == pytest.approx(3, abs=4 / 511)


def test_mode_bimodal_lands_on_tall_peak():
    rng = np.random.default_rng(0)
    # 300 voxels around 100 (tissue) and 100 around 160 (bright partial-volume tail)
    vals = np.concatenate([rng.normal(100, 3, 300), rng.normal(160, 3, 100)])
    # the mean is pulled to about (300*100 + 100*160) / 400 = 115; the mode is not
    assert m.reference_value(vals, "mean") == pytest.approx(115, abs=1)
    assert m.reference_value(vals, "mode") == pytest.approx(100, abs=2)


def test_mode_skewed_sample_below_median_and_mean():
    rng = np.random.default_rng(1)
    # lognormal(mu=0, sigma=0.5): mode e^(mu - sigma^2) = e^-0.25 = 0.78,
    # median e^0 = 1, mean e^(sigma^2 / 2) = 1.13
    vals = rng.lognormal(0.0, 0.5, 2000)
    mode = m.reference_value(vals, "mode")
    assert mode == pytest.approx(np.exp(-0.25), abs=0.08)
    assert mode < m.reference_value(vals, "median") < m.reference_value(vals, "mean")


# --- contrast ratio ----------------------------------------------------------

def test_contrast_ratio_elementwise():
    # (110 - 100) / 100 = 0.1, (120 - 100) / 100 = 0.2, NaN stays NaN
    out = m.contrast_ratio([110, 120, nan], 100)
    np.testing.assert_allclose(out, [0.1, 0.2, nan])


def test_contrast_ratio_keeps_shape():
    img = np.full((2, 3, 4), 150.0)
    out = m.contrast_ratio(img, 100)
    assert out.shape == (2, 3, 4)
    np.testing.assert_allclose(out, 0.5)


@pytest.mark.parametrize("ref", [0, -5, nan])
def test_contrast_ratio_bad_ref_all_nan(ref):
    assert np.all(np.isnan(m.contrast_ratio([110, 120], ref)))


def test_cr_roimean():
    vals = [110, 120, 130, 140, 150, nan]
    # CRs 0.1 .. 0.5, mean 1.5 / 5 = 0.3
    assert m.cr_roimean(vals, 100) == pytest.approx(0.3)
    # only 4 finite voxels left
    assert math.isnan(m.cr_roimean([110, 120, 130, nan, 150], 100))
    assert m.cr_roimean([110, 120, 130, nan, 150], 100, min_voxels=4) == pytest.approx(0.275)
    assert math.isnan(m.cr_roimean(vals, 0))


# --- threshold and volume ----------------------------------------------------

def test_threshold_mask():
    vals = np.array([100, 105, 106, 120, nan])
    # k = 3: threshold 100 + 3*2 = 106, strict, so 106 fails
    np.testing.assert_array_equal(m.threshold_mask(vals, 100, 2), [False, False, False, True, False])
    # k = 2: threshold 104
    np.testing.assert_array_equal(m.threshold_mask(vals, 100, 2, k=2), [False, True, True, True, False])
    # undefined reference: nothing passes
    assert not m.threshold_mask(vals, nan, 2).any()


def test_cr_threshold():
    vals = [105, 111, 120, 130, 140, 150, nan]
    # threshold 100 + 1*10 = 110; passing 111, 120, 130, 140, 150
    # CRs 0.11, 0.2, 0.3, 0.4, 0.5 -> mean 1.51 / 5 = 0.302
    assert m.cr_threshold(vals, 100, 10, k=1) == pytest.approx(0.302)
    # 5 voxels pass, 6 required
    assert math.isnan(m.cr_threshold(vals, 100, 10, k=1, min_voxels=6))
    # k = 3: threshold 130, only 140 and 150 pass
    assert math.isnan(m.cr_threshold(vals, 100, 10))
    assert m.cr_threshold(vals, 100, 10, min_voxels=2) == pytest.approx(0.45)


def test_n_top_voxels():
    # 50 mm3 of 0.8 x 0.8 x 2 mm voxels (1.28 mm3): 39.06 -> 39
    assert m.n_top_voxels(50, 1.28) == 39
    assert m.n_top_voxels(4, 2.0) == 5  # never fewer than min_voxels
    assert m.n_top_voxels(4, 2.0, min_voxels=1) == 2
    with pytest.raises(ValueError):
        m.n_top_voxels(0, 1.0)


def test_cr_top_volume():
    vals = [90, 100, 110, 120, 130, 140, 150, 160, nan]
    # 10 mm3 of 2 mm3 voxels = 5 voxels: 120..160 -> CRs 0.2, 0.3, 0.4, 0.5, 0.6 -> mean 0.4
    assert m.cr_top_volume(vals, 100, 10, 2.0) == pytest.approx(0.4)
    # 6 voxels (12 mm3): add 110 -> (0.1 + 2.0) / 6 = 0.35
    assert m.cr_top_volume(vals, 100, 12, 2.0) == pytest.approx(0.35)
    # order of the voxels does not matter
    assert m.cr_top_volume(vals[::-1], 100, 10, 2.0) == pytest.approx(0.4)
    # 8 finite voxels, 9 asked for -> n/a; no usable reference -> n/a
    assert math.isnan(m.cr_top_volume(vals, 100, 18, 2.0))
    assert math.isnan(m.cr_top_volume(vals, nan, 10, 2.0))
    assert math.isnan(m.cr_top_volume(vals, 0, 10, 2.0))


def test_top_volume_tracks_contrast_where_threshold_compresses_it():
    """A nucleus with a partial-volume rim: the fixed volume of brightest voxels follows
    the nucleus contrast one to one, the threshold mean does not (the reason for the default)."""
    def roi(cr):
        core = np.full(40, 100 * (1 + cr))  # 40 full voxels of 1 mm3
        rim = 100 * (1 + cr * np.linspace(0.05, 0.95, 60))  # partial volume
        return np.concatenate([core, rim, np.full(200, 100.0)])
    low, high = 0.10, 0.30
    top = [m.cr_top_volume(roi(c), 100, 30, 1.0) for c in (low, high)]
    thr = [m.cr_threshold(roi(c), 100, 2.0, k=3) for c in (low, high)]
    assert top == pytest.approx([low, high])
    assert (thr[1] - thr[0]) / (high - low) < 0.85  # compressed


def test_volume_mm3():
    mask = np.zeros((3, 3), dtype=bool)
    mask[0, :] = True
    mask[1, 1] = True
    # 4 voxels of 0.5 * 0.5 * 3 = 0.75 mm3 -> 3 mm3
    assert m.volume_mm3(mask, 0.75) == 3.0
    assert m.volume_mm3(np.zeros(4), 0.75) == 0.0
    # NaN in a numeric mask does not count: 2 voxels of 1 mm3
    assert m.volume_mm3([1, nan, 0, 1], 1.0) == 2.0


def test_coverage():
    # fractional: (1*1 + 1*0 + 0.5*1 + 0*0) / (1 + 1 + 0.5 + 0) = 1.5 / 2.5
    assert m.coverage([1, 1, 0.5, 0], [True, False, True, False]) == pytest.approx(0.6)
    # binary ROI of 2 voxels, 1 inside (slab voxels outside the ROI do not count)
    assert m.coverage([1, 1, 0, 0], [1, 0, 1, 1]) == 0.5
    # NaN weight counts as 0: 1 / 2
    assert m.coverage([1, 1, nan], [1, 0, 1]) == 0.5
    assert math.isnan(m.coverage([0, 0, 0], [True, True, True]))


# --- CNR and SNR -------------------------------------------------------------

def test_cnr():
    roi = [12, 14, 16, 18, 20, nan]  # mean 16
    ref = [8, 9, 10, 11, 12, nan]  # mean 10, sd = sqrt((4+1+0+1+4)/4) = sqrt(2.5)
    assert m.cnr(roi, ref) == pytest.approx(6 / math.sqrt(2.5))  # 3.7947
    assert math.isnan(m.cnr(roi[:4], ref))  # 4 ROI voxels
    assert math.isnan(m.cnr(roi, [10] * 6))  # sd(R) = 0


def test_snr():
    # 100 / sqrt(2.5) = 63.246 (sd of 1..5 with ddof=1 is sqrt(2.5))
    assert m.snr([100] * 5, [1, 2, 3, 4, 5, nan]) == pytest.approx(100 / math.sqrt(2.5))
    assert math.isnan(m.snr([100] * 5, [1, 2, 3]))


# --- slice-wise LC method ----------------------------------------------------

def _slab():
    """4 x 4 x 4 image: ROI in row 0, reference in row 3, slice axis 2."""
    img = np.full((4, 4, 4), 50.0)
    roi = np.zeros(img.shape, dtype=bool)
    ref = np.zeros(img.shape, dtype=bool)
    roi[0, :, :] = True  # 4 ROI voxels per slice
    ref[3, :, :] = True  # 4 reference voxels per slice ...
    ref[2, 0, :] = True  # ... plus one: 5
    # slice 0: ROI 200, 150, 140, 100 -> top 3 mean 490/3; ref 90, 100, 100, 110, 120 -> median 100
    img[0, :, 0] = [200, 150, 140, 100]
    img[3, :, 0] = [90, 100, 100, 110]
    img[2, 0, 0] = 120
    # slice 1: no reference voxels
    ref[:, :, 1] = False
    # slice 2: ROI 130, 130, 130, NaN -> 130; ref all 80 -> CR 50/80
    img[0, :, 2] = [130, 130, 130, nan]
    img[3, :, 2] = 80
    img[2, 0, 2] = 80
    # slice 3: only 2 finite ROI voxels, fewer than n_max = 3
    img[0, :, 3] = [nan, nan, 300, 300]
    return img, roi, ref


def test_slice_max_cr():
    img, roi, ref = _slab()
    out = m.slice_max_cr(img, roi, ref)
    # slice 0: (490/3 - 100) / 100 = 0.6333; slice 2: (130 - 80) / 80 = 0.625
    np.testing.assert_allclose(out, [(490 / 3 - 100) / 100, nan, 0.625, nan])


def test_slice_max_cr_axis_and_stat():
    img, roi, ref = _slab()
    # the same data with the slice axis first must give the same profile
    t = lambda a: np.moveaxis(a, 2, 0)  # noqa: E731
    out = m.slice_max_cr(t(img), t(roi), t(ref), axis=0)
    np.testing.assert_allclose(out, [(490 / 3 - 100) / 100, nan, 0.625, nan])
    # slice 0 with the mean reference: (90+100+100+110+120)/5 = 104
    out = m.slice_max_cr(img, roi, ref, stat="mean")
    assert out[0] == pytest.approx((490 / 3 - 104) / 104)
    # min_voxels=6 > 5 reference voxels per slice: everything NaN
    assert np.all(np.isnan(m.slice_max_cr(img, roi, ref, min_voxels=6)))


def test_slice_max_cr_skips_the_tips_of_the_roi():
    img, roi, ref = _slab()
    roi[1, :, 0] = True  # slice 0 now has 8 ROI voxels (the added ones at 50), the others 4
    # default fraction 0.5: 4 >= 0.5 * 8, nothing changes
    np.testing.assert_allclose(m.slice_max_cr(img, roi, ref), [(490 / 3 - 100) / 100, nan, 0.625, nan])
    # fraction 0.6: slices with 4 < 4.8 voxels are left out
    np.testing.assert_allclose(m.slice_max_cr(img, roi, ref, min_area_fraction=0.6),
                               [(490 / 3 - 100) / 100, nan, nan, nan])


def test_split_thirds():
    # 6 slices: caudal (1,2) 1.5, middle (3,4) 3.5, rostral (5,6) 5.5
    assert m.split_thirds([1, 2, 3, 4, 5, 6]) == (5.5, 3.5, 1.5)
    # 7 finite slices 1..7 -> 2/3/2: caudal 1.5, middle (3+4+5)/3 = 4, rostral 6.5
    assert m.split_thirds([nan, 1, 2, nan, 3, 4, 5, 6, 7]) == (6.5, 4.0, 1.5)
    # 8 slices -> 3/2/3: caudal 2, middle 4.5, rostral 7
    assert m.split_thirds(np.arange(1, 9)) == (7.0, 4.5, 2.0)
    assert all(math.isnan(v) for v in m.split_thirds([1, nan, 2]))


# --- MT ----------------------------------------------------------------------

def test_mtr_and_enhancement():
    on = np.array([50, 60, 1, nan])
    off = np.array([100, 80, 0, 100])
    # 100*(100-50)/100 = 50, 100*(80-60)/80 = 25, off = 0 -> NaN, on NaN -> NaN
    np.testing.assert_allclose(m.mtr(on, off), [50, 25, nan, nan])
    # 50/100, 60/80
    np.testing.assert_allclose(m.mt_enhancement(on, off), [0.5, 0.75, nan, nan])
    # off below eps is background, not tissue
    assert np.isnan(m.mtr([1.0], [0.5], eps=1.0)).all()
    # off == eps is excluded too (off <= eps)
    assert np.isnan(m.mt_enhancement([1.0], [1.0], eps=1.0)).all()


# --- reliability and effect size ---------------------------------------------

SHROUT_FLEISS_TABLE2 = [
    [9, 2, 5, 8],
    [6, 1, 3, 2],
    [8, 4, 6, 8],
    [7, 1, 2, 6],
    [10, 5, 6, 9],
    [6, 2, 4, 7],
]


def test_mt_tissue_mask():
    # ref MTR 40 -> tissue above 20 %: CSF (3), half-CSF (18) out; NM (30), WM (42) in; NaN out
    mtr_map = np.array([3.0, 18.0, 30.0, 42.0, np.nan])
    assert m.mt_tissue_mask(mtr_map, 40.0).tolist() == [False, False, True, True, False]
    assert m.mt_tissue_mask(mtr_map, 40.0, fraction=0.25).tolist() == [False, True, True, True, False]
    assert not m.mt_tissue_mask(mtr_map, float("nan")).any()


def test_two_way_mean_squares_by_hand():
    # grand mean 2.75; row means 1.5, 4 -> BMS = 2·(1.25² + 1.25²) / 1 = 6.25;
    # column means 2, 3.5 -> JMS = 2·(0.75² + 0.75²) / 1 = 2.25; total SS 8.75 -> EMS 0.25
    assert m.two_way_mean_squares([[1.0, 2.0], [3.0, 5.0]]) == pytest.approx((2, 2, 6.25, 2.25, 0.25))
    n, k, bms, _, _ = m.two_way_mean_squares([[1.0, 2.0], [np.nan, 5.0], [3.0, 5.0]])
    assert (n, k, bms) == (2, 2, pytest.approx(6.25))  # the incomplete subject is dropped
    assert math.isnan(m.two_way_mean_squares([[1.0, 2.0]])[2])


def test_icc_shrout_fleiss_table2():
    # n = 6, k = 4, grand mean 127/24; BMS = 11.24, JMS = 32.49, EMS = 1.02
    # ICC(2,1) = (11.2417 - 1.0194) / (11.2417 + 3*1.0194 + 4*(32.4861 - 1.0194)/6) = 0.2898
    assert m.icc_2_1(SHROUT_FLEISS_TABLE2) == pytest.approx(0.29, abs=0.005)


def test_icc_absolute_agreement_penalises_offset():
    # session 2 = session 1 + 1. Row means 1.5, 2.5, 3.5; grand 2.5; column means 2, 3
    # SSR = 2*(1+0+1) = 4 -> BMS 2; SSC = 3*(0.25+0.25) = 1.5 -> JMS 1.5; SST = 5.5 -> SSE 0
    # ICC = (2 - 0) / (2 + 0 + 2*(1.5 - 0)/3) = 2/3 (a consistency ICC would say 1)
    data = [[1, 2], [2, 3], [3, 4]]
    assert m.icc_2_1(data) == pytest.approx(2 / 3)
    # a subject with a missing session is dropped
    assert m.icc_2_1(data + [[nan, 9]]) == pytest.approx(2 / 3)
    assert m.icc_2_1([[1, 1], [2, 2], [3, 3]]) == pytest.approx(1.0)
    assert math.isnan(m.icc_2_1([[1, 2]]))


def test_hedges_g():
    # means 2 and 4, both sd 1 -> pooled sd 1, d = -2; J = 1 - 3/(4*6 - 9) = 0.8; g = -1.6
    assert m.hedges_g([1, 2, 3], [3, 4, 5]) == pytest.approx(-1.6)
    assert m.hedges_g([3, 4, 5, nan], [1, 2, 3]) == pytest.approx(1.6)
    # unequal sizes: a = 1,3 (mean 2, var 2), b = 2,4,6 (mean 4, var 4)
    # pooled var = (1*2 + 2*4)/3 = 10/3; d = -2/sqrt(10/3) = -1.0954; J = 1 - 3/11; g = -0.7966
    assert m.hedges_g([1, 3], [2, 4, 6]) == pytest.approx(-2 / math.sqrt(10 / 3) * (8 / 11))
    assert math.isnan(m.hedges_g([1], [2, 3]))
    assert math.isnan(m.hedges_g([1, 1], [1, 1]))
    # a given (e.g. covariate-adjusted) difference standardised by the groups' pooled sd
    assert m.hedges_g([1, 2, 3], [3, 4, 5], difference=-1.0) == pytest.approx(-0.8)


def _toy_nucleus(sigma, seed, cr=0.2):
    """A disk nucleus (radius 5 voxels, 6 slices) of contrast ``cr`` against a flat 100,
    a 20 x 20 search region around it, white Gaussian noise of sd ``sigma``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:40, :40]
    disk = ((yy - 20) ** 2 + (xx - 20) ** 2) <= 25
    clean = np.where(disk[..., None], 100 * (1 + cr), 100.0) * np.ones((1, 1, 6))
    roi = np.zeros(clean.shape, bool)
    roi[10:30, 10:30, :] = True
    return clean + rng.normal(0, sigma, clean.shape), roi, int(disk.sum()) * 6


def test_inplane_neighbour_mean_by_hand():
    img = np.arange(9, dtype=float).reshape(3, 3, 1)
    s = m.inplane_neighbour_mean(img)
    # centre: the mean of the 8 others = (36 - 4) / 8; corner (0,0): neighbours 1, 3, 4
    assert s[1, 1, 0] == pytest.approx(32 / 8)
    assert s[0, 0, 0] == pytest.approx((1 + 3 + 4) / 3)
    # NaN neighbours are left out; a voxel with no finite neighbour is NaN
    img[0, 1, 0] = nan
    assert m.inplane_neighbour_mean(img)[0, 0, 0] == pytest.approx((3 + 4) / 2)
    assert math.isnan(m.inplane_neighbour_mean(np.ones((1, 1, 1)))[0, 0, 0])
    # in plane only: slices along the slice axis do not mix
    two = np.stack([np.zeros((3, 3)), np.full((3, 3), 10.0)], axis=2)
    assert m.inplane_neighbour_mean(two)[1, 1, 1] == 10.0
    assert m.inplane_neighbour_mean(np.moveaxis(two, 2, 0), slice_axis=0)[1, 1, 1] == 10.0


def test_cr_top_volume_by_scores_by_hand():
    vals = np.array([100, 150, 120, 110, 130.0])
    scores = np.array([5, 1, 4, 3, 2.0])  # chooses 100 and 120, not the brightest
    assert m.cr_top_volume(vals, 100, 2, 1.0, min_voxels=1, scores=scores) == pytest.approx(0.1)
    assert m.cr_top_volume(vals, 100, 2, 1.0, min_voxels=1) == pytest.approx(0.4)
    scores[0] = nan  # a voxel without a score is left out
    assert m.cr_top_volume(vals, 100, 2, 1.0, min_voxels=1, scores=scores) == pytest.approx(0.15)
    with pytest.raises(ValueError):
        m.cr_top_volume(vals, 100, 2, 1.0, scores=scores[:3])


@pytest.mark.parametrize("sigma", [4.0, 12.5])  # SNR 25 and 8 against the reference (100)
def test_neighbour_selection_is_unbiased_where_brightest_voxels_are_not(sigma):
    """The mean over 40 noise draws of the neighbour-selected CR is within 10 % of the truth
    at both noise levels; the brightest-voxel mean of the same draws is biased at the low SNR."""
    true_cr = 0.2
    new, old = [], []
    for seed in range(40):
        img, roi, nvox = _toy_nucleus(sigma, seed, true_cr)
        n = nvox // 3  # a volume below the nucleus's, as the profiles choose
        scores = m.inplane_neighbour_mean(img)[roi]
        new.append(m.cr_top_volume(img[roi], 100, n, 1.0, scores=scores))
        old.append(m.cr_top_volume(img[roi], 100, n, 1.0))
    assert abs(np.mean(new) / true_cr - 1) < 0.10
    if sigma > 10:
        assert np.mean(old) / true_cr > 1.5  # brightest voxels: +0.15 at SNR 8


def test_slice_max_cr_by_scores():
    img = np.full((4, 4, 1), 100.0)
    img[0, 0, 0] = 200  # an isolated bright voxel: noise, not nucleus
    img[2:4, 2:4, 0] = 120  # a 2 x 2 nucleus
    roi = np.ones_like(img, bool)
    ref = np.ones_like(img, bool)
    brightest = m.slice_max_cr(img, roi, ref, n_max=1, min_voxels=1)
    chosen = m.slice_max_cr(img, roi, ref, n_max=1, min_voxels=1, scores=m.inplane_neighbour_mean(img))
    assert brightest[0] == pytest.approx(1.0)  # (200 - 100) / 100
    assert chosen[0] == pytest.approx(0.2)  # a nucleus voxel: its neighbours are the brightest


def test_noise_sd_from_one_image():
    rng = np.random.default_rng(0)
    yy = np.mgrid[:60, :60][0]
    smooth = 500 + 2.0 * yy  # a gradient: tissue that is not flat
    img = (smooth[..., None] + rng.normal(0, 10.0, (60, 60, 4)))
    mask = np.ones(img.shape, bool)
    assert m.noise_sd(img, mask) == pytest.approx(10.0, rel=0.05)
    assert math.isnan(m.noise_sd(img, np.zeros_like(mask)))
    # a voxel whose neighbourhood reaches outside the image or a NaN is not used
    img[5, 5, 0] = nan
    assert np.isfinite(m.noise_sd(img, mask))


# --- mtr_nucleus ----------------------------------------------------------------

def _line_region(deviation):
    """11 voxels: 9 of surrounding tissue exactly on the line s = 40 - 10 t (t = 0..8), and 2
    of nucleus at t = 4 (the mean of t, where a point does not tilt a least-squares line)
    whose neighbour-mean MTR lies ``deviation`` off it. Own MTRs differ from the scores."""
    t = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 4, 4], float)
    s = 40 - 10 * t
    s[9:] += deviation
    m_own = np.array([41, 30, 19, 11, 0, -9, -21, -30, -41, 21, 23], float) + (deviation > 0) * 40
    return m_own, s, t


def test_mtr_nucleus_by_hand_both_signs():
    # The fit through all 11 points: slope -10 (the nucleus sits at mean t), intercept
    # shifted by 2 * deviation / 11. Residuals minus their median (a tissue voxel's): 0 for
    # the 9 tissue voxels, ``deviation`` for the 2 nucleus voxels. n = 2 voxels (2 mm3 of
    # 1 mm3): the side that deviates more is the nucleus's, whatever the sign, and the value
    # is the mean of its voxels' own MTR.
    for deviation, expected in ((-6.0, (21 + 23) / 2), (+6.0, (61 + 63) / 2)):
        m_own, s, t = _line_region(deviation)
        assert m.mtr_nucleus(m_own, s, t, 2.0, 1.0, min_voxels=2) == pytest.approx(expected)
        order = np.random.default_rng(0).permutation(11)  # voxel order does not matter
        assert m.mtr_nucleus(m_own[order], s[order], t[order], 2.0, 1.0, min_voxels=2) == pytest.approx(expected)


def test_mtr_nucleus_nan_and_too_small_a_region():
    m_own, s, t = _line_region(-6.0)
    # non-finite voxels are left out: one tissue voxel's own MTR missing changes nothing here
    m_nan = m_own.copy()
    m_nan[0] = nan
    assert m.mtr_nucleus(m_nan, s, t, 2.0, 1.0, min_voxels=2) == pytest.approx(22.0)
    # 3 voxels asked for: the region must hold 4 x 3 = 12 > 11 voxels -> n/a
    assert math.isnan(m.mtr_nucleus(m_own, s, t, 3.0, 1.0, min_voxels=2))
    # a constant MT-off: the line is flat at the mean score
    assert m.mtr_nucleus([10, 10, 10, 10, 10, 10, 10, 10, 50], [0] * 8 + [9], [1.0] * 9, 1.0, 1.0,
                         min_voxels=1) == 50.0
    with pytest.raises(ValueError):
        m.mtr_nucleus([1, 2], [1, 2], [1], 1.0, 1.0)


def test_simex_of_a_second_moment_is_the_moment_correction():
    """T(I) = mean(I^2) reads sigma^2 high on I = mu + noise: E T(I + sqrt(z) sigma Z) =
    mean(mu^2) + (1 + z) sigma^2, a line in z, so SIMEX gives mean(mu^2) (here 100)."""
    rng = np.random.default_rng(3)
    img = 10.0 + 2.0 * rng.standard_normal(20000)
    naive = float(np.mean(img ** 2))
    assert naive == pytest.approx(104.0, abs=0.5)
    assert m.simex(lambda x: np.mean(x ** 2), img, 2.0) == pytest.approx(100.0, abs=0.5)
    # reproducible (the draws come from the seed), elementwise for an array estimate
    two = m.simex(lambda x: np.array([np.mean(x ** 2), np.mean(x)]), img, 2.0)
    assert two[0] == pytest.approx(m.simex(lambda x: np.mean(x ** 2), img, 2.0), rel=1e-12)
    assert two[1] == pytest.approx(np.mean(img), abs=0.02)  # a mean has no noise bias
    # a constant estimate stays; without a noise sd or an estimate there is nothing to extrapolate
    assert m.simex(lambda x: 5.0, img, 2.0) == pytest.approx(5.0)
    assert math.isnan(m.simex(lambda x: np.mean(x), img, nan))
    assert math.isnan(m.simex(lambda x: nan, img, 2.0))
    # a NaN element of an array estimate stays NaN, the others are extrapolated
    out = m.simex(lambda x: np.array([nan, np.mean(x)]), img, 2.0)
    assert math.isnan(out[0]) and np.isfinite(out[1])


def test_inplane_neighbour_mean_at_distance_2_by_hand():
    """Distance 2: the ring of 16 voxels two steps away in plane, not the 8 nearest."""
    img = np.zeros((9, 9, 1))
    img[4, 4, 0] = 16.0
    near, ring = m.inplane_neighbour_mean(img), m.inplane_neighbour_mean(img, distance=2)
    assert near[3, 4, 0] == pytest.approx(2.0) and near[2, 4, 0] == 0.0  # 16 / 8 beside it
    assert ring[3, 4, 0] == 0.0 and ring[2, 4, 0] == pytest.approx(1.0)  # 16 / 16 two steps away
    assert ring[2, 2, 0] == pytest.approx(1.0) and ring[4, 4, 0] == 0.0  # the voxel itself left out
    edge = np.zeros((9, 9, 1))
    edge[2, 4, 0] = 16.0
    # at the image edge only the 9 ring voxels inside count
    assert m.inplane_neighbour_mean(edge, distance=2)[0, 4, 0] == pytest.approx(16.0 / 9)
    with pytest.raises(ValueError):
        m.inplane_neighbour_mean(img, distance=0)


def _zero_filled_noise(shape, sigma, rng, factor=2):
    """Noise of sd ``sigma`` as a scanner's zero-filling makes it: white noise on a grid
    ``factor`` times coarser in plane, its spectrum padded with zeros to ``shape``."""
    nx, ny = shape[0] // factor, shape[1] // factor
    spectrum = np.fft.fftshift(np.fft.fft2(rng.standard_normal((nx, ny) + shape[2:]), axes=(0, 1)), axes=(0, 1))
    padded = np.zeros(shape, complex)
    x0, y0 = (shape[0] - nx) // 2, (shape[1] - ny) // 2
    padded[x0:x0 + nx, y0:y0 + ny] = spectrum
    fine = np.real(np.fft.ifft2(np.fft.ifftshift(padded, axes=(0, 1)), axes=(0, 1)))
    return sigma * fine / fine.std()


def test_neighbour_distance_tells_zero_filled_noise_from_independent_noise():
    """Independent noise: distance 1, and the 8 nearest estimate sigma. 2 x zero-filled noise:
    the 8 nearest share the voxel's noise (their estimate is less than half of sigma), the
    ring of 16 does not (within 5 %), and the distance is 2."""
    rng = np.random.default_rng(5)
    mask = np.ones((60, 60, 4), bool)
    white = 100 + rng.normal(0, 5.0, mask.shape)
    assert m.neighbour_distance(white, mask) == 1
    assert m.noise_sd(white, mask) == pytest.approx(5.0, rel=0.05)
    assert m.noise_sd(white, mask, distance=2) == pytest.approx(5.0, rel=0.05)
    filled = 100 + _zero_filled_noise(mask.shape, 5.0, rng)
    assert m.neighbour_distance(filled, mask) == 2
    assert m.noise_sd(filled, mask) < 2.5
    assert m.noise_sd(filled, mask, distance=2) == pytest.approx(5.0, rel=0.05)
    assert m.neighbour_distance(np.full(mask.shape, nan), mask) == 1  # nothing to judge by


def _fine_band_nucleus(noise, seed, cr=0.3):
    """``_band_nucleus`` on a grid twice as fine in plane (the same nucleus in a zero-filled
    reconstruction: 6 x 30 voxels, blur 1.4 voxels, a 40 x 40 search region), with noise of
    sd ``noise`` zero-filled from the acquired grid. Returns (image, search region,
    reference region, noise-free image, voxels in the band)."""
    from scipy import ndimage

    yy, xx = np.mgrid[:60, :60]
    band = ((yy >= 27) & (yy < 33) & (np.abs(xx - 30) < 15)).astype(float)
    clean = (100 * (1 + cr * ndimage.gaussian_filter(band, 1.4)))[..., None] * np.ones((1, 1, 4))
    roi = np.zeros(clean.shape, bool)
    roi[10:50, 10:50] = True
    ref = np.zeros(clean.shape, bool)
    ref[:, :8] = True
    img = clean + _zero_filled_noise(clean.shape, noise, np.random.default_rng(seed))
    return img, roi, ref, clean, int(band.sum()) * 4


@pytest.mark.parametrize("snr", [12.0, 6.0])
def test_neighbour_choice_on_zero_filled_noise_takes_the_ring_beyond_the_nearest(snr):
    """With noise that adjacent voxels share, the 8 nearest neighbours carry part of a voxel's
    own noise and the neighbour choice reads high again (more than 20 % at SNR 6); the ring
    of 16 that ``neighbour_distance`` chooses there reads within 10 % of the noise-free value
    (mean of 20 noise draws)."""
    _, roi, ref, clean, nvox = _fine_band_nucleus(0.0, 0)
    n = nvox // 3
    truth = m.cr_top_volume(clean[roi], 100, n, 1.0)
    near, chosen = [], []
    for seed in range(20):
        img = _fine_band_nucleus(100.0 / snr, seed)[0]
        distance = m.neighbour_distance(img, ref)
        assert distance == 2
        near.append(m.cr_top_volume(img[roi], 100, n, 1.0, scores=m.inplane_neighbour_mean(img)[roi]))
        chosen.append(m.cr_top_volume(img[roi], 100, n, 1.0, scores=m.inplane_neighbour_mean(img, 2, distance)[roi]))
    assert abs(np.mean(chosen) / truth - 1) < 0.10
    if snr < 10:
        assert np.mean(near) / truth > 1.2


def _band_nucleus(sigma, seed, cr=0.3):
    """A 3 x 15 voxel band nucleus blurred by a 0.7 voxel Gaussian (its partial-volume rim),
    4 slices, contrast ``cr`` at its core against a flat 100, a 20 x 20 search region, white
    noise of sd ``sigma``. Returns (image, search region, noise-free image, voxels in the band)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:30, :30]
    band = ((np.abs(yy - 15) <= 1) & (np.abs(xx - 15) <= 7)).astype(float)
    clean = (100 * (1 + cr * ndimage.gaussian_filter(band, 0.7)))[..., None] * np.ones((1, 1, 4))
    roi = np.zeros(clean.shape, bool)
    roi[5:25, 5:25, :] = True
    return clean + rng.normal(0, sigma, clean.shape), roi, clean, int(band.sum()) * 4


@pytest.mark.parametrize("sigma", [5.0, 20.0])  # SNR 20 and 5 against the reference (100)
def test_simex_takes_the_neighbour_choice_to_no_noise(sigma):
    """The neighbour-chosen top-volume CR falls as the noise grows (it misses more of the
    nucleus); its SIMEX estimate does not: within 5 % of the noise-free value at both noise
    levels, while the uncorrected estimate reads more than 7 % low at the higher one."""
    _, roi, clean, nvox = _band_nucleus(0.0, 0)
    n = nvox // 3
    truth = m.cr_top_volume(clean[roi], 100, n, 1.0)  # the same voxels without noise

    def neighbour_cr(img):
        return m.cr_top_volume(img[roi], 100, n, 1.0, scores=m.inplane_neighbour_mean(img)[roi])
    plain, corrected = [], []
    for seed in range(24):
        img = _band_nucleus(sigma, seed)[0]
        plain.append(neighbour_cr(img))
        corrected.append(m.simex(neighbour_cr, img, sigma, n_draws=20))
    assert abs(np.mean(corrected) / truth - 1) < 0.05
    if sigma > 10:
        assert np.mean(plain) / truth < 0.93


def test_slice_max_cr_is_top_mean_against_slice_references():
    rng = np.random.default_rng(0)
    img = 100 + rng.normal(0, 5, (6, 7, 5))
    roi = np.zeros(img.shape, bool)
    roi[1:4, 1:4, :] = True
    ref = ~roi
    top = m.slice_top_mean(img, roi, axis=2)
    refs = m.slice_references(img, ref, axis=2, stat="median")
    assert np.allclose(m.slice_max_cr(img, roi, ref, axis=2), (top - refs) / refs)
    assert refs[0] == pytest.approx(np.median(img[..., 0][ref[..., 0]]))
    assert top[0] == pytest.approx(np.sort(img[..., 0][roi[..., 0]])[-3:].mean())
    assert np.isnan(m.slice_contrast([1.0, 2.0], [nan, 0.0])).all()


# --- box_neighbour_mean, through-slice noise -----------------------------------

def test_box_neighbour_mean_by_hand():
    img = np.arange(27, dtype=float).reshape(3, 3, 3)
    s = m.box_neighbour_mean(img)
    # centre (value 13): the mean of the 26 others = (351 - 13) / 26 = 13
    assert s[1, 1, 1] == pytest.approx((351 - 13) / 26)
    # corner (0,0,0): its 7 neighbours 1, 3, 4, 9, 10, 12, 13
    assert s[0, 0, 0] == pytest.approx((1 + 3 + 4 + 9 + 10 + 12 + 13) / 7)
    # across slices, unlike inplane_neighbour_mean: a bright adjacent slice lifts the score
    two = np.stack([np.zeros((3, 3)), np.zeros((3, 3)), np.full((3, 3), 26.0)], axis=2)
    assert m.box_neighbour_mean(two)[1, 1, 1] == pytest.approx(9 * 26 / 26)
    assert m.inplane_neighbour_mean(two)[1, 1, 1] == 0.0
    # NaN neighbours are left out; a voxel with no finite neighbour is NaN
    img[0, 0, 1] = nan
    assert m.box_neighbour_mean(img)[0, 0, 0] == pytest.approx((3 + 4 + 9 + 10 + 12 + 13) / 6)
    assert math.isnan(m.box_neighbour_mean(np.ones((1, 1, 1)))[0, 0, 0])


def _toy_lc(sigma, seed, cr=0.3):
    """A column 2 x 2 voxels across running through 12 slices (the LC in 0.5 mm pixels) at CR
    ``cr`` against 100, in a 10 x 10 search region per slice; reference: two edge columns."""
    yy, xx = np.mgrid[:16, :16]
    core = ((yy >= 8) & (yy < 10) & (xx >= 8) & (xx < 10)).astype(float)
    clean = 100 * (1 + cr * core)[..., None] * np.ones((1, 1, 12))
    roi = np.zeros(clean.shape, bool)
    roi[3:13, 3:13] = True
    ref = np.zeros(clean.shape, bool)
    ref[:, :2] = True
    return clean + np.random.default_rng(seed).normal(0, sigma, clean.shape), roi, ref


@pytest.mark.parametrize("sigma", [3.0, 12.5])  # SNR 33 and 8 against the reference (100)
def test_box_choice_finds_a_thin_column_where_the_inplane_choice_loses_it(sigma):
    """The mean over 40 draws of the slice-wise CR chosen by the 3 x 3 x 3 box is within 10 %
    of the truth at both noise levels; chosen by the 8 in-plane neighbours (2 of them in the
    column, 6 outside) it loses the column at the low SNR, and the brightest voxels read high."""
    true_cr = 0.3
    box, inplane, brightest = [], [], []
    for seed in range(40):
        img, roi, ref = _toy_lc(sigma, seed, true_cr)

        def cr(scores):
            return np.nanmean(m.slice_max_cr(img, roi, ref, scores=scores))
        box.append(cr(m.box_neighbour_mean(img)))
        inplane.append(cr(m.inplane_neighbour_mean(img)))
        brightest.append(cr(None))
    assert abs(np.mean(box) / true_cr - 1) < 0.10
    if sigma > 10:
        assert np.mean(inplane) / true_cr < 0.6  # 0.48 of the truth
        assert np.mean(brightest) / true_cr > 1.15  # 1.24


def _slice_filled_noise(shape, sigma, rng, factor=2):
    """``_zero_filled_noise`` through the slices: white noise on ``factor`` times fewer
    slices, its spectrum along the slice axis padded with zeros to ``shape``."""
    nz = shape[2] // factor
    spectrum = np.fft.fftshift(np.fft.fft(rng.standard_normal(shape[:2] + (nz,)), axis=2), axes=2)
    padded = np.zeros(shape, complex)
    z0 = (shape[2] - nz) // 2
    padded[:, :, z0:z0 + nz] = spectrum
    fine = np.real(np.fft.ifft(np.fft.ifftshift(padded, axes=2), axis=2))
    return sigma * fine / fine.std()


def test_slices_share_noise_tells_a_slab_interpolated_through_its_slices():
    """Independent noise: the across-slice estimate is sigma (within 5 %) and the slices do
    not share it. Noise zero-filled 2 x through the slices: the estimate falls to about 0.4
    sigma and they do; in-plane noise_sd still reads sigma. Too few slices: shared (unknown)."""
    rng = np.random.default_rng(7)
    mask = np.ones((40, 40, 24), bool)
    white = 100 + rng.normal(0, 5.0, mask.shape)
    assert m.through_slice_noise_sd(white, mask) == pytest.approx(5.0, rel=0.05)
    assert not m.slices_share_noise(white, mask)
    filled = 100 + _slice_filled_noise(mask.shape, 5.0, rng)
    assert m.noise_sd(filled, mask) == pytest.approx(5.0, rel=0.05)
    assert m.through_slice_noise_sd(filled, mask) < 0.5 * 5.0
    assert m.slices_share_noise(filled, mask)
    assert m.slices_share_noise(white[:, :, :2], mask[:, :, :2])
    # the slice axis is the one given
    assert not m.slices_share_noise(np.moveaxis(filled, 2, 0), np.moveaxis(mask, 2, 0), slice_axis=1)
