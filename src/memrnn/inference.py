"""Streaming inference: prefill a prompt in parallel, then step with a constant-size state.

A recurrent model summarises everything it has read in a fixed-size state, so inference is

    out, state = model(prompt)                  one parallel forward (the scan) over the prompt
    out_t, state = model.step(x_t, state)       then one step per new input, O(1) memory

and the outputs equal those of one parallel forward over the concatenation (to rounding).
The functions here work with any model that follows the network contract
`forward(x, state=None) -> (out, state)`, `step(x_t, state) -> (out_t, state)` (e.g. from
`memrnn.models.create_model`). They run under `torch.no_grad()` and leave the model's
train/eval mode alone: call `model.eval()` first when it has dropout.

    prefill(model, x)           -> (out, state)
    generate(model, ids, n)     -> ids (prompt + n sampled tokens), next-token models
    stream(model, values)       -> iterator of per-step outputs, real-valued inputs

Example:
    >>> model = create_model("bmru-small", input_size=16, output_size=16,
    ...                      input_kind="tokens", head="next-token").eval()
    >>> ids = generate(model, torch.randint(16, (2, 5)), 10, top_k=4)
    >>> assert ids.shape == (2, 15)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn


def _model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype, p.device
    return torch.get_default_dtype(), torch.device("cpu")


def _check_model(model: Any, caller: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{caller}: `model` must be an nn.Module, got {type(model).__name__}")
    for method in ("forward", "step"):
        if not callable(getattr(model, method, None)):
            raise TypeError(
                f"{caller}: `model` has no `{method}` method; expected a network "
                "with forward(x, state) and step(x_t, state)"
            )


def prefill(model: nn.Module, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
    """Runs `model` over a whole prompt in its parallel mode; returns (out, final state).

    Args:
        model: a network with `forward(x, state) -> (out, state)`.
        x: (B, T, input_size) float or (B, T) int64 token ids.
        state: a state to continue from (None: the model's initial state).

    Returns:
        the model's output for the prompt and the state after its last step, ready for `step`.
    """
    _check_model(model, "prefill")
    if not isinstance(x, Tensor):
        raise TypeError(f"prefill: `x` must be a torch.Tensor, got {type(x).__name__}")
    with torch.no_grad():
        return model(x, state)


def _check_sampling(n_new: Any, temperature: Any, top_k: Any) -> None:
    if isinstance(n_new, bool) or not isinstance(n_new, int) or n_new < 0:
        raise ValueError(f"generate: `n_new` must be an int >= 0, got {n_new!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise TypeError(f"generate: `temperature` must be a number, got {temperature!r}")
    if not temperature >= 0:
        raise ValueError(f"generate: `temperature` must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"generate: `top_k` must be None or a positive int, got {top_k!r}")


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draws one token id per row of logits (B, V) -> (B,) int64.

    temperature 0 takes the argmax; top_k keeps the k largest logits before sampling.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate(
    model: nn.Module,
    prompt_ids: Tensor,
    n_new: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Samples `n_new` tokens after `prompt_ids` from a next-token model.

    The prompt is read with one parallel forward; each new token then costs one `step` on a
    state of fixed size.

    Args:
        model: a token-input model whose forward returns per-step logits (B, T, V) and whose
            step returns (B, V) (a "next-token" head).
        prompt_ids: (B, T) or (T,) int64 ids, T >= 1.
        n_new: number of tokens to add (>= 0).
        temperature: softmax temperature; 0 picks the most likely token (greedy).
        top_k: sample among the k most likely tokens only (None: all).
        generator: a torch.Generator on the model's device for reproducible sampling.

    Returns:
        (B, T + n_new) int64 ids: the prompt followed by the new tokens ((T + n_new,) for a
        1-D prompt).
    """
    _check_model(model, "generate")
    _check_sampling(n_new, temperature, top_k)
    if not isinstance(prompt_ids, Tensor):
        raise TypeError(
            f"generate: `prompt_ids` must be a torch.Tensor, got {type(prompt_ids).__name__}"
        )
    if prompt_ids.is_floating_point() or prompt_ids.is_complex() or prompt_ids.dtype == torch.bool:
        raise TypeError(
            f"generate: `prompt_ids` must hold integer token ids, got {prompt_ids.dtype}"
        )
    squeeze = prompt_ids.dim() == 1
    ids = prompt_ids.unsqueeze(0) if squeeze else prompt_ids
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ValueError(
            f"generate: `prompt_ids` must have shape (B, T) or (T,) with T >= 1, "
            f"got {tuple(prompt_ids.shape)}"
        )
    _, device = _model_dtype_device(model)
    ids = ids.to(device=device, dtype=torch.long)
    B, T = ids.shape
    out = torch.empty(B, T + n_new, dtype=torch.long, device=device)
    out[:, :T] = ids
    with torch.no_grad():
        logits, state = model(ids, None)
        if logits.dim() != 3:
            raise ValueError(
                f"generate: the model returned output of shape "
                f"{tuple(logits.shape)} for a (B, T) prompt; expected per-step "
                f"logits (B, T, V) from a next-token head"
            )
        last = logits[:, -1]  # (B, V)
        for i in range(n_new):
            token = sample_next(last, temperature, top_k, generator)  # (B,)
            out[:, T + i] = token
            if i + 1 < n_new:
                last, state = model.step(token, state)
    return out.squeeze(0) if squeeze else out


def _as_step_input(
    value: Any, input_size: int | None, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, bool]:
    """One stream element as a (B, D) tensor, and whether a batch dim of 1 was added."""
    x = value if isinstance(value, Tensor) else torch.as_tensor(value)
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"stream: values must be real numbers, got {x.dtype}")
    x = x.to(device=device, dtype=dtype)
    if x.dim() == 0:
        if input_size not in (None, 1):
            raise ValueError(
                f"stream: got a scalar but the model takes {input_size} features per step"
            )
        return x.reshape(1, 1), True
    if x.dim() == 1:
        return x.unsqueeze(0), True
    if x.dim() == 2:
        return x, False
    raise ValueError(
        f"stream: each value must be a scalar, (D,) or (B, D); got shape {tuple(x.shape)}"
    )


def stream(
    model: nn.Module, values: Iterable[Any], state: Any = None, return_state: bool = False
) -> Iterator[Any]:
    """Feeds `values` to `model.step` one at a time and yields each step's output.

    Args:
        model: a real-input network with `step(x_t, state) -> (out_t, state)`.
        values: an iterable of steps, each a (B, input_size) tensor, a (input_size,) tensor
            or sequence (batch of one), or a number when input_size is 1. It may be endless:
            the memory used does not grow with the number of steps.
        state: the state to start from (e.g. from `prefill`); None: the initial state.
        return_state: yield (out_t, state) pairs instead of out_t alone.

    Yields:
        out_t of shape (B, output_size) ((output_size,) when the value had no batch dim).
    """
    _check_model(model, "stream")
    if isinstance(values, Tensor) and values.dim() == 3:
        # A (B, T, D) tensor streams along its time dim.
        values = values.unbind(1)
    dtype, device = _model_dtype_device(model)
    input_size = getattr(getattr(model, "config", None), "input_size", None)
    for value in values:
        x_t, squeeze = _as_step_input(value, input_size, dtype, device)
        with torch.no_grad():
            out_t, state = model.step(x_t, state)
        if squeeze:
            out_t = out_t.squeeze(0)
        yield (out_t, state) if return_state else out_t


__all__ = ["generate", "prefill", "sample_next", "stream"]
