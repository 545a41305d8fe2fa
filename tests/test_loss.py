"""Losses against hand-computed values and independent plain implementations."""
import math

import pytest
import torch
import torch.nn.functional as F

from config import ConfigError, load_config
from config import cfg as default_cfg
from loss import (CenterLoss, CrossEntropyLabelSmooth, TripletLoss, euclidean_dist,
                  hard_example_mining, make_loss)

# Four 2-D features, two identities:  a=(0,0), b=(3,0) are id 0;  c=(0,4), d=(6,8) are id 1.
# Distances: ab=3, ac=4, ad=10, bc=5, bd=√73, cd=√52.
# Hardest positive / negative per anchor: a: 3 / 4,  b: 3 / 5,  c: √52 / 4,  d: √52 / √73.
FEATURES = torch.tensor([[0., 0.], [3., 0.], [0., 4.], [6., 8.]])
LABELS = torch.tensor([0, 0, 1, 1])
HARDEST_POSITIVE = [3.0, 3.0, math.sqrt(52), math.sqrt(52)]
HARDEST_NEGATIVE = [4.0, 5.0, 4.0, math.sqrt(73)]


def _cfg(**changes):
    cfg = default_cfg.clone()
    cfg.MODEL.NAME = 'transformer'
    cfg.MODEL.TRANSFORMER_TYPE = 'deit_tiny_patch16_224_TransReID'
    cfg.DATALOADER.SAMPLER = 'softmax_triplet'
    for dotted, value in changes.items():
        section, key = dotted.split('__')
        setattr(cfg[section], key, value)
    return cfg


def _opts(**changes):
    """KEY VALUE overrides of `_cfg`'s settings plus `changes`, for load_config."""
    base = {'MODEL__NAME': 'transformer', 'MODEL__TRANSFORMER_TYPE': 'deit_tiny_patch16_224_TransReID',
            'DATALOADER__SAMPLER': 'softmax_triplet', **changes}
    return [item for key, value in base.items() for item in (key.replace('__', '.'), str(value))]


def _smoothed_ce(logits, target, epsilon):
    """-(1/B) Σ_i Σ_k q_ik log p_ik with q = (1-ε)·one_hot + ε/K, written out in plain Python."""
    total = 0.0
    for row, label in zip(logits.tolist(), target.tolist()):
        log_norm = math.log(sum(math.exp(v) for v in row))
        k = len(row)
        for j, value in enumerate(row):
            q = (1 - epsilon) * (j == label) + epsilon / k
            total -= q * (value - log_norm)
    return total / len(target)


def _plain_batch_hard(features, labels, margin):
    """Loop version of the batch-hard triplet loss (margin None: soft margin)."""
    losses = []
    for i in range(len(labels)):
        dists = [math.dist(features[i].tolist(), features[j].tolist()) for j in range(len(labels))]
        ap = max(d for d, lab in zip(dists, labels.tolist()) if lab == labels[i])
        an = min(d for d, lab in zip(dists, labels.tolist()) if lab != labels[i])
        soft = margin is None
        losses.append(math.log1p(math.exp(ap - an)) if soft else max(0.0, ap - an + margin))
    return sum(losses) / len(losses)


def test_euclidean_dist_matches_the_hand_distances():
    dist = euclidean_dist(FEATURES, FEATURES)
    expected = torch.tensor([[0, 3, 4, 10], [3, 0, 5, math.sqrt(73)],
                             [4, 5, 0, math.sqrt(52)], [10, math.sqrt(73), math.sqrt(52), 0]])
    assert torch.allclose(dist, expected, atol=1e-5)
    # The clamp puts self-distances at sqrt(1e-12), as the reference.
    assert torch.allclose(dist.diagonal(), torch.full((4,), 1e-6), atol=1e-7)


def test_hard_example_mining_by_hand():
    dist_ap, dist_an = hard_example_mining(euclidean_dist(FEATURES, FEATURES), LABELS)
    assert torch.allclose(dist_ap, torch.tensor(HARDEST_POSITIVE))
    assert torch.allclose(dist_an, torch.tensor(HARDEST_NEGATIVE))


def test_hard_example_mining_with_unequal_identity_sizes():
    dist = torch.tensor([[0., 1., 2., 9.],
                         [1., 0., 7., 3.],
                         [2., 7., 0., 5.],
                         [9., 3., 5., 0.]])
    dist_ap, dist_an = hard_example_mining(dist, torch.tensor([4, 4, 4, 8]))
    assert dist_ap.tolist() == [2., 7., 7., 0.]
    assert dist_an.tolist() == [9., 3., 5., 3.]


def test_triplet_with_margin_by_hand():
    # a and b are satisfied (4-3, 5-3 > 0.3), d too (√73-√52 > 0.3); only c violates.
    expected = (0.3 + math.sqrt(52) - 4.0) / 4
    assert TripletLoss(margin=0.3)(FEATURES, LABELS).item() == pytest.approx(expected, rel=1e-5)


def test_soft_margin_triplet_by_hand():
    expected = sum(math.log1p(math.exp(ap - an))
                   for ap, an in zip(HARDEST_POSITIVE, HARDEST_NEGATIVE)) / 4
    assert TripletLoss(margin=None)(FEATURES, LABELS).item() == pytest.approx(expected, rel=1e-5)


def test_triplet_matches_a_plain_loop_on_random_pk_batch():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(12, 8, generator=generator)
    labels = torch.arange(3).repeat_interleave(4)
    for margin in (None, 0.3):
        expected = _plain_batch_hard(features, labels, margin)
        assert TripletLoss(margin)(features, labels).item() == pytest.approx(expected, rel=1e-5)


def test_label_smoothing_matches_the_manual_formula():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    target = torch.tensor([0, 1])
    for epsilon in (0.0, 0.1):
        value = CrossEntropyLabelSmooth(epsilon)(logits, target).item()
        assert value == pytest.approx(_smoothed_ce(logits, target, epsilon), rel=1e-6)


def test_center_loss_by_hand():
    center = CenterLoss(num_classes=3, feat_dim=2)
    with torch.no_grad():
        center.centers.copy_(torch.tensor([[1., 1.], [0., 2.], [5., 5.]]))
    features = torch.tensor([[1., 2.], [3., 2.], [5., 5.]])
    labels = torch.tensor([0, 1, 2])
    # ‖(1,2)-(1,1)‖² = 1, ‖(3,2)-(0,2)‖² = 9, ‖(5,5)-(5,5)‖² = 0 (floored at 1e-12).
    assert center(features, labels).item() == pytest.approx(10 / 3, rel=1e-6)


def test_center_loss_rejects_a_feature_of_the_wrong_width():
    with pytest.raises(ValueError, match="width 4"):
        CenterLoss(num_classes=2, feat_dim=4)(torch.zeros(2, 3), torch.tensor([0, 1]))


@pytest.mark.parametrize("name, transformer_type, width", [
    ('transformer', 'deit_small_patch16_224_TransReID', 384),
    ('transformer', 'vit_base_patch16_224_TransReID', 768),
    ('resnet50', 'None', 2048),
])
def test_center_width_follows_the_backbone(name, transformer_type, width):
    cfg = _cfg(MODEL__NAME=name, MODEL__TRANSFORMER_TYPE=transformer_type)
    _, center_criterion = make_loss(cfg, num_classes=7)
    assert tuple(center_criterion.centers.shape) == (7, width)


def _jpm_batch(num_classes=3, width=192, branches=5):
    generator = torch.Generator().manual_seed(1)
    target = torch.arange(num_classes).repeat_interleave(4)
    scores = [torch.randn(len(target), num_classes, generator=generator) for _ in range(branches)]
    feats = [torch.randn(len(target), width, generator=generator) for _ in range(branches)]
    return scores, feats, target


def _half_global_half_local(values):
    return 0.5 * sum(values[1:]) / len(values[1:]) + 0.5 * values[0]


def test_jpm_lists_combine_half_global_half_local_mean():
    cfg = _cfg(MODEL__ID_LOSS_WEIGHT=0.7, MODEL__TRIPLET_LOSS_WEIGHT=1.3,
               MODEL__IF_LABELSMOOTH='on', MODEL__NO_MARGIN=True)
    loss_func, _ = make_loss(cfg, num_classes=3)
    scores, feats, target = _jpm_batch()
    id_terms = [_smoothed_ce(score, target, 0.1) for score in scores]
    triplet_terms = [_plain_batch_hard(feat, target, None) for feat in feats]
    expected = (0.7 * _half_global_half_local(id_terms)
                + 1.3 * _half_global_half_local(triplet_terms))
    assert loss_func(scores, feats, target, None).item() == pytest.approx(expected, rel=1e-5)


def test_single_branch_margin_loss_without_smoothing():
    cfg = _cfg(MODEL__IF_LABELSMOOTH='off', MODEL__NO_MARGIN=False, SOLVER__MARGIN=0.5)
    loss_func, _ = make_loss(cfg, num_classes=3)
    scores, feats, target = _jpm_batch(branches=1)
    expected = F.cross_entropy(scores[0], target).item() + _plain_batch_hard(feats[0], target, 0.5)
    assert loss_func(scores[0], feats[0], target, None).item() == pytest.approx(expected, rel=1e-5)


def test_triplet_center_adds_weighted_center_loss_on_the_global_feature():
    cfg = _cfg(MODEL__METRIC_LOSS_TYPE='triplet_center', SOLVER__CENTER_LOSS_WEIGHT=0.25,
               MODEL__IF_LABELSMOOTH='off', MODEL__NO_MARGIN=True)
    loss_func, center_criterion = make_loss(cfg, num_classes=3)
    scores, feats, target = _jpm_batch()
    centers = center_criterion.centers.detach()
    center_term = ((feats[0] - centers[target]) ** 2).sum(1).mean().item()
    id_terms = [F.cross_entropy(score, target).item() for score in scores]
    triplet_terms = [_plain_batch_hard(feat, target, None) for feat in feats]
    expected = (_half_global_half_local(id_terms) + _half_global_half_local(triplet_terms)
                + 0.25 * center_term)
    loss = loss_func(scores, feats, target, None)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert center_criterion.centers.grad is not None
    assert center_criterion.centers.grad.abs().sum() > 0


def test_center_only_metric_has_no_triplet_term():
    cfg = _cfg(MODEL__METRIC_LOSS_TYPE='center', SOLVER__CENTER_LOSS_WEIGHT=0.5,
               MODEL__IF_LABELSMOOTH='off')
    loss_func, center_criterion = make_loss(cfg, num_classes=3)
    scores, feats, target = _jpm_batch(branches=1)
    centers = center_criterion.centers.detach()
    expected = (F.cross_entropy(scores[0], target).item()
                + 0.5 * ((feats[0] - centers[target]) ** 2).sum(1).mean().item())
    assert loss_func(scores[0], feats[0], target, None).item() == pytest.approx(expected, rel=1e-5)


def test_softmax_sampler_uses_the_id_loss_only():
    cfg = _cfg(DATALOADER__SAMPLER='softmax', MODEL__IF_LABELSMOOTH='off')
    loss_func, _ = make_loss(cfg, num_classes=3)
    scores, feats, target = _jpm_batch(branches=1)
    expected = F.cross_entropy(scores[0], target).item()
    assert loss_func(scores[0], feats[0], target, None).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("metric", ['center', 'triplet_center'])
def test_center_loss_with_the_softmax_sampler_is_a_clear_error(metric):
    # The 'softmax' sampler drops the metric losses, so the centres would get no gradient and
    # the trainer's centre step would crash.
    # Refused when the config loads, before any data or model is built.
    with pytest.raises(ConfigError) as info:
        load_config(opts=_opts(DATALOADER__SAMPLER='softmax', MODEL__METRIC_LOSS_TYPE=metric))
    message = str(info.value)
    for expected in (f"MODEL.METRIC_LOSS_TYPE '{metric}'", "DATALOADER.SAMPLER 'softmax_triplet'",
                     "with 'softmax'", "METRIC_LOSS_TYPE 'triplet'"):
        assert expected in message


@pytest.mark.parametrize("key, value, choice", [
    ('MODEL__METRIC_LOSS_TYPE', 'quadruplet', 'triplet_center'),
    ('DATALOADER__SAMPLER', 'softmax_center', 'softmax_triplet'),
    ('MODEL__IF_LABELSMOOTH', 'yes', 'off'),
])
def test_unknown_choice_names_the_key_and_its_choices(key, value, choice):
    with pytest.raises(ConfigError) as info:
        load_config(opts=_opts(**{key: value}))
    message = str(info.value)
    assert key.replace('__', '.') in message and value in message and choice in message
