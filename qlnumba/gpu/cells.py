"""The QL-LSTM cell on the GPU: its per-element bodies as device functions, and the simple
step path's kernels made of them; the GRU cell's bodies too (``gru_cell_forward``,
``gru_cell_backward``: ``gru.py`` runs them, its kernels and the persistent loops).

The same equations and saved buffers as ``qlnumba/kernels/recurrent.py`` (read that file
first).  One thread runs one (row bb, hidden unit j) of a step: ``cell_forward``
(``cell_inputs``, then ``cell_update``), the block close (``close_*_cell``) and BPTT's
``cell_backward``.  The persistent step loops (``persistent.py``) call these device
functions; the simple path (``recurrent.CudaQLCell`` with path="simple", the tested
reference) launches the kernels below once per step, one thread per (row, unit), after a
tiled product U h_{t-1} (``matmul.py``).

Shapes legend (device arrays, C order)
  B rows, T padded steps, H hidden units, G = H (psug) or 4H, NB = (T + K - 1) // K
  state h, c, m, a (B,H);  hU (B,G) = U h_{t-1};  lengths, n0 (B,) int64
  saved: Z (B,T,G), GATES (B,T,4,H), C, CPREV, HPREV (B,T,H), MBLK (B,NB+1,H), SBLK, RBLK (B,NB,H)
  block close: S (B,H) the summary s; P, Q (B,H) = V_s s, V_m m
  backward: DZ (B,T,G), DZ_step (B,G), DP (B,NB,H) δ of the block gates, DP_step (B,H),
    dmV, dsV (B,H) = V_m^T δp, V_s^T δp;  dh, dc, dm, da (B,H) δ of the state;
    SUMS (B,NS,H) each row's sums over its steps for the bias (and PSUG's γ, β) gradients:
    NS = 4 (δb as (4,H)) or, with psug, 9 (δb, then δγ_k, then δβ_k)
"""
import math
from functools import lru_cache

import numpy as np
from numba import float32, float64

from . import get_cuda
from .arrays import DEVICE_JIT, divmod32, index32

cuda = get_cuda()


@lru_cache(maxsize=None)
def sigmoid_for(dtype):
    """σ(x) = 1 / (1 + exp(-x)) as a device function, in ``dtype`` (GRU uses it too)."""
    one = np.dtype(dtype).type(1.0)

    @cuda.jit(device=True, inline=True, **DEVICE_JIT)
    def sigmoid(x):
        return one / (one + math.exp(-x))
    return sigmoid


@lru_cache(maxsize=None)
def cell_kernels(dtype):
    """Compile the cell's device functions and the simple path's step kernels for one
    float dtype."""
    ftype = float32 if np.dtype(dtype) == np.float32 else float64
    one = np.dtype(dtype).type(1.0)
    sigmoid = sigmoid_for(np.dtype(dtype))

    @cuda.jit(device=True, **DEVICE_JIT)
    def cell_inputs(hcur, c, m, a, Z, lengths, s, psug, hgr, reverse, bb, j):
        """What step s of row bb, unit j reads besides U h and the parameters: (active,
        pos, h_{t-1}, c_{t-1}, a, m, the step's 1 (PSUG) or 4 values of x W^T); idle rows
        (s >= length) read h alone."""
        H = index32(c.shape[1])
        zero = ftype(0.0)
        L = lengths[bb]
        if s >= L:                                   # idle: pos = s, a padding step
            return False, index32(s), hcur[bb, j], zero, zero, zero, zero, zero, zero, zero
        pos = index32(L - 1 - s if reverse else s)
        hprev, cprev = hcur[bb, j], c[bb, j]
        a_old = a[bb, j] if hgr else zero
        m_old = m[bb, j] if hgr else zero
        z0 = Z[bb, pos, j]
        z1 = Z[bb, pos, H + j] if not psug else zero
        z2 = Z[bb, pos, 2 * H + j] if not psug else zero
        z3 = Z[bb, pos, 3 * H + j] if not psug else zero
        return True, pos, hprev, cprev, a_old, m_old, z0, z1, z2, z3

    @cuda.jit(device=True, **DEVICE_JIT)
    def cell_update(out, hnext, c, a, Z, GATES, C, CPREV, HPREV, hU, b, gamma, beta, psug, hgr,
                    bb, j, inputs):
        """Step s of row bb, unit j from its ``cell_inputs``: writes h_t to hnext.

        Every load comes before the first store.  As far as the compiler knows the
        arrays may alias, so it cannot move a load above a store, and loads separated by
        stores each wait for their own round trip to memory; issued together, they wait
        once.  The persistent loop pays this wait on every step (3-5% of an H100 step)."""
        active, pos, hprev, cprev, a_old, m_old, z0, z1, z2, z3 = inputs
        if not active:
            hnext[bb, j] = hprev                                          # idle rows keep h
            out[bb, pos, j] = 0.0           # padding step pos = s: zeros (nothing clears the buffers)
            HPREV[bb, pos, j] = 0.0
            return
        H = index32(c.shape[1])
        if psug:
            z = z0 + hU[bb, j] + b[j]                                     # z_t = W x + U h + b
            pi = gamma[0, j] * z + beta[0, j]
            pf = gamma[1, j] * z + beta[1, j]
            pg = gamma[2, j] * z + beta[2, j]
            po = gamma[3, j] * z + beta[3, j]
            Z[bb, pos, j] = z
        else:
            pi = z0 + (hU[bb, j] + b[j])                                  # z_k = W_k x + (U_k h + b_k)
            pf = z1 + (hU[bb, H + j] + b[H + j])
            pg = z2 + (hU[bb, 2 * H + j] + b[2 * H + j])
            po = z3 + (hU[bb, 3 * H + j] + b[3 * H + j])
            Z[bb, pos, j] = pi
            Z[bb, pos, H + j] = pf
            Z[bb, pos, 2 * H + j] = pg
            Z[bb, pos, 3 * H + j] = po
        HPREV[bb, pos, j] = hprev
        CPREV[bb, pos, j] = cprev
        ig, fg, gg, og = sigmoid(pi), sigmoid(pf), math.tanh(pg), sigmoid(po)
        GATES[bb, pos, 0, j] = ig
        GATES[bb, pos, 1, j] = fg
        GATES[bb, pos, 2, j] = gg
        GATES[bb, pos, 3, j] = og
        ct = fg * cprev + ig * gg                                         # c_t = f c + i g
        c[bb, j] = ct
        C[bb, pos, j] = ct
        hhat = og * math.tanh(ct)                                         # ĥ_t = o tanh(c_t)
        if hgr:
            a[bb, j] = a_old + hhat                                       # a += ĥ_t
            hhat += m_old                                                 # h_t = ĥ_t + m
        hnext[bb, j] = hhat
        out[bb, pos, j] = hhat

    @cuda.jit(device=True, **DEVICE_JIT)
    def cell_forward(out, hcur, hnext, c, m, a, Z, GATES, C, CPREV, HPREV, hU, lengths, b, gamma,
                     beta, s, psug, hgr, reverse, bb, j):
        """Step s of row bb, unit j: reads h_{t-1} from hcur, writes h_t to hnext (may be
        hcur): ``cell_inputs``, then ``cell_update``."""
        cell_update(out, hnext, c, a, Z, GATES, C, CPREV, HPREV, hU, b, gamma, beta, psug, hgr,
                    bb, j, cell_inputs(hcur, c, m, a, Z, lengths, s, psug, hgr, reverse, bb, j))

    @cuda.jit
    def step_forward(out, h, c, m, a, Z, GATES, C, CPREV, HPREV, hU, lengths, b, gamma, beta,
                     s, psug, hgr, reverse):
        B, H = h.shape
        for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            cell_forward(out, h, h, c, m, a, Z, GATES, C, CPREV, HPREV, hU, lengths, b, gamma,
                         beta, s, psug, hgr, reverse, idx // H, idx % H)

    @cuda.jit(device=True, **DEVICE_JIT)
    def closes_at(lengths, n0, s, K, bb):
        """Whether row bb closes a block at step s (from its initial n, no saved flags)."""
        return s < lengths[bb] and divmod32(n0[bb] + s + 1, K)[1] == 0

    @cuda.jit(device=True, **DEVICE_JIT)
    def close_summary_cell(S, a, lengths, n0, s, K, bb, j):
        # / ftype(K): in the layer's type (a / K divided a float32 layer's a in float64, a
        # slow routine on a GPU).  The same value: an IEEE float32 quotient equals the float64
        # quotient rounded to float32 (what the CPU kernels store)
        S[bb, j] = a[bb, j] / ftype(K) if closes_at(lengths, n0, s, K, bb) else ftype(0.0)

    @cuda.jit(device=True, **DEVICE_JIT)
    def close_forward_cell(mnext, m, a, MBLK, SBLK, RBLK, S, pq, b_r, lengths, n0, s, K, bb, j):
        """The block close of row bb, unit j, given pq = (V_s s + V_m m)[bb, j]; mnext may be m.
        Rows that do not close copy m into mnext."""
        if not closes_at(lengths, n0, s, K, bb):
            mnext[bb, j] = m[bb, j]
            return
        jb = divmod32(n0[bb] + s + 1, K)[0] - 1
        r = sigmoid(pq + b_r[j])                                          # r = σ(V_s s + V_m m + b_r)
        mj = r * m[bb, j] + (one - r) * S[bb, j]                          # m = r m + (1-r) s
        SBLK[bb, jb, j] = S[bb, j]
        RBLK[bb, jb, j] = r
        MBLK[bb, jb + 1, j] = mj
        mnext[bb, j] = mj
        a[bb, j] = 0.0

    @cuda.jit(device=True, **DEVICE_JIT)
    def close_backward_cell(dm, da, DP, DP_step, MBLK, SBLK, RBLK, lengths, n0, s, K, bb, j):
        if not closes_at(lengths, n0, s, K, bb):
            DP_step[bb, j] = 0.0
            return
        jb = divmod32(n0[bb] + s + 1, K)[0] - 1
        r = RBLK[bb, jb, j]
        dm_after = dm[bb, j]                                          # δm' of m' = r m + (1-r) s
        dp = dm_after * (MBLK[bb, jb, j] - SBLK[bb, jb, j]) * r * (one - r)
        DP[bb, jb, j] = dp
        DP_step[bb, j] = dp
        dm[bb, j] = dm_after * r
        da[bb, j] = dm_after * (one - r)

    @cuda.jit(device=True, **DEVICE_JIT)
    def close_backward_finish_cell(dm, da, dmv, dsv, K, bb, j):
        """dmv, dsv: (V_m^T δp)[bb, j], (V_s^T δp)[bb, j] of a closing row."""
        dm[bb, j] += dmv                                              # δm += V_m^T δp
        da[bb, j] = (da[bb, j] + dsv) / ftype(K)                      # δa = (δs + V_s^T δp) / K

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
            bb, j = idx // H, idx % H
            close_forward_cell(m, m, a, MBLK, SBLK, RBLK, S, P[bb, j] + Q[bb, j], b_r, lengths, n0,
                               s, K, bb, j)

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
            bb, j = idx // H, idx % H
            if closes_at(lengths, n0, s, K, bb):
                close_backward_finish_cell(dm, da, dmV[bb, j], dsV[bb, j], K, bb, j)

    @cuda.jit(device=True, **DEVICE_JIT)
    def cell_backward(DZ, DZ_step, SUMS, dh, dc, dm, da, dout, GATES, C, CPREV, Z, gamma, lengths,
                      s, psug, hgr, reverse, bb, j):
        """BPTT of ``cell_forward`` at step s, row bb, unit j.  Every load comes before the
        first store, as there.  Adds the step's terms of the bias gradient (and PSUG's
        δγ_k = Σ δp_k z, δβ_k = Σ δp_k) to row bb's sums in SUMS (one thread owns each
        (bb, j): no atomics; the sums over rows come after the loop, ``sum_over_rows``)."""
        H = dh.shape[1]
        L = lengths[bb]
        if s >= L:                                  # padding step s: δz = 0 (DZ is not cleared)
            DZ_step[bb, j] = 0.0
            DZ[bb, s, j] = 0.0
            if not psug:
                for k in range(1, 4):
                    DZ_step[bb, k * H + j] = 0.0
                    DZ[bb, s, k * H + j] = 0.0
            return
        pos = L - 1 - s if reverse else s
        dht = dout[bb, pos, j] + dh[bb, j]                            # δh_t = δout + U^T δz_{t+1}
        dm_old = dm[bb, j] if hgr else ftype(0.0)
        dhhat = dht + da[bb, j] if hgr else dht                       # h_t = ĥ_t + m; a += ĥ_t
        ig, fg = GATES[bb, pos, 0, j], GATES[bb, pos, 1, j]
        gg, og = GATES[bb, pos, 2, j], GATES[bb, pos, 3, j]
        tc = math.tanh(C[bb, pos, j])
        dc_old, cprev = dc[bb, j], CPREV[bb, pos, j]
        # the row's sums so far: δb (4 gates, or PSUG's one), then PSUG's δγ_k, δβ_k
        s0, s1, s2, s3 = SUMS[bb, 0, j], SUMS[bb, 1, j], SUMS[bb, 2, j], SUMS[bb, 3, j]
        if psug:
            z = Z[bb, pos, j]
            s4, s5, s6 = SUMS[bb, 4, j], SUMS[bb, 5, j], SUMS[bb, 6, j]
            s7, s8 = SUMS[bb, 7, j], SUMS[bb, 8, j]
            g0, g1, g2, g3 = gamma[0, j], gamma[1, j], gamma[2, j], gamma[3, j]
        else:
            z = s4 = s5 = s6 = s7 = s8 = ftype(0.0)
            g0 = g1 = g2 = g3 = ftype(0.0)
        if hgr:
            dm[bb, j] = dm_old + dht                                  # h_t = ĥ_t + m
        dpo = dhhat * tc * og * (one - og)                            # ĥ = o tanh(c)
        dct = dc_old + dhhat * og * (one - tc * tc)
        dpi = dct * gg * ig * (one - ig)                              # c = f c_prev + i g
        dpf = dct * cprev * fg * (one - fg)
        dpg = dct * ig * (one - gg * gg)
        dc[bb, j] = dct * fg
        if psug:                                                      # gate_k = act(γ_k z + β_k)
            dz = g0 * dpi + g1 * dpf + g2 * dpg + g3 * dpo
            DZ_step[bb, j] = dz
            DZ[bb, pos, j] = dz
            SUMS[bb, 0, j] = s0 + dz                                  # δb = Σ δz
            SUMS[bb, 1, j] = s1 + dpi * z                             # δγ_k = Σ δp_k z
            SUMS[bb, 2, j] = s2 + dpf * z
            SUMS[bb, 3, j] = s3 + dpg * z
            SUMS[bb, 4, j] = s4 + dpo * z
            SUMS[bb, 5, j] = s5 + dpi                                 # δβ_k = Σ δp_k
            SUMS[bb, 6, j] = s6 + dpf
            SUMS[bb, 7, j] = s7 + dpg
            SUMS[bb, 8, j] = s8 + dpo
        else:
            DZ_step[bb, j] = dpi
            DZ_step[bb, H + j] = dpf
            DZ_step[bb, 2 * H + j] = dpg
            DZ_step[bb, 3 * H + j] = dpo
            DZ[bb, pos, j] = dpi
            DZ[bb, pos, H + j] = dpf
            DZ[bb, pos, 2 * H + j] = dpg
            DZ[bb, pos, 3 * H + j] = dpo
            SUMS[bb, 0, j] = s0 + dpi                                 # δb_k = Σ δz_k
            SUMS[bb, 1, j] = s1 + dpf
            SUMS[bb, 2, j] = s2 + dpg
            SUMS[bb, 3, j] = s3 + dpo

    @cuda.jit
    def step_backward(DZ, DZ_step, SUMS, dh, dc, dm, da, dout, GATES, C, CPREV, Z, gamma, lengths,
                      s, psug, hgr, reverse):
        B, H = dh.shape
        for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            cell_backward(DZ, DZ_step, SUMS, dh, dc, dm, da, dout, GATES, C, CPREV, Z, gamma,
                          lengths, s, psug, hgr, reverse, idx // H, idx % H)

    @cuda.jit(device=True, **DEVICE_JIT)
    def gru_cell_forward(out, hcur, hnext, GATES, HN, HPREV, ZX, hU, lengths, b, b_U, s, reverse,
                         bb, j):
        """GRU step s of row bb, unit j (``qlnumba/kernels/gru.py``'s equations; hU = U h_{t-1}
        without b_U): reads h_{t-1} from hcur, writes h_t to hnext (may be hcur); idle rows
        keep h.  out and HPREV are zero at padding (the caller clears them)."""
        H = index32(hcur.shape[1])
        L = lengths[bb]
        hprev = hcur[bb, j]
        if s >= L:
            hnext[bb, j] = hprev
            return
        pos = index32(L - 1 - s if reverse else s)
        r = sigmoid(ZX[bb, pos, j] + b[j] + hU[bb, j] + b_U[j])                    # r_t
        u = sigmoid(ZX[bb, pos, H + j] + b[H + j] + hU[bb, H + j] + b_U[H + j])    # u_t
        hn = hU[bb, 2 * H + j] + b_U[2 * H + j]                                    # U_n h + b_Un
        n = math.tanh(ZX[bb, pos, 2 * H + j] + b[2 * H + j] + r * hn)              # n_t
        ht = (one - u) * n + u * hprev                        # h_t = (1-u) n + u h_{t-1}
        GATES[bb, pos, 0, j] = r
        GATES[bb, pos, 1, j] = u
        GATES[bb, pos, 2, j] = n
        HN[bb, pos, j] = hn
        HPREV[bb, pos, j] = hprev
        hnext[bb, j] = ht
        out[bb, pos, j] = ht

    @cuda.jit(device=True, **DEVICE_JIT)
    def gru_cell_backward(DX, DHID, DH_step, dh, dout, GATES, HN, HPREV, lengths, s, reverse, bb, j):
        """BPTT of ``gru_cell_forward`` at step s, row bb, unit j: δ of the input-side (DX)
        and hidden-side (DHID, and this step's DH_step) pre-activations, and the direct
        term δh_t u of δh_{t-1} in dh (U^T DH_step is added after the step's barrier).
        Idle rows: DH_step 0, dh kept.  DX and DHID are zero at padding (the caller clears
        them)."""
        H = index32(dh.shape[1])
        L = lengths[bb]
        if s >= L:
            for k in range(3):
                DH_step[bb, k * H + j] = 0.0
            return
        pos = index32(L - 1 - s if reverse else s)
        r, u, n = GATES[bb, pos, 0, j], GATES[bb, pos, 1, j], GATES[bb, pos, 2, j]
        dht = dout[bb, pos, j] + dh[bb, j]
        dpn = dht * (one - u) * (one - n * n)                 # n = tanh(W_n x + b_n + r hn)
        dpr = dpn * HN[bb, pos, j] * r * (one - r)
        dpu = dht * (HPREV[bb, pos, j] - n) * u * (one - u)   # h = (1-u) n + u h_prev
        DX[bb, pos, j] = dpr
        DX[bb, pos, H + j] = dpu
        DX[bb, pos, 2 * H + j] = dpn
        dpnr = dpn * r                                        # hn's δ: r multiplies it
        DH_step[bb, j] = dpr
        DH_step[bb, H + j] = dpu
        DH_step[bb, 2 * H + j] = dpnr
        DHID[bb, pos, j] = dpr
        DHID[bb, pos, H + j] = dpu
        DHID[bb, pos, 2 * H + j] = dpnr
        dh[bb, j] = dht * u                                   # + U^T δ after the barrier

    @cuda.jit
    def carry_dh(dh, dhU, lengths, s, accumulate):
        """δh_{t-1} = U^T δz_t (or += it, where dh already holds a direct term, as in the
        GRU) for the rows that stepped; idle rows keep theirs."""
        B, H = dh.shape
        for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            bb, j = idx // H, idx % H
            if s < lengths[bb]:
                dh[bb, j] = dh[bb, j] + dhU[bb, j] if accumulate else dhU[bb, j]

    return dict(step_forward=step_forward, close_summary=close_summary,
                close_forward=close_forward, close_backward=close_backward,
                close_backward_finish=close_backward_finish, step_backward=step_backward,
                carry_dh=carry_dh,
                # DEVICE_FUNCTIONS: the persistent kernels call them
                cell_forward=cell_forward, cell_backward=cell_backward, closes_at=closes_at,
                close_forward_cell=close_forward_cell, close_backward_cell=close_backward_cell,
                close_backward_finish_cell=close_backward_finish_cell,
                gru_cell_forward=gru_cell_forward, gru_cell_backward=gru_cell_backward)


DEVICE_FUNCTIONS = ("cell_forward", "cell_backward", "closes_at", "close_forward_cell",
                    "close_backward_cell", "close_backward_finish_cell", "gru_cell_forward",
                    "gru_cell_backward")
