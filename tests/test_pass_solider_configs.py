"""The PASS and SOLIDER configs build their real-size models (on the meta device: shapes only, no
memory or initialisation time) with the widths their checkpoints and heads need, and carry their
authors' recipes; each MSMT17 config is its Market twin but for the dataset."""
import glob
import os

import pytest
import torch

from config import load_config
from model import make_model
from model.backbones import feature_dim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.relpath(path, ROOT) for pattern in ('vit_*_pass*.yml', 'swin_*_solider.yml')
                 for path in glob.glob(os.path.join(ROOT, 'configs', 'Market', pattern)))
# name -> (fused feature width, SOLVER.BASE_LR): PASS fuses the class token with the parts' mean
# side by side; SOLIDER's run.sh sets the rates.
EXPECTED = {
    'vit_small_pass': (2 * 384, 0.0004), 'vit_small_pass_384': (2 * 384, 0.0004),
    'vit_base_pass': (2 * 768, 0.0004), 'vit_base_pass_384': (2 * 768, 0.0004),
    'swin_tiny_solider': (768, 0.0008), 'swin_small_solider': (768, 0.0002), 'swin_base_solider': (1024, 0.0002),
}


def test_every_pass_and_solider_config_is_checked():
    assert [os.path.basename(path)[:-4] for path in CONFIGS] == sorted(EXPECTED)


@pytest.mark.parametrize('path', CONFIGS)
def test_config_builds_its_real_size_model(path):
    cfg = load_config(os.path.join(ROOT, path), ['MODEL.PRETRAIN_CHOICE', 'none', 'MODEL.DEVICE', 'cpu'])
    width, lr = EXPECTED[os.path.basename(path)[:-4]]
    assert feature_dim(cfg) == width and cfg.SOLVER.BASE_LR == lr
    assert cfg.MODEL.PASS or cfg.MODEL.SEMANTIC_WEIGHT == 0.2
    with torch.device('meta'):
        model = make_model(cfg, 751, 6, 1)
        images = torch.empty(2, 3, *cfg.INPUT.SIZE_TRAIN)
        score, feat = model.train()(images, torch.tensor([0, 1]))
        eval_feat = model.eval()(images)
    assert score.shape == (2, 751) and feat.shape == eval_feat.shape == (2, width)
    twin = load_config(os.path.join(ROOT, path.replace('Market', 'MSMT17')))
    market = load_config(os.path.join(ROOT, path))
    assert twin.DATASETS.NAMES == 'msmt17' and market.DATASETS.NAMES == 'market1501'
    for section in ('MODEL', 'INPUT', 'SOLVER', 'TEST', 'DATALOADER'):
        assert twin[section] == market[section], section
