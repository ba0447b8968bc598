import pytest
import torch

from memrnn.models import ModelConfig, Network, build_model, list_models, model_config
from memrnn.units import UNITS

pytestmark = pytest.mark.usefixtures("one_thread")


T = 7


def _config(name: str, head: str, input_kind: str = "real") -> ModelConfig:
    overrides = {"head": head, "input_kind": input_kind}
    cfg = model_config(name, input_size=3, output_size=4, seq_len=T, **overrides)
    if cfg.arch == "stack":
        # Small widths keep the float64 comparisons of every model fast.
        cfg = cfg.replace(d_model=8, hidden_size=8)
    elif cfg.arch == "spiking":
        cfg = cfg.replace(spiking={**cfg.spiking, "hidden_sizes": [8, 8]})
    return cfg


def _inputs(cfg: ModelConfig, batch: int = 2, steps: int = T) -> torch.Tensor:
    if cfg.input_kind == "tokens":
        return torch.randint(0, cfg.input_size, (batch, steps))
    if cfg.arch == "spiking":
        return (torch.rand(batch, steps, cfg.input_size) < 0.5).double()
    return torch.randn(batch, steps, cfg.input_size, dtype=torch.float64)


def _stream(model, x):
    state = model.init_state(x.shape[0])
    outs = []
    for t in range(x.shape[1]):
        out, state = model.step(x[:, t], state)
        outs.append(out)
    return torch.stack(outs, 1), state


@pytest.mark.parametrize("name", list_models())
def test_step_equals_parallel_forward(name):
    torch.manual_seed(0)
    cfg = _config(name, "sequence")
    model = build_model(cfg).double().eval()
    x = _inputs(cfg)
    with torch.no_grad():
        out, _ = model(x)
        out_step, _ = _stream(model, x)
    torch.testing.assert_close(out_step, out, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", list_models())
def test_last_step_head_streams_prefix_outputs(name):
    torch.manual_seed(0)
    cfg = _config(name, "last")
    model = build_model(cfg).double().eval()
    x = _inputs(cfg)
    with torch.no_grad():
        out_step, _ = _stream(model, x)  # (B, T, C): the output if the sequence ended at t
        for t in (1, 4, T):
            prefix, _ = model(x[:, :t])
            torch.testing.assert_close(out_step[:, t - 1], prefix, atol=1e-9, rtol=1e-9)


def _unit() -> str:
    for name in ("mingru", "gru", "lru", "bmru"):
        if name in UNITS:
            return name
    pytest.skip("no unit registered")


def _net(head: str, input_kind: str = "real", **kw) -> Network:
    torch.manual_seed(0)
    cfg = ModelConfig(
        input_size=5,
        output_size=3,
        head=head,
        input_kind=input_kind,
        unit=_unit(),
        d_model=8,
        n_layers=2,
        **kw,
    )
    return Network(cfg).double().eval()


def test_last_head_reads_at_lengths_minus_one():
    model = _net("last")
    x = torch.randn(3, 9, 5, dtype=torch.float64)
    lengths = torch.tensor([9, 4, 1])
    out, _ = model(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        ref, _ = model(x[b : b + 1, :n])
        torch.testing.assert_close(out[b : b + 1], ref)


def test_mean_head_masks_padding_and_streams():
    model = _net("mean")
    x = torch.randn(2, 8, 5, dtype=torch.float64)
    out, _ = model(x, lengths=torch.tensor([8, 3]))
    ref, _ = model(x[1:, :3])
    torch.testing.assert_close(out[1:], ref)
    out_step, _ = _stream(model, x)
    full, _ = model(x)
    torch.testing.assert_close(out_step[:, -1], full)


def test_forward_carries_state_across_chunks():
    model = _net("mean")
    x = torch.randn(2, 10, 5, dtype=torch.float64)
    full, _ = model(x)
    _, state = model(x[:, :6])
    rest, _ = model(x[:, 6:], state)
    torch.testing.assert_close(rest, full)


def test_next_token_head_with_token_inputs():
    model = _net("next-token", input_kind="tokens")
    x = torch.randint(0, 5, (2, 6))
    out, _ = model(x)
    assert out.shape == (2, 6, 3)
    out_step, _ = _stream(model, x)
    torch.testing.assert_close(out_step, out)


def test_alternating_unit_kinds():
    kinds = [k for k in ("bmru", "lru") if k in UNITS]
    if len(kinds) < 2:
        pytest.skip("needs bmru and lru")
    model = Network(ModelConfig(input_size=2, output_size=2, unit=kinds, n_layers=3, d_model=8))
    assert [b.unit_name for b in model.blocks] == ["bmru", "lru", "bmru"]


def test_input_dtype_errors():
    with pytest.raises(TypeError, match="token inputs must be integer ids"):
        _net("last", input_kind="tokens")(torch.randn(2, 3))
    with pytest.raises(TypeError, match="real inputs must be floating point"):
        _net("last")(torch.zeros(2, 3, 5, dtype=torch.long))


def test_bad_lengths():
    with pytest.raises(ValueError, match="lengths must lie in"):
        _net("last")(torch.randn(2, 4, 5, dtype=torch.float64), lengths=torch.tensor([0, 4]))


def test_config_validation():
    with pytest.raises(ValueError, match="unknown head 'first'"):
        ModelConfig(input_size=1, output_size=1, head="first")
    with pytest.raises(ValueError, match="`d_model` must be a positive int"):
        ModelConfig(input_size=1, output_size=1, d_model=0)
    with pytest.raises(ValueError, match="unknown field"):
        ModelConfig.from_dict({"input_size": 1, "output_size": 1, "width": 3})
