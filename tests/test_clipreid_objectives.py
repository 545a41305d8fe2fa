"""CLIP-ReID's stage-1 contrastive loss and stage-2 image-to-text cross-entropy equal their code's
on the same features (tests/fixtures/clipreid: their SupConLoss, their make_loss's loss_func), the
stage-2 total composes from this repository's ID and triplet losses as theirs does, and training
only the prompts lowers the stage-1 loss of a tiny synthetic CLIP."""
import math
import os

import pytest
import torch

from loss import CrossEntropyLabelSmooth, TripletLoss
from model.backbones.specs import ClipSpec
from model.clip_weights import load_clip_pretrained
from model.clipreid import CLIPReID
from model.clipreid_objectives import i2t_logits, i2t_loss, stage1_loss, supervised_contrastive
from tests import clip_synthetic as synthetic
from tests.fixtures.clipreid.generate import CASES, SIZE

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'clipreid')
TOLERANCE = 1e-5
LABELS = synthetic.synthetic_batch(*SIZE)[1]
# configs/person/vit_clipreid.yml's weights, at which their stage-2 loss was computed.
ID_WEIGHT, TRIPLET_WEIGHT, I2T_WEIGHT, SMOOTHING, MARGIN = 0.25, 1.0, 1.0, 0.1, 0.3


@pytest.fixture(scope='module')
def expected():
    return torch.load(os.path.join(FIXTURES, 'outputs.pt'), weights_only=True)


def test_supervised_contrastive_by_hand():
    # Two orthogonal unit anchors, contrasted with themselves: each positive scores 1, the other 0,
    # so each anchor's loss is -log(e / (e + 1)) = log(1 + 1/e).
    eye = torch.eye(2)
    assert supervised_contrastive(eye, eye, torch.tensor([0, 1]), torch.tensor([0, 1])).item() == \
        pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # Both contrasts positive: log-probabilities 1 - log(e + 1) and -log(e + 1), so each anchor's loss
    # is minus their mean, log(e + 1) - 1/2.
    same = torch.tensor([0, 0])
    assert supervised_contrastive(eye, eye, same, same).item() == pytest.approx(math.log(math.e + 1) - 0.5, abs=1e-6)


@pytest.mark.parametrize('case', sorted(CASES))
def test_stage1_loss_equals_their_supcon(case, expected):
    theirs = expected[case]
    text_of_labels = theirs['text'][LABELS]  # get_text is per label: rows of identities 0-4, picked
    ours = stage1_loss(theirs['image'], text_of_labels, LABELS)
    torch.testing.assert_close(ours, theirs['stage1_loss'], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize('case', sorted(CASES))
def test_stage2_terms_equal_their_make_loss(case, expected):
    theirs = expected[case]
    logits = i2t_logits(theirs['i2t_input'], theirs['text'])
    torch.testing.assert_close(logits, theirs['i2t_logits'], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(i2t_loss(logits, LABELS), theirs['i2t_loss'], atol=TOLERANCE, rtol=0)
    # Their loss_func sums over the two classifiers and the three features (TransReID's JPM averages).
    smooth, triplet = CrossEntropyLabelSmooth(epsilon=SMOOTHING), TripletLoss(MARGIN)
    id_part = sum(smooth(theirs[key], LABELS) for key in ('score', 'score_proj'))
    triplet_part = sum(triplet(theirs[key], LABELS) for key in ('feat_last', 'feat', 'feat_proj'))
    total = ID_WEIGHT * id_part + TRIPLET_WEIGHT * triplet_part + I2T_WEIGHT * i2t_loss(logits, LABELS, SMOOTHING)
    torch.testing.assert_close(total, theirs['stage2_loss'], atol=TOLERANCE, rtol=0)


def test_training_the_prompts_alone_lowers_the_stage1_loss(tmp_path):
    torch.manual_seed(0)
    clip_path = tmp_path / 'clip.pt'
    torch.save(synthetic.synthetic_clip_state(synthetic.TINY_VIT), clip_path)
    model = CLIPReID(ClipSpec(**synthetic.TINY_VIT), synthetic.NUM_CLASSES, SIZE, (16, 16))
    load_clip_pretrained(model, str(clip_path))
    images, labels = synthetic.synthetic_batch(*SIZE)[:2]
    with torch.no_grad():  # stage 1 caches the image features once
        image_features = model.eval()(images, get_image=True)
    frozen = {name: value.detach().clone() for name, value in model.state_dict().items() if 'cls_ctx' not in name}
    optimizer = torch.optim.Adam([model.prompt_learner.cls_ctx], lr=0.001)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = stage1_loss(image_features, model(label=labels, get_text=True), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0]
    assert all(torch.equal(value, model.state_dict()[name]) for name, value in frozen.items())


@pytest.mark.parametrize('chunk', [2, 5])
def test_identity_text_features_in_chunks_are_their_text_features(chunk, expected, tmp_path):
    from tests.test_clipreid_exactness import built
    case = 'vit_s16'
    name = CASES[case][0]
    path = tmp_path / f'{name}.pt'
    torch.save(synthetic.synthetic_clip_state(synthetic.TINY_VIT), path)
    model = built(case, {name: str(path)}).eval()
    torch.testing.assert_close(model.identity_text_features(chunk), expected[case]['text'], atol=TOLERANCE, rtol=0)


def test_stage_parameters():
    model = CLIPReID(ClipSpec(**synthetic.TINY_VIT), synthetic.NUM_CLASSES, SIZE, (16, 16))
    assert [id(p) for p in model.prompt_parameters()] == [id(model.prompt_learner.cls_ctx)]
    model.freeze_text_side()
    trainable = {name for name, value in model.named_parameters() if value.requires_grad}
    assert trainable and not any(name.startswith(('text_encoder.', 'prompt_learner.')) for name in trainable)
    assert 'image_encoder.conv1.weight' in trainable and 'classifier_proj.weight' in trainable
