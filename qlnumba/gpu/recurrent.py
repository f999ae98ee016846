"""QL-LSTM recurrent layer on the GPU, one direction: two step loops.

The same equations and buffers as ``qlnumba/kernels/recurrent.py`` (read that
file first).  The products before and after the step loop (x W^T, the weight
gradients) are tiled shared-memory launches.  The step loop is either

- persistent (``persistent_forward`` / ``persistent_backward``, the default):
  one cooperative launch runs every step; ``cuda.cg.this_grid().sync()``
  separates a step's phases (U h_{t-1}, the cells, a block close), h is
  double-buffered, and the per-element bodies are the device functions
  ``cell_forward``, ``close_*_cell``, ``cell_backward`` shared with
- simple (the tested reference): a few launches per step, a tiled product
  U h_{t-1}, then one thread per (row, hidden unit).

Gradient sums over rows and steps are loops in a fixed order, never atomics, so
results are deterministic.

Shapes legend (device arrays, C order)
  B rows, T padded steps, E inputs, H hidden units, G = H (psug) or 4H, K block length,
  NB = (T + K - 1) // K
  x (B,T,E)  out (B,T,H)  state h, c, m, a (B,H)
  saved: Z (B,T,G), GATES (B,T,4,H), C, CPREV, HPREV (B,T,H), MBLK (B,NB+1,H), SBLK, RBLK (B,NB,H)
  backward scratch: DZ (B,T,G), DZ_step (B,G), DPRE (B,T,4,H) δ of the gate pre-activations,
    DP (B,NB,H) δ of the block gates, DP_step (B,H)
Every kernel loops over its elements with a grid stride, so any launch shape is
correct (the simulator runs few threads; a GPU runs many).
"""
import math
import os
from functools import lru_cache

import numpy as np
from numba import float32, float64

from . import get_cuda

cuda = get_cuda()
SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
TILE = 4 if SIM else 16                  # matrix-product tile edge
THREADS = 8 if SIM else 256              # threads per block for element-wise kernels
MAX_BLOCKS = 2 if SIM else 1024


def grid_for(n):
    return max(1, min(MAX_BLOCKS, (n + THREADS - 1) // THREADS)), THREADS


@lru_cache(maxsize=None)
def kernels(dtype):
    """Compile the kernels for one float dtype (shared-memory tiles need it fixed)."""
    ftype = float32 if np.dtype(dtype) == np.float32 else float64
    one = np.dtype(dtype).type(1.0)

    @cuda.jit(device=True, inline=True)
    def sigmoid(x):
        return one / (one + math.exp(-x))

    @cuda.jit
    def matmul(C, A, Bm, M, N, Kd, sam, sak, sbk, sbn, accumulate):
        """C (M,N) [+]= A B, A and B flat with strides: A[m,k] = A[m*sam + k*sak]."""
        sA = cuda.shared.array((TILE, TILE), ftype)
        sB = cuda.shared.array((TILE, TILE), ftype)
        ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
        tiles_n = (N + TILE - 1) // TILE
        tiles = ((M + TILE - 1) // TILE) * tiles_n
        for tile in range(cuda.blockIdx.x, tiles, cuda.gridDim.x):
            row = (tile // tiles_n) * TILE + ty
            col = (tile % tiles_n) * TILE + tx
            acc = ftype(0.0)
            for k0 in range(0, Kd, TILE):
                ka, kb = k0 + tx, k0 + ty
                sA[ty, tx] = A[row * sam + ka * sak] if row < M and ka < Kd else ftype(0.0)
                sB[ty, tx] = Bm[kb * sbk + col * sbn] if kb < Kd and col < N else ftype(0.0)
                cuda.syncthreads()
                for i in range(TILE):
                    acc += sA[ty, i] * sB[i, tx]
                cuda.syncthreads()
            if row < M and col < N:
                if accumulate:
                    C[row * N + col] += acc
                else:
                    C[row * N + col] = acc

    @cuda.jit(device=True)
    def cell_forward(out, hcur, hnext, c, m, a, Z, GATES, C, CPREV, HPREV, hU, lengths, b, gamma,
                     beta, s, psug, hgr, reverse, bb, j):
        """Step s of row bb, unit j: reads h_{t-1} from hcur, writes h_t to hnext (may be hcur)."""
        H = c.shape[1]
        L = lengths[bb]
        if s >= L:
            hnext[bb, j] = hcur[bb, j]                                    # idle rows keep h
            return
        pos = L - 1 - s if reverse else s
        HPREV[bb, pos, j] = hcur[bb, j]
        CPREV[bb, pos, j] = c[bb, j]
        if psug:
            z = Z[bb, pos, j] + hU[bb, j] + b[j]                        # z_t = W x + U h + b
            Z[bb, pos, j] = z
            ig = sigmoid(gamma[0, j] * z + beta[0, j])
            fg = sigmoid(gamma[1, j] * z + beta[1, j])
            gg = math.tanh(gamma[2, j] * z + beta[2, j])
            og = sigmoid(gamma[3, j] * z + beta[3, j])
        else:
            for k in range(4):
                Z[bb, pos, k * H + j] += hU[bb, k * H + j] + b[k * H + j]
            ig = sigmoid(Z[bb, pos, j])
            fg = sigmoid(Z[bb, pos, H + j])
            gg = math.tanh(Z[bb, pos, 2 * H + j])
            og = sigmoid(Z[bb, pos, 3 * H + j])
        GATES[bb, pos, 0, j] = ig
        GATES[bb, pos, 1, j] = fg
        GATES[bb, pos, 2, j] = gg
        GATES[bb, pos, 3, j] = og
        ct = fg * c[bb, j] + ig * gg                                      # c_t = f c + i g
        c[bb, j] = ct
        C[bb, pos, j] = ct
        hhat = og * math.tanh(ct)                                         # ĥ_t = o tanh(c_t)
        if hgr:
            a[bb, j] += hhat                                              # a += ĥ_t
            hhat += m[bb, j]                                              # h_t = ĥ_t + m
        hnext[bb, j] = hhat
        out[bb, pos, j] = hhat

    @cuda.jit
    def step_forward(out, h, c, m, a, Z, GATES, C, CPREV, HPREV, hU, lengths, b, gamma, beta,
                     s, psug, hgr, reverse):
        B, H = h.shape
        for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            cell_forward(out, h, h, c, m, a, Z, GATES, C, CPREV, HPREV, hU, lengths, b, gamma,
                         beta, s, psug, hgr, reverse, idx // H, idx % H)

    @cuda.jit(device=True)
    def closes_at(lengths, n0, s, K, bb):
        """Whether row bb closes a block at step s (from its initial n, no saved flags)."""
        return s < lengths[bb] and (n0[bb] + s + 1) % K == 0

    @cuda.jit(device=True)
    def close_summary_cell(S, a, lengths, n0, s, K, bb, j):
        S[bb, j] = a[bb, j] / K if closes_at(lengths, n0, s, K, bb) else ftype(0.0)

    @cuda.jit(device=True)
    def close_forward_cell(m, a, MBLK, SBLK, RBLK, S, P, Q, b_r, lengths, n0, s, K, bb, j):
        if not closes_at(lengths, n0, s, K, bb):
            return
        jb = (n0[bb] + s + 1) // K - 1
        r = sigmoid(P[bb, j] + Q[bb, j] + b_r[j])                         # r = σ(V_s s + V_m m + b_r)
        mj = r * m[bb, j] + (one - r) * S[bb, j]                          # m = r m + (1-r) s
        SBLK[bb, jb, j] = S[bb, j]
        RBLK[bb, jb, j] = r
        MBLK[bb, jb + 1, j] = mj
        m[bb, j] = mj
        a[bb, j] = 0.0

    @cuda.jit(device=True)
    def close_backward_cell(dm, da, DP, DP_step, MBLK, SBLK, RBLK, lengths, n0, s, K, bb, j):
        if not closes_at(lengths, n0, s, K, bb):
            DP_step[bb, j] = 0.0
            return
        jb = (n0[bb] + s + 1) // K - 1
        r = RBLK[bb, jb, j]
        dm_after = dm[bb, j]                                          # δm' of m' = r m + (1-r) s
        dp = dm_after * (MBLK[bb, jb, j] - SBLK[bb, jb, j]) * r * (one - r)
        DP[bb, jb, j] = dp
        DP_step[bb, j] = dp
        dm[bb, j] = dm_after * r
        da[bb, j] = dm_after * (one - r)

    @cuda.jit(device=True)
    def close_backward_finish_cell(dm, da, dmV, dsV, lengths, n0, s, K, bb, j):
        if closes_at(lengths, n0, s, K, bb):
            dm[bb, j] += dmV[bb, j]                                   # δm += V_m^T δp
            da[bb, j] = (da[bb, j] + dsV[bb, j]) / K                  # δa = (δs + V_s^T δp) / K

    @cuda.jit
    def close_summary(S, a, lengths, n0, s, K):
        """S = a / K for the rows that close a block at step s, 0 elsewhere."""
        B, H = a.shape
        for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            close_summary_cell(S, a, lengths, n0, s, K, idx // H, idx % H)

    @cuda.jit
    def close_forward(m, a, MBLK, SBLK, RBLK, S, P, Q, b_r, lengths, n0, s, K):
        """r = σ(V_s s + V_m m + b_r); m = r m + (1-r) s; a = 0, for the closing rows."""
        B, H = a.shape
        for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            close_forward_cell(m, a, MBLK, SBLK, RBLK, S, P, Q, b_r, lengths, n0, s, K,
                               idx // H, idx % H)

    @cuda.jit
    def close_backward(dm, da, DP, DP_step, MBLK, SBLK, RBLK, lengths, n0, s, K):
        """The block-close rule, before the V^T δp products (done by matmul)."""
        B, H = dm.shape
        for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            close_backward_cell(dm, da, DP, DP_step, MBLK, SBLK, RBLK, lengths, n0, s, K,
                                idx // H, idx % H)

    @cuda.jit
    def close_backward_finish(dm, da, dmV, dsV, lengths, n0, s, K):
        """δm += V_m^T δp;  δa = (δs + V_s^T δp) / K, for the closing rows."""
        B, H = dm.shape
        for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            close_backward_finish_cell(dm, da, dmV, dsV, lengths, n0, s, K, idx // H, idx % H)

    @cuda.jit(device=True)
    def cell_backward(DZ, DZ_step, DPRE, dh, dc, dm, da, dout, GATES, C, CPREV, gamma, lengths,
                      s, psug, hgr, reverse, bb, j):
        H = dh.shape[1]
        L = lengths[bb]
        if s >= L:
            DZ_step[bb, j] = 0.0
            if not psug:
                for k in range(1, 4):
                    DZ_step[bb, k * H + j] = 0.0
            return
        pos = L - 1 - s if reverse else s
        dht = dout[bb, pos, j] + dh[bb, j]                            # δh_t = δout + U^T δz_{t+1}
        if hgr:
            dm[bb, j] += dht                                          # h_t = ĥ_t + m
            dhhat = dht + da[bb, j]                                   # a += ĥ_t
        else:
            dhhat = dht
        ig, fg = GATES[bb, pos, 0, j], GATES[bb, pos, 1, j]
        gg, og = GATES[bb, pos, 2, j], GATES[bb, pos, 3, j]
        tc = math.tanh(C[bb, pos, j])
        dpo = dhhat * tc * og * (one - og)                            # ĥ = o tanh(c)
        dct = dc[bb, j] + dhhat * og * (one - tc * tc)
        dpi = dct * gg * ig * (one - ig)                              # c = f c_prev + i g
        dpf = dct * CPREV[bb, pos, j] * fg * (one - fg)
        dpg = dct * ig * (one - gg * gg)
        dc[bb, j] = dct * fg
        DPRE[bb, pos, 0, j] = dpi
        DPRE[bb, pos, 1, j] = dpf
        DPRE[bb, pos, 2, j] = dpg
        DPRE[bb, pos, 3, j] = dpo
        if psug:                                                      # gate_k = act(γ_k z + β_k)
            dz = gamma[0, j] * dpi + gamma[1, j] * dpf + gamma[2, j] * dpg + gamma[3, j] * dpo
            DZ_step[bb, j] = dz
            DZ[bb, pos, j] = dz
        else:
            DZ_step[bb, j] = dpi
            DZ_step[bb, H + j] = dpf
            DZ_step[bb, 2 * H + j] = dpg
            DZ_step[bb, 3 * H + j] = dpo
            DZ[bb, pos, j] = dpi
            DZ[bb, pos, H + j] = dpf
            DZ[bb, pos, 2 * H + j] = dpg
            DZ[bb, pos, 3 * H + j] = dpo

    @cuda.jit
    def step_backward(DZ, DZ_step, DPRE, dh, dc, dm, da, dout, GATES, C, CPREV, gamma, lengths,
                      s, psug, hgr, reverse):
        B, H = dh.shape
        for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            cell_backward(DZ, DZ_step, DPRE, dh, dc, dm, da, dout, GATES, C, CPREV, gamma, lengths,
                          s, psug, hgr, reverse, idx // H, idx % H)

    @cuda.jit
    def carry_dh(dh, dhU, lengths, s, accumulate):
        """δh_{t-1} = U^T δz_t (or += it, where dh already holds a direct term, as in the
        GRU) for the rows that stepped; idle rows keep theirs."""
        B, H = dh.shape
        for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            bb, j = idx // H, idx % H
            if s < lengths[bb]:
                dh[bb, j] = dh[bb, j] + dhU[bb, j] if accumulate else dhU[bb, j]

    @cuda.jit
    def column_sums(out, A, rows, cols):
        """out[c] += Σ_r A[r*cols + c], summed in row order (deterministic)."""
        for col in range(cuda.grid(1), cols, cuda.gridsize(1)):
            acc = ftype(0.0)
            for r in range(rows):
                acc += A[r * cols + col]
            out[col] += acc

    @cuda.jit
    def gate_param_grads(dgamma, dbeta, DPRE, Z, BT):
        """δγ_k = Σ δp_k z,  δβ_k = Σ δp_k over every row and step (zero where padded)."""
        H = dbeta.shape[1]
        for idx in range(cuda.grid(1), 4 * H, cuda.gridsize(1)):
            k, j = idx // H, idx % H
            g_acc = ftype(0.0)
            b_acc = ftype(0.0)
            for r in range(BT):
                d = DPRE[r, k, j]
                g_acc += d * Z[r, j]
                b_acc += d
            dgamma[k, j] += g_acc
            dbeta[k, j] += b_acc

    @cuda.jit(device=True)
    def dot_rows(out, A, X, M, N, Kd, transpose_a):
        """out[r, i] = Σ_k A[i, k] X[r, k] (or A[k, i] with transpose_a), r < N rows, i < M:
        one output per thread, grid-stride, k in order (deterministic)."""
        for idx in range(cuda.grid(1), N * M, cuda.gridsize(1)):
            r, i = idx // M, idx % M
            acc = ftype(0.0)
            for k in range(Kd):
                acc += (A[k, i] if transpose_a else A[i, k]) * X[r, k]
            out[r, i] = acc

    @cuda.jit
    def persistent_forward(out, hbuf, c, m, a, Z, GATES, C, CPREV, HPREV, MBLK, SBLK, RBLK,
                           hU, S, P, Q, lengths, n0, close_flags, U, b, gamma, beta, V_s, V_m, b_r,
                           steps, K, psug, hgr, reverse):
        """Every step in one cooperative launch; grid syncs separate the phases of a step.

        h alternates between hbuf[0] and hbuf[1] (step s reads hbuf[s % 2]), so a
        step needs two syncs: after U h_{t-1}, and after the cells.  A step where a
        block closes (close_flags[s]) adds three more.
        """
        grid = cuda.cg.this_grid()
        B, H = c.shape
        G = U.shape[0]
        for s in range(steps):
            hcur, hnext = hbuf[s % 2], hbuf[(s + 1) % 2]
            dot_rows(hU, U, hcur, G, B, H, False)                         # U h_{t-1}
            grid.sync()
            for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
                cell_forward(out, hcur, hnext, c, m, a, Z, GATES, C, CPREV, HPREV, hU, lengths,
                             b, gamma, beta, s, psug, hgr, reverse, idx // H, idx % H)
            grid.sync()
            if hgr and close_flags[s]:
                for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
                    close_summary_cell(S, a, lengths, n0, s, K, idx // H, idx % H)
                grid.sync()
                dot_rows(P, V_s, S, H, B, H, False)                       # V_s s
                dot_rows(Q, V_m, m, H, B, H, False)                       # V_m m
                grid.sync()
                for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
                    close_forward_cell(m, a, MBLK, SBLK, RBLK, S, P, Q, b_r, lengths, n0, s, K,
                                       idx // H, idx % H)
                grid.sync()

    @cuda.jit
    def persistent_backward(DZ, DZ_step, DPRE, DP, DP_step, dmV, dsV, dh, dc, dm, da, dout,
                            GATES, C, CPREV, MBLK, SBLK, RBLK, lengths, n0, close_flags,
                            U, gamma, V_s, V_m, steps, K, psug, hgr, reverse):
        """BPTT of ``persistent_forward`` in one cooperative launch (steps in reverse)."""
        grid = cuda.cg.this_grid()
        B, H = dh.shape
        G = U.shape[0]
        for s in range(steps - 1, -1, -1):
            if hgr and close_flags[s]:                                    # the close rule first
                for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
                    close_backward_cell(dm, da, DP, DP_step, MBLK, SBLK, RBLK, lengths, n0, s, K,
                                        idx // H, idx % H)
                grid.sync()
                dot_rows(dmV, V_m, DP_step, H, B, H, True)                # V_m^T δp
                dot_rows(dsV, V_s, DP_step, H, B, H, True)                # V_s^T δp
                grid.sync()
                for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
                    close_backward_finish_cell(dm, da, dmV, dsV, lengths, n0, s, K, idx // H, idx % H)
                grid.sync()
            for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
                cell_backward(DZ, DZ_step, DPRE, dh, dc, dm, da, dout, GATES, C, CPREV, gamma,
                              lengths, s, psug, hgr, reverse, idx // H, idx % H)
            grid.sync()
            # δh_{t-1} = U^T δz_t for the rows that stepped; idle rows keep theirs.  Thread
            # (bb, j) read only dh[bb, j] above, so writing it now is safe after the sync.
            for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
                bb, j = idx // H, idx % H
                if s < lengths[bb]:
                    acc = ftype(0.0)
                    for g in range(G):
                        acc += U[g, j] * DZ_step[bb, g]
                    dh[bb, j] = acc
            grid.sync()

    return dict(persistent_forward=persistent_forward, persistent_backward=persistent_backward,
                matmul=matmul, step_forward=step_forward, close_summary=close_summary,
                close_forward=close_forward, close_backward=close_backward,
                close_backward_finish=close_backward_finish, step_backward=step_backward,
                carry_dh=carry_dh, column_sums=column_sums, gate_param_grads=gate_param_grads)


def matmul(k, C, A, Bm, M, N, Kd, sam, sak, sbk, sbn, accumulate=False):
    """C (M,N) [+]= A (M,K) B (K,N) with A, B given as flat arrays and element strides."""
    tiles = ((M + TILE - 1) // TILE) * ((N + TILE - 1) // TILE)
    k["matmul"][min(tiles, MAX_BLOCKS), (TILE, TILE)](
        C.reshape(-1), A.reshape(-1), Bm.reshape(-1), M, N, Kd, sam, sak, sbk, sbn, accumulate)


def zeros(shape, dtype):
    return cuda.to_device(np.zeros(shape, dtype))


def closing_steps(lengths, n0, K, steps):
    """(steps,) int8, 1 where at least one row closes a block (host side, from the initial n)."""
    s = np.arange(steps)
    closes = (s[None, :] < lengths[:, None]) & ((n0[:, None] + s[None, :] + 1) % K == 0)
    return closes.any(axis=0).astype(np.int8)


def cooperative_grid():
    """(blocks, threads) of a persistent launch: one block per multiprocessor, so that every
    block is resident at once (grid sync needs that); one block in the simulator."""
    if SIM:
        return 1, THREADS
    return cuda.get_current_device().MULTIPROCESSOR_COUNT, THREADS


PATHS = ("persistent", "simple")


class CudaQLCell:
    """One direction of one QL-LSTM layer on the GPU; the interface of ``layers._QLCell``.

    Host arrays in and out; parameters are copied to the device on each call.
    ``path`` picks the step loop: "persistent" (default: one cooperative launch
    for all steps, grid syncs between phases) or "simple" (a few launches per
    step, the reference the persistent path is tested against).
    """

    def __init__(self, cpu_cell, path="persistent"):
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        self.path = path
        self.cpu = cpu_cell
        self.prefix, self.H, self.psug, self.hgr = cpu_cell.prefix, cpu_cell.H, cpu_cell.psug, cpu_cell.hgr
        self.K, self.reverse, self.dtype = cpu_cell.K, cpu_cell.reverse, cpu_cell.dtype
        self.cache = None

    def _param(self, name, ndim):
        return cuda.to_device(np.ascontiguousarray(self.cpu._p(name, ndim)))

    def forward(self, x, lengths, st, need_grad=True):
        k = kernels(np.dtype(self.dtype))
        B, T, E = x.shape
        H, dt, K = self.H, self.dtype, self.K
        W, U, b = self._param("W", 2), self._param("U", 2), self._param("b", 1)
        gamma, beta = self._param("gamma", 2), self._param("beta", 2)
        V_s, V_m, b_r = self._param("V_s", 2), self._param("V_m", 2), self._param("b_r", 1)
        G = U.shape[0]
        NB = (T + K - 1) // K if self.hgr else 0
        d_x, d_len = cuda.to_device(x), cuda.to_device(lengths)
        n0 = st["n"].copy()
        d_n0 = cuda.to_device(n0)
        h, c, m, a = (cuda.to_device(np.ascontiguousarray(st[key])) for key in ("h", "c", "m", "a"))
        out, Z = zeros((B, T, H), dt), zeros((B, T, G), dt)
        GATES = zeros((B, T, 4, H), dt)
        C, CPREV, HPREV = zeros((B, T, H), dt), zeros((B, T, H), dt), zeros((B, T, H), dt)
        mblk = np.zeros((B, NB + 1 if self.hgr else 0, H), dt)
        if self.hgr:
            mblk[:, 0] = st["m"]
        MBLK, SBLK, RBLK = cuda.to_device(mblk), zeros((B, NB, H), dt), zeros((B, NB, H), dt)
        hU, S, P, Q = zeros((B, G), dt), zeros((B, H), dt), zeros((B, H), dt), zeros((B, H), dt)
        matmul(k, Z, d_x, W, B * T, G, E, E, 1, 1, E)                       # Z = x W^T
        steps = int(lengths.max())
        closes = closing_steps(lengths, n0, K, steps) if self.hgr else np.zeros(steps, np.int8)
        d_closes = cuda.to_device(closes)
        if self.path == "persistent":
            hbuf = cuda.to_device(np.stack([st["h"], st["h"]]).astype(dt))
            k["persistent_forward"][cooperative_grid()](
                out, hbuf, c, m, a, Z, GATES, C, CPREV, HPREV, MBLK, SBLK, RBLK, hU, S, P, Q,
                d_len, d_n0, d_closes, U, b, gamma, beta, V_s, V_m, b_r,
                steps, K, self.psug, self.hgr, self.reverse)
            h = hbuf[steps % 2]
        else:
            grid = grid_for(B * H)
            for s in range(steps):
                matmul(k, hU, h, U, B, G, H, H, 1, 1, H)                    # U h_{t-1}
                k["step_forward"][grid](out, h, c, m, a, Z, GATES, C, CPREV, HPREV, hU, d_len, b,
                                        gamma, beta, s, self.psug, self.hgr, self.reverse)
                if closes[s]:
                    k["close_summary"][grid](S, a, d_len, d_n0, s, K)
                    matmul(k, P, S, V_s, B, H, H, H, 1, 1, H)               # V_s s
                    matmul(k, Q, m, V_m, B, H, H, H, 1, 1, H)               # V_m m
                    k["close_forward"][grid](m, a, MBLK, SBLK, RBLK, S, P, Q, b_r, d_len, d_n0,
                                             s, K)
        for key, arr in (("h", h), ("c", c), ("m", m), ("a", a)):
            st[key][...] = arr.copy_to_host()
        if self.hgr:
            st["n"][...] = (n0 + lengths) % K
        self.cache = dict(x=d_x, lengths=lengths, d_len=d_len, d_n0=d_n0, closes=closes, d_closes=d_closes, Z=Z,
                          GATES=GATES, C=C, CPREV=CPREV, HPREV=HPREV, MBLK=MBLK, SBLK=SBLK,
                          RBLK=RBLK, W=W, U=U, gamma=gamma, V_s=V_s, V_m=V_m, NB=NB)
        return out.copy_to_host()

    def backward(self, dx, grads, dout, dst):
        """Accumulate into host ``dx`` and ``grads``; ``dst`` goes from d(final) to d(initial)."""
        k = kernels(np.dtype(self.dtype))
        cc = self.cache
        x, lengths, d_len, d_n0 = cc["x"], cc["lengths"], cc["d_len"], cc["d_n0"]
        B, T, E = x.shape
        H, dt, K, NB = self.H, self.dtype, self.K, cc["NB"]
        G = cc["U"].shape[0]
        d_dout = cuda.to_device(dout)
        dh, dc, dm, da = (cuda.to_device(np.ascontiguousarray(dst[key])) for key in ("h", "c", "m", "a"))
        DZ, DZ_step = zeros((B, T, G), dt), zeros((B, G), dt)
        DPRE = zeros((B, T, 4, H), dt)
        DP, DP_step = zeros((B, NB, H), dt), zeros((B, H), dt)
        dhU, dmV, dsV = zeros((B, H), dt), zeros((B, H), dt), zeros((B, H), dt)
        steps = int(lengths.max())
        if self.path == "persistent":
            k["persistent_backward"][cooperative_grid()](
                DZ, DZ_step, DPRE, DP, DP_step, dmV, dsV, dh, dc, dm, da, d_dout,
                cc["GATES"], cc["C"], cc["CPREV"], cc["MBLK"], cc["SBLK"], cc["RBLK"], d_len, d_n0,
                cc["d_closes"], cc["U"], cc["gamma"], cc["V_s"], cc["V_m"],
                steps, K, self.psug, self.hgr, self.reverse)
        else:
            grid = grid_for(B * H)
            for s in range(steps - 1, -1, -1):
                if cc["closes"][s]:                                        # the close rule first
                    k["close_backward"][grid](dm, da, DP, DP_step, cc["MBLK"], cc["SBLK"],
                                              cc["RBLK"], d_len, d_n0, s, K)
                    matmul(k, dmV, DP_step, cc["V_m"], B, H, H, H, 1, H, 1)  # V_m^T δp
                    matmul(k, dsV, DP_step, cc["V_s"], B, H, H, H, 1, H, 1)  # V_s^T δp
                    k["close_backward_finish"][grid](dm, da, dmV, dsV, d_len, d_n0, s, K)
                k["step_backward"][grid](DZ, DZ_step, DPRE, dh, dc, dm, da, d_dout, cc["GATES"],
                                         cc["C"], cc["CPREV"], cc["gamma"], d_len, s, self.psug,
                                         self.hgr, self.reverse)
                matmul(k, dhU, DZ_step, cc["U"], B, H, G, G, 1, H, 1)        # U^T δz_t
                k["carry_dh"][grid](dh, dhU, d_len, s, False)
        BT = B * T
        dW, dU, db = zeros((G, E), dt), zeros((G, H), dt), zeros(G, dt)
        d_dx = zeros((B, T, E), dt)
        matmul(k, dW, DZ, x, G, E, BT, 1, G, E, 1)                          # Σ δz x^T
        matmul(k, dU, DZ, cc["HPREV"], G, H, BT, 1, G, H, 1)                # Σ δz h_{t-1}^T
        matmul(k, d_dx, DZ, cc["W"], BT, E, G, G, 1, E, 1)                  # W^T δz
        k["column_sums"][grid_for(G)](db, DZ.reshape(-1), BT, G)
        p = self.prefix
        grads[p + "W"] += dW.copy_to_host()
        grads[p + "U"] += dU.copy_to_host()
        grads[p + "b"] += db.copy_to_host()
        dx += d_dx.copy_to_host()
        if self.psug:
            dgamma, dbeta = zeros((4, H), dt), zeros((4, H), dt)
            k["gate_param_grads"][grid_for(4 * H)](dgamma, dbeta, DPRE.reshape(BT, 4, H),
                                                  cc["Z"].reshape(BT, H), BT)
            grads[p + "gamma"] += dgamma.copy_to_host()
            grads[p + "beta"] += dbeta.copy_to_host()
        if self.hgr:
            dV_s, dV_m, db_r = zeros((H, H), dt), zeros((H, H), dt), zeros(H, dt)
            matmul(k, dV_s, DP, cc["SBLK"], H, H, B * NB, 1, H, H, 1)       # Σ δp s^T
            for bb in range(B):                                             # Σ δp m^T, row by row
                matmul(k, dV_m, DP[bb], cc["MBLK"][bb], H, H, NB, 1, H, H, 1, accumulate=True)
            k["column_sums"][grid_for(H)](db_r, DP.reshape(-1), B * NB, H)
            grads[p + "V_s"] += dV_s.copy_to_host()
            grads[p + "V_m"] += dV_m.copy_to_host()
            grads[p + "b_r"] += db_r.copy_to_host()
        for key, arr in (("h", dh), ("c", dc), ("m", dm), ("a", da)):
            dst[key][...] = arr.copy_to_host()
