"""QL-LSTM recurrent layer on the GPU, one direction (``CudaQLCell``): two step loops.

The same equations and buffers as ``qlnumba/kernels/recurrent.py`` (read that file
first).  The GPU path is spread over these modules, each read on its own:

- ``matmul.py``: the products before and after the step loop (x W^T, the weight
  gradients), register-blocked shared-memory tiles; for float32 with MATMUL_TENSOR_CORES
  (the default), TF32 tensor-core ones (``tensor_cores.py``).
- ``cells.py``: the per-element bodies of a step (``cell_forward``, the block close,
  ``cell_backward``) as device functions, and the simple path's kernels.
- ``persistent.py``: the persistent step loops, one cooperative launch for all steps.
- ``arrays.py``: zeroing, fixed-order sums, and the ``Workspace`` of reused buffers.

Each setting lives in the module it steers (``matmul.MATMUL_TENSOR_CORES``,
``persistent.ITEM_COLS``, ...), and each kernel factory (``cells.cell_kernels``,
``persistent.persistent_kernels``, ``matmul.matmul_kernel``, ``arrays.array_kernels``) is
looked up in its own module when called, so tools replace them there
(``scripts/ptx_check.py``, ``bench/gpu_profile.py``).

This module runs one layer direction's forward and BPTT with them.  The step loop is
either persistent (the default; ``persistent_plan`` says whether it fits) or simple (the
tested reference): a few launches per step, a tiled product U h_{t-1}, then one thread per
(row, hidden unit).  Gradient sums over rows and steps are loops in a fixed order, never
atomics, so results are deterministic.

Shapes legend (device arrays, C order): those of ``cells.py``, and
  x (B,T,E)  out (B,T,H);  W (G,E), U (G,H), b (G,), gamma, beta (4,H), V_s, V_m (H,H), b_r (H,)
  persistent double buffers: hbuf, mbuf, S (2,B,H), DZbuf (2,B,G) (the simple path uses
  DZbuf[0] as DZ_step); MPRE (B*NB, H): m before each block close
"""
import numpy as np

from . import cells, persistent
from .arrays import Workspace, clear_tail, column_sums, copy_rows, cuda, grid_for, sum_over_rows, zeros
from .matmul import matmul
from .persistent import launch_persistent, persistent_plan


def closing_steps(lengths, n0, K, steps):
    """(steps,) int8, 1 where at least one row closes a block (host side, from the initial n).

    Row r closes after step s where s < lengths[r] and (n0[r] + s + 1) % K == 0: every K-th
    step from (K - 1 - n0[r]) % K.  Rows with the same first closing step close together up
    to the longest of them, so one slice per distinct first step does it (no (B, steps) mask)."""
    closes = np.zeros(steps, np.int8)
    first = (K - 1 - np.asarray(n0)) % K
    for f in np.unique(first):
        closes[f:min(steps, int(lengths[first == f].max())):K] = 1
    return closes


PATHS = ("persistent", "simple")
PARAM_NDIM = dict(W=2, U=2, b=1, gamma=2, beta=2, V_s=2, V_m=2, b_r=1)   # a cell's parameters
PARAM_NAMES = tuple(PARAM_NDIM)


class CudaQLCell:
    """One direction of one QL-LSTM layer on the GPU; the interface of ``layers._QLCell``.

    Two interfaces:

    - ``forward`` / ``backward``: host arrays in and out (the layer API); the
      parameters are copied to the device on each call.
    - ``forward_device`` / ``backward_device``: device arrays in and out, with
      the parameters and gradient accumulators given as dicts of device arrays
      (short names: W, U, b, gamma, beta, V_s, V_m, b_r); only the small per-row
      state (h, c, m, a, n) crosses to the host, and not even that with a state of
      None (zeros in, the final state left on the device).  This is the training-loop
      path.

    ``path`` picks the step loop: "persistent" (default: one cooperative launch
    for all steps) or "simple" (a few launches per step, the reference the
    persistent path is tested against; also used where a part's slice of U does
    not fit in shared memory, see ``persistent_plan``).
    """

    param_names = PARAM_NAMES

    def __init__(self, cpu_cell, path="persistent"):
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        self.path = path
        self.row_groups = None                 # persistent_plan's options (None: its defaults)
        self.item_rows = None
        self.item_cols = None                  # None: ITEM_COLS (None: 4 for narrow parts, else 8)
        self.cpu = cpu_cell
        self.prefix, self.H, self.psug, self.hgr = cpu_cell.prefix, cpu_cell.H, cpu_cell.psug, cpu_cell.hgr
        self.K, self.reverse, self.dtype = cpu_cell.K, cpu_cell.reverse, cpu_cell.dtype
        self.cache = None
        self.workspace = Workspace(self.dtype)
        self.final_state = self.initial_state_grads = None   # device views (see forward_device)

    def device_params(self):
        """The cell's parameters as device arrays (copied from the host arrays now)."""
        return {name: cuda.to_device(np.ascontiguousarray(self.cpu._p(name, PARAM_NDIM[name])))
                for name in PARAM_NAMES}

    def device_grads(self):
        """Zeroed device gradient accumulators shaped like ``device_params``."""
        return {name: zeros(self.cpu._p(name, PARAM_NDIM[name]).shape, self.dtype)
                for name in PARAM_NAMES}

    def _plan(self, B, G):
        if self.path != "persistent":
            return None
        return persistent_plan(B, self.H, G, np.dtype(self.dtype).itemsize, self.hgr, self.row_groups,
                               self.item_rows, self.item_cols)

    def forward(self, x, lengths, st, need_grad=True):
        out = self.forward_device(cuda.to_device(x), lengths, st, self.device_params(), need_grad)
        return out.copy_to_host()

    def backward(self, dx, grads, dout, dst):
        """Accumulate into host ``dx`` and ``grads``; ``dst`` goes from d(final) to d(initial)."""
        dgrads = self.device_grads()
        d_dx = self.backward_device(cuda.to_device(dout), dgrads, dst)
        dx += d_dx.copy_to_host()
        for name, g in dgrads.items():
            if self.prefix + name in grads:
                grads[self.prefix + name] += g.copy_to_host()

    def forward_device(self, d_x, lengths, st, P, need_grad=True):
        """Device x (B,T,E) in, device out (B,T,H) back; host ``lengths`` and state ``st``
        (updated in place), or st = None: start from zeros and download nothing (the final
        state stays on the device, ``final_state``); P: device parameters.  Saves what
        ``backward_device`` needs.  ``out`` and ``final_state`` are buffers of this cell's
        workspace: valid until its next forward_device."""
        k = cells.cell_kernels(np.dtype(self.dtype))
        B, T, E = d_x.shape
        H, K = self.H, self.K
        G = P["U"].shape[0]
        NB = (T + K - 1) // K if self.hgr else 0
        ws = self.workspace
        sc = ws.scratch                          # for a product's split-k chunks
        n0 = np.zeros(B, np.int64) if st is None else st["n"].copy()
        steps = int(lengths.max())
        closes = closing_steps(lengths, n0, K, steps) if self.hgr else np.zeros(steps, np.int8)
        plan = self._plan(B, G)
        bar = np.zeros(persistent.barrier_slots(plan) if plan is not None else 0, np.int64)
        ints = ws.put_many("ints", dict(bar=bar, lengths=lengths, n0=n0, closes=closes), np.int64)  # one copy
        d_len, d_n0, d_closes, d_bar = ints["lengths"], ints["n0"], ints["closes"], ints["bar"]
        state = dict(c=("c", (B, H)), a=("a", (B, H)))
        if self.hgr:
            state["m0"] = ("m", (B, H))
        state.update(dict(hbuf=("h", (2, B, H)), mbuf=("m", (2, B, H))) if plan is not None else
                     dict(h=("h", (B, H)), m=("m", (B, H))))
        bufs = ws.zeros_and_state("forward", dict(
            MBLK=(B, NB + 1 if self.hgr else 0, H), SBLK=(B, NB, H), RBLK=(B, NB, H), hU=(B, G),
            S=((2, B, H) if plan is not None else (B, H)), P=(B, H), Q=(B, H)), state, st)
        MBLK, SBLK, RBLK, hU = (bufs[n] for n in ("MBLK", "SBLK", "RBLK", "hU"))
        c, a, Pv, Q = bufs["c"], bufs["a"], bufs["P"], bufs["Q"]
        # out and HPREV are not cleared: the step loops write zeros at a row's padding steps
        # up to the longest row, clear_tail after it
        out, HPREV = ws.empty("out", (B, T, H)), ws.empty("HPREV", (B, T, H))
        clear_tail(out, steps)
        clear_tail(HPREV, steps)
        GATES, Z = ws.empty("GATES", (B, T, 4, H)), ws.empty("Z", (B, T, G))
        C, CPREV = ws.empty("C", (B, T, H)), ws.empty("CPREV", (B, T, H))
        if self.hgr:                                                       # MBLK[:, 0] = initial m
            copy_rows(MBLK.reshape(MBLK.size), bufs["m0"].reshape(B * H), B, 1, NB + 1, 1, H)
        matmul(Z, d_x, P["W"], B * T, G, E, E, 1, 1, E, scratch=sc)         # Z = x W^T
        if plan is not None:
            hbuf, mbuf, Sbuf = bufs["hbuf"], bufs["mbuf"], bufs["S"]
            launch_persistent(
                persistent.loops(self.dtype, plan)["persistent_forward"],
                plan, plan.fwd_bytes,
                out, hbuf, c, mbuf, a, Sbuf, Z, GATES, C, CPREV, HPREV, MBLK, SBLK, RBLK, hU, Pv, Q,
                d_len, d_n0, d_closes, d_bar, P["U"], P["b"], P["gamma"], P["beta"], P["V_s"], P["V_m"],
                P["b_r"], steps, K, plan.ugroups, plan.rgroups, self.psug, self.hgr, self.reverse)
            h, m = hbuf[steps % 2], mbuf[int(closes.sum()) % 2]
        else:
            h, m, S = bufs["h"], bufs["m"], bufs["S"]
            grid = grid_for(B * H)
            for s in range(steps):
                matmul(hU, h, P["U"], B, G, H, H, 1, 1, H, scratch=sc)      # U h_{t-1}
                k["step_forward"][grid](out, h, c, m, a, Z, GATES, C, CPREV, HPREV, hU, d_len,
                                        P["b"], P["gamma"], P["beta"], s, self.psug, self.hgr,
                                        self.reverse)
                if closes[s]:
                    k["close_summary"][grid](S, a, d_len, d_n0, s, K)
                    matmul(Pv, S, P["V_s"], B, H, H, H, 1, 1, H, scratch=sc)  # V_s s
                    matmul(Q, m, P["V_m"], B, H, H, H, 1, 1, H, scratch=sc)  # V_m m
                    k["close_forward"][grid](m, a, MBLK, SBLK, RBLK, S, Pv, Q, P["b_r"], d_len,
                                             d_n0, s, K)
        self.final_state = dict(h=h, c=c, m=m, a=a)
        if st is not None:
            for key, arr in self.final_state.items():
                st[key][...] = arr.copy_to_host()
            if self.hgr:
                st["n"][...] = (n0 + lengths) % K
        self.cache = dict(x=d_x, lengths=lengths, d_len=d_len, d_n0=d_n0, closes=closes,
                          d_closes=d_closes, d_bar=d_bar, Z=Z, GATES=GATES, C=C, CPREV=CPREV, HPREV=HPREV,
                          MBLK=MBLK, SBLK=SBLK, RBLK=RBLK, P=P, NB=NB) if need_grad else None
        return out

    def backward_device(self, d_dout, grads, dst):
        """Device δout (B,T,H) in, device δx (B,T,E) back (a workspace buffer, valid until
        the next backward_device); accumulates into the device ``grads`` (short names);
        host ``dst`` goes from d(final) to d(initial), or dst = None: zero gradients of the
        final state, and those of the initial state stay on the device (``initial_state_grads``)."""
        if self.cache is None:
            raise ValueError("backward called before forward() (or after forward(..., need_grad=False))")
        k = cells.cell_kernels(np.dtype(self.dtype))
        cc = self.cache
        x, lengths, d_len, d_n0, P = cc["x"], cc["lengths"], cc["d_len"], cc["d_n0"], cc["P"]
        B, T, E = x.shape
        H, K, NB = self.H, self.K, cc["NB"]
        G = P["U"].shape[0]
        ws = self.workspace
        sc = ws.scratch                          # for a product's split-k chunks
        steps = int(lengths.max())
        plan = self._plan(B, G)
        NS = 9 if self.psug else 4
        bufs = ws.zeros_and_state("backward", dict(
            SUMS=(B, NS, H), DP=(B, NB, H), DP_step=(B, H), dmV=(B, H), dsV=(B, H), DZbuf=(2, B, G),
            dhU=(B, H)), {"d" + key: (key, (B, H)) for key in "hcma"}, dst)
        dh, dc, dm, da = (bufs["d" + key] for key in "hcma")
        SUMS, DP, DP_step, dmV, dsV = (bufs[n] for n in ("SUMS", "DP", "DP_step", "dmV", "dsV"))
        DZ = ws.empty("DZ", (B, T, G))                     # not cleared: as out in forward_device
        clear_tail(DZ, steps)
        if plan is not None:
            DZbuf = bufs["DZbuf"]
            launch_persistent(
                persistent.loops(self.dtype, plan)["persistent_backward"],
                plan, plan.bwd_bytes,
                DZ, DZbuf, SUMS, DP, DP_step, dmV, dsV, dh, dc, dm, da, d_dout,
                cc["GATES"], cc["C"], cc["CPREV"], cc["Z"], cc["MBLK"], cc["SBLK"], cc["RBLK"],
                d_len, d_n0, cc["d_closes"], cc["d_bar"], P["U"], P["gamma"], P["V_s"], P["V_m"],
                steps, K, plan.ugroups, plan.rgroups, self.psug, self.hgr, self.reverse)
        else:
            DZ_step, dhU = bufs["DZbuf"][0], bufs["dhU"]
            grid = grid_for(B * H)
            for s in range(steps - 1, -1, -1):
                if cc["closes"][s]:                                        # the close rule first
                    k["close_backward"][grid](dm, da, DP, DP_step, cc["MBLK"], cc["SBLK"],
                                              cc["RBLK"], d_len, d_n0, s, K)
                    matmul(dmV, DP_step, P["V_m"], B, H, H, H, 1, H, 1, scratch=sc)  # V_m^T δp
                    matmul(dsV, DP_step, P["V_s"], B, H, H, H, 1, H, 1, scratch=sc)  # V_s^T δp
                    k["close_backward_finish"][grid](dm, da, dmV, dsV, d_len, d_n0, s, K)
                k["step_backward"][grid](DZ, DZ_step, SUMS, dh, dc, dm, da, d_dout, cc["GATES"],
                                         cc["C"], cc["CPREV"], cc["Z"], P["gamma"], d_len, s,
                                         self.psug, self.hgr, self.reverse)
                matmul(dhU, DZ_step, P["U"], B, H, G, G, 1, H, 1, scratch=sc)  # U^T δz_t
                k["carry_dh"][grid](dh, dhU, d_len, s, False)
        BT = B * T
        d_dx = ws.empty("dx", (B, T, E))
        acc = dict(accumulate=True, scratch=sc)
        matmul(grads["W"], DZ, x, G, E, BT, 1, G, E, 1, **acc)                    # Σ δz x^T
        matmul(grads["U"], DZ, cc["HPREV"], G, H, BT, 1, G, H, 1, **acc)          # Σ δz h_{t-1}^T
        matmul(d_dx, DZ, P["W"], BT, E, G, G, 1, E, 1, scratch=sc)                # W^T δz
        sums = SUMS.reshape(B * NS * H)                    # each row's sums, over the rows:
        sum_over_rows(grads["b"], sums, B, G, NS * H)                                   # Σ δz
        if self.psug:
            sum_over_rows(grads["gamma"].reshape(4 * H), sums[H:], B, 4 * H, NS * H)     # Σ δp_k z
            sum_over_rows(grads["beta"].reshape(4 * H), sums[5 * H:], B, 4 * H, NS * H)     # Σ δp_k
        if self.hgr:
            matmul(grads["V_s"], DP, cc["SBLK"], H, H, B * NB, 1, H, H, 1, **acc)     # Σ δp s^T
            MPRE = ws.empty("MPRE", (B * NB, H))                           # m before each close
            copy_rows(MPRE.reshape(B * NB * H), cc["MBLK"].reshape(B * (NB + 1) * H), B * NB, NB, NB,
                      NB + 1, H)
            matmul(grads["V_m"], DP, MPRE, H, H, B * NB, 1, H, H, 1, **acc)      # Σ δp m^T
            column_sums(grads["b_r"], DP.reshape(B * NB * H), B * NB, H, sc)
        self.initial_state_grads = dict(h=dh, c=dc, m=dm, a=da)
        if dst is not None:
            for key, arr in self.initial_state_grads.items():
                dst[key][...] = arr.copy_to_host()
        return d_dx
