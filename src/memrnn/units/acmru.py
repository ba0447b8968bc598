"""αCMRU: a CMRU whose writes have an input-dependent size (provisional reconstruction).

Brandoit, Fyon, Ernst, Drion, arXiv 2605.11855 (ICML 2026), https://arxiv.org/abs/2605.11855,
name αCMRU "a relaxed variant" of the CMRU that gives up exact quantisation of the state. The
paper's definition was not available to us: this unit is OUR RECONSTRUCTION of the reading "the
write's size depends on the input", not the authors' equations:

    z_t = H(|c_t| - beta_t),  s_t = sign(c_t),  a_t = softplus(W_a x_t + b_a) > 0
    h_t = h_{t-1} + z_t s_t a_t                  (eps = 1; the CMRU is a_t = 1)

and, as for the epsilon-family, h_t = z_t (s_t a_t + eps h_{t-1}) + (1 - z_t) h_{t-1} for eps in
[0, 1]. The step is affine in h_{t-1}, so the sequence is one `linear_scan` (decay 1 - z + eps z,
input z s a). b_a starts at softplus^-1(1) = log(e - 1), so an untrained αCMRU writes steps of
about 1, like a CMRU. Everything else (thresholds, surrogate, readout, h0) is the BMRU's.

Args:
    Those of `memrnn.units.mru.BMRU`, with `epsilon=1.0` by default.

Shapes:
    x: (B, T, D) -> y: (B, T, output_size); state: BMRUState(h=(B, N)), real-valued.

Example:
    >>> unit = AlphaCMRU(3, 8)
    >>> y, state = unit(torch.randn(2, 5, 3))
    >>> assert y.shape == (2, 5, 8) and state.h.shape == (2, 8)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from memrnn.ops.mru import mru_gates
from memrnn.ops.scan import linear_scan
from memrnn.ops.surrogate import SurrogateFn
from memrnn.units.base import Projection, register_unit
from memrnn.units.mru import BMRU, BMRUState

# softplus^-1(1): the write size of an untrained unit is 1, the CMRU's.
UNIT_WRITE_BIAS = math.log(math.e - 1.0)


@register_unit("acmru")
class AlphaCMRU(BMRU):
    """CMRU with input-dependent write sizes a_t (our reconstruction; see the module docstring).

    Example:
        >>> unit = AlphaCMRU(3, 8)
        >>> y, state = unit(torch.randn(2, 5, 3))
        >>> assert y.shape == (2, 5, 8) and unit.epsilon == 1.0
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int | None = None,
        threshold: str = "input",
        epsilon: float = 1.0,
        surrogate: str | SurrogateFn = "atan",
        sharpness: float = 1.0,
        mode: str | None = None,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            output_size,
            threshold,
            epsilon,
            surrogate,
            sharpness,
            mode,
            backend,
            device,
            dtype,
        )
        self.write_size = Projection(input_size, hidden_size, device=device, dtype=dtype)
        self._init_write_size()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        # BMRU.__init__ calls this before `write_size` exists; __init__ initialises it then.
        if "write_size" in self._modules:
            self._init_write_size()

    @torch.no_grad()
    def _init_write_size(self) -> None:
        self.write_size.reset_parameters()
        self.write_size.bias.fill_(UNIT_WRITE_BIAS)

    def _gates(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(decay, input, z) of the scan h_t = decay_t h_{t-1} + input_t for x (..., D)."""
        c = self.candidate(x)  # (..., N)
        a, b, z = mru_gates(c, self.thresholds(x), self._epsilon, self._derivative)
        return a, b * nn.functional.softplus(self.write_size(x)), z

    def _forward_parallel(self, x: Tensor, state: BMRUState) -> tuple[Tensor, BMRUState]:
        decay, inp, z = self._gates(x)  # (B, T, N) each
        h, _ = linear_scan(decay, inp, state.h.to(x.dtype).contiguous(), backend=self.backend)
        self.last_write_rate = z.mean()
        return self._readout(h), BMRUState(h[:, -1])

    def _forward_lengths(
        self, x: Tensor, state: BMRUState, lengths: Tensor
    ) -> tuple[Tensor, BMRUState]:
        # Past a sequence's length the step is the identity (decay 1, input 0), so the state
        # stays at the last valid step; torch.where keeps gradients off the padded inputs.
        T = x.shape[1]
        valid = (torch.arange(T, device=x.device) < lengths[:, None]).unsqueeze(-1)  # (B, T, 1)
        decay, inp, z = self._gates(x)  # (B, T, N) each
        decay = torch.where(valid, decay, 1.0)
        inp = torch.where(valid, inp, 0.0)
        z = torch.where(valid, z, 0.0)
        h0 = state.h.to(x.dtype).contiguous()
        if self.mode == "parallel":
            h, _ = linear_scan(decay, inp, h0, backend=self.backend)
        else:
            h_t, hs = h0, []
            for a_t, b_t in zip(decay.unbind(1), inp.unbind(1), strict=True):
                h_t = a_t * h_t + b_t
                hs.append(h_t)
            h = torch.stack(hs, dim=1)  # (B, T, N)
        self.last_write_rate = z.mean()
        return self._readout(h), BMRUState(h[:, -1])

    def _cell(self, x_t: Tensor, h_prev: Tensor) -> tuple[Tensor, Tensor]:
        decay, inp, z = self._gates(x_t)  # (B, N) each
        return decay * h_prev + inp, z


__all__ = ["UNIT_WRITE_BIAS", "AlphaCMRU"]
