"""PASS trains end to end on the CPU from a synthetic PASS (DINO) checkpoint, through train.py's
path (config, loaders, model, loss, optimizer, do_train), at toy size: the quickstart's 5-block
width-192 ViT with PASS's part tokens, its recipe's necks and fusion, a 16 x 8 pre-training grid
resized to 64x32 images, one epoch of two iterations; and the trained model loads back as test.py
loads it, giving the same features."""
import os

import torch

from model import make_model
from processor import do_train
from tests.pass_synthetic import TOY_TYPE, pass_dino_checkpoint, synthetic_pass_state
from tests.test_pipeline import build
from tests.test_ssl_training import SMALL_SET


def test_training_starts_from_the_pass_teacher_and_its_checkpoint_tests_alike(tiny_opts, tmp_path,
                                                                                tmp_path_factory):
    state = synthetic_pass_state()
    path = tmp_path / 'checkpoint.pth'
    torch.save(pass_dino_checkpoint(state), path)
    opts = tiny_opts + ['MODEL.TRANSFORMER_TYPE', TOY_TYPE, 'MODEL.PASS', 'True', 'MODEL.JPM', 'False',
                        'MODEL.PRETRAIN_CHOICE', 'imagenet', 'MODEL.PRETRAIN_PATH', str(path),
                        'MODEL.PRETRAIN_HW_RATIO', '2', 'SOLVER.WARMUP_METHOD', 'cosine', 'SOLVER.MAX_EPOCHS', '1',
                        'SOLVER.CHECKPOINT_PERIOD', '1', 'SOLVER.EVAL_PERIOD', '1', *SMALL_SET,
                        'DATASETS.ROOT_DIR', str(tmp_path_factory.mktemp('small_data'))]
    cfg, parts = build(opts)
    model = parts['model']
    start = {key: value.clone() for key, value in model.base.state_dict().items()}
    for key in ('cls_token', 'part_token1', 'part_token3', 'cls_pos', 'part2_pos', 'blocks.4.mlp.fc2.weight'):
        torch.testing.assert_close(start[key], state[key], atol=0, rtol=0, msg=key)
    assert start['pos_embed'].shape == (1, 4 * 2, 192)  # the 16 x 8 grid resized for 64x32 at stride 16
    assert model.classifier.weight.shape[1] == 2 * 192  # the class token beside the parts' mean

    result = do_train(cfg, **parts)
    assert 0 <= result.mAP <= 1
    saved = os.path.join(cfg.OUTPUT_DIR, 'transformer_1.pth')
    trained = model.base.state_dict()
    for key in ('part_token1', 'part3_pos', 'blocks.0.attn.qkv.weight'):
        assert not torch.equal(trained[key], start[key]), key

    # test.py: the same config with TEST.WEIGHT loads the whole model (PRETRAIN_CHOICE 'self').
    cfg.defrost()
    cfg.MODEL.PRETRAIN_CHOICE, cfg.MODEL.PRETRAIN_PATH = 'self', saved
    cfg.freeze()
    reloaded = make_model(cfg, model.num_classes, model.base.cam_num, model.base.view_num).eval()
    images = torch.randn(3, 3, 64, 32)
    cameras = torch.tensor([0, 1, 0])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images, cam_label=cameras),
                                   model.eval()(images, cam_label=cameras), atol=0, rtol=0)
