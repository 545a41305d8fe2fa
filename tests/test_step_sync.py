"""The training step without host reads: a non-finite loss is recorded on the device, blocks
every update from its step on, and stops training at the next read (SOLVER.LOG_PERIOD or the
end of the epoch); an fp16 loss-scale overflow is a skipped step, not a stop."""
import itertools
import os

import pytest
import torch

from benchmarks.bench_train import build_trainer, random_batch
from config import load_config
from processor import do_train
from processor.checkpoint import LAST_CHECKPOINT
from utils.seed import set_seed
from processor.processor import NonFiniteLossError
from processor.step_stats import any_non_finite, loss_gate, skip_updates_if
from train import build_training

SIZES = (8, 3, 1)  # classes, cameras, views of the direct trainers


class ExplodingGradient(torch.autograd.Function):
    """Identity forward; an infinite gradient backward: a finite loss that overflows."""

    @staticmethod
    def forward(ctx, loss):
        return loss.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def parameters_of(*modules):
    return {f"{index}.{name}": value.detach().clone() for index, module in enumerate(modules)
            for name, value in module.named_parameters()}


def assert_same(before, after):
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name


def failing_run(opts, failing_step, make_failure):
    """Train one epoch of the tiny set whose loss fails at step `failing_step` (0-based);
    returns (error, parameters just before that step, steps run)."""
    cfg = load_config("", opts + ["SOLVER.MAX_EPOCHS", "1", "SOLVER.LOG_PERIOD", "4"])
    set_seed(cfg.SOLVER.SEED)
    parts = build_training(cfg)
    loss_fn, calls, snapshot = parts["loss_fn"], itertools.count(), {}

    def wrapped(score, feat, target, target_cam):
        call = next(calls)
        loss = loss_fn(score, feat, target, target_cam)
        if call != failing_step:
            return loss
        snapshot.update(parameters_of(parts["model"], parts["center_criterion"]))
        return make_failure(loss)
    parts["loss_fn"] = wrapped
    with pytest.raises(NonFiniteLossError) as raised:
        do_train(cfg, **parts, local_rank=0)
    assert not os.path.exists(os.path.join(cfg.OUTPUT_DIR, LAST_CHECKPOINT))
    after = parameters_of(parts["model"], parts["center_criterion"])
    return str(raised.value), snapshot, after, next(calls)


@pytest.mark.parametrize("metric", ["triplet", "triplet_center"])
def test_a_nan_loss_stops_at_the_next_read_with_the_weights_from_before_it(tiny_opts, metric):
    message, before, after, steps = failing_run(
        tiny_opts + ["MODEL.METRIC_LOSS_TYPE", metric], 1, lambda loss: loss * float("nan"))
    assert "loss is nan at epoch 1, iteration 2" in message
    assert steps == 4  # iterations 3 and 4 ran, then the read at LOG_PERIOD 4 stopped
    # Neither the NaN step nor the finite ones after it moved a weight (centers included).
    assert_same(before, after)


def test_an_infinite_gradient_without_loss_scaling_stops_too(tiny_opts):
    message, before, after, _ = failing_run(tiny_opts, 1, ExplodingGradient.apply)
    assert "a gradient is not finite at epoch 1, iteration 2" in message
    assert_same(before, after)


@pytest.fixture
def fp16_style_trainer(tiny_opts):
    """A trainer on the CPU with an enabled GradScaler, as fp16 training on CUDA has."""
    cfg = load_config("", tiny_opts + ["MODEL.METRIC_LOSS_TYPE", "triplet_center"])
    trainer = build_trainer(cfg, SIZES, compile_model=False)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    return trainer, random_batch(cfg, 16, SIZES, torch.device("cpu"))


def test_an_fp16_overflow_is_a_skipped_step_and_not_a_stop(fp16_style_trainer):
    trainer, batch = fp16_style_trainer
    loss_fn = trainer.loss_fn
    trainer.loss_fn = lambda *args: ExplodingGradient.apply(loss_fn(*args))
    before = parameters_of(trainer.model, trainer.center_criterion)
    trainer.train_step(batch, epoch=1, n_iter=1)
    assert_same(before, parameters_of(trainer.model, trainer.center_criterion))
    assert trainer.scaler.get_scale() == 2.0 ** 9  # the scaler backed off
    assert trainer.read_stats().fault is None

    trainer.loss_fn = loss_fn
    trainer.train_step(batch, epoch=1, n_iter=2)
    after = parameters_of(trainer.model, trainer.center_criterion)
    assert not torch.equal(before["0.classifier.weight"], after["0.classifier.weight"])
    assert not torch.equal(before["1.centers"], after["1.centers"])
    assert trainer.read_stats().fault is None


def test_with_loss_scaling_a_nan_loss_still_stops(fp16_style_trainer):
    trainer, batch = fp16_style_trainer
    loss_fn = trainer.loss_fn
    trainer.loss_fn = lambda *args: loss_fn(*args) * float("nan")
    before = parameters_of(trainer.model, trainer.center_criterion)
    trainer.train_step(batch, epoch=3, n_iter=7)
    trainer.loss_fn = loss_fn
    trainer.train_step(batch, epoch=3, n_iter=8)  # finite, but after the fault: no update
    assert_same(before, parameters_of(trainer.model, trainer.center_criterion))
    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 3, iteration 7"):
        trainer.read_stats()


def test_the_logged_means_are_those_of_the_steps(fp16_style_trainer):
    trainer, batch = fp16_style_trainer
    trainer.stats.start_epoch()
    losses, accuracies = [], []
    for n_iter, size in ((1, 16), (2, 8)):
        loss, accuracy = trainer.train_step([t[:size] for t in batch], epoch=1, n_iter=n_iter)
        trainer.stats.add(loss, accuracy, size)
        losses.append((loss.item(), size))
        accuracies.append(accuracy.item())
    reading = trainer.read_stats()
    assert reading.loss == pytest.approx(sum(v * n for v, n in losses) / 24, rel=1e-6)
    assert reading.accuracy == pytest.approx(sum(accuracies) / 2, rel=1e-6)


def host_reads_forbidden(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a host read of a tensor inside the training step")
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


def test_a_step_with_a_fused_optimizer_reads_nothing_on_the_host(tiny_opts, monkeypatch):
    # CUDA's optimizers are fused; torch has fused SGD on the CPU too, so the CPU can show
    # that the step leaves every decision on the device (sync debug mode proves it on CUDA).
    cfg = load_config("", tiny_opts + ["MODEL.METRIC_LOSS_TYPE", "triplet_center"])
    trainer = build_trainer(cfg, SIZES, compile_model=False)
    trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.01, momentum=0.9,
                                        fused=True)
    batch = random_batch(cfg, 16, SIZES, torch.device("cpu"))
    trainer.train_step(batch, epoch=1, n_iter=1)  # the optimizer state is created here
    before = parameters_of(trainer.model)
    with monkeypatch.context() as patch:
        host_reads_forbidden(patch)
        loss, accuracy = trainer.train_step(batch, epoch=1, n_iter=2)
        trainer.stats.add(loss, accuracy, 16)
    assert not torch.equal(before["0.classifier.weight"],
                           parameters_of(trainer.model)["0.classifier.weight"])
    assert trainer.read_stats().fault is None


def plain_step(optimizer_factory, skip):
    """(parameter, optimizer state) after one `skip_updates_if` step, and after a plain step."""
    results = []
    for use_skip in (True, False):
        torch.manual_seed(0)
        param = torch.nn.Parameter(torch.randn(5))
        optimizer = optimizer_factory([param])
        for _ in range(2):  # the second step has momentum / Adam state to keep
            param.grad = torch.randn(5)
            if use_skip:
                skip_updates_if(optimizer, torch.tensor(skip))
            elif not skip:
                optimizer.step()
        results.append((param.detach().clone(), optimizer.state_dict()["state"]))
    return results


@pytest.mark.parametrize("factory", [
    lambda params: torch.optim.SGD(params, lr=0.1),  # the center optimizer: zeroed gradients
    lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),  # host read
    lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, fused=True),  # found_inf
    lambda params: torch.optim.Adam(params, lr=0.1, fused=True),
], ids=["plain SGD", "SGD momentum", "fused SGD", "fused Adam"])
@pytest.mark.parametrize("skip", [False, True])
def test_skip_updates_if_is_a_step_or_nothing(factory, skip):
    (skipped, skipped_state), (plain, plain_state) = plain_step(factory, skip)
    assert torch.equal(skipped, plain)
    if skip:
        torch.manual_seed(0)
        assert torch.equal(skipped, torch.randn(5))
    for key, state in plain_state.items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, skipped_state[key][name]), name


def test_the_gate_and_the_gradient_check():
    halted, running = torch.tensor(True), torch.tensor(False)
    assert loss_gate(torch.tensor(2.5), running).item() == 1.0
    for loss, state in ((2.5, halted), (float("inf"), running), (float("nan"), running)):
        assert torch.isnan(loss_gate(torch.tensor(loss), state))
    cpu = torch.device("cpu")
    assert not any_non_finite([torch.ones(3), torch.full((2,), 1e38)], cpu)
    assert any_non_finite([torch.ones(3), torch.tensor([1.0, float("-inf")])], cpu)
    assert any_non_finite([torch.tensor([float("nan")], dtype=torch.float64)], cpu)
    assert not any_non_finite([], cpu)
