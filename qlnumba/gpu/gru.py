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
from .arrays import column_sums, cuda, grid_for, zeros
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


class CudaGRUCell:
    """One direction of one GRU layer on the GPU; the interface of ``layers._GRUCell``.

    Host arrays in and out; parameters are copied to the device on each call.
    """

    def __init__(self, cpu_cell):
        self.cpu = cpu_cell
        self.prefix, self.H, self.reverse, self.dtype = (cpu_cell.prefix, cpu_cell.H,
                                                         cpu_cell.reverse, cpu_cell.dtype)
        self.cache = None

    def _param(self, name):
        return cuda.to_device(np.ascontiguousarray(self.cpu.params[self.prefix + name]))

    def forward(self, x, lengths, st, need_grad=True):
        k = kernels(np.dtype(self.dtype))
        B, T, E = x.shape
        H, dt = self.H, self.dtype
        W, U, b, b_U = (self._param(n) for n in ("W", "U", "b", "b_U"))
        d_x, d_len = cuda.to_device(x), cuda.to_device(lengths)
        h = cuda.to_device(np.ascontiguousarray(st["h"]))
        out, ZX, hU = zeros((B, T, H), dt), zeros((B, T, 3 * H), dt), zeros((B, 3 * H), dt)
        GATES, HN, HPREV = zeros((B, T, 3, H), dt), zeros((B, T, H), dt), zeros((B, T, H), dt)
        matmul(ZX, d_x, W, B * T, 3 * H, E, E, 1, 1, E)                     # ZX = x W^T
        grid = grid_for(B * H)
        for s in range(int(lengths.max())):
            matmul(hU, h, U, B, 3 * H, H, H, 1, 1, H)                       # U h_{t-1}
            k["step_forward"][grid](out, h, GATES, HN, HPREV, ZX, hU, d_len, b, b_U, s, self.reverse)
        st["h"][...] = h.copy_to_host()
        self.cache = dict(x=d_x, lengths=lengths, d_len=d_len, GATES=GATES, HN=HN, HPREV=HPREV,
                          W=W, U=U) if need_grad else None
        return out.copy_to_host()

    def backward(self, dx, grads, dout, dst):
        k = kernels(np.dtype(self.dtype))
        cc = self.cache
        x, lengths, d_len = cc["x"], cc["lengths"], cc["d_len"]
        B, T, E = x.shape
        H, dt = self.H, self.dtype
        d_dout = cuda.to_device(dout)
        dh = cuda.to_device(np.ascontiguousarray(dst["h"]))
        DX, DHID = zeros((B, T, 3 * H), dt), zeros((B, T, 3 * H), dt)
        DH_step, dhU = zeros((B, 3 * H), dt), zeros((B, H), dt)
        grid = grid_for(B * H)
        for s in range(int(lengths.max()) - 1, -1, -1):
            k["step_backward"][grid](DX, DHID, DH_step, dh, d_dout, cc["GATES"], cc["HN"], cc["HPREV"],
                                     d_len, s, self.reverse)
            matmul(dhU, DH_step, cc["U"], B, H, 3 * H, 3 * H, 1, H, 1)      # U^T δ
            k["carry_dh"][grid](dh, dhU, d_len, s, True)        # δh_{t-1} = δh u + U^T δ
        BT, G = B * T, 3 * H
        dW, dU, db, db_U = zeros((G, E), dt), zeros((G, H), dt), zeros(G, dt), zeros(G, dt)
        d_dx = zeros((B, T, E), dt)
        matmul(dW, DX, x, G, E, BT, 1, G, E, 1)                             # Σ δx x^T
        matmul(dU, DHID, cc["HPREV"], G, H, BT, 1, G, H, 1)                 # Σ δh h_{t-1}^T
        matmul(d_dx, DX, cc["W"], BT, E, G, G, 1, E, 1)                     # W^T δx
        column_sums(db, DX.reshape(BT * G), BT, G)
        column_sums(db_U, DHID.reshape(BT * G), BT, G)
        p = self.prefix
        for name, arr in (("W", dW), ("U", dU), ("b", db), ("b_U", db_U)):
            grads[p + name] += arr.copy_to_host()
        dx += d_dx.copy_to_host()
        dst["h"][...] = dh.copy_to_host()
