"""GRU layer on the GPU (PyTorch's formulation), one direction.

The same equations and saved buffers as ``qlnumba/kernels/gru.py`` (read that
first).  The cell's per-element bodies are device functions in ``cells.py``
(``gru_cell_forward``, ``gru_cell_backward``); two step loops run them, as for the
QL-LSTM layer (``recurrent.py``): the persistent one (``persistent.py``: every step in
one cooperative launch, each block with its units' slice of U in shared memory) and
the simple one, the tested reference (per step a tiled product U h_{t-1} with
``matmul.matmul``, then one thread per (row, hidden unit)).  Sums over rows and steps
run in a fixed order, never atomics.

Shapes legend (device arrays, C order)
  B rows, T padded steps, E inputs, H hidden units, G = 3H; gate rows r, u (update), n
  x (B,T,E)  out (B,T,H)  h (B,H) (persistent: (2,B,H), double-buffered)
  W (G,E)  U (G,H)  b, b_U (G,)
  saved: ZX (B,T,G) = x W^T (without b), GATES (B,T,3,H), HN (B,T,H), HPREV (B,T,H)
  backward: DX, DHID (B,T,G) δ of the input-side and hidden-side pre-activations,
    DHbuf (2,B,G) a step's DHID (the simple path uses DHbuf[0]), dhU (B,H) = U^T δ
"""
from functools import lru_cache

import numpy as np

from . import cells, persistent
from .arrays import Workspace, column_sums, cuda, grid_for, zeros
from .matmul import matmul
from .persistent import launch_persistent, persistent_plan
from .recurrent import PATHS


@lru_cache(maxsize=None)
def kernels(dtype):
    """The simple path's step kernels for one float dtype: one thread per (row, unit) runs
    the cell's device function (``cells.gru_cell_forward`` / ``gru_cell_backward``)."""
    k = cells.cell_kernels(np.dtype(dtype))
    cell_forward, cell_backward = k["gru_cell_forward"], k["gru_cell_backward"]

    @cuda.jit
    def step_forward(out, h, GATES, HN, HPREV, ZX, hU, lengths, b, b_U, s, reverse):
        B, H = h.shape
        for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            cell_forward(out, h, h, GATES, HN, HPREV, ZX, hU, lengths, b, b_U, s, reverse,
                         idx // H, idx % H)

    @cuda.jit
    def step_backward(DX, DHID, DH_step, dh, dout, GATES, HN, HPREV, lengths, s, reverse):
        B, H = dh.shape
        for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            cell_backward(DX, DHID, DH_step, dh, dout, GATES, HN, HPREV, lengths, s, reverse,
                          idx // H, idx % H)

    return dict(step_forward=step_forward, step_backward=step_backward, carry_dh=k["carry_dh"])


PARAM_NAMES = ("W", "U", "b", "b_U")                    # a cell's parameters


class CudaGRUCell:
    """One direction of one GRU layer on the GPU; the interface of ``layers._GRUCell``,
    and the device interface of ``CudaQLCell``:

    - ``forward`` / ``backward``: host arrays in and out (the layer API); the
      parameters are copied to the device on each call.
    - ``forward_device`` / ``backward_device``: device arrays in and out, the
      parameters and gradient accumulators given as dicts of device arrays (short
      names W, U, b, b_U); the state h crosses to the host only where a host state is
      given.  This is the training-loop path (``qlnumba.gpu.model``).

    ``path`` picks the step loop, as for ``CudaQLCell``: "persistent" (default: one
    cooperative launch for all steps, ``persistent.persistent_gru_forward`` /
    ``persistent_gru_backward``, where ``persistent_plan`` says it fits) or "simple" (two
    launches a step forward, three backward: the reference the persistent loops are
    tested against).  The buffers live in a ``Workspace``: after the largest batch a call
    allocates nothing.
    """

    param_names = PARAM_NAMES

    def __init__(self, cpu_cell, path="persistent"):
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        self.path = path
        self.row_groups = self.item_rows = self.item_cols = None   # persistent_plan's options
        self.cpu = cpu_cell
        self.prefix, self.H, self.reverse, self.dtype = (cpu_cell.prefix, cpu_cell.H,
                                                         cpu_cell.reverse, cpu_cell.dtype)
        self.cache = None
        self.workspace = Workspace(self.dtype)
        self.final_state = self.initial_state_grads = None   # device views (see forward_device)

    def device_params(self):
        """The cell's parameters as device arrays (copied from the host arrays now)."""
        return {name: cuda.to_device(np.ascontiguousarray(self.cpu.params[self.prefix + name]))
                for name in PARAM_NAMES}

    def device_grads(self):
        """Zeroed device gradient accumulators shaped like ``device_params``."""
        return {name: zeros(self.cpu.params[self.prefix + name].shape, self.dtype)
                for name in PARAM_NAMES}

    def _plan(self, B):
        if self.path != "persistent":
            return None
        return persistent_plan(B, self.H, 3 * self.H, np.dtype(self.dtype).itemsize, False,
                               self.row_groups, self.item_rows, self.item_cols)

    def forward(self, x, lengths, st, need_grad=True):
        out = self.forward_device(cuda.to_device(x), lengths, st, self.device_params(), need_grad)
        return out.copy_to_host()

    def backward(self, dx, grads, dout, dst):
        """Accumulate into host ``dx`` and ``grads``; ``dst`` goes from d(final) to d(initial)."""
        dgrads = self.device_grads()
        d_dx = self.backward_device(cuda.to_device(dout), dgrads, dst)
        dx += d_dx.copy_to_host()
        for name, g in dgrads.items():
            grads[self.prefix + name] += g.copy_to_host()

    def forward_device(self, d_x, lengths, st, P, need_grad=True):
        """Device x (B,T,E) in, device out (B,T,H) back (a workspace buffer, valid until the
        next forward_device); host ``lengths``; host state ``st`` (st["h"] updated in place),
        or st = None: start from zeros made on the device and download nothing (the final h
        stays there, ``final_state``); P: device parameters.  ``need_grad`` is accepted for
        a common interface: the step kernel always saves what backward_device needs."""
        k = kernels(np.dtype(self.dtype))
        B, T, E = d_x.shape
        H, ws = self.H, self.workspace
        steps = int(lengths.max())
        plan = self._plan(B)
        bar = np.zeros(persistent.barrier_slots(plan) if plan is not None else 0, np.int64)
        ints = ws.put_many("ints", dict(bar=bar, lengths=lengths), np.int64)          # one copy
        d_len, d_bar = ints["lengths"], ints["bar"]
        # out is zero at padding; HPREV is read there by dU's product (times a zero δ): finite
        bufs = ws.zeros_and_state("forward", dict(out=(B, T, H), HPREV=(B, T, H)),
                                  dict(h=("h", (2, B, H) if plan is not None else (B, H))), st)
        out, HPREV = bufs["out"], bufs["HPREV"]
        ZX, hU = ws.empty("ZX", (B, T, 3 * H)), ws.empty("hU", (B, 3 * H))
        GATES, HN = ws.empty("GATES", (B, T, 3, H)), ws.empty("HN", (B, T, H))   # read at valid steps only
        sc = ws.scratch                          # for a product's split-k chunks
        matmul(ZX, d_x, P["W"], B * T, 3 * H, E, E, 1, 1, E, scratch=sc)     # ZX = x W^T
        if plan is not None:                     # h alternates between h[0] and h[1]
            launch_persistent(persistent.loops(self.dtype, plan)["persistent_gru_forward"],
                              plan, plan.fwd_bytes, out, bufs["h"], GATES, HN, HPREV, ZX, hU, d_len,
                              d_bar, P["U"], P["b"], P["b_U"], steps, plan.ugroups, plan.rgroups,
                              self.reverse)
            h = bufs["h"][steps % 2]
        else:
            h, grid = bufs["h"], grid_for(B * H)
            for s in range(steps):
                matmul(hU, h, P["U"], B, 3 * H, H, H, 1, 1, H, scratch=sc)  # U h_{t-1}
                k["step_forward"][grid](out, h, GATES, HN, HPREV, ZX, hU, d_len, P["b"], P["b_U"],
                                        s, self.reverse)
        self.final_state = dict(h=h)
        if st is not None:
            st["h"][...] = h.copy_to_host()
        self.cache = dict(x=d_x, lengths=lengths, d_len=d_len, d_bar=d_bar, GATES=GATES, HN=HN,
                          HPREV=HPREV, P=P)
        return out

    def backward_device(self, d_dout, grads, dst):
        """Device δout (B,T,H) in, device δx (B,T,E) back (a workspace buffer, valid until
        the next backward_device); accumulates into the device ``grads`` (short names);
        host ``dst`` goes from d(final) to d(initial), or dst = None: a zero gradient of
        the final h, and that of the initial h stays on the device (``initial_state_grads``)."""
        if self.cache is None:
            raise ValueError("backward called before forward()")
        k = kernels(np.dtype(self.dtype))
        cc = self.cache
        x, lengths, d_len, P = cc["x"], cc["lengths"], cc["d_len"], cc["P"]
        B, T, E = x.shape
        H, G, ws = self.H, 3 * self.H, self.workspace
        steps = int(lengths.max())
        plan = self._plan(B)
        # the cells write DX and DHID at valid steps only: zero elsewhere
        bufs = ws.zeros_and_state("backward", dict(DX=(B, T, G), DHID=(B, T, G), DHbuf=(2, B, G)),
                                  dict(dh=("h", (B, H))), dst)
        DX, DHID, dh = bufs["DX"], bufs["DHID"], bufs["dh"]
        dhU, sc = ws.empty("dhU", (B, H)), ws.scratch
        if plan is not None:                     # δ alternates between DHbuf[0] and DHbuf[1]
            launch_persistent(persistent.loops(self.dtype, plan)["persistent_gru_backward"],
                              plan, plan.bwd_bytes, DX, DHID, bufs["DHbuf"], dhU, dh, d_dout,
                              cc["GATES"], cc["HN"], cc["HPREV"], d_len, cc["d_bar"], P["U"], steps,
                              plan.ugroups, plan.rgroups, self.reverse)
        else:
            DH_step, grid = bufs["DHbuf"][0], grid_for(B * H)
            for s in range(steps - 1, -1, -1):
                k["step_backward"][grid](DX, DHID, DH_step, dh, d_dout, cc["GATES"], cc["HN"],
                                         cc["HPREV"], d_len, s, self.reverse)
                matmul(dhU, DH_step, P["U"], B, H, G, G, 1, H, 1, scratch=sc)   # U^T δ
                k["carry_dh"][grid](dh, dhU, d_len, s, True)    # δh_{t-1} = δh u + U^T δ
        BT, acc = B * T, dict(accumulate=True, scratch=sc)
        d_dx = ws.empty("dx", (B, T, E))
        matmul(grads["W"], DX, x, G, E, BT, 1, G, E, 1, **acc)                # Σ δx x^T
        matmul(grads["U"], DHID, cc["HPREV"], G, H, BT, 1, G, H, 1, **acc)    # Σ δh h_{t-1}^T
        matmul(d_dx, DX, P["W"], BT, E, G, G, 1, E, 1, scratch=sc)            # W^T δx
        column_sums(grads["b"], DX.reshape(BT * G), BT, G, sc)
        column_sums(grads["b_U"], DHID.reshape(BT * G), BT, G, sc)
        self.initial_state_grads = dict(h=dh)
        if dst is not None:
            dst["h"][...] = dh.copy_to_host()
        return d_dx
