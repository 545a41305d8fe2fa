"""CLIP-ReID's two-stage training through train.py's path on the tiny synthetic set: stage 1 trains
the prompts alone and lowers its loss, stage 2 the image side alone with the image-to-text part;
a run stopped in either stage resumes to the weights of an uninterrupted one; the stage-2 loss
that make_loss builds equals their make_loss on their fixtures; both stages' schedules are theirs,
computed here by hand."""
import logging
import math
import os
import re
import shutil

import pytest
import torch

from config import load_config
from loss import make_loss
from processor.checkpoint import ResumeError, load_checkpoint
from processor.clipreid_stage1 import PromptTrainer
from processor.processor import Trainer
from solver.make_optimizer import make_optimizer_1stage
from solver.scheduler_factory import create_scheduler, create_scheduler_1stage
from train import build_training, run_training
from utils.seed import set_seed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, 'configs', 'Synthetic', 'vit_clipreid_tiny.yml')
FIXTURES = os.path.join(REPO, 'tests', 'fixtures', 'clipreid')
# The session's tiny synthetic set (tests/conftest.py), two short stages of batches of 16.
TINY = ['MODEL.DEVICE', 'cpu', 'MODEL.STRIDE_SIZE', '[16, 16]', 'INPUT.SIZE_TRAIN', '[64, 32]',
        'INPUT.SIZE_TEST', '[64, 32]', 'DATASETS.SYNTHETIC.NUM_IDS', '32', 'DATASETS.SYNTHETIC.IMAGES_PER_ID', '6',
        'DATASETS.SYNTHETIC.NUM_CAMERAS', '3', 'DATASETS.SYNTHETIC.IMAGE_SIZE', '[64, 32]',
        'DATALOADER.NUM_WORKERS', '0', 'TEST.IMS_PER_BATCH', '64',
        'SOLVER.STAGE1.MAX_EPOCHS', '3', 'SOLVER.STAGE1.IMS_PER_BATCH', '32', 'SOLVER.STAGE1.BASE_LR', '0.001',
        'SOLVER.STAGE1.WARMUP_EPOCHS', '1', 'SOLVER.STAGE1.CHECKPOINT_PERIOD', '3', 'SOLVER.STAGE1.LOG_PERIOD', '2',
        'SOLVER.STAGE2.MAX_EPOCHS', '2', 'SOLVER.STAGE2.IMS_PER_BATCH', '16', 'SOLVER.STAGE2.WARMUP_ITERS', '1',
        'SOLVER.STAGE2.STEPS', '[2]', 'SOLVER.STAGE2.EVAL_PERIOD', '2', 'SOLVER.STAGE2.CHECKPOINT_PERIOD', '2',
        'SOLVER.STAGE2.LOG_PERIOD', '2']
STAGE1_LINE = re.compile(r"Stage 1 epoch\[(\d)\] done\. Loss: ([\d.]+)")


def run(root, out, *extra):
    cfg = load_config(CONFIG, TINY + ['DATASETS.ROOT_DIR', root, 'OUTPUT_DIR', str(out), *extra])
    set_seed(cfg.SOLVER.SEED)
    parts = build_training(cfg)
    run_training(cfg, parts, 0)
    return parts['model'].state_dict()


def keeping_state_before_epoch_2(monkeypatch, cls, copy_to):
    """Patch `cls.train_epoch` to keep a copy of the resume state written after epoch 1."""
    train_epoch = cls.train_epoch

    def copying(self, epoch, *args):
        if epoch == 2:
            self.checkpointer.writer.wait(max_pending=0)
            shutil.copy(self.checkpointer.last_path, copy_to)
        return train_epoch(self, epoch, *args)
    monkeypatch.setattr(cls, 'train_epoch', copying)


def assert_same_weights(ours, theirs):
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name


def assert_stage_parts(untrained, after_stage1, final):
    for name, tensor in final.items():
        in_stage1 = not torch.equal(untrained[name], after_stage1[name])
        in_stage2 = not torch.equal(after_stage1[name], tensor)
        assert in_stage1 == (name == 'prompt_learner.cls_ctx'), name  # stage 1: the prompts alone
        assert not (in_stage2 and name.startswith(('text_encoder.', 'prompt_learner.'))), name
    assert not torch.equal(after_stage1['image_encoder.conv1.weight'], final['image_encoder.conv1.weight'])


def test_two_stages_train_their_parts_and_resume_in_either_stage(synthetic_root, tmp_path, monkeypatch, caplog,
                                                                  tiny_opts):
    caplog.set_level(logging.INFO, logger='transreid.train')
    cfg = load_config(CONFIG, TINY + ['DATASETS.ROOT_DIR', synthetic_root])
    set_seed(cfg.SOLVER.SEED)
    untrained = build_training(cfg)['model'].state_dict()
    stage1_state, stage2_state = str(tmp_path / 'stage1_epoch1.pth'), str(tmp_path / 'stage2_epoch1.pth')
    keeping_state_before_epoch_2(monkeypatch, PromptTrainer, stage1_state)
    keeping_state_before_epoch_2(monkeypatch, Trainer, stage2_state)
    straight = run(synthetic_root, tmp_path / 'straight')
    monkeypatch.undo()
    stage1_losses = [float(loss) for _, loss in STAGE1_LINE.findall(caplog.text)]
    assert len(stage1_losses) == 3 and stage1_losses == sorted(stage1_losses, reverse=True)
    assert stage1_losses[-1] < 0.9 * stage1_losses[0]
    assert_stage_parts(untrained, torch.load(tmp_path / 'straight' / 'ViT-T-16_stage1_3.pth', weights_only=True),
                       straight)
    assert 'i2t_loss' in open(tmp_path / 'straight' / 'metrics.csv').readline()
    assert os.path.isfile(tmp_path / 'straight' / 'ViT-T-16_2.pth')

    # From stage 1's first epoch: stage 1 ends, then stage 2 runs, as in the uninterrupted run.
    assert load_checkpoint(stage1_state)['stage'] == 1
    assert_same_weights(run(synthetic_root, tmp_path / 'from_stage1', 'MODEL.RESUME', stage1_state), straight)
    # From stage 2's first epoch: stage 1 is skipped (its prompts are in the state).
    caplog.clear()
    assert_same_weights(run(synthetic_root, tmp_path / 'from_stage2', 'MODEL.RESUME', stage2_state), straight)
    assert not STAGE1_LINE.search(caplog.text)

    # A stage-1 state is no TransReID training state.
    cfg = load_config('', tiny_opts + ['MODEL.RESUME', stage1_state])
    trainer = Trainer(cfg, **build_training(cfg), local_rank=0)
    with pytest.raises(ResumeError, match=r"CLIP-ReID's stage 1 \(the prompts\), not of a model's training"):
        trainer.resume(cfg.MODEL.RESUME)


def test_stage2_loss_of_make_loss_equals_their_make_loss():
    expected = torch.load(os.path.join(FIXTURES, 'outputs.pt'), weights_only=True)
    from tests.clip_synthetic import synthetic_batch
    from tests.fixtures.clipreid.generate import SIZE
    labels = synthetic_batch(*SIZE)[1]
    # configs/person/vit_clipreid.yml's loss keys, at which their stage-2 loss was computed.
    cfg = load_config('', ['MODEL.NAME', 'ViT-B-16', 'MODEL.IF_LABELSMOOTH', 'on', 'MODEL.ID_LOSS_WEIGHT', '0.25',
                           'MODEL.NO_MARGIN', 'False', 'SOLVER.MARGIN', '0.3', 'MODEL.I2T_LOSS_WEIGHT', '1.0',
                           'DATALOADER.SAMPLER', 'softmax_triplet', 'MODEL.METRIC_LOSS_TYPE', 'triplet'])
    for case, theirs in expected.items():
        loss_fn, _ = make_loss(cfg, num_classes=theirs['score'].shape[1])
        loss_fn.text_features = theirs['text']
        ours = loss_fn([theirs['score'], theirs['score_proj']], [theirs['feat_last'], theirs['feat'], theirs['feat_proj']],
                       labels, None, theirs['i2t_input'])
        torch.testing.assert_close(ours, theirs['stage2_loss'], atol=1e-5, rtol=0, msg=case)
        assert set(loss_fn.last_parts) == {'id_loss', 'triplet_loss', 'i2t_loss'}


def test_both_stages_schedules_are_theirs_by_hand():
    # configs/person/vit_clipreid.yml: stage 1 warm-up 1e-5 -> 3.5e-4 over 5 epochs, cosine to 1e-6 at 120;
    # stage 2 WarmupMultiStepLR(5e-6, steps (30, 50), factor 0.1 over 10 stepped epochs).
    cfg = load_config(os.path.join(REPO, 'configs', 'Market', 'vit_clipreid.yml'), ['MODEL.PRETRAIN_CHOICE', 'none'])
    prompts = torch.nn.Parameter(torch.zeros(2))
    model = type('PromptsOnly', (), {'prompt_parameters': lambda self: [prompts]})()
    stage1 = create_scheduler_1stage(cfg, make_optimizer_1stage(cfg, model))
    for epoch in (0, 3, 5, 60, 119, 120):
        by_hand = (1e-5 + epoch * (3.5e-4 - 1e-5) / 5 if epoch < 5
                   else 1e-6 + 0.5 * (3.5e-4 - 1e-6) * (1 + math.cos(math.pi * epoch / 120)) if epoch < 120 else 1e-6)
        assert stage1._get_lr(epoch)[0] == pytest.approx(by_hand, rel=1e-9)
    stage2 = create_scheduler(cfg, torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=cfg.SOLVER.BASE_LR))
    for epoch in (1, 9, 10, 30, 49, 50, 60):
        warm = 0.1 * (1 - epoch / 10) + epoch / 10 if epoch < 10 else 1.0
        by_hand = 5e-6 * warm * 0.1 ** sum(epoch >= step for step in (30, 50))
        assert stage2._get_lr(epoch)[0] == pytest.approx(by_hand, rel=1e-9)


def test_a_state_marks_stage_1_only_with_the_number_1():
    from processor.checkpoint import state_stage
    assert state_stage({'stage': 1}) == 1
    assert [state_stage(state) for state in ({}, {'stage': 2}, {'stage': [1]}, {'stage': '1'})] == [None] * 4
