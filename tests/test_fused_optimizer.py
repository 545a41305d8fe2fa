"""Multi-tensor (foreach) and fused optimizer kernels: chosen by device, the same updates as the
plain per-tensor loop, and kept on resume."""
from __future__ import annotations

import copy
from typing import Dict

import pytest
import torch
from torch.optim.optimizer import _get_fused_kernels_supported_devices

from loss import CenterLoss
from model import make_model
from solver import make_optimizer
from solver.make_optimizer import kernel_options
from test_model import NUM_CLASSES, perturb_, tiny_cfg
from test_model import tiny_vits  # noqa: F401  (fixture)

OPTIMIZERS = ('SGD', 'Adam', 'AdamW')


def optimizer_cfg(name: str, device: str = 'cpu'):
    # Settings of the real recipes: bias LR factor 2, weight decay, SGD momentum.
    return tiny_cfg('SOLVER.OPTIMIZER_NAME', name, 'SOLVER.BASE_LR', 0.01, 'SOLVER.BIAS_LR_FACTOR', 2,
                    'SOLVER.WEIGHT_DECAY', 1e-4, 'SOLVER.WEIGHT_DECAY_BIAS', 1e-4, 'SOLVER.MOMENTUM', 0.9,
                    'MODEL.DEVICE', device)


def kernels_of(optimizer: torch.optim.Optimizer) -> Dict[str, object]:
    return {key: {group.get(key) for group in optimizer.param_groups} for key in ('foreach', 'fused')}


def train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    """`steps` updates with the same pseudo-random gradients whatever the optimizer."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        for param in model.parameters():
            param.grad = torch.randn(param.shape, generator=generator) if param.requires_grad else None
        optimizer.step()


def assert_same_parameters(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    """Equal within 1e-6 relative, or 1e-6 of the tensor's largest value for elements near zero
    (the kernels order their float32 arithmetic differently)."""
    for (name, param), expected in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(param, expected, rtol=1e-6, atol=1e-6 * float(expected.detach().abs().max()),
                                   msg=lambda text, name=name: f"{name}: {text}")


@pytest.mark.parametrize('name', OPTIMIZERS)
def test_cpu_uses_foreach_with_the_updates_of_the_plain_loop(tiny_vits, name):
    cfg = optimizer_cfg(name)
    torch.manual_seed(0)
    model = make_model(cfg, NUM_CLASSES, 0, 0)
    perturb_(model)
    reference = copy.deepcopy(model)
    optimizer, _ = make_optimizer(cfg, model, CenterLoss(NUM_CLASSES, 32))
    assert kernels_of(optimizer) == {'foreach': {True}, 'fused': {None}}
    plain, _ = make_optimizer(cfg, reference, CenterLoss(NUM_CLASSES, 32))
    for group in plain.param_groups:
        group['foreach'] = False  # torch's single-tensor loop
    initial = model.base.cls_token.detach().clone()
    train_steps(model, optimizer)
    train_steps(reference, plain)
    assert not torch.equal(model.base.cls_token, initial)
    assert_same_parameters(model, reference)


@pytest.mark.parametrize('name', OPTIMIZERS)
def test_gpu_config_chooses_fused_kernels(tiny_vits, monkeypatch, name):
    """MODEL.DEVICE decides (the model is still on the CPU when the optimizer is built)."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    model = make_model(optimizer_cfg(name), NUM_CLASSES, 0, 0)
    optimizer, _ = make_optimizer(optimizer_cfg(name, device='cuda'), model, CenterLoss(NUM_CLASSES, 32))
    assert kernels_of(optimizer) == {'foreach': {None}, 'fused': {True}}
    # A 'cuda' config on a machine without a GPU runs on the CPU: foreach.
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    optimizer, _ = make_optimizer(optimizer_cfg(name, device='cuda'), model, CenterLoss(NUM_CLASSES, 32))
    assert kernels_of(optimizer) == {'foreach': {True}, 'fused': {None}}


@pytest.mark.skipif('cpu' not in _get_fused_kernels_supported_devices(),
                    reason="this torch has no fused optimizer kernels for the CPU")
@pytest.mark.parametrize('name', OPTIMIZERS)
def test_fused_update_equals_the_plain_loop(tiny_vits, name):
    """The fused update's arithmetic, on torch's CPU fused kernels (the CUDA ones need a GPU)."""
    cfg = optimizer_cfg(name)
    torch.manual_seed(0)
    model = make_model(cfg, NUM_CLASSES, 0, 0)
    perturb_(model)
    reference = copy.deepcopy(model)
    fused, _ = make_optimizer(cfg, model, CenterLoss(NUM_CLASSES, 32))
    plain, _ = make_optimizer(cfg, reference, CenterLoss(NUM_CLASSES, 32))
    for group in fused.param_groups:
        group.update(foreach=False, fused=True)
    for group in plain.param_groups:
        group['foreach'] = False
    train_steps(model, fused)
    train_steps(reference, plain)
    assert_same_parameters(model, reference)


def test_optimizers_without_the_options_get_none():
    assert kernel_options(torch.optim.LBFGS, on_gpu=True) == {}
    assert kernel_options(torch.optim.LBFGS, on_gpu=False) == {}
    for name in OPTIMIZERS:
        optimizer_class = getattr(torch.optim, name)
        assert kernel_options(optimizer_class, on_gpu=False) == {'foreach': True}
        assert kernel_options(optimizer_class, on_gpu=True) == {'fused': True}


def test_resume_keeps_this_runs_kernels(tiny_vits, monkeypatch):
    """A checkpoint written by a GPU run (fused) resumes on the CPU with foreach, and its state."""
    cfg = optimizer_cfg('AdamW')
    model = make_model(cfg, NUM_CLASSES, 0, 0)
    optimizer, _ = make_optimizer(cfg, model, CenterLoss(NUM_CLASSES, 32))
    train_steps(model, optimizer, steps=1)
    saved = copy.deepcopy(optimizer.state_dict())
    for group in saved['param_groups']:
        group.update(foreach=None, fused=True)
    resumed, _ = make_optimizer(cfg, model, CenterLoss(NUM_CLASSES, 32))
    resumed.load_state_dict(saved)
    assert kernels_of(resumed) == {'foreach': {True}, 'fused': {None}}
    assert all(group['fused'] for group in saved['param_groups'])  # the caller's dict is untouched
    param = model.base.cls_token
    torch.testing.assert_close(resumed.state[param]['exp_avg'], optimizer.state[param]['exp_avg'])
    train_steps(model, resumed, steps=1)  # and it steps


def test_mismatched_checkpoint_is_still_refused(tiny_vits):
    cfg = optimizer_cfg('SGD')
    model = make_model(cfg, NUM_CLASSES, 0, 0)
    optimizer, _ = make_optimizer(cfg, model, CenterLoss(NUM_CLASSES, 32))
    saved = optimizer.state_dict()
    saved['param_groups'] = saved['param_groups'][:1]
    with pytest.raises(ValueError, match='different number of parameter groups'):
        optimizer.load_state_dict(saved)
