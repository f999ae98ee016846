"""GRU layer on the GPU (PyTorch's formulation), one direction: the per-step path.

The same equations and saved buffers as ``qlnumba/kernels/gru.py`` (read that
first).  Each step is a tiled product U h_{t-1} (``matmul.matmul``) and one
thread per (row, hidden unit); sums over rows and steps run in a fixed order,
never atomics.

Shapes legend (device arrays, C order)
  B rows, T padded steps, E inputs, H hidden units; gate rows r, u (update), n
  x (B,T,E)  out (B,T,H)  h (B,H)  W (3H,E)  U (3H,H)  b, b_U (3H)
  saved: ZX (B,T,3H) = x W^T (without b), GATES (B,T,3,H), HN (B,T,H), HPREV (B,T,H)
  backward: DX, DHID (B,T,3H) δ of the input-side and hidden-side pre-activations,
    DH_step (B,3H) this step's DHID, dhU (B,H)
"""
import math
from functools import lru_cache

import numpy as np

from . import cells
from .arrays import Workspace, column_sums, cuda, grid_for, zeros
from .cells import sigmoid_for
from .matmul import matmul


@lru_cache(maxsize=None)
def kernels(dtype):
    one = np.dtype(dtype).type(1.0)
    sigmoid = sigmoid_for(np.dtype(dtype))

    @cuda.jit
    def step_forward(out, h, GATES, HN, HPREV, ZX, hU, lengths, b, b_U, s, reverse):
        B, H = h.shape
        for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            bb, j = idx // H, idx % H
            L = lengths[bb]
            if s >= L:
                continue
            pos = L - 1 - s if reverse else s
            r = sigmoid(ZX[bb, pos, j] + b[j] + hU[bb, j] + b_U[j])                    # r_t
            u = sigmoid(ZX[bb, pos, H + j] + b[H + j] + hU[bb, H + j] + b_U[H + j])    # u_t
            hn = hU[bb, 2 * H + j] + b_U[2 * H + j]                                    # U_n h + b_Un
            n = math.tanh(ZX[bb, pos, 2 * H + j] + b[2 * H + j] + r * hn)              # n_t
            hprev = h[bb, j]
            ht = (one - u) * n + u * hprev                        # h_t = (1-u) n + u h_{t-1}
            GATES[bb, pos, 0, j] = r
            GATES[bb, pos, 1, j] = u
            GATES[bb, pos, 2, j] = n
            HN[bb, pos, j] = hn
            HPREV[bb, pos, j] = hprev
            h[bb, j] = ht
            out[bb, pos, j] = ht

    @cuda.jit
    def step_backward(DX, DHID, DH_step, dh, dout, GATES, HN, HPREV, lengths, s, reverse):
        B, H = dh.shape
        for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            bb, j = idx // H, idx % H
            L = lengths[bb]
            if s >= L:
                for k in range(3):
                    DH_step[bb, k * H + j] = 0.0
                continue
            pos = L - 1 - s if reverse else s
            r, u, n = GATES[bb, pos, 0, j], GATES[bb, pos, 1, j], GATES[bb, pos, 2, j]
            dht = dout[bb, pos, j] + dh[bb, j]
            dpn = dht * (one - u) * (one - n * n)                 # n = tanh(W_n x + b_n + r hn)
            dpr = dpn * HN[bb, pos, j] * r * (one - r)
            dpu = dht * (HPREV[bb, pos, j] - n) * u * (one - u)   # h = (1-u) n + u h_prev
            DX[bb, pos, j] = dpr
            DX[bb, pos, H + j] = dpu
            DX[bb, pos, 2 * H + j] = dpn
            DH_step[bb, j] = dpr
            DH_step[bb, H + j] = dpu
            DH_step[bb, 2 * H + j] = dpn * r
            for k in range(3):
                DHID[bb, pos, k * H + j] = DH_step[bb, k * H + j]
            dh[bb, j] = dht * u                                   # + U^T δ below

    carry_dh = cells.cell_kernels(dtype)["carry_dh"]      # δh_{t-1} (+)= U^T δ, as QL-LSTM's
    return dict(step_forward=step_forward, step_backward=step_backward, carry_dh=carry_dh)


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

    The buffers live in a ``Workspace``: after the largest batch a call allocates nothing.
    """

    param_names = PARAM_NAMES

    def __init__(self, cpu_cell):
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
        # out is zero at padding; HPREV is read there by dU's product (times a zero δ): finite
        bufs = ws.zeros_and_state("forward", dict(out=(B, T, H), HPREV=(B, T, H)),
                                  dict(h=("h", (B, H))), st)
        out, HPREV, h = bufs["out"], bufs["HPREV"], bufs["h"]
        d_len = ws.put("lengths", np.asarray(lengths, np.int64))
        ZX, hU = ws.empty("ZX", (B, T, 3 * H)), ws.empty("hU", (B, 3 * H))
        GATES, HN = ws.empty("GATES", (B, T, 3, H)), ws.empty("HN", (B, T, H))   # read at valid steps only
        sc = ws.scratch                          # for a product's split-k chunks
        matmul(ZX, d_x, P["W"], B * T, 3 * H, E, E, 1, 1, E, scratch=sc)     # ZX = x W^T
        grid = grid_for(B * H)
        for s in range(int(lengths.max())):
            matmul(hU, h, P["U"], B, 3 * H, H, H, 1, 1, H, scratch=sc)      # U h_{t-1}
            k["step_forward"][grid](out, h, GATES, HN, HPREV, ZX, hU, d_len, P["b"], P["b_U"], s,
                                    self.reverse)
        self.final_state = dict(h=h)
        if st is not None:
            st["h"][...] = h.copy_to_host()
        self.cache = dict(x=d_x, lengths=lengths, d_len=d_len, GATES=GATES, HN=HN, HPREV=HPREV, P=P)
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
        # the step kernel writes DX and DHID at valid steps only: zero elsewhere
        bufs = ws.zeros_and_state("backward", dict(DX=(B, T, G), DHID=(B, T, G)),
                                  dict(dh=("h", (B, H))), dst)
        DX, DHID, dh = bufs["DX"], bufs["DHID"], bufs["dh"]
        DH_step, dhU = ws.empty("DH_step", (B, G)), ws.empty("dhU", (B, H))
        grid, sc = grid_for(B * H), ws.scratch
        for s in range(int(lengths.max()) - 1, -1, -1):
            k["step_backward"][grid](DX, DHID, DH_step, dh, d_dout, cc["GATES"], cc["HN"], cc["HPREV"],
                                     d_len, s, self.reverse)
            matmul(dhU, DH_step, P["U"], B, H, G, G, 1, H, 1, scratch=sc)   # U^T δ
            k["carry_dh"][grid](dh, dhU, d_len, s, True)        # δh_{t-1} = δh u + U^T δ
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
