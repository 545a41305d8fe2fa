"""The synthetic quickstart trains end to end from a synthetic TransReID-SSL (DINO) checkpoint, for
each variant, at toy size: the quickstart's 5-block width-192 ViT with TransReID-SSL's key names,
a 16 x 8 pre-training grid (PRETRAIN_HW_RATIO 2) and its cosine schedule, one epoch of two
iterations. (The real-size ViT-S and ViT-B networks are checked key by key against TransReID-SSL's
in tests/test_ssl_exactness.py.)"""
import os

import pytest
import torch

from processor import do_train
from tests.ssl_synthetic import dino_checkpoint, synthetic_state
from tests.test_pipeline import build

TOY = dict(embed_dim=192, depth=5, mlp_ratio=4)  # vit_tiny5_patch16_224_TransReID's widths

VARIANTS = {
    # name: (stem, JPM, stride)
    'vit': (False, False, 16),
    'vit_ics': (True, False, 16),
    'vit_ics_jpm_stride12': (True, True, 12),
}


# A smaller synthetic set than the other tests' (rendered once for this module): 4 training
# identities of 4 images, batches of 8: two iterations an epoch.
SMALL_SET = ['DATASETS.SYNTHETIC.NUM_IDS', '8', 'DATASETS.SYNTHETIC.IMAGES_PER_ID', '4',
             'DATASETS.SYNTHETIC.NUM_CAMERAS', '2', 'SOLVER.IMS_PER_BATCH', '8']


@pytest.fixture(scope='module')
def small_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp('small_data'))


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_training_starts_from_the_ssl_teacher_and_runs(variant, tiny_opts, small_root, tmp_path):
    stem, jpm, stride = VARIANTS[variant]
    state = synthetic_state(stem, **TOY)
    path = tmp_path / 'dino.pth'
    torch.save(dino_checkpoint(state, TOY['embed_dim']), path)
    opts = tiny_opts + ['MODEL.TRANSFORMER_TYPE', 'vit_tiny5_patch16_224_TransReID',
                        'MODEL.PRETRAIN_CHOICE', 'imagenet', 'MODEL.PRETRAIN_PATH', str(path),
                        'MODEL.PRETRAIN_HW_RATIO', '2', 'MODEL.STEM_CONV', str(stem), 'MODEL.JPM', str(jpm),
                        'MODEL.STRIDE_SIZE', f'[{stride}, {stride}]',
                        'SOLVER.WARMUP_METHOD', 'cosine', 'SOLVER.MAX_EPOCHS', '1',
                        'SOLVER.CHECKPOINT_PERIOD', '1', 'SOLVER.EVAL_PERIOD', '1', *SMALL_SET,
                        'DATASETS.ROOT_DIR', small_root]
    cfg, parts = build(opts)
    base = parts['model'].base
    start = {key: value.clone() for key, value in base.state_dict().items()}
    for key in ('cls_token', 'blocks.4.mlp.fc2.weight', 'norm.bias', 'patch_embed.proj.weight'):
        torch.testing.assert_close(start[key], state[key], atol=0, rtol=0, msg=key)
    if stem:
        torch.testing.assert_close(start['patch_embed.conv.4.BN.running_var'],
                                   state['patch_embed.conv.4.BN.running_var'], atol=0, rtol=0)
    # 64x32 images: a 4x2 grid at stride 16, 5x2 at stride 12, both resized from 16x8.
    assert start['pos_embed'].shape == (1, 1 + base.patch_embed.num_patches, TOY['embed_dim'])
    if jpm:  # the JPM branches start as copies of the teacher's last block
        torch.testing.assert_close(parts['model'].b1[0].attn.qkv.weight, state['blocks.4.attn.qkv.weight'])
    result = do_train(cfg, **parts)
    assert 0 <= result.mAP <= 1 and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, 'transformer_1.pth'))
    trained = parts['model'].base.state_dict()
    assert not torch.equal(trained['blocks.0.attn.qkv.weight'], start['blocks.0.attn.qkv.weight'])
    if stem:  # the stem trains too, batch-norm statistics included
        assert not torch.equal(trained['patch_embed.conv.0.weight'], start['patch_embed.conv.0.weight'])
        assert not torch.equal(trained['patch_embed.conv.7.running_mean'], start['patch_embed.conv.7.running_mean'])
