"""Chunked parallel scan kernels in Triton, shared by the scan and the fused unit recurrences.

Every recurrence here is the diagonal linear scan h_t = a_t h_{t−1} + b_t (real, or complex
with real and imaginary parts in separate planes), read as the composition of affine maps
h ↦ a h + b. Two maps compose as

    (a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2)

which is associative. The time axis (in scan order: t = k forwards, t = T − 1 − k in
reverse) is cut into chunks of CHUNK steps, and three kernels run it:

1. `_summary_kernel`, one program per (channel block, chunk, batch row): composes its chunk's
   maps step by step (a block of channels in registers) and writes the total (A_c, B_c).
2. `_carry_kernel`, one program per (channel block, batch row): scans the chunk totals in
   tiles of SUMMARY_TILE chunks with `tl.associative_scan` (the running state carried
   from tile to tile) and writes the state after every chunk.
3. `_apply_kernel`, one program per (channel block, chunk, batch row): runs its chunk again
   from the state entering it (h0 or the carry); writes h.

The inputs are read twice (kernels 1 and 3) and h written once: 5 memory passes where a
sequential kernel makes 3, in exchange for B · (T / CHUNK) · (N / BLOCK) programs instead of
B · (N / BLOCK).

The backward pass is the same machinery run in the opposite direction: with g_t the total
gradient reaching h_t,

    g_t = ∂L/∂h_t + conj(a_{t+1}) g_{t+1},   ∂L/∂b_t = g_t,   ∂L/∂a_t = g_t conj(h_{t−1})

so kernel 3 in backward mode (BWD) also reads h_{t−1} and writes the gradients that each
`MODE` needs:

- SCAN: a and b loaded as they are (a with batch and time strides, 0 to broadcast); writes
  ∂L/∂a and ∂L/∂b.
- MRU: a and b from the projection p = [c | β_raw] (B T, 2N): u = |c| − |β_raw|, z = H(u),
  s = sgn(c) ∈ {−1, +1}, a = 1 − z + ε z, b = z s. Forward also sums z (the write rate);
  backward writes ∂L/∂p with the surrogate derivative σ of H:
  dz = g ((ε − 1) h_{t−1} + s) + ρ,  ∂L/∂c = 2 σ(c) g z + sgn(c) σ(u) dz,
  ∂L/∂β_raw = −sgn(β_raw) σ(u) dz, ρ the gradient of the mean write rate per gate.
- MINGRU: p = [z_pre | h̃] (B T, 2H): z = σ(z_pre), a = 1 − z, b = z h̃; backward
  ∂L/∂z_pre = g (h̃ − h_{t−1}) z (1 − z), ∂L/∂h̃ = g z.
- LRU: p = [Re(B u) | Im(B u)] (B T, 2N), a = λ (per channel, complex), b = γ p; backward
  ∂L/∂p = γ g, and per-chunk partial sums of g conj(h_{t−1}) (for ∂L/∂λ) and
  Re(conj(p) g) (for ∂L/∂γ).

Offsets are computed in int64 (a batch row index is widened before it multiplies T), so
tensors with B · T · N ≥ 2^31 elements are addressed correctly. Loads convert to the
accumulation dtype (float32, or float64 for float64 inputs): bfloat16 and float16 are read
directly and accumulated in float32.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor

MODE_SCAN = 0
MODE_MRU = 1
MODE_MINGRU = 2
MODE_LRU = 3
# Surrogate derivatives of H that the MRU kernel knows, as the codes it branches on.
SURROGATE_CODES = {"atan": 0, "fast-sigmoid": 1, "triangle": 2, "straight-through": 3}

CHUNK = 64
BLOCK = 32
SUMMARY_TILE = 32
INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@triton.jit
def _combine_real(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _combine_complex(ar1, ai1, br1, bi1, ar2, ai2, br2, bi2):
    ar = ar1 * ar2 - ai1 * ai2
    ai = ar1 * ai2 + ai1 * ar2
    br = ar2 * br1 - ai2 * bi1 + br2
    bi = ar2 * bi1 + ai2 * br1 + bi2
    return ar, ai, br, bi


@triton.jit
def _heaviside(u):
    # H(u) with H(0) = 1.
    return tl.where(u >= 0, 1.0, 0.0).to(u.dtype)


@triton.jit
def _sgn(v):
    return tl.where(v > 0, 1.0, tl.where(v < 0, -1.0, 0.0)).to(v.dtype)


@triton.jit
def _surrogate(u, sharp, pik, KIND: tl.constexpr):
    """The surrogate derivative σ_k(u) of H (see memrnn.ops.surrogate); pik = π k."""
    if KIND == 0:
        pku = pik * u
        out = sharp / (1.0 + pku * pku)
    elif KIND == 1:
        d = 1.0 + sharp * tl.abs(u)
        out = sharp / (2.0 * d * d)
    elif KIND == 2:
        out = sharp * tl.maximum(1.0 - sharp * tl.abs(u), 0.0)
    else:
        out = sharp + 0.0 * u
    return out


@triton.jit
def _coeffs(
    a_ptr,
    b_ptr,
    aux_ptr,
    bb,
    t,
    n,
    valid,
    T,
    N,
    sa_b,
    sa_t,
    sh_b,
    sh_t,
    h_im,
    prm_ptr,
    MODE: tl.constexpr,
    HC: tl.constexpr,
    ACC: tl.constexpr,
):
    """(Re a, Im a, Re b, Im b, z) of the step at time t for channels n (BLOCK,) of batch
    row bb; the identity map (1, 0) where not `valid`. z is the MRU's write gate."""
    zero = tl.zeros(valid.shape, ACC)
    if MODE == 0:
        a_off = bb * sa_b + t * sa_t + n * HC
        b_off = bb * sh_b + t * sh_t + n * HC
        ar = tl.load(a_ptr + a_off, mask=valid, other=1.0).to(ACC)
        br = tl.load(b_ptr + b_off, mask=valid, other=0.0).to(ACC)
        if HC == 2:
            ai = tl.load(a_ptr + (a_off + 1), mask=valid, other=0.0).to(ACC)
            bi = tl.load(b_ptr + (b_off + 1), mask=valid, other=0.0).to(ACC)
        else:
            ai = zero
            bi = zero
        z = zero
    elif MODE == 1:
        p_off = (bb * T + t) * (2 * N) + n
        c = tl.load(b_ptr + p_off, mask=valid, other=0.0).to(ACC)
        beta = tl.abs(tl.load(b_ptr + (p_off + N), mask=valid, other=0.0).to(ACC))
        z = tl.where(valid, _heaviside(tl.abs(c) - beta), 0.0)
        s = 2.0 * _heaviside(c) - 1.0
        eps = tl.load(prm_ptr).to(ACC)
        ar = 1.0 - z + eps * z
        br = z * s
        ai = zero
        bi = zero
    elif MODE == 2:
        p_off = (bb * T + t) * (2 * N) + n
        zp = tl.load(b_ptr + p_off, mask=valid, other=0.0).to(ACC)
        cand = tl.load(b_ptr + (p_off + N), mask=valid, other=0.0).to(ACC)
        zg = tl.where(valid, tl.sigmoid(zp), 0.0)
        ar = 1.0 - zg
        br = zg * cand
        ai = zero
        bi = zero
        z = zero
    else:
        p_off = (bb * T + t) * (2 * N) + n
        nmask = n < N
        lam_r = tl.load(a_ptr + n, mask=nmask, other=1.0).to(ACC)
        lam_i = tl.load(a_ptr + (N + n), mask=nmask, other=0.0).to(ACC)
        gam = tl.load(aux_ptr + n, mask=nmask, other=0.0).to(ACC)
        ar = tl.where(valid, lam_r + zero, 1.0)
        ai = tl.where(valid, lam_i + zero, 0.0)
        br = gam * tl.load(b_ptr + p_off, mask=valid, other=0.0).to(ACC)
        bi = gam * tl.load(b_ptr + (p_off + N), mask=valid, other=0.0).to(ACC)
        z = zero
    return ar, ai, br, bi, z


@triton.jit
def _step_coeffs(
    a_ptr,
    b_ptr,
    aux_ptr,
    gh_ptr,
    bb,
    k,
    n,
    T,
    N,
    sa_b,
    sa_t,
    sh_b,
    sh_t,
    h_im,
    prm_ptr,
    MODE: tl.constexpr,
    BWD: tl.constexpr,
    FLIP: tl.constexpr,
    HC: tl.constexpr,
    ACC: tl.constexpr,
):
    """The map of scan position k: forward (a_t, b_t); backward, scanning the
    other way, (conj(a) of the step scanned just before, ∂L/∂h_t)."""
    valid = (k < T) & (n < N)
    if FLIP:
        t = T - 1 - k
    else:
        t = k
    if BWD:
        if FLIP:
            t_prev = t + 1
        else:
            t_prev = t - 1
        ar, ai, br, bi, z = _coeffs(
            a_ptr, b_ptr, aux_ptr, bb, t_prev, n, valid & (k >= 1), T, N,
            sa_b, sa_t, sh_b, sh_t, h_im, prm_ptr, MODE, HC, ACC,
        )  # fmt: skip
        ai = -ai
        g_off = bb * sh_b + t * sh_t + n * HC
        br = tl.load(gh_ptr + g_off, mask=valid, other=0.0).to(ACC)
        if HC == 2 or MODE == 3:
            bi = tl.load(gh_ptr + (g_off + h_im), mask=valid, other=0.0).to(ACC)
    else:
        ar, ai, br, bi, z = _coeffs(
            a_ptr, b_ptr, aux_ptr, bb, t, n, valid, T, N,
            sa_b, sa_t, sh_b, sh_t, h_im, prm_ptr, MODE, HC, ACC,
        )  # fmt: skip
    return ar, ai, br, bi, z, t, valid


@triton.jit
def _summary_kernel(
    a_ptr,
    b_ptr,
    aux_ptr,
    gh_ptr,
    sum_ptr,
    T,
    N,
    n_chunks,
    sa_b,
    sa_t,
    sh_b,
    sh_t,
    h_im,
    prm_ptr,
    MODE: tl.constexpr,
    BWD: tl.constexpr,
    FLIP: tl.constexpr,
    COMPLEX: tl.constexpr,
    HC: tl.constexpr,
    ACC: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Writes each chunk's total map (A, B) as sum[b, chunk, 0:4, n] = Re A, Im A, Re B, Im B."""
    pid_n = tl.program_id(0)
    pid_c = tl.program_id(1)
    bb = tl.program_id(2).to(tl.int64)
    k0 = pid_c.to(tl.int64) * CHUNK
    # int64 channel offsets too: every address is computed in 64-bit arithmetic.
    n = (pid_n * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    tot_ar = tl.full((BLOCK,), 1.0, ACC)
    tot_ai = tl.zeros((BLOCK,), ACC)
    tot_br = tl.zeros((BLOCK,), ACC)
    tot_bi = tl.zeros((BLOCK,), ACC)
    # A loop, not unrolled: unrolling 64 steps made compiling one kernel take minutes. Many
    # programs per SM hide the latency of each step's loads instead.
    for j in range(CHUNK):
        ar, ai, br, bi, z, t, valid = _step_coeffs(
            a_ptr, b_ptr, aux_ptr, gh_ptr, bb, k0 + j, n, T, N, sa_b, sa_t, sh_b, sh_t, h_im,
            prm_ptr, MODE, BWD, FLIP, HC, ACC,
        )  # fmt: skip
        if COMPLEX:
            tot_ar, tot_ai, tot_br, tot_bi = _combine_complex(
                tot_ar, tot_ai, tot_br, tot_bi, ar, ai, br, bi
            )
        else:
            tot_ar, tot_br = _combine_real(tot_ar, tot_br, ar, br)
    base = (bb * n_chunks + pid_c) * 4 * N + n
    nmask = n < N
    tl.store(sum_ptr + base, tot_ar, mask=nmask)
    tl.store(sum_ptr + (base + N), tot_ai, mask=nmask)
    tl.store(sum_ptr + (base + 2 * N), tot_br, mask=nmask)
    tl.store(sum_ptr + (base + 3 * N), tot_bi, mask=nmask)


@triton.jit
def _carry_kernel(
    sum_ptr,
    h0_ptr,
    carry_ptr,
    N,
    n_chunks,
    s0_b,
    h0_im,
    HAS_H0: tl.constexpr,
    COMPLEX: tl.constexpr,
    HC: tl.constexpr,
    ACC: tl.constexpr,
    TILE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """carry[b, c, 0:2, n] = the state after chunk c (Re, Im), from h0 and the chunk totals,
    TILE chunks at a time combined with `tl.associative_scan`."""
    pid_n = tl.program_id(0)
    bb = tl.program_id(1).to(tl.int64)
    n1 = (pid_n * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    nmask = n1 < N
    if HAS_H0:
        h_r = tl.load(h0_ptr + bb * s0_b + n1 * HC, mask=nmask, other=0.0).to(ACC)
        if COMPLEX:
            h_i = tl.load(h0_ptr + (bb * s0_b + n1 * HC + h0_im), mask=nmask, other=0.0).to(ACC)
        else:
            h_i = tl.zeros((BLOCK,), ACC)
    else:
        h_r = tl.zeros((BLOCK,), ACC)
        h_i = tl.zeros((BLOCK,), ACC)
    rows = tl.arange(0, TILE)[:, None]
    last = rows == TILE - 1
    n = n1[None, :]
    for c0 in range(0, n_chunks, TILE):
        c = c0 + rows
        valid = (c < n_chunks) & (n < N)
        base = (bb * n_chunks + c) * 4 * N + n
        ar = tl.load(sum_ptr + base, mask=valid, other=1.0)
        br = tl.load(sum_ptr + (base + 2 * N), mask=valid, other=0.0)
        out = (bb * n_chunks + c) * 2 * N + n
        if COMPLEX:
            ai = tl.load(sum_ptr + (base + N), mask=valid, other=0.0)
            bi = tl.load(sum_ptr + (base + 3 * N), mask=valid, other=0.0)
            ar, ai, br, bi = tl.associative_scan((ar, ai, br, bi), 0, _combine_complex)
            after_r = ar * h_r[None, :] - ai * h_i[None, :] + br
            after_i = ar * h_i[None, :] + ai * h_r[None, :] + bi
            tl.store(carry_ptr + (out + N), after_i, mask=valid)
            h_i = tl.sum(tl.where(last, after_i, 0.0), axis=0)
        else:
            ar, br = tl.associative_scan((ar, br), 0, _combine_real)
            after_r = ar * h_r[None, :] + br
        tl.store(carry_ptr + out, after_r, mask=valid)
        h_r = tl.sum(tl.where(last, after_r, 0.0), axis=0)


@triton.jit
def _apply_kernel(
    a_ptr,
    b_ptr,
    aux_ptr,
    gh_ptr,
    h0_ptr,
    h_ptr,
    carry_ptr,
    out1_ptr,
    out2_ptr,
    part_ptr,
    dh0_ptr,
    prm_ptr,
    T,
    N,
    n_chunks,
    sa_b,
    sa_t,
    sh_b,
    sh_t,
    h_im,
    s0_b,
    h0_im,
    MODE: tl.constexpr,
    BWD: tl.constexpr,
    FLIP: tl.constexpr,
    COMPLEX: tl.constexpr,
    HAS_H0: tl.constexpr,
    HC: tl.constexpr,
    KIND: tl.constexpr,
    ACC: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Forward: writes h (and the MRU's per-chunk write counts to part). Backward: g with the
    gradients of the mode (see the module notes)."""
    pid_n = tl.program_id(0)
    pid_c = tl.program_id(1)
    bb = tl.program_id(2).to(tl.int64)
    k0 = pid_c.to(tl.int64) * CHUNK
    # int64 channel offsets too: every address is computed in 64-bit arithmetic.
    n = (pid_n * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    nmask = n < N
    # The state entering the chunk: h0 (zero backward) for the first, else carry[chunk − 1].
    cin = (bb * n_chunks + pid_c - 1) * 2 * N + n
    not_first = nmask & (pid_c > 0)
    h_r = tl.load(carry_ptr + cin, mask=not_first, other=0.0).to(ACC)
    h_i = tl.zeros((BLOCK,), ACC)
    if COMPLEX:
        h_i = tl.load(carry_ptr + (cin + N), mask=not_first, other=0.0).to(ACC)
    if HAS_H0:
        first = nmask & (pid_c == 0)
        h_r += tl.load(h0_ptr + bb * s0_b + n * HC, mask=first, other=0.0).to(ACC)
        if COMPLEX:
            h_i += tl.load(h0_ptr + (bb * s0_b + n * HC + h0_im), mask=first, other=0.0).to(ACC)
    if MODE == 1:
        eps = tl.load(prm_ptr).to(ACC)
        sharp = tl.load(prm_ptr + 1).to(ACC)
        pik = tl.load(prm_ptr + 2).to(ACC)
        rate = tl.load(prm_ptr + 3).to(ACC)
    if MODE == 3:
        gam = tl.load(aux_ptr + n, mask=nmask, other=0.0).to(ACC)
    acc0 = tl.zeros((BLOCK,), ACC)
    acc1 = tl.zeros((BLOCK,), ACC)
    acc2 = tl.zeros((BLOCK,), ACC)
    for j in range(CHUNK):
        k = k0 + j
        ar, ai, br, bi, z, t, valid = _step_coeffs(
            a_ptr, b_ptr, aux_ptr, gh_ptr, bb, k, n, T, N, sa_b, sa_t, sh_b, sh_t, h_im,
            prm_ptr, MODE, BWD, FLIP, HC, ACC,
        )  # fmt: skip
        if COMPLEX:
            _, _, h_r, h_i = _combine_complex(h_r, h_i, h_r, h_i, ar, ai, br, bi)
        else:
            h_r = ar * h_r + br
        h_off = bb * sh_b + t * sh_t + n * HC
        if not BWD:
            tl.store(h_ptr + h_off, h_r, mask=valid)
            if COMPLEX:
                tl.store(h_ptr + (h_off + h_im), h_i, mask=valid)
            if MODE == 1:
                acc0 += z
        else:
            # h_{t−1} in forward order: the step scanned next here, or h0 at the start.
            if FLIP:
                t_prev = t - 1
            else:
                t_prev = t + 1
            has_prev = valid & (k < T - 1)
            at_start = valid & (k == T - 1)
            p_off = bb * sh_b + t_prev * sh_t + n * HC
            s_off = bb * s0_b + n * HC
            hp_r = tl.load(h_ptr + p_off, mask=has_prev, other=0.0).to(ACC)
            hp_r += tl.load(h0_ptr + s_off, mask=at_start, other=0.0).to(ACC)
            hp_i = tl.zeros((BLOCK,), ACC)
            if COMPLEX:
                hp_i = tl.load(h_ptr + (p_off + h_im), mask=has_prev, other=0.0).to(ACC)
                hp_i += tl.load(h0_ptr + (s_off + h0_im), mask=at_start, other=0.0).to(ACC)
            if MODE == 0:
                # out1 = ∂L/∂a, out2 = ∂L/∂b, both in h's layout.
                if COMPLEX:
                    tl.store(out1_ptr + h_off, h_r * hp_r + h_i * hp_i, mask=valid)
                    tl.store(out1_ptr + (h_off + 1), h_i * hp_r - h_r * hp_i, mask=valid)
                    tl.store(out2_ptr + (h_off + 1), h_i, mask=valid)
                else:
                    tl.store(out1_ptr + h_off, h_r * hp_r, mask=valid)
                tl.store(out2_ptr + h_off, h_r, mask=valid)
            elif MODE == 1:
                p_off = (bb * T + t) * (2 * N) + n
                c = tl.load(b_ptr + p_off, mask=valid, other=0.0).to(ACC)
                braw = tl.load(b_ptr + (p_off + N), mask=valid, other=0.0).to(ACC)
                u = tl.abs(c) - tl.abs(braw)
                zt = _heaviside(u)
                s = 2.0 * _heaviside(c) - 1.0
                dz = h_r * ((eps - 1.0) * hp_r + s) + rate
                du = dz * _surrogate(u, sharp, pik, KIND)
                dc = 2.0 * _surrogate(c, sharp, pik, KIND) * h_r * zt + _sgn(c) * du
                tl.store(out1_ptr + p_off, dc, mask=valid)
                tl.store(out1_ptr + (p_off + N), -du * _sgn(braw), mask=valid)
            elif MODE == 2:
                p_off = (bb * T + t) * (2 * N) + n
                zg = tl.sigmoid(tl.load(b_ptr + p_off, mask=valid, other=0.0).to(ACC))
                cand = tl.load(b_ptr + (p_off + N), mask=valid, other=0.0).to(ACC)
                gz = h_r * zg
                tl.store(out1_ptr + p_off, (h_r - gz) * zg * (cand - hp_r), mask=valid)
                tl.store(out1_ptr + (p_off + N), gz, mask=valid)
            else:
                p_off = (bb * T + t) * (2 * N) + n
                pr = tl.load(b_ptr + p_off, mask=valid, other=0.0).to(ACC)
                pi = tl.load(b_ptr + (p_off + N), mask=valid, other=0.0).to(ACC)
                tl.store(out1_ptr + p_off, gam * h_r, mask=valid)
                tl.store(out1_ptr + (p_off + N), gam * h_i, mask=valid)
                # Sums over the chunk: g conj(h_{t−1}) (∂L/∂λ) and Re(conj(p) g) (∂L/∂γ).
                acc0 += tl.where(valid, h_r * hp_r + h_i * hp_i, 0.0)
                acc1 += tl.where(valid, h_i * hp_r - h_r * hp_i, 0.0)
                acc2 += tl.where(valid, pr * h_r + pi * h_i, 0.0)
    if BWD:
        # ∂L/∂h0 = conj(a) g at the sequence's first step, the last one scanned here: the
        # steps past T were identities, so (h_r, h_i) is that g.
        k_last = T - 1 + bb * 0
        if FLIP:
            t_first = T - 1 - k_last
        else:
            t_first = k_last
        ar, ai, _, _, _ = _coeffs(
            a_ptr, b_ptr, aux_ptr, bb, t_first, n, nmask, T, N,
            sa_b, sa_t, sh_b, sh_t, h_im, prm_ptr, MODE, HC, ACC,
        )  # fmt: skip
        in_last = nmask & (pid_c == n_chunks - 1)
        d_off = bb * s0_b + n * HC
        tl.store(dh0_ptr + d_off, ar * h_r + ai * h_i, mask=in_last)
        if COMPLEX:
            tl.store(dh0_ptr + (d_off + h0_im), ar * h_i - ai * h_r, mask=in_last)
    if MODE == 1 and not BWD:
        tl.store(part_ptr + (bb * n_chunks + pid_c) * N + n, acc0, mask=nmask)
    if MODE == 3 and BWD:
        part = (bb * n_chunks + pid_c) * 3 * N + n
        tl.store(part_ptr + part, acc0, mask=nmask)
        tl.store(part_ptr + (part + N), acc1, mask=nmask)
        tl.store(part_ptr + (part + 2 * N), acc2, mask=nmask)


def device_guard(t: Tensor) -> contextlib.AbstractContextManager:
    """Launches on the tensors' own GPU (not the current one); nothing to do on CPU."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype: float64 for float64 (and complex128), float32 otherwise."""
    return torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32


def _tl_dtype(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


def run_chunked(
    *,
    mode: int,
    bwd: bool,
    flip: bool,
    complex_: bool,
    hc: int,
    B: int,
    T: int,
    N: int,
    a: Tensor,
    b: Tensor,
    h0: Tensor | None,
    h: Tensor,
    strides: tuple[int, int, int, int, int, int, int],
    acc: torch.dtype,
    aux: Tensor | None = None,
    gh: Tensor | None = None,
    out1: Tensor | None = None,
    out2: Tensor | None = None,
    part: Tensor | None = None,
    dh0: Tensor | None = None,
    params: Tensor | None = None,
    kind: int = 0,
    chunk: int = CHUNK,
    block: int = BLOCK,
) -> None:
    """Runs the three kernels for one scan (see the module notes); writes h (forward) or the
    gradients into out1/out2/part/dh0 (backward). strides = (sa_b, sa_t, sh_b, sh_t, h_im, s0_b,
    h0_im) in elements of the tensors' real planes."""
    sa_b, sa_t, sh_b, sh_t, h_im, s0_b, h0_im = strides
    n_chunks = triton.cdiv(T, chunk)
    n_blocks = triton.cdiv(N, block)
    sums = torch.empty(B, n_chunks, 4, N, dtype=acc, device=b.device)
    carry = torch.empty(B, n_chunks, 2, N, dtype=acc, device=b.device)
    dummy = sums
    tl_acc = _tl_dtype(acc)
    aux = dummy if aux is None else aux
    gh = dummy if gh is None else gh
    # The scan starts from h0 forward and from zero backward (where h0 is still read as
    # h_{t−1} of the first step).
    has_h0 = h0 is not None and not bwd
    h0 = dummy if h0 is None else h0
    params = dummy if params is None else params
    common = dict(MODE=mode, BWD=bwd, FLIP=flip, HC=hc, ACC=tl_acc, CHUNK=chunk, BLOCK=block)
    # Chunk totals scanned per step of the carry kernel: no more than there are chunks.
    tile = min(SUMMARY_TILE, triton.next_power_of_2(n_chunks))
    with device_guard(b):
        _summary_kernel[(n_blocks, n_chunks, B)](
            a, b, aux, gh, sums, T, N, n_chunks, sa_b, sa_t, sh_b, sh_t, h_im, params,
            COMPLEX=complex_, **common,
        )  # fmt: skip
        _carry_kernel[(n_blocks, B)](
            sums, h0, carry, N, n_chunks, s0_b, h0_im,
            HAS_H0=has_h0, COMPLEX=complex_, HC=hc, ACC=tl_acc, TILE=tile, BLOCK=block,
        )  # fmt: skip
        _apply_kernel[(n_blocks, n_chunks, B)](
            a, b, aux, gh, h0, h, carry,
            dummy if out1 is None else out1,
            dummy if out2 is None else out2,
            dummy if part is None else part,
            dummy if dh0 is None else dh0,
            params,
            T, N, n_chunks, sa_b, sa_t, sh_b, sh_t, h_im, s0_b, h0_im,
            COMPLEX=complex_, HAS_H0=has_h0, KIND=kind, **common,
        )  # fmt: skip


def recurrence_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a unit's state h is stored in: the input's, float32 for float16/bfloat16."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def run_projected(
    mode: int,
    p: Tensor,
    h0: Tensor,
    *,
    bwd: bool,
    h: Tensor,
    lam: Tensor | None = None,
    gamma: Tensor | None = None,
    gh: Tensor | None = None,
    dp: Tensor | None = None,
    dh0: Tensor | None = None,
    part: Tensor | None = None,
    params: Tensor | None = None,
    kind: int = 0,
    chunk: int = CHUNK,
    block: int = BLOCK,
) -> None:
    """A unit recurrence over a projection p (B, T, W) (W = 2N: [c | β_raw], [z_pre | h̃] or
    [Re | Im]); h (B, T, N), or (B, T, 2N) [Re | Im] for the LRU."""
    B, T, W = p.shape
    N = W // 2
    complex_ = mode == MODE_LRU
    hw = W if complex_ else N
    run_chunked(
        mode=mode,
        bwd=bwd,
        flip=bwd,
        complex_=complex_,
        hc=1,
        B=B,
        T=T,
        N=N,
        a=p if lam is None else lam,
        b=p,
        h0=h0,
        h=h,
        strides=(0, 0, T * hw, hw, N, hw, N),
        acc=recurrence_dtype(p.dtype),
        aux=gamma,
        gh=gh,
        out1=dp,
        dh0=dh0,
        part=part,
        params=params,
        kind=kind,
        chunk=chunk,
        block=block,
    )
