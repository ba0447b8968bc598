import pytest
import torch

from memrnn.models import (
    ModelConfig,
    build_model,
    config_for_task,
    create_model,
    create_model_for_task,
    describe_models,
    head_for_task,
    list_models,
    model_config,
)
from memrnn.tasks.registry import create_task
from memrnn.units import UNITS

pytestmark = pytest.mark.usefixtures("one_thread")


def _small(name: str, task) -> ModelConfig:
    cfg = config_for_task(name, task)
    if cfg.arch == "stack":
        return cfg.replace(d_model=8)
    if cfg.arch == "spiking":
        return cfg.replace(spiking={**cfg.spiking, "hidden_sizes": [8]})
    return cfg


def _compatible_tasks(name: str):
    """A last-step regression task and a per-step classification task for every model."""
    yield create_task("copy-first-input", seq_len=9)
    yield create_task("flip-flop", train_len=9)


@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_a_step_on_compatible_tasks(name):
    for task in _compatible_tasks(name):
        torch.manual_seed(0)
        model = build_model(_small(name, task))
        batch = task.batch(3, generator=torch.Generator().manual_seed(0))
        out, _ = model(batch.x, lengths=batch.lengths)
        loss = task.loss(out, batch)
        loss.backward()
        assert torch.isfinite(loss)
        for pname, p in model.named_parameters():
            assert p.grad is not None, f"{name} on {task.name}: {pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name} on {task.name}: NaN gradient in {pname}"


def test_untrained_model_scores_near_chance():
    task = create_task("flip-flop", train_len=50, eval_samples=256)
    name = "bmru-small" if "bmru-small" in list_models() else list_models()[0]
    torch.manual_seed(0)
    model = create_model_for_task(name, task).eval()
    from memrnn.train import evaluate

    _, metrics = evaluate(model, task, "val", samples=256, batch_size=128)
    assert abs(metrics[task.primary_metric] - task.chance()) < 0.15


def test_expected_variants_are_listed_when_their_units_exist():
    names = list_models()
    for unit, variant in [
        ("bmru", "bmru-small"),
        ("cmru", "cmru-small"),
        ("lru", "lru-small"),
        ("mingru", "mingru-small"),
        ("hybrid", "hybrid-small"),
        ("gru", "gru-small"),
        ("lstm", "lstm-small"),
        ("brc", "brc-small"),
        ("nbrc", "nbrc-small"),
        ("plmu", "lmu-psmnist"),
    ]:
        assert (variant in names) == (unit in UNITS)
    assert all(describe_models()[n] for n in names)


def test_lmu_psmnist_matches_the_paper_size():
    if "plmu" not in UNITS:
        pytest.skip("plmu not registered")
    model = create_model("lmu-psmnist", input_size=1, output_size=10)
    # Chilkuri & Eliasmith report 165k parameters for this configuration.
    assert 160_000 < model.num_parameters() < 170_000


def test_unknown_model_lists_close_matches():
    if "bmru-small" not in list_models():
        pytest.skip("bmru not registered")
    with pytest.raises(ValueError, match="unknown model 'bmru-smal'.*Did you mean bmru-small"):
        create_model("bmru-smal", input_size=1, output_size=1)


def test_unknown_override_is_named():
    name = list_models()[0]
    with pytest.raises(ValueError, match="'d_modle' \\(did you mean 'd_model'\\?\\)"):
        model_config(name, 1, 1, d_modle=3)


def test_config_json_round_trip_rebuilds_the_same_model():
    name = "hybrid-small" if "hybrid-small" in list_models() else list_models()[0]
    cfg = model_config(name, 2, 3, d_model=16, unit_kwargs={})
    torch.manual_seed(0)
    model = build_model(cfg)
    again = build_model(ModelConfig.from_json(cfg.to_json()))
    again.load_state_dict(model.state_dict())
    x = torch.randn(2, 5, 2)
    torch.testing.assert_close(model.eval()(x)[0], again.eval()(x)[0])


def test_head_follows_the_task():
    assert head_for_task(create_task("copy-first-input", seq_len=5)) == "last"
    assert head_for_task(create_task("flip-flop")) == "sequence"


def _lmu_units(model) -> list:
    return [m for m in model.modules() if hasattr(m, "theta") and hasattr(m, "order")]


@pytest.mark.parametrize("name", ["plmu-small", "lmu-small"])
def test_lmu_window_follows_the_task(name):
    # The registry's small test values (theta = 16) must not reach models built for a task.
    task = create_task("copy-first-input", seq_len=50)
    model = create_model_for_task(name, task)
    units = _lmu_units(model)
    assert units and all(u.theta == 50 for u in units)
    given = create_model_for_task(name, task, unit_kwargs={"theta": 7.0, "order": 3})
    assert all(u.theta == 7.0 and u.order == 3 for u in _lmu_units(given))


@pytest.mark.parametrize("name", ["plmu-small", "lmu-small"])
def test_lmu_built_without_a_task_gets_the_default_window(name):
    from memrnn.models.registry import LMU_DEFAULT_THETA, build_model, model_config

    model = create_model(name, input_size=1, output_size=1)
    units = _lmu_units(model)
    assert units and all(u.theta == LMU_DEFAULT_THETA for u in units)
    y, _ = model(torch.randn(2, 5, 1))
    assert torch.isfinite(y).all()
    # A config with no window at all is still refused when built.
    unit = name.split("-")[0]
    with pytest.raises(ValueError, match=f"unit '{unit}' needs theta in its unit_kwargs"):
        build_model(model_config(name, input_size=1, output_size=1))
