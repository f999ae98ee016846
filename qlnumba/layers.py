"""Public recurrent layers: ``QLLSTM`` (LSTM / PSUG / HGR-ASC / QL-LSTM) and ``GRU``.

A layer owns its parameters (``layer.params``, a dict of numpy arrays that
training updates in place), checks its inputs, allocates the buffers the
kernels fill, and stacks layers and directions.  The arithmetic lives in
:mod:`qlnumba.kernels`.

Conventions (the same as PyTorch's ``batch_first=True``):

- ``x`` is (B, T, E); ``lengths`` (B,) gives each row's valid steps.
- ``out`` is (B, T, H * directions), zero at padded positions.
- a state is a dict of arrays of shape (num_layers * directions, B, H), index
  ``layer * directions + direction``; ``n`` (steps into the current block) is
  (num_layers * directions, B) int64.  QL-LSTM keys: h, c, and with hgr m, a, n.
  GRU: h.
- ``dropout`` (as PyTorch's): while training (``forward(..., rng=Generator)``) each layer's
  output but the last is multiplied by an inverted-dropout mask drawn from ``rng`` before
  the next layer reads it; backward multiplies that layer's input gradient by the same mask.
"""
import math
import warnings
from collections import namedtuple

import numpy as np

from .config import row_blocks, threads_region, unit_blocks
from .kernels.dropout import dropout_backward, dropout_forward
from .kernels.gru import gru_backward, gru_backward_split, gru_forward, gru_forward_split
from .kernels.recurrent import (recurrent_backward, recurrent_backward_split, recurrent_forward,
                                recurrent_forward_split)
from .kernels.recurrent_infer import recurrent_infer_rows, recurrent_infer_units
from .kernels.recurrent_units import grad_span_steps, recurrent_backward_units, recurrent_forward_units
from .validate import (check_dtype, check_float_array, check_lengths, check_rng, check_seed,
                       check_size, is_real)

INFER_ROWS_MIN = 16     # QL-LSTM inference splits rows where every thread gets this many


def recurrent_param_count(input_size, hidden_size, psug=True, hgr=True):
    """Parameters of one direction of one recurrent layer (model.md's formulas)."""
    E, H = input_size, hidden_size
    count = H * (E + H) + 9 * H if psug else 4 * H * (E + H) + 4 * H
    if hgr:
        count += 2 * H * H + H
    return count


def check_fraction(value, name):
    """A dropout probability: a real number in [0, 1), as a float."""
    if not (is_real(value) and 0.0 <= value < 1.0):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


class DropoutMask(namedtuple("DropoutMask", "bits threshold scale")):
    """Inverted dropout drawn as 16-bit integers ``bits`` (the array's shape, uint16): a
    value is kept where bits >= threshold = round(p * 65536), and multiplied by scale =
    65536 / (65536 - threshold), so its expectation is unchanged; else it is 0.  The drop
    probability is threshold / 65536, p to within 2^-17.  (One 16-bit draw a value costs
    about half of numpy's float64 uniform draw.)"""

    def apply(self, x, out=None):
        """x with the mask applied, into ``out`` (a new array by default; may be x; C order,
        so that its flat view is itself)."""
        x = np.ascontiguousarray(x)
        out = np.empty_like(x) if out is None else _c_order(out)
        dropout_forward(out.reshape(-1), x.reshape(-1), self.bits.reshape(-1), self.threshold,
                        self.scale)
        return out

    def backward(self, dx):
        """The gradient w.r.t. ``apply``'s x, from dx (C order) w.r.t. its output, in place."""
        dropout_backward(_c_order(dx).reshape(-1), self.bits.reshape(-1), self.threshold,
                         self.scale)
        return dx

    def dense(self, dtype):
        """The mask as numbers: scale where kept, 0 where dropped."""
        return np.where(self.bits >= self.threshold, self.scale, 0).astype(dtype)


def _c_order(a):
    """``a`` itself, checked to be C-contiguous (a kernel writes into its flat view)."""
    if not a.flags.c_contiguous:
        raise ValueError("a dropout mask writes only into C-contiguous arrays")
    return a


def dropout_mask(rng, shape, p, dtype):
    """A ``DropoutMask`` of ``shape`` drawn from ``rng`` (a numpy Generator), drop probability
    p; None when there is nothing to drop (no Generator: evaluation mode, or p = 0)."""
    if rng is None or p == 0.0:
        return None
    threshold = min(int(round(p * 65536)), 65535)
    bits = rng.integers(0, 65536, shape, dtype=np.uint16)
    return DropoutMask(bits, threshold, dtype(65536 / (65536 - threshold)))


def _dummy(ndim, dtype):
    """A zero-size stand-in for a parameter that a switch turns off."""
    return np.zeros((0,) * ndim, dtype=dtype)


def _run(serial, split, args, batch):
    """The row-block kernel (``split``) when set_num_threads asked for several threads,
    else the ``serial`` one.  (The units partition has kernels of its own, called by
    ``_QLCell``.)"""
    bounds = row_blocks(batch)
    if len(bounds) > 2:
        with threads_region(len(bounds) - 1):
            split(*args, bounds)
    else:
        serial(*args)


class _BufferPool:
    """Flat arrays reused from call to call for what forward saves and backward's workspace.

    Fresh zeroed buffers cost page faults on every call (about a fifth of a
    forward pass); these grow only when a larger batch comes.  They start
    zeroed and the kernels write only finite values, so a stale entry at a
    padded position is always finite, and there it is only ever multiplied by
    a zero gradient.  A buffer is valid until the next forward of its cell.
    """

    def __init__(self, dtype):
        self.dtype, self.flat = dtype, {}

    def take(self, name, *shape):
        size = int(np.prod(shape))
        flat = self.flat.get(name)
        if flat is None or flat.size < size:
            flat = self.flat[name] = np.zeros(max(size, 1), self.dtype)
        return flat[:size].reshape(shape)


class _QLCell:
    """One direction of one QL-LSTM layer: parameter set-up and kernel calls."""

    def __init__(self, params, prefix, input_size, hidden_size, psug, hgr, block_size,
                 reverse, dtype, rng):
        E, H = input_size, hidden_size
        G = H if psug else 4 * H
        self.prefix, self.H, self.psug, self.hgr = prefix, H, psug, hgr
        self.K, self.reverse, self.dtype = block_size, reverse, dtype
        self.params = params
        self.pool = _BufferPool(dtype)
        bound = 1.0 / math.sqrt(H)
        uniform = lambda *shape: rng.uniform(-bound, bound, shape).astype(dtype)
        params[prefix + "W"] = uniform(G, E)
        params[prefix + "U"] = uniform(G, H)
        b = np.zeros(G, dtype=dtype)
        if not psug:
            b[H:2 * H] = 1.0                               # forget-gate bias 1
        params[prefix + "b"] = b
        if psug:
            params[prefix + "gamma"] = np.repeat(np.array([[1.0], [-1.0], [1.0], [1.0]], dtype), H, 1)
            beta = np.zeros((4, H), dtype=dtype)
            beta[1] = 1.0                                  # β_f = 1
            params[prefix + "beta"] = beta
        if hgr:
            params[prefix + "V_s"] = uniform(H, H)
            params[prefix + "V_m"] = uniform(H, H)
            params[prefix + "b_r"] = np.zeros(H, dtype=dtype)
        self.cache = None

    def _p(self, name, ndim):
        return self.params.get(self.prefix + name, _dummy(ndim, self.dtype))

    def _forward_params(self):
        """The forward kernels' last arguments: W, U, b, γ, β, V_s, V_m, b_r, K, psug, hgr, reverse."""
        return (self._p("W", 2), self._p("U", 2), self._p("b", 1),
                self._p("gamma", 2), self._p("beta", 2),
                self._p("V_s", 2), self._p("V_m", 2), self._p("b_r", 1),
                self.K, self.psug, self.hgr, self.reverse)

    def _backward_params(self):
        """The backward kernels' last arguments: W, U, γ, V_s, V_m, K, psug, hgr, reverse."""
        return (self._p("W", 2), self._p("U", 2), self._p("gamma", 2),
                self._p("V_s", 2), self._p("V_m", 2),
                self.K, self.psug, self.hgr, self.reverse)

    def forward(self, x, lengths, st, need_grad=True):
        """Run the kernel; ``st`` (h, c, m, a, n of this cell) is updated in place.

        With ``need_grad=False`` nothing is saved and ``backward`` is not possible:
        the inference kernel runs (``_infer``).  To train, the units partition (on
        any number of threads) runs the unit-major kernels (``recurrent_units.py``);
        the rows partition runs ``recurrent.py``'s serial and row-block kernels.
        """
        if not need_grad:
            return self._infer(x, lengths, st)
        ubounds = unit_blocks(self.H)
        if ubounds is not None:
            return self._forward_units(x, lengths, st, ubounds)
        B, T, _ = x.shape
        H, dt = self.H, self.dtype
        G = self.params[self.prefix + "U"].shape[0]
        NB = (T + self.K - 1) // self.K if self.hgr else 0
        out = np.zeros((B, T, H), dtype=dt)
        buf = self.pool.take
        saved = dict(Z=buf("Z", B, T, G), GATES=buf("GATES", B, T, 4, H), C=buf("C", B, T, H),
                     CPREV=buf("CPREV", B, T, H), HPREV=buf("HPREV", B, T, H),
                     MBLK=buf("MBLK", B, NB + 1 if self.hgr else 0, H), SBLK=buf("SBLK", B, NB, H),
                     RBLK=buf("RBLK", B, NB, H))
        n0 = st["n"].copy()
        args = (out, st["h"], st["c"], st["m"], st["a"], st["n"], *saved.values(),
                x, lengths,
                *self._forward_params())
        _run(recurrent_forward, recurrent_forward_split, args, B)
        self.cache = ("rows", x, lengths, n0, saved)
        return out

    def _forward_units(self, x, lengths, st, ubounds):
        """Forward saving for backward, on the unit-major kernel (hidden units split)."""
        B, T, E = x.shape
        H, buf = self.H, self.pool.take
        NB = (T + self.K - 1) // self.K if self.hgr else 0
        span = grad_span_steps(B, self.params[self.prefix + "U"].shape[0])
        out = np.empty((B, T, H), dtype=self.dtype)        # the kernel writes every position
        saved = dict(order=np.empty(B, np.int64), XS=buf("XS", T * B * E),
                     ZS=buf("ZS", T if self.psug else 0, H, B), GS=buf("GS", T, 4, H, B),
                     CS=buf("CS", T + 1, H, B), THS=buf("THS", T, H, B),
                     HS=buf("HS", -(-T // span), H, span * B),
                     MBLK=buf("MBLK", B, NB + 1 if self.hgr else 0, H), SBLK=buf("SBLK", B, NB, H),
                     RBLK=buf("RBLK", B, NB, H))
        n0 = st["n"].copy()
        with threads_region(len(ubounds) - 1):
            recurrent_forward_units(out, st["h"], st["c"], st["m"], st["a"], st["n"],
                                    *saved.values(), x, lengths,
                                    *self._forward_params(), ubounds)
        self.cache = ("units", x, lengths, n0, saved, ubounds)
        return out

    def _infer(self, x, lengths, st):
        """Forward saving nothing, on the unit-major inference kernel, on every thread.

        With the units partition, LSTM splits the hidden units between threads;
        QL-LSTM splits the batch rows where each thread gets ``INFER_ROWS_MIN``
        rows or more.  Its per-step product (H rows of U, not 4H) is small enough
        that waiting at a barrier every step costs more than the product loses on
        B/P columns.  Measured on 2 threads, float32, with the per-step products on
        ``kernels/tiles.py`` (twenty-seventh session), rows against units in
        tokens/s: 1.16x at (B, T, E, H) = (32, 256, 128, 256) and 1.12x at
        (64, 512, 300, 512); with 10-12 rows a thread 1.17-1.19x at H = 256 but
        0.99-1.00x at H = 512; with 8 rows a thread 0.96x and 0.75x.  (Before the
        tiles, LSTM lost 11-26% and 1-5% this way.)  The rows partition
        always splits rows (on one thread both ways run all rows and units as one part).
        """
        B, T, E = x.shape
        out = np.empty((B, T, self.H), dtype=self.dtype)   # the kernel writes every position
        args = (out, st["h"], st["c"], st["m"], st["a"], st["n"],
                x, lengths,
                *self._forward_params())
        parts = len(row_blocks(B)) - 1
        ubounds = unit_blocks(self.H)
        if ubounds is not None and not (self.psug and B >= INFER_ROWS_MIN * parts):
            with threads_region(len(ubounds) - 1):
                recurrent_infer_units(*args, ubounds)
        else:
            with threads_region(parts):
                recurrent_infer_rows(*args, parts)
        self.cache = None
        return out

    def backward(self, dx, grads, dout, dst):
        """Accumulate into ``dx`` and ``grads``; ``dst`` goes from d(final) to d(initial) state."""
        g = lambda name, ndim: grads.get(self.prefix + name, _dummy(ndim, self.dtype))
        if self.cache[0] == "units":
            return self._backward_units(dx, g, dout, dst)
        _, x, lengths, n0, saved = self.cache
        args = (dx, g("W", 2), g("U", 2), g("b", 1), g("gamma", 2), g("beta", 2),
                g("V_s", 2), g("V_m", 2), g("b_r", 1),
                dst["h"], dst["c"], dst["m"], dst["a"], self.pool.take("DZ", *saved["Z"].shape),
                dout, x, lengths, n0, *saved.values(),
                *self._backward_params())
        _run(recurrent_backward, recurrent_backward_split, args, x.shape[0])

    def _backward_units(self, dx, g, dout, dst):
        _, x, lengths, n0, saved, ubounds = self.cache
        with threads_region(len(ubounds) - 1):
            recurrent_backward_units(dx, g("W", 2), g("U", 2), g("b", 1), g("gamma", 2),
                                     g("beta", 2), g("V_s", 2), g("V_m", 2), g("b_r", 1),
                                     dst["h"], dst["c"], dst["m"], dst["a"],
                                     dout, x, lengths, n0, *saved.values(),
                                     *self._backward_params(), ubounds)


class _GRUCell:
    """One direction of one GRU layer (PyTorch's initialisation: all uniform ±1/sqrt(H))."""

    def __init__(self, params, prefix, input_size, hidden_size, reverse, dtype, rng):
        E, H = input_size, hidden_size
        self.prefix, self.H, self.reverse, self.dtype = prefix, H, reverse, dtype
        self.params = params
        self.pool = _BufferPool(dtype)
        bound = 1.0 / math.sqrt(H)
        for name, shape in (("W", (3 * H, E)), ("U", (3 * H, H)), ("b", (3 * H,)), ("b_U", (3 * H,))):
            params[prefix + name] = rng.uniform(-bound, bound, shape).astype(dtype)
        self.cache = None

    def forward(self, x, lengths, st, need_grad=True):
        """``need_grad`` is accepted for a common interface; the GRU kernel always saves."""
        B, T, _ = x.shape
        H, p, buf = self.H, self.prefix, self.pool.take
        out = np.zeros((B, T, H), dtype=self.dtype)
        saved = dict(GATES=buf("GATES", B, T, 3, H), HN=buf("HN", B, T, H), HPREV=buf("HPREV", B, T, H))
        args = (out, st["h"], buf("ZX", B, T, 3 * H), *saved.values(), x, lengths,
                self.params[p + "W"], self.params[p + "U"], self.params[p + "b"],
                self.params[p + "b_U"], self.reverse)
        _run(gru_forward, gru_forward_split, args, B)
        self.cache = (x, lengths, saved)
        return out

    def backward(self, dx, grads, dout, dst):
        x, lengths, saved = self.cache
        (B, T, _), H, p, buf = x.shape, self.H, self.prefix, self.pool.take
        args = (dx, grads[p + "W"], grads[p + "U"], grads[p + "b"], grads[p + "b_U"], dst["h"],
                buf("DX", B, T, 3 * H), buf("DHN", B, T, H),
                dout, x, lengths, *saved.values(),
                self.params[p + "W"], self.params[p + "U"], self.reverse)
        _run(gru_backward, gru_backward_split, args, x.shape[0])


class _StackedRecurrent:
    """Stacking, directions, validation and state handling shared by QLLSTM and GRU."""

    state_keys = ("h",)          # float state arrays, each (num_layers * directions, B, H)
    has_block_counter = False    # whether the state carries the integer n

    def __init__(self, input_size, hidden_size, num_layers, bidirectional, dtype, seed, device,
                 dropout):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        self.device = device
        self.input_size = check_size(input_size, "input_size")
        self.hidden_size = check_size(hidden_size, "hidden_size")
        self.num_layers = check_size(num_layers, "num_layers")
        self.dropout = check_fraction(dropout, "dropout")
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(f"dropout={self.dropout} does nothing with num_layers=1: it acts "
                          "between stacked layers", stacklevel=3)
        self.dtype = check_dtype(dtype)
        self.bidirectional = bool(bidirectional)
        self.directions = 2 if self.bidirectional else 1
        self.params = {}
        rng = check_seed(seed)
        self._cells = []
        for k in range(self.num_layers):
            E = self.input_size if k == 0 else self.hidden_size * self.directions
            self._cells.append([self._make_cell(f"l{k}{'r' if d else ''}.", E, d == 1, rng)
                                for d in range(self.directions)])
        self._tape = None
        self.dstate0 = None

    def num_params(self):
        return int(sum(p.size for p in self.params.values()))

    def initial_state(self, batch):
        """The all-zero state for ``batch`` rows."""
        D = self.num_layers * self.directions
        state = {k: np.zeros((D, batch, self.hidden_size), self.dtype) for k in self.state_keys}
        if self.has_block_counter:
            state["n"] = np.zeros((D, batch), np.int64)
        return state

    def _check_state(self, state, batch):
        if state is None:
            return self.initial_state(batch)
        if not isinstance(state, dict):
            raise ValueError(f"state must be a dict of arrays, got {type(state).__name__}")
        want = set(self.state_keys) | ({"n"} if self.has_block_counter else set())
        if set(state) != want:
            raise ValueError(f"state must have exactly the keys {sorted(want)}, got {sorted(state)}")
        D = self.num_layers * self.directions
        checked = {k: check_float_array(state[k], f"state[{k!r}]", 3, self.dtype,
                                        (D, batch, self.hidden_size)) for k in self.state_keys}
        if self.has_block_counter:
            n = np.asarray(state["n"])
            if n.shape != (D, batch) or n.dtype.kind not in "iu":
                raise ValueError(f"state['n'] must be integers of shape ({D}, {batch}), "
                                 f"got {n.dtype} {n.shape}")
            if n.min() < 0 or n.max() >= self.block_size:
                raise ValueError(f"state['n'] counts steps into a block: it must lie in "
                                 f"[0, {self.block_size - 1}], got {n.min()}..{n.max()}")
            checked["n"] = n.astype(np.int64)
        return checked

    def forward(self, x, lengths=None, state=None, need_grad=True, rng=None):
        """Run all layers and directions.

        Parameters
        ----------
        x : ndarray (B, T, input_size), the layer's dtype
        lengths : int array (B,), each in [1, T]; default all T
        state : dict, the initial state (see the module docstring); default zeros
        need_grad : bool, False for inference: saves nothing for ``backward`` (faster)
        rng : numpy Generator or None.  With ``dropout`` > 0, a Generator switches training
            mode on: a mask for each layer's output but the last is drawn from it, in layer
            order.  None: no dropout (evaluation)

        Returns
        -------
        out : ndarray (B, T, hidden_size * directions), zero where t >= lengths[b]
        state : dict, the state after each row's last valid step
        """
        x = check_float_array(x, "x", 3, self.dtype, (None, None, self.input_size))
        B, T, _ = x.shape
        lengths = check_lengths(lengths, B, T)
        state = self._check_state(state, B)
        check_rng(rng)
        final = {k: np.empty_like(v) for k, v in state.items()}
        inp = x
        masks = []                  # masks[k]: the dropout on layer k's output (None: none)
        for k, row in enumerate(self._cells):
            if k > 0:
                masks.append(dropout_mask(rng, inp.shape, self.dropout, self.dtype))
                if masks[-1] is not None:
                    inp = masks[-1].apply(inp)          # a new array: the cells keep theirs
            outs = []
            for d, cell in enumerate(row):
                i = k * self.directions + d
                st = {key: v[i].copy() for key, v in state.items()}
                outs.append(cell.forward(inp, lengths, self._cell_state(st, B), need_grad))
                for key in final:
                    final[key][i] = st[key]
            inp = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=2)
        self._tape = (B, T, masks) if need_grad else None
        return inp, final

    def backward(self, dout, dstate=None):
        """Gradients of the most recent ``forward``.

        Parameters
        ----------
        dout : ndarray (B, T, hidden_size * directions), gradient w.r.t. ``out``
            (padded positions are ignored)
        dstate : dict, optional, gradients w.r.t. the returned final state's float
            arrays (any subset of its keys; missing ones are zero)

        Returns
        -------
        dx : ndarray (B, T, input_size)
        grads : dict with exactly the keys of ``params``

        The gradient w.r.t. the initial state is left in ``self.dstate0``.
        """
        if self._tape is None:
            raise ValueError("backward() called before forward() (or after forward(..., "
                             "need_grad=False)): there is nothing to differentiate")
        B, T, masks = self._tape
        H, D = self.hidden_size, self.directions
        dout = check_float_array(dout, "dout", 3, self.dtype, (B, T, H * D))
        if dstate is not None and not isinstance(dstate, dict):
            raise ValueError(f"dstate must be a dict of arrays, got {type(dstate).__name__}")
        dstate = {} if dstate is None else dstate
        unknown = set(dstate) - set(self.state_keys)
        if unknown:
            raise ValueError(f"dstate keys must be among {list(self.state_keys)}, got {sorted(unknown)}")
        dstate = {k: (check_float_array(dstate[k], f"dstate[{k!r}]", 3, self.dtype,
                                        (self.num_layers * D, B, H)) if k in dstate
                      else np.zeros((self.num_layers * D, B, H), self.dtype))
                  for k in self.state_keys}
        grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        dstate0 = {k: np.empty_like(v) for k, v in dstate.items()}
        d_in = dout
        for k in range(self.num_layers - 1, -1, -1):
            E = self.input_size if k == 0 else H * D
            dx = np.zeros((B, T, E), self.dtype)
            for d, cell in enumerate(self._cells[k]):
                i = k * D + d
                dst = {key: v[i].copy() for key, v in dstate.items()}
                cell.backward(dx, grads, np.ascontiguousarray(d_in[:, :, d * H:(d + 1) * H]),
                              self._cell_state(dst, B))
                for key in dstate0:
                    dstate0[key][i] = dst[key]
            if k > 0 and masks[k - 1] is not None:     # inp = masks[k - 1].apply(inp) in forward
                masks[k - 1].backward(dx)
            d_in = dx
        self.dstate0 = dstate0
        return d_in, grads

    def _cell_state(self, st, batch):
        return st


class QLLSTM(_StackedRecurrent):
    """QL-LSTM layer stack; with ``psug=False, hgr=False`` a standard LSTM.

    Parameters
    ----------
    input_size, hidden_size : int
    num_layers : int, layer k+1 reads layer k's output sequence
    bidirectional : bool, a second direction reads each row's valid steps in reverse
    psug : bool, one shared affine map for the four gates (else 4H-row LSTM weights)
    hgr : bool, the gated block memory added to every step's output
    block_size : int, K, steps per HGR-ASC block
    dtype : np.float32 or np.float64
    seed : int or None, seeds the initialisation's numpy Generator
    device : "cpu" or "cuda" (numba-cuda's kernels, the extra ``qlnumba[cuda]``; host
        arrays in and out, the same results as "cpu")
    dropout : float in [0, 1), on each layer's output but the last while training
        (``forward(..., rng=Generator)``), as PyTorch's ``dropout``
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False, psug=True,
                 hgr=True, block_size=32, dtype=np.float32, seed=None, device="cpu", dropout=0.0):
        self.psug, self.hgr = bool(psug), bool(hgr)
        self.block_size = check_size(block_size, "block_size")
        self.state_keys = ("h", "c", "m", "a") if self.hgr else ("h", "c")
        self.has_block_counter = self.hgr
        super().__init__(input_size, hidden_size, num_layers, bidirectional, dtype, seed, device,
                         dropout)

    def _make_cell(self, prefix, input_size, reverse, rng):
        cell = _QLCell(self.params, prefix, input_size, self.hidden_size, self.psug, self.hgr,
                       self.block_size, reverse, self.dtype, rng)
        if self.device == "cuda":
            from .gpu.recurrent import CudaQLCell      # imported only when asked for
            return CudaQLCell(cell)
        return cell

    def _cell_state(self, st, batch):
        # without hgr the kernel still takes m, a, n: give it zeros it will not touch
        if not self.hgr:
            for key in ("m", "a"):
                st.setdefault(key, np.zeros((batch, self.hidden_size), self.dtype))
            st.setdefault("n", np.zeros(batch, np.int64))
        return st

    def __repr__(self):
        return (f"QLLSTM({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, psug={self.psug}, hgr={self.hgr}, "
                f"block_size={self.block_size}, dtype={np.dtype(self.dtype).name}, "
                f"device={self.device!r}, dropout={self.dropout})")


class GRU(_StackedRecurrent):
    """GRU layer stack in PyTorch's formulation (gate rows r, z, n).

    Parameters are those of :class:`QLLSTM` without the QL-LSTM switches.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False,
                 dtype=np.float32, seed=None, device="cpu", dropout=0.0):
        super().__init__(input_size, hidden_size, num_layers, bidirectional, dtype, seed, device,
                         dropout)

    def _make_cell(self, prefix, input_size, reverse, rng):
        cell = _GRUCell(self.params, prefix, input_size, self.hidden_size, reverse, self.dtype, rng)
        if self.device == "cuda":
            from .gpu.gru import CudaGRUCell           # imported only when asked for
            return CudaGRUCell(cell)
        return cell

    def __repr__(self):
        return (f"GRU({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, dtype={np.dtype(self.dtype).name}, "
                f"device={self.device!r}, dropout={self.dropout})")
