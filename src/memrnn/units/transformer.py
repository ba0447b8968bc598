"""Causal multi-head self-attention with rotary positions: the Transformer baseline.

Vaswani et al., "Attention is all you need" (2017), https://arxiv.org/abs/1706.03762; rotary
position embeddings from Su et al., "RoFormer" (2021), https://arxiv.org/abs/2104.09864;
sliding-window attention as in Beltagy et al., "Longformer" (2020),
https://arxiv.org/abs/2004.05150. For each head, with R(p) the rotation of position p,

    q_t = R(t) W_q x_t,  k_s = R(s) W_k x_s,  v_s = W_v x_s
    y_t = W_o concat_heads( Σ_{s ∈ A(t)} softmax_s(q_t · k_s / √d_head) v_s )

with A(t) = {s <= t} (full attention) or {t − W < s <= t} (`window=W`). Placed in a
`memrnn.models.Block`, it gets the pre-norm, the residual and the GLU-MLP of a Transformer
block.

The state is the key/value cache: the rotated keys and the values of the last steps, kept
right-aligned (the most recent step last) with the number of steps seen. With full attention
the cache grows by one entry per step, so a step costs time and memory in proportion to the
steps before it; with a window it holds W entries and a step costs the same at any position.
Slots that hold no step yet (the first W − 1 steps of a window, or sequences that ended early
in a `lengths` call) are zero and masked out.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from memrnn.units.base import Projection, RecurrentUnit, check_positive_int, register_unit

# Queries are attended in blocks of this many steps, so that a long prompt never holds a
# (T, T) mask or score matrix at once (64k steps: 16 GiB of scores per head in float32).
QUERY_BLOCK = 256


class TransformerState(NamedTuple):
    """k, v: (B, heads, S, d_head) the cached rotated keys and values, right-aligned (S grows
    with full attention, S = window otherwise); steps: (B,) int64 steps seen."""

    k: Tensor
    v: Tensor
    steps: Tensor


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotates the pairs (x_i, x_{i + m}) of x (..., d), m = d // 2, by the angles whose cos
    and sin (..., m) are given; an odd last channel is left as it is."""
    m = x.shape[-1] // 2
    a, b, rest = x[..., :m], x[..., m : 2 * m], x[..., 2 * m :]
    return torch.cat([a * cos - b * sin, a * sin + b * cos, rest], dim=-1)


@register_unit("transformer", n_heads=1)
class Transformer(RecurrentUnit):
    """Causal multi-head self-attention with rotary positions and a key/value cache state.

        y_t = W_o concat_h softmax_{s ∈ A(t)}(R(t) q_t · R(s) k_s / √d_head) v_s,
        A(t) = {s <= t}, or {t − W < s <= t} with `window=W`

    Args:
        input_size: features D of the input x.
        hidden_size: width of the queries, keys and values, all heads together (a multiple
            of n_heads; d_head = hidden_size / n_heads, and with an odd d_head the last
            channel of each head carries no rotary position).
        output_size: features of y (default hidden_size); W_o maps hidden_size to it.
        n_heads: number of attention heads (default 4).
        window: None (default; full causal attention, the cache grows) or W >= 1 (each step
            attends to itself and the W − 1 steps before it; the cache holds W steps).
        rope_base: base of the rotary frequencies (default 10000).
        mode: "parallel" (default; attention over the whole sequence) or "recurrent" (step
            loop over the cache, same weights, same math).
        backend: accepted for the unit contract; attention runs through
            torch.nn.functional.scaled_dot_product_attention whatever its value.
        device, dtype: of the parameters.

    Shapes:
        x: (B, T, D) -> y: (B, T, output_size); state: TransformerState(k, v: (B, n_heads, S,
        d_head), steps: (B,)), S = steps seen (full) or window.

    Example:
        >>> unit = Transformer(3, 8, n_heads=2, window=16)
        >>> y, state = unit(torch.randn(2, 5, 3))
        >>> y_t, state = unit.step(torch.randn(2, 3), state)
        >>> assert y.shape == (2, 5, 8) and state.k.shape == (2, 2, 16, 4)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int | None = None,
        n_heads: int = 4,
        window: int | None = None,
        rope_base: float = 10000.0,
        mode: str = "parallel",
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, output_size, mode, backend)
        owner = type(self).__name__
        self.n_heads = check_positive_int("n_heads", n_heads, owner)
        if hidden_size % n_heads:
            raise ValueError(
                f"{owner}: `hidden_size` ({hidden_size}) must be a multiple of `n_heads` "
                f"({n_heads})"
            )
        self.d_head = hidden_size // n_heads
        self.window = None if window is None else check_positive_int("window", window, owner)
        if isinstance(rope_base, bool) or not isinstance(rope_base, int | float) or rope_base <= 1:
            raise ValueError(f"{owner}: `rope_base` must be a number > 1, got {rope_base!r}")
        self.rope_base = float(rope_base)
        factory = {"device": device, "dtype": dtype}
        # Queries, keys and values in one matmul: rows [0, H), [H, 2H), [2H, 3H).
        self.qkv = Projection(input_size, 3 * hidden_size, bias=False, **factory)
        self.out_proj = Projection(hidden_size, self.output_size, **factory)

    # -- state --------------------------------------------------------------------------------
    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> TransformerState:
        device = self._param_device() if device is None else device
        dtype = self._param_dtype() if dtype is None else dtype
        slots = 0 if self.window is None else self.window
        shape = (batch_size, self.n_heads, slots, self.d_head)
        return TransformerState(
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(batch_size, device=device, dtype=torch.long),
        )

    def check_state(
        self,
        state: Any,
        batch_size: int,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ) -> TransformerState:
        """As `RecurrentUnit.check_state`, but with full attention the cache length S is free
        (it is the number of steps cached); k and v must agree on it."""
        owner = type(self).__name__
        if not isinstance(state, TransformerState):
            raise TypeError(
                f"{owner}: `state` must be a TransformerState (from init_state or a previous "
                f"call), got {type(state).__name__}"
            )
        slots = state.k.shape[2] if self.window is None and state.k.dim() == 4 else self.window
        expected = (batch_size, self.n_heads, slots, self.d_head)
        for field in ("k", "v"):
            got = getattr(state, field)
            if not isinstance(got, Tensor) or tuple(got.shape) != expected:
                shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
                cache = "S" if self.window is None else str(self.window)
                raise ValueError(
                    f"{owner}: state.{field} has shape {shape}; expected ({batch_size}, "
                    f"{self.n_heads}, {cache}, {self.d_head})"
                )
        if not isinstance(state.steps, Tensor) or tuple(state.steps.shape) != (batch_size,):
            raise ValueError(f"{owner}: state.steps must be a ({batch_size},) int64 tensor")
        if state.steps.dtype != torch.long:
            raise ValueError(
                f"{owner}: `state`.steps has dtype {state.steps.dtype}; expected int64"
            )
        for field in ("k", "v"):
            got = getattr(state, field)
            if dtype is not None and got.dtype != dtype:
                raise ValueError(
                    f"{owner}: `state`.{field} has dtype {got.dtype}; expected {dtype} for "
                    f"{dtype} inputs (init_state(..., dtype={dtype}) or a previous call)"
                )
        if device is not None:
            for field, got in zip(state._fields, state, strict=True):
                if got.device != device:
                    raise ValueError(
                        f"{owner}: `state`.{field} is on {got.device} but the input is on "
                        f"{device}; move one of them"
                    )
        return state

    # -- pieces -------------------------------------------------------------------------------
    def _rotation(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos and sin (B, 1, T, d_head / 2) of the rotary angles of positions (B, T)."""
        half = self.d_head // 2
        exponents = torch.arange(half, device=positions.device, dtype=torch.float64) / max(1, half)
        inv_freq = self.rope_base**-exponents  # (d_head / 2,)
        # Angles in float64: at position 1e5 a float32 angle is off by ~1e-2 rad.
        angles = positions.to(torch.float64).unsqueeze(-1) * inv_freq  # (B, T, d_head / 2)
        return angles.cos().to(dtype).unsqueeze(1), angles.sin().to(dtype).unsqueeze(1)

    def _project(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Rotated queries and keys, and values, (B, heads, T, d_head) each, of x (B, T, D)."""
        B, T = x.shape[:2]
        qkv = self.qkv(x).view(B, T, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        cos, sin = self._rotation(positions, q.dtype)
        return rotate(q, cos, sin), rotate(k, cos, sin), v

    def _allowed(self, query_pos: Tensor, key_pos: Tensor) -> Tensor:
        """Which keys each query attends to: (B, 1, Tq, Tk) from positions (B, Tq), (B, Tk)."""
        q, k = query_pos.unsqueeze(-1), key_pos.unsqueeze(-2)
        allowed = (k <= q) & (k >= 0)
        if self.window is not None:
            allowed = allowed & (k > q - self.window)
        return allowed.unsqueeze(1)

    def _output(self, y: Tensor) -> Tensor:
        """Heads (B, heads, T, d_head) -> (B, T, output_size)."""
        B, _, T, _ = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, T, self.hidden_size))

    def _cache(self, keys: Tensor, values: Tensor, steps: Tensor, ends: Tensor | None) -> Any:
        """The cache after a call, from the keys and values of (old cache + new steps)
        (B, heads, S + T, d_head), the new step counts (B,), and, per sequence, the index in
        them just past its last valid step (None: all T steps valid)."""
        total = keys.shape[2]
        slots = total if self.window is None else self.window
        if ends is None and self.window is None:
            return TransformerState(keys, values, steps)
        B = keys.shape[0]
        ar = torch.arange(slots, device=keys.device)
        ends = torch.full((B,), total, device=keys.device) if ends is None else ends
        source = ends.view(B, 1) - slots + ar.view(1, slots)  # (B, S') index in keys
        held = (steps.view(B, 1) - slots + ar.view(1, slots)) >= 0  # (B, S') slot holds a step
        index = source.clamp(min=0).view(B, 1, slots, 1).expand(-1, self.n_heads, -1, self.d_head)
        keep = held.view(B, 1, slots, 1)
        k = torch.where(keep, keys.gather(2, index), 0.0)
        v = torch.where(keep, values.gather(2, index), 0.0)
        return TransformerState(k, v, steps)

    # -- parallel -----------------------------------------------------------------------------
    def _forward_parallel(
        self, x: Tensor, state: TransformerState
    ) -> tuple[Tensor, TransformerState]:
        return self._attend(x, state, None)

    def _forward_lengths(
        self, x: Tensor, state: TransformerState, lengths: Tensor
    ) -> tuple[Tensor, TransformerState]:
        if self.mode == "parallel" and x.shape[0] > 0:
            return self._attend(x, state, lengths)
        ys = []
        for t, x_t in enumerate(x.unbind(1)):
            y_t, new = self._step(x_t, state)
            state = self._keep(t < lengths, new, state)
            ys.append(y_t)
        return torch.stack(ys, dim=1), state

    def _keep(self, running: Tensor, new: TransformerState, old: TransformerState) -> Any:
        """Per sequence, the new state where `running` (B,), else the old one, laid out like
        the new one (a growing cache gets an empty slot in front, so it stays right-aligned)."""
        k_old, v_old = old.k, old.v
        if self.window is None:
            pad = k_old.new_zeros(k_old.shape[0], self.n_heads, 1, self.d_head)
            k_old, v_old = torch.cat([pad, k_old], dim=2), torch.cat([pad, v_old], dim=2)
        keep = running.view(-1, 1, 1, 1)
        return TransformerState(
            torch.where(keep, new.k, k_old),
            torch.where(keep, new.v, v_old),
            torch.where(running, new.steps, old.steps),
        )

    def _attend(
        self, x: Tensor, state: TransformerState, lengths: Tensor | None
    ) -> tuple[Tensor, TransformerState]:
        B, T = x.shape[:2]
        S = state.k.shape[2]
        time = torch.arange(T, device=x.device)
        positions = state.steps.view(B, 1) + time.view(1, T)  # (B, T)
        q, k, v = self._project(x, positions)
        keys = torch.cat([state.k.to(k.dtype), k], dim=2)  # (B, heads, S + T, d_head)
        values = torch.cat([state.v.to(v.dtype), v], dim=2)
        key_pos = state.steps.view(B, 1) + torch.arange(-S, T, device=x.device).view(1, S + T)
        blocks = []
        for start in range(0, T, QUERY_BLOCK):
            stop = min(T, start + QUERY_BLOCK)
            # Keys that some query of this block may see: none after `stop`, and with a
            # window none before the window of the block's first query.
            first = 0 if self.window is None else max(0, S + start - self.window + 1)
            last = S + stop
            mask = self._allowed(positions[:, start:stop], key_pos[:, first:last])
            blocks.append(
                F.scaled_dot_product_attention(
                    q[:, :, start:stop],
                    keys[:, :, first:last],
                    values[:, :, first:last],
                    attn_mask=mask,
                )
            )
        y = torch.cat(blocks, dim=2) if len(blocks) > 1 else blocks[0]
        valid = T if lengths is None else lengths
        ends = None if lengths is None else S + lengths
        return self._output(y), self._cache(keys, values, state.steps + valid, ends)

    # -- step ---------------------------------------------------------------------------------
    def _step(self, x_t: Tensor, state: TransformerState) -> tuple[Tensor, TransformerState]:
        B = x_t.shape[0]
        S = state.k.shape[2]
        q, k, v = self._project(x_t.unsqueeze(1), state.steps.view(B, 1))  # (B, heads, 1, dh)
        keys = torch.cat([state.k.to(k.dtype), k], dim=2)  # (B, heads, S + 1, d_head)
        values = torch.cat([state.v.to(v.dtype), v], dim=2)
        key_pos = state.steps.view(B, 1) + torch.arange(-S, 1, device=x_t.device).view(1, S + 1)
        mask = self._allowed(state.steps.view(B, 1), key_pos)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        steps = state.steps + 1
        if self.window is None:
            new = TransformerState(keys, values, steps)
        else:
            held = (steps.view(B, 1) - S + torch.arange(S, device=x_t.device)) >= 0
            keep = held.view(B, 1, S, 1)
            new = TransformerState(
                torch.where(keep, keys[:, :, 1:], 0.0),
                torch.where(keep, values[:, :, 1:], 0.0),
                steps,
            )
        return self._output(y)[:, 0], new

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, n_heads={self.n_heads}, window={self.window}, "
            f"rope_base={self.rope_base:g}"
        )


__all__ = ["Transformer", "TransformerState", "rotate"]
