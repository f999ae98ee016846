"""The float32 activations are rational approximations: check their accuracy and NaN behaviour."""
import numpy as np
from numba import njit

from qlnumba.config import JIT
from qlnumba.kernels.activations import flush, sigmoid, tanh, tanh_rational_coefficients


@njit(**JIT)
def apply(out, x, which):
    for i in range(x.size):
        out[i] = sigmoid(x[i]) if which == 0 else tanh(x[i])


def run(x, which):
    out = np.empty_like(x)
    apply(out, x, which)
    return out


def test_float32_approximations_are_accurate_everywhere():
    x = np.linspace(-40, 40, 400_001).astype(np.float32)
    x64 = x.astype(np.float64)
    assert np.abs(run(x, 1) - np.tanh(x64)).max() < 4e-7
    assert np.abs(run(x, 0) - 1 / (1 + np.exp(-x64))).max() < 2e-7
    assert run(np.array([30.0], np.float32), 1)[0] == 1.0          # saturates exactly
    assert run(np.array([-30.0], np.float32), 0)[0] == 0.0


def test_float64_uses_exact_math():
    x = np.linspace(-20, 20, 10_001)
    assert np.abs(run(x, 1) - np.tanh(x)).max() < 1e-15
    assert np.abs(run(x, 0) - 1 / (1 + np.exp(-x))).max() < 1e-15


def test_nan_propagates_and_infinities_saturate():
    for dt in (np.float32, np.float64):
        x = np.array([np.nan, np.inf, -np.inf], dt)
        t, s = run(x, 1), run(x, 0)
        assert np.isnan(t[0]) and np.isnan(s[0])
        assert t[1:].tolist() == [1.0, -1.0] and s[1:].tolist() == [1.0, 0.0]


def test_coefficients_come_from_the_continued_fraction():
    # 1 level: tanh x ≈ x / (1 + x²/3) = x * 3 / (3 + x²)
    N, D = tanh_rational_coefficients(1)
    assert np.allclose(N, [1.0]) and np.allclose(D, [1.0, 1 / 3])


@njit(**JIT)
def apply_flush(out, x):
    for i in range(x.size):
        out[i] = flush(x[i])


def test_flush_zeroes_only_values_below_the_flush_level():
    """flush(x) is 0 where 0 < |x| < tiny / eps (the subnormals and just above), x elsewhere,
    NaN and inf included."""
    for dt in (np.float32, np.float64):
        info = np.finfo(dt)
        level = info.tiny / info.eps
        x = np.array([0.0, info.smallest_subnormal, -info.tiny / 2, info.tiny, -level / 2,
                      level, -level, 1e-3, -1.0, np.inf, -np.inf, np.nan], dt)
        out = np.empty_like(x)
        apply_flush(out, x)
        want = np.where(np.abs(x) < level, 0, x).astype(dt)       # NaN compares False: kept
        np.testing.assert_array_equal(out, want, err_msg=str(dt))
        assert out.dtype == dt
        assert flush(dt(level / 2)) == 0 and flush(dt(level)) == level    # the Python twin agrees
