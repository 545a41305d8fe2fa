"""SOLIDER's Swin trains end to end on the CPU from a synthetic SOLIDER checkpoint (the teacher as
their convert_model.py writes it), through train.py's path (config, loaders, model, loss,
optimizer, do_train), with their recipe's semantic weight 0.2, at toy size: swin_tiny's name
with tests/solider_synthetic.py's toy widths (16 wide, two blocks per stage), 64x32 images, one
epoch of two iterations; and the trained model loads back as test.py loads it. (The real-size
Swin-T, -S and -B are checked key by key against SOLIDER's in tests/test_solider_exactness.py.)"""
import os

import torch

from model import make_model
from model.backbones.specs import SWIN_SPECS
from processor import do_train
from tests.solider_synthetic import TINY, synthetic_state, teacher_state
from tests.test_pipeline import build
from tests.test_ssl_training import SMALL_SET

SWIN = 'swin_tiny_patch4_window7_224'


def test_training_starts_from_the_solider_teacher_and_its_checkpoint_tests_alike(tiny_opts, tmp_path,
                                                                                  tmp_path_factory, monkeypatch):
    monkeypatch.setitem(SWIN_SPECS, SWIN, dict(TINY))
    state = synthetic_state()
    path = tmp_path / 'checkpoint_tea.pth'
    torch.save(teacher_state(state), path)
    opts = tiny_opts + ['MODEL.TRANSFORMER_TYPE', SWIN, 'MODEL.SEMANTIC_WEIGHT', '0.2', 'MODEL.JPM', 'False',
                        'MODEL.SIE_CAMERA', 'False', 'MODEL.PRETRAIN_CHOICE', 'imagenet',
                        'MODEL.PRETRAIN_PATH', str(path), 'SOLVER.WARMUP_METHOD', 'cosine', 'SOLVER.MAX_EPOCHS', '1',
                        'SOLVER.CHECKPOINT_PERIOD', '1', 'SOLVER.EVAL_PERIOD', '1', *SMALL_SET,
                        'DATASETS.ROOT_DIR', str(tmp_path_factory.mktemp('small_data'))]
    cfg, parts = build(opts)
    model = parts['model']
    start = {key: value.clone() for key, value in model.base.state_dict().items()}
    for key in ('patch_embed.projection.weight', 'stages.1.blocks.1.attn.w_msa.relative_position_bias_table',
                'stages.2.downsample.reduction.weight', 'semantic_embed_w.3.weight', 'norm3.bias'):
        torch.testing.assert_close(start[key], state[key], atol=0, rtol=0, msg=key)
    assert model.classifier.weight.shape[1] == 8 * TINY['embed_dims']

    result = do_train(cfg, **parts)
    assert 0 <= result.mAP <= 1
    trained = model.base.state_dict()
    assert not torch.equal(trained['stages.0.blocks.1.attn.w_msa.qkv.weight'],
                           start['stages.0.blocks.1.attn.w_msa.qkv.weight'])
    # The semantic controller stays as pre-trained, as theirs (its parameters do not train).
    torch.testing.assert_close(trained['semantic_embed_b.1.weight'], start['semantic_embed_b.1.weight'],
                               atol=0, rtol=0)

    cfg.defrost()
    cfg.MODEL.PRETRAIN_CHOICE = 'self'
    cfg.MODEL.PRETRAIN_PATH = os.path.join(cfg.OUTPUT_DIR, 'transformer_1.pth')
    cfg.freeze()
    reloaded = make_model(cfg, model.num_classes, 0, 0).eval()
    images = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images), model.eval()(images), atol=0, rtol=0)
