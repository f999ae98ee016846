"""Scalar activations and their derivatives, inlined into the kernels.

The derivatives take the activation's *output* (what forward saved), as in
scikit-learn's ``neural_network._base``.
"""
import math

from numba import njit


@njit(inline="always")
def sigmoid(x):
    # 1 / (1 + e^-x); for x << 0, e^-x overflows to inf and the result is 0, never NaN
    return 1.0 / (1.0 + math.exp(-x))


@njit(inline="always")
def dsigmoid(y):
    # d sigmoid / dx written with y = sigmoid(x)
    return y * (1.0 - y)


@njit(inline="always")
def tanh(x):
    return math.tanh(x)


@njit(inline="always")
def dtanh(y):
    # d tanh / dx written with y = tanh(x)
    return 1.0 - y * y
