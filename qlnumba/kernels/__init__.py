"""CPU kernels: plain ``@njit`` functions, forward beside backward.

Kernels never validate, never draw random numbers and never touch Python
objects; the layers in :mod:`qlnumba.layers` do all of that.  Argument order
is always: outputs, inputs, parameters, sizes.  Backward kernels only
accumulate (``+=``) into gradient buffers the caller has zeroed.
"""
