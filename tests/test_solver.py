"""Optimizer parameter groups and learning-rate schedules."""
import io
import math

import pytest
import torch
from torch import nn

from config import cfg as default_cfg
from loss import CenterLoss
from model import make_model
from solver import WarmupMultiStepLR, build_param_groups, create_scheduler, make_optimizer
from test_model import NUM_CLASSES, tiny_cfg
from test_model import tiny_vits  # noqa: F401  (fixture)


class TinyReID(nn.Module):
    """Parameter names of the TransReID heads: base.*, bottleneck (bias frozen), classifier*
    (classifier_1 with a bias, to cover the bias rule on a classifier)."""

    def __init__(self):
        super().__init__()
        self.base = nn.Linear(4, 4)
        self.bottleneck = nn.BatchNorm1d(4)
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(4, 3, bias=False)
        self.classifier_1 = nn.Linear(4, 3)


def _cfg(**solver):
    cfg = default_cfg.clone()
    cfg.MODEL.NAME = 'transformer'
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def _settings_by_name(model, optimizer):
    by_tensor = {id(p): (group['lr'], group['weight_decay'])
                 for group in optimizer.param_groups for p in group['params']}
    return {name: by_tensor.get(id(p)) for name, p in model.named_parameters()}


def test_param_settings_follow_the_reference_rules():
    cfg = _cfg(BASE_LR=0.01, BIAS_LR_FACTOR=3, WEIGHT_DECAY=1e-4, WEIGHT_DECAY_BIAS=2e-4,
               LARGE_FC_LR=True, OPTIMIZER_NAME='SGD')
    model = TinyReID()
    optimizer, _ = make_optimizer(cfg, model, CenterLoss(3, 4))
    assert _settings_by_name(model, optimizer) == {
        'base.weight': (0.01, 1e-4),
        'base.bias': (0.03, 2e-4),
        'bottleneck.weight': (0.01, 1e-4),
        'bottleneck.bias': None,               # frozen: not in the optimizer
        'classifier.weight': (0.02, 1e-4),     # LARGE_FC_LR: 2 × BASE_LR
        'classifier_1.weight': (0.02, 1e-4),
        'classifier_1.bias': (0.02, 2e-4),     # 2 × BASE_LR, bias weight decay
    }
    assert len(optimizer.param_groups) == 4


@pytest.mark.parametrize('loss_type', ['softmax', 'amsoftmax'])
def test_large_fc_lr_reaches_exactly_the_classifiers_of_a_jpm_model(tiny_vits, loss_type):
    cfg = tiny_cfg('MODEL.JPM', True, 'MODEL.ID_LOSS_TYPE', loss_type, 'SOLVER.BASE_LR', 0.01,
                   'SOLVER.BIAS_LR_FACTOR', 1, 'SOLVER.LARGE_FC_LR', True)
    model = make_model(cfg, NUM_CLASSES, 0, 0)
    doubled = [p for group in build_param_groups(cfg, model) if group['lr'] == 0.02 for p in group['params']]
    classifiers = [f'classifier_{part}' if part else 'classifier' for part in range(cfg.MODEL.DEVIDE_LENGTH + 1)]
    expected = [p for name, p in model.named_parameters() if name.split('.')[0] in classifiers]
    assert len(expected) == len(classifiers)
    assert {id(p) for p in doubled} == {id(p) for p in expected}


def test_parameters_sharing_settings_share_a_group_in_model_order():
    cfg = _cfg(BASE_LR=0.008, BIAS_LR_FACTOR=2, WEIGHT_DECAY=1e-4, WEIGHT_DECAY_BIAS=1e-4)
    model = TinyReID()
    groups = build_param_groups(cfg, model)
    assert [(g['lr'], g['weight_decay']) for g in groups] == [(0.008, 1e-4), (0.016, 1e-4)]
    assert groups[0]['params'] == [model.base.weight, model.bottleneck.weight,
                                   model.classifier.weight, model.classifier_1.weight]
    assert groups[1]['params'] == [model.base.bias, model.classifier_1.bias]


@pytest.mark.parametrize("name, optimizer_class", [
    ('SGD', torch.optim.SGD), ('Adam', torch.optim.Adam), ('AdamW', torch.optim.AdamW)])
def test_grouped_step_equals_one_group_per_tensor(name, optimizer_class):
    """The reference's one-group-per-tensor optimizer and the grouped one take the same step."""
    cfg = _cfg(OPTIMIZER_NAME=name, BASE_LR=0.1, BIAS_LR_FACTOR=2, WEIGHT_DECAY=0.01,
               WEIGHT_DECAY_BIAS=0.001, MOMENTUM=0.9)
    torch.manual_seed(0)
    grouped_model = TinyReID()
    reference_model = TinyReID()
    reference_model.load_state_dict(grouped_model.state_dict())
    grouped, _ = make_optimizer(cfg, grouped_model, CenterLoss(3, 4))
    per_tensor = optimizer_class(
        [{'params': [p], 'lr': 0.2 if 'bias' in n else 0.1,
          'weight_decay': 0.001 if 'bias' in n else 0.01}
         for n, p in reference_model.named_parameters() if p.requires_grad],
        **({'momentum': 0.9} if name == 'SGD' else {}))
    assert isinstance(grouped, optimizer_class)
    inputs = torch.randn(6, 4)
    for model, optimizer in ((grouped_model, grouped), (reference_model, per_tensor)):
        for _ in range(2):
            optimizer.zero_grad()
            features = model.bottleneck(model.base(inputs))
            (model.classifier(features).pow(2).mean() + model.classifier_1(features).mean()).backward()
            optimizer.step()
    for p, q in zip(grouped_model.parameters(), reference_model.parameters()):
        assert torch.allclose(p, q, atol=1e-7)


def test_sgd_momentum_and_center_optimizer():
    cfg = _cfg(OPTIMIZER_NAME='SGD', MOMENTUM=0.8, CENTER_LR=0.5)
    center = CenterLoss(3, 4)
    optimizer, optimizer_center = make_optimizer(cfg, TinyReID(), center)
    assert all(group['momentum'] == 0.8 for group in optimizer.param_groups)
    assert isinstance(optimizer_center, torch.optim.SGD)
    assert optimizer_center.param_groups[0]['lr'] == 0.5
    assert optimizer_center.param_groups[0]['params'] == [center.centers]


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER_NAME 'Lamb'.*AdamW"):
        make_optimizer(_cfg(OPTIMIZER_NAME='Lamb'), TinyReID(), CenterLoss(3, 4))


def _cosine_closed_form(epoch, group_base_lr, base_lr, warmup, max_epochs):
    """The reference's schedule: linear warm-up from 0.01·BASE_LR, then the cosine of the
    absolute epoch down to 0.002·BASE_LR, which it keeps after MAX_EPOCHS."""
    warmup_init, lr_min = 0.01 * base_lr, 0.002 * base_lr
    if epoch < warmup:
        return warmup_init + epoch * (group_base_lr - warmup_init) / warmup
    if epoch >= max_epochs:
        return lr_min
    return lr_min + 0.5 * (group_base_lr - lr_min) * (1 + math.cos(math.pi * epoch / max_epochs))


def _sgd_with_bias_group(base_lr, bias_lr):
    return torch.optim.SGD([{'params': [nn.Parameter(torch.zeros(1))], 'lr': base_lr},
                            {'params': [nn.Parameter(torch.zeros(1))], 'lr': bias_lr}],
                           lr=base_lr, momentum=0.9)


def test_cosine_schedule_matches_the_closed_form_every_epoch():
    cfg = _cfg(BASE_LR=0.008, MAX_EPOCHS=120, WARMUP_EPOCHS=5)
    optimizer = _sgd_with_bias_group(0.008, 0.016)
    scheduler = create_scheduler(cfg, optimizer)
    assert [g['lr'] for g in optimizer.param_groups] == pytest.approx([0.008 * 0.01] * 2)
    for epoch in range(1, 123):
        scheduler.step(epoch)
        expected = [_cosine_closed_form(epoch, group_lr, 0.008, 5, 120)
                    for group_lr in (0.008, 0.016)]
        assert [g['lr'] for g in optimizer.param_groups] == pytest.approx(expected, rel=1e-12)
        assert scheduler._get_lr(epoch) == pytest.approx(expected, rel=1e-12)


def test_cosine_schedule_spot_values():
    cfg = _cfg(BASE_LR=1.0, MAX_EPOCHS=10, WARMUP_EPOCHS=2)
    scheduler = create_scheduler(cfg, _sgd_with_bias_group(1.0, 1.0))
    # Warm-up halfway from 0.01 to 1; then the cosine at epoch 5 of 10 is the midpoint.
    assert scheduler._get_lr(1)[0] == pytest.approx(0.505)
    assert scheduler._get_lr(5)[0] == pytest.approx(0.002 + 0.5 * 0.998)
    assert scheduler._get_lr(10)[0] == pytest.approx(0.002)


def _multistep_cfg(method='linear'):
    cfg = _cfg(STEPS=(40, 70), GAMMA=0.1, WARMUP_FACTOR=0.01, WARMUP_EPOCHS=10,
               WARMUP_METHOD=method)
    cfg.MODEL.NAME = 'resnet50'
    return cfg


@pytest.mark.parametrize("method, expected", [
    ('linear', {0: 1e-4, 5: 0.00505, 9: 0.01 * (0.01 * 0.1 + 0.9), 10: 0.01, 39: 0.01,
                40: 0.001, 69: 0.001, 70: 1e-4, 119: 1e-4}),
    ('constant', {0: 1e-4, 9: 1e-4, 10: 0.01, 40: 0.001, 70: 1e-4}),
])
def test_warmup_multistep_values_by_hand(method, expected):
    optimizer = _sgd_with_bias_group(0.01, 0.02)
    scheduler = create_scheduler(_multistep_cfg(method), optimizer)
    assert isinstance(scheduler, WarmupMultiStepLR)
    assert optimizer.param_groups[0]['lr'] == pytest.approx(expected[0])
    for epoch, lr in expected.items():
        scheduler.step(epoch)
        assert optimizer.param_groups[0]['lr'] == pytest.approx(lr, rel=1e-12)
        assert optimizer.param_groups[1]['lr'] == pytest.approx(2 * lr, rel=1e-12)
        assert scheduler._get_lr(epoch)[0] == pytest.approx(lr, rel=1e-12)


def test_warmup_multistep_rejects_bad_settings():
    with pytest.raises(ValueError, match="WARMUP_METHOD 'cosine'"):
        WarmupMultiStepLR(_sgd_with_bias_group(0.1, 0.1), [40, 70], warmup_method='cosine')
    with pytest.raises(ValueError, match="STEPS"):
        WarmupMultiStepLR(_sgd_with_bias_group(0.1, 0.1), [70, 40])


@pytest.mark.parametrize("model_name", ['transformer', 'resnet50'])
def test_scheduler_state_round_trips_through_a_weights_only_checkpoint(model_name):
    cfg = _multistep_cfg() if model_name == 'resnet50' else _cfg(BASE_LR=0.008)
    scheduler = create_scheduler(cfg, _sgd_with_bias_group(0.008, 0.016))
    scheduler.step(7)
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, map_location='cpu', weights_only=True)

    # A fresh run (whose optimizer starts from its own initial lrs) resumes the same schedule.
    resumed_optimizer = _sgd_with_bias_group(0.008, 0.016)
    resumed = create_scheduler(cfg, resumed_optimizer)
    resumed.load_state_dict(state)
    for epoch in (8, 45, 100):
        scheduler.step(epoch)
        resumed.step(epoch)
        assert resumed._get_lr(epoch) == scheduler._get_lr(epoch)
        assert [g['lr'] for g in resumed_optimizer.param_groups] == scheduler._get_lr(epoch)


@pytest.mark.parametrize("config_file", ["configs/Market/vit_small_usl.yml",
                                         "configs/MSMT17/vit_small_uda.yml"])
def test_training_without_labels_steps_the_rate_as_cluster_contrast_does(config_file):
    """Their StepLR(step 20, gamma 0.1) on epochs counted from 1: x0.1 from epoch 21 and 41."""
    import os
    from config import load_config
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, config_file), ["MODEL.PRETRAIN_CHOICE", "none"]
                      if "usl" in config_file else [])
    base = cfg.SOLVER.BASE_LR
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    scheduler = create_scheduler(cfg, optimizer)
    expected = {1: base, 20: base, 21: base * 0.1, 40: base * 0.1, 41: base * 0.01, 50: base * 0.01}
    for epoch, lr in expected.items():
        assert scheduler._get_lr(epoch)[0] == pytest.approx(lr)
