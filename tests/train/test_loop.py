import math

import pytest
import torch

from memrnn.models import list_models
from memrnn.train import UsageError, load_model, read_metrics, resolve_config, train
from memrnn.train.loop import (
    evaluate,
    flush_denormals,
    flushing_denormals,
    lr_factor,
    param_groups,
)
from memrnn.units import UNITS, RecurrentUnit, is_no_weight_decay

pytestmark = pytest.mark.usefixtures("one_thread")


def _model() -> str:
    return "bmru-small" if "bmru-small" in list_models() else list_models()[0]


def _config(out, **overrides):
    base = {
        "model": _model(),
        "task": "flip-flop",
        "seq_len": 12,
        "batch_size": 8,
        "eval_samples": 16,
        "eval_batch_size": 16,
        "log_every": 2,
        "warmup": 2,
        "progress": False,
        "tensorboard": False,
        "out": str(out),
        "model_overrides": {"d_model": 16, "dropout": 0.1},
    }
    base.update(overrides)
    return resolve_config(overrides=base, overrides_are_text=False)


def _weights(run_dir):
    model, _ = load_model(run_dir, "last")
    return model.state_dict()


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    full = train(_config(tmp_path / "full", steps=8, eval_every=4))
    first = train(_config(tmp_path / "cut", steps=8, eval_every=4, stop_at=4))
    assert first.step == 4
    resumed = train(_config(tmp_path / "cut", steps=8, eval_every=4, resume=True))
    assert full.step == resumed.step == 8
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)
    rows_full = [(r["step"], r["split"], r["loss"]) for r in read_metrics(tmp_path / "full")]
    rows_cut = [(r["step"], r["split"], r["loss"]) for r in read_metrics(tmp_path / "cut")]
    assert rows_full == rows_cut


def test_training_reduces_the_loss_and_keeps_best_and_last(tmp_path):
    result = train(
        _config(tmp_path, steps=30, eval_every=10, lr=1e-2, model_overrides={"d_model": 16})
    )
    rows = read_metrics(tmp_path)
    train_rows = [float(r["loss"]) for r in rows if r["split"] == "train"]
    assert train_rows[-1] < train_rows[0]
    assert (tmp_path / "best" / "model.safetensors").is_file()
    assert (tmp_path / "last" / "training.pt").is_file()
    assert (tmp_path / "config.yaml").is_file()
    assert {"step", "split", "loss", "lr", "time", "accuracy"} <= set(rows[0])
    assert result.best_metric is not None and math.isfinite(result.best_metric)


def test_epsilon_schedule_anneals_cmru_to_bmru(tmp_path):
    if "cmru-small" not in list_models():
        pytest.skip("cmru not registered")
    from memrnn.models import current_epsilon

    config = _config(tmp_path, model="cmru-small", steps=6, epsilon_schedule="2,3")
    config.write_penalty = 0.01
    result = train(config)
    assert current_epsilon(result.model) == 0.0
    # epsilon is an attribute, not a weight: the checkpoint's config carries it.
    reloaded, model_config = load_model(tmp_path, "last")
    assert model_config.epsilon == 0.0 and current_epsilon(reloaded) == 0.0
    best, best_config = load_model(tmp_path, "best")
    assert current_epsilon(best) == best_config.epsilon


def test_lr_warmup_then_cosine():
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 10, 100, 0.0) == pytest.approx(0.5)


def test_no_weight_decay_on_norms_biases_and_marked_parameters():
    from memrnn.models import create_model

    name = "lru-small" if "lru" in UNITS else _model()
    model = create_model(name, input_size=2, output_size=2)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in no_decay["params"]}
    for p in model.parameters():
        if p.dim() < 2 or is_no_weight_decay(p):
            assert id(p) in ids
    assert all(p.dim() >= 2 and not is_no_weight_decay(p) for p in decay["params"])


def test_evaluate_is_deterministic(tmp_path):
    from memrnn.models import create_model_for_task
    from memrnn.train import build_task

    task = build_task("flip-flop", 20)
    model = create_model_for_task(_model(), task, d_model=8)
    assert evaluate(model, task, "val", 32, 16) == evaluate(model, task, "val", 32, 16)


def test_config_errors():
    with pytest.raises(UsageError, match="unknown config key 'stesp'; did you mean steps"):
        resolve_config(overrides={"stesp": "3"})
    with pytest.raises(UsageError, match="config key 'steps' expects int, got 'many'"):
        resolve_config(overrides={"steps": "many"})
    with pytest.raises(UsageError, match="config key 'lr' expects float, got 'fast'"):
        resolve_config(overrides={"lr": "fast"})
    with pytest.raises(UsageError, match="config key 'batch_size' must be >= 1"):
        resolve_config(overrides={"batch-size": "0"})
    with pytest.raises(UsageError, match="epsilon_schedule must be 'HOLD,DECAY'"):
        resolve_config(overrides={"epsilon_schedule": "10"})
    with pytest.raises(UsageError, match="'backend' must be one of auto, naive, torch, numba"):
        resolve_config(overrides={"backend": "native"})


def test_backend_reaches_every_unit(tmp_path, monkeypatch):
    import memrnn.train.loop as loop

    seen = []

    def record(model, backend):
        loop_set_backend(model, backend)
        seen.extend(m.backend for m in model.modules() if isinstance(m, RecurrentUnit))

    loop_set_backend = loop.set_backend
    monkeypatch.setattr(loop, "set_backend", record)
    train(_config(tmp_path, backend="torch", steps=1))
    assert seen and set(seen) == {"torch"}


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 50\nlr: 0.01\nmodel:\n  bad: 1\n")
    with pytest.raises(UsageError, match="config key 'model' expects str"):
        resolve_config(path)
    path.write_text("steps: 50\nlr: 0.01\nseq_len: 20\n")
    cfg = resolve_config(path, {"lr": "1e-4", "model.d_model": "32", "task.p_write": "0.1"})
    assert (cfg.steps, cfg.lr, cfg.seq_len) == (50, 1e-4, 20)
    assert cfg.model_overrides == {"d_model": 32} and cfg.task_kwargs == {"p_write": 0.1}
    path.write_text("steps: [1\n")
    with pytest.raises(UsageError, match="is not valid YAML"):
        resolve_config(path)
    with pytest.raises(UsageError, match="does not exist"):
        resolve_config(tmp_path / "missing.yaml")


def test_unknown_model_and_task_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown model"):
        train(_config(tmp_path, model="nope-small", steps=1))
    with pytest.raises(UsageError, match="unknown task 'flip-flip'"):
        train(_config(tmp_path, task="flip-flip", steps=1))


def test_build_task_takes_the_length_from_either_place():
    from memrnn.train.loop import UsageError, build_task

    assert build_task("copy-first-input", 30).seq_len == 30
    assert build_task("copy-first-input", None, seq_len=40).seq_len == 40
    assert build_task("copy-first-input", 50, seq_len=50).seq_len == 50
    with pytest.raises(UsageError, match="--seq-len 30 conflicts with --task.seq_len 40"):
        build_task("copy-first-input", 30, seq_len=40)


def test_flush_denormals_turns_the_mode_on_and_restores_it():
    assert not flushing_denormals()
    tiny = torch.tensor([1e-39])  # a float32 subnormal
    with flush_denormals():
        assert flushing_denormals() and (tiny * 1.0).item() == 0.0
        with flush_denormals():
            assert flushing_denormals()
        assert flushing_denormals()  # an inner block restores the outer block's setting
    assert not flushing_denormals() and (tiny * 1.0).item() == pytest.approx(1e-39)


def test_training_and_evaluation_flush_subnormals(tmp_path, monkeypatch):
    import memrnn.train.loop as loop

    seen = []
    real_loop = loop._loop

    def spy(run):
        seen.append(("train", flushing_denormals()))
        return real_loop(run)

    monkeypatch.setattr(loop, "_loop", spy)
    result = train(_config(tmp_path, steps=2, eval_every=2))
    assert seen == [("train", True)] and not flushing_denormals()

    class Spy(torch.nn.Module):
        def forward(self, x, lengths=None):
            seen.append(("eval", flushing_denormals()))
            return result.model(x, lengths=lengths)

    evaluate(Spy(), result.task, samples=8, batch_size=8)
    assert seen[-1] == ("eval", True) and not flushing_denormals()
