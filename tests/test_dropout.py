"""Dropout masks (``qlnumba.layers.dropout_mask``): 16-bit draws, their kernels against
the dense mask, and the drop probability they give."""
import numpy as np
import pytest

from helpers import make_rng
from qlnumba.layers import dropout_mask


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mask_kernels_equal_the_dense_mask(dtype):
    rng = make_rng(31)
    x = rng.standard_normal((4, 7, 5)).astype(dtype)
    mask = dropout_mask(np.random.default_rng(2), x.shape, 0.3, dtype)
    dense = mask.dense(dtype)
    assert set(np.unique(dense)) == {0, mask.scale} and mask.scale.dtype == dtype
    np.testing.assert_array_equal(mask.apply(x), x * dense)
    dx = rng.standard_normal(x.shape).astype(dtype)
    want = dx * dense
    assert mask.backward(dx) is dx
    np.testing.assert_array_equal(dx, want)
    y = x.copy()
    assert mask.apply(y, out=y) is y
    np.testing.assert_array_equal(y, x * dense)
    np.testing.assert_array_equal(mask.apply(np.asfortranarray(x)), x * dense)
    with pytest.raises(ValueError, match="C-contiguous"):
        mask.apply(x, out=np.empty(x.shape, dtype, order="F"))


def test_drop_probability_and_scale():
    """p is kept to within 2^-17; the kept values are scaled so the mean is unchanged."""
    for p in (0.1, 0.3, 0.5, 0.9):
        mask = dropout_mask(np.random.default_rng(3), (1000, 1000), p, np.float64)
        assert abs(mask.threshold / 65536 - p) <= 2 ** -17
        dropped = (mask.bits < mask.threshold).mean()
        assert abs(dropped - p) < 5 * np.sqrt(p * (1 - p) / 1e6)      # five standard errors
        assert mask.scale == 65536 / (65536 - mask.threshold)
        assert abs(mask.dense(np.float64).mean() - 1) < 0.01
    assert dropout_mask(np.random.default_rng(0), (3,), 0.0, np.float32) is None
    assert dropout_mask(None, (3,), 0.5, np.float32) is None           # evaluation
    tiny = dropout_mask(np.random.default_rng(0), (1000,), 1e-7, np.float32)
    assert tiny.threshold == 0 and (tiny.dense(np.float32) == 1).all()
    most = dropout_mask(np.random.default_rng(0), (10,), 1 - 1e-9, np.float32)
    assert most.threshold == 65535 and np.isfinite(most.scale)
