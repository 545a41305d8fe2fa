"""The class-token-only path of the last transformer block: the same outputs and gradients as the
full block's token 0, for one block and for whole models (float64)."""
from __future__ import annotations

import copy
from typing import Dict

import pytest
import torch

from loss import make_loss
from model import make_model
from model.backbones.vit_pytorch import Block
from test_model import CAMERA_NUM, NUM_CLASSES, VIEW_NUM, camera_view_labels, perturb_, tiny_cfg
from test_model import tiny_vits  # noqa: F401  (fixture)

DIM, HEADS, TOKENS, BATCH = 12, 3, 7, 8


def make_block(qkv_bias: bool = True, qk_scale=None, drop: float = 0., attn_drop: float = 0.,
               drop_path: float = 0.) -> Block:
    torch.manual_seed(0)
    block = Block(DIM, HEADS, mlp_ratio=2., qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop,
                  attn_drop=attn_drop, drop_path=drop_path).double()
    perturb_(block)
    return block


def output_and_gradients(block: Block, x: torch.Tensor, grad_out: torch.Tensor, cls_only: bool,
                         seed: int = 1) -> Dict[str, torch.Tensor]:
    """The class token's output, and the gradients of <output, grad_out> w.r.t. x and every
    parameter; `cls_only=False` slices the full block's output (the path without the shortcut)."""
    block.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = block(x, cls_only=True) if cls_only else block(x)[:, :1]
    (out * grad_out).sum().backward()
    result = {"out": out.detach(), "x.grad": x.grad}
    result.update({f"{name}.grad": param.grad for name, param in block.named_parameters()})
    return result


@pytest.mark.parametrize("qkv_bias, qk_scale", [(True, None), (False, 0.1)])
@pytest.mark.parametrize("train", [False, True])
def test_block_class_token_path_equals_full_block(qkv_bias, qk_scale, train):
    block = make_block(qkv_bias, qk_scale, drop_path=0.5).train(train)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, TOKENS, DIM, generator=generator, dtype=torch.float64)
    grad_out = torch.randn(BATCH, 1, DIM, generator=generator, dtype=torch.float64)
    full = output_and_gradients(block, x, grad_out, cls_only=False)
    fast = output_and_gradients(block, x, grad_out, cls_only=True)
    assert fast["out"].shape == (BATCH, 1, DIM)
    assert full.keys() == fast.keys() and all(value is not None for value in fast.values())
    for key in full:
        torch.testing.assert_close(fast[key], full[key], msg=lambda text, key=key: f"{key}: {text}")
    if train:
        # Stochastic depth dropped some samples' branches and kept others' under seed 1: the
        # masks timm's drop_path draws (one N x 1 x 1 Bernoulli(0.5) per branch).
        torch.manual_seed(1)
        masks = torch.empty(2, BATCH).bernoulli_(0.5)
        assert 0 < int(masks.sum()) < 2 * BATCH


def test_other_tokens_still_shape_the_class_token():
    """Keys and values come from every token: changing a patch changes the class token's output."""
    block = make_block().eval()
    x = torch.randn(2, TOKENS, DIM, dtype=torch.float64)
    changed = x.clone()
    changed[:, -1] += torch.randn(DIM, dtype=torch.float64)  # not a constant: norm1 would remove it
    with torch.no_grad():
        assert not torch.allclose(block(x, cls_only=True), block(changed, cls_only=True))


def test_norm1_still_sees_every_token():
    """Forward hooks on norm1 (attention visualisation) get all tokens on both paths."""
    block = make_block().eval()
    seen = []
    block.norm1.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    with torch.no_grad():
        block(torch.randn(2, TOKENS, DIM, dtype=torch.float64), cls_only=True)
    assert seen == [(2, TOKENS, DIM)]


def test_parameter_names_are_the_reference_block_names():
    assert [name for name, _ in make_block().named_parameters()] == [
        'norm1.weight', 'norm1.bias', 'attn.qkv.weight', 'attn.qkv.bias', 'attn.proj.weight',
        'attn.proj.bias', 'norm2.weight', 'norm2.bias', 'mlp.fc1.weight', 'mlp.fc1.bias',
        'mlp.fc2.weight', 'mlp.fc2.bias']


def test_nonzero_dropout_runs_and_is_exact_in_eval_mode():
    """With dropout the masks differ from the full block's (see Block), so train mode is checked
    for shape, finiteness and gradients only; eval mode (no dropout) is exact."""
    block = make_block(drop=0.3, attn_drop=0.3, drop_path=0.2).train()
    x = torch.randn(BATCH, TOKENS, DIM, dtype=torch.float64, requires_grad=True)
    out = block(x, cls_only=True)
    assert out.shape == (BATCH, 1, DIM) and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[:, 1:].abs().sum() > 0
    block.eval()
    with torch.no_grad():
        torch.testing.assert_close(block(x, cls_only=True), block(x)[:, :1])


# --------------------------------------------------------------------------------------------
# Whole models: the class-token path against the full path (every block on every token)
# --------------------------------------------------------------------------------------------
@pytest.fixture
def full_path(monkeypatch):
    """Makes `block(x, cls_only=True)` run the full block and slice token 0 (the path before
    the shortcut existed)."""
    forward = Block.forward

    def full_forward(self, x, cls_only=False):
        out = forward(self, x)
        return out[:, :1] if cls_only else out

    def use_full_path() -> None:
        monkeypatch.setattr(Block, 'forward', full_forward)
    return use_full_path


MODEL_SETTINGS = {
    'jpm_sie': ['MODEL.JPM', True, 'MODEL.SIE_CAMERA', True, 'MODEL.SIE_VIEW', True],
    'baseline': ['MODEL.SIE_CAMERA', True],
}


def tiny_model(name: str):
    # DROP_PATH 0.3: stochastic depth on, to check that both paths draw the same masks.
    cfg = tiny_cfg(*MODEL_SETTINGS[name], 'MODEL.DROP_PATH', 0.3, 'DATALOADER.SAMPLER', 'softmax_triplet')
    torch.manual_seed(0)
    model = make_model(cfg, NUM_CLASSES, CAMERA_NUM, VIEW_NUM).double()
    perturb_(model)
    return cfg, model


def eval_features(model, images, cam, view):
    with torch.no_grad():
        return model.eval()(images, cam_label=cam, view_label=view)


def train_loss_gradients(cfg, model, images, cam, view) -> Dict[str, torch.Tensor]:
    loss_fn, _ = make_loss(cfg, NUM_CLASSES)
    labels = torch.arange(len(images)) // 2  # pairs, so the triplet loss has positives
    model.train().zero_grad(set_to_none=True)
    torch.manual_seed(1)
    score, feat = model(images, labels, cam_label=cam, view_label=view)
    loss = loss_fn(score, feat, labels, cam)
    loss.backward()
    grads = {name: param.grad for name, param in model.named_parameters() if param.grad is not None}
    return {"loss": loss.detach(), **grads}


@pytest.mark.parametrize('name', sorted(MODEL_SETTINGS))
def test_model_features_and_gradients_equal_the_full_path(tiny_vits, full_path, name):
    cfg, model = tiny_model(name)
    reference = copy.deepcopy(model)
    images = torch.randn(6, 3, 64, 48, dtype=torch.float64)
    cam, view = camera_view_labels(6)
    fast_features = eval_features(model, images, cam, view)
    fast_grads = train_loss_gradients(cfg, model, images, cam, view)
    full_path()
    full_features = eval_features(reference, images, cam, view)
    full_grads = train_loss_gradients(cfg, reference, images, cam, view)
    torch.testing.assert_close(fast_features, full_features)
    assert fast_grads.keys() == full_grads.keys()
    # Every block took part: the last block's and the branches' weights have gradients.
    last = 'b1.0.' if cfg.MODEL.JPM else 'base.blocks.2.'
    assert {last + 'attn.qkv.weight', last + 'mlp.fc2.weight'} <= fast_grads.keys()
    for key in full_grads:
        torch.testing.assert_close(fast_grads[key], full_grads[key],
                                   msg=lambda text, key=key: f"{key}: {text}")
