"""Fused and multi-tensor (foreach) optimizer kernels: chosen by device and torch's support, the
same updates as the plain per-tensor loop, and kept on resume."""
from __future__ import annotations

import copy
import importlib
from typing import Dict

import pytest
import torch

from loss import CenterLoss
from model import make_model
from solver import make_optimizer
from solver.make_optimizer import kernel_devices, kernel_options

# The module itself: `solver.make_optimizer` the attribute is the function of that name.
optimizer_module = importlib.import_module('solver.make_optimizer')
from test_model import NUM_CLASSES, perturb_, tiny_cfg
from test_model import tiny_vits  # noqa: F401  (fixture)

OPTIMIZERS = ('SGD', 'Adam', 'AdamW')
CPU_HAS_FUSED = 'cpu' in kernel_devices()[0]
# A CPU run keeps torch's per-tensor loop (see kernel_options).
CPU_KERNELS = {'foreach': {None}, 'fused': {None}}


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


@pytest.mark.parametrize('kernels', [
    pytest.param({'foreach': False, 'fused': True}, id='fused',
                 marks=pytest.mark.skipif(not CPU_HAS_FUSED, reason="no fused CPU kernels in this torch")),
    pytest.param({'foreach': True, 'fused': False}, id='foreach')])
@pytest.mark.parametrize('name', OPTIMIZERS)
def test_kernels_give_the_updates_of_the_plain_loop(tiny_vits, name, kernels):
    """Three steps of the config's optimizer with fused or foreach kernels, on the CPU (the CUDA
    kernels need a GPU): the arithmetic of the options a GPU run gets."""
    cfg = optimizer_cfg(name)
    torch.manual_seed(0)
    model = make_model(cfg, NUM_CLASSES, 0, 0)
    perturb_(model)
    reference = copy.deepcopy(model)
    optimizer, _ = make_optimizer(cfg, model, CenterLoss(NUM_CLASSES, 32))
    assert kernels_of(optimizer) == CPU_KERNELS
    plain, _ = make_optimizer(cfg, reference, CenterLoss(NUM_CLASSES, 32))
    for group in optimizer.param_groups:
        group.update(kernels)
    for group in plain.param_groups:
        group.update(foreach=False, fused=False)  # torch's single-tensor loop
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
    # A 'cuda' config on a machine without a GPU runs on the CPU, with the CPU's loop.
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    optimizer, _ = make_optimizer(optimizer_cfg(name, device='cuda'), model, CenterLoss(NUM_CLASSES, 32))
    assert kernels_of(optimizer) == CPU_KERNELS


def test_kernel_choice_falls_back_by_torch_support(monkeypatch):
    for name in OPTIMIZERS:
        assert kernel_options(getattr(torch.optim, name), 'cuda') == {'fused': True}
    # An optimizer without the options gets none.
    assert kernel_options(torch.optim.LBFGS, 'cuda') == {} and kernel_options(torch.optim.LBFGS, 'cpu') == {}
    # The CPU keeps the loop, even where torch has fused CPU kernels.
    monkeypatch.setattr(optimizer_module, 'kernel_devices', lambda: (['cuda', 'cpu'], ['cuda']))
    assert kernel_options(torch.optim.AdamW, 'cpu') == {}
    # A torch without fused kernels for a device: foreach where it has foreach kernels.
    monkeypatch.setattr(optimizer_module, 'kernel_devices', lambda: (['mps'], ['cuda']))
    assert kernel_options(torch.optim.AdamW, 'cuda') == {'foreach': True}


def test_resume_keeps_this_runs_kernels(tiny_vits):
    """A checkpoint written with other kernel options resumes with this run's, and its state."""
    cfg = optimizer_cfg('AdamW')
    model = make_model(cfg, NUM_CLASSES, 0, 0)
    optimizer, _ = make_optimizer(cfg, model, CenterLoss(NUM_CLASSES, 32))
    train_steps(model, optimizer, steps=1)
    saved = copy.deepcopy(optimizer.state_dict())
    for group in saved['param_groups']:
        group.update(foreach=None, fused=True)  # written by a GPU run
    resumed, _ = make_optimizer(cfg, model, CenterLoss(NUM_CLASSES, 32))
    resumed.load_state_dict(saved)
    assert kernels_of(resumed) == CPU_KERNELS
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
