"""INPUT.DEVICE_AUGMENT: the worker half + device half equal the reference train transforms."""
import itertools
import random

import numpy as np
import pytest
import torch
from PIL import Image

from config import load_config
from datasets import make_dataloader
from datasets.bases import seeded_random_state
from datasets.device_augment import (NUM_PARAMS, DeviceAugment, Param, WorkerAugment, _mix32,
                                     _mul32, seeded_normal)
from datasets.transforms import build_train_transforms

SIZE = [32, 16]
SEEDS = [3, 17, 123, 4567, 2**31 + 5, 77, 901, 65536]


def make_cfg(prob=0.5, padding=10, re_prob=0.5, extra=()):
    # ImageNet mean/std (the defaults), so that normalisation is not a trivial scaling.
    return load_config("", ["INPUT.SIZE_TRAIN", str(SIZE), "INPUT.PROB", str(prob),
                            "INPUT.PADDING", str(padding), "INPUT.RE_PROB", str(re_prob),
                            *extra])


def source_images(count=len(SEEDS)):
    """Random RGB images of assorted sizes, smaller and larger than SIZE (H x W)."""
    rng = np.random.default_rng(0)
    shapes = [(20 + 7 * i, 9 + 3 * i) for i in range(count)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def reference(cfg, images, seeds):
    transform = build_train_transforms(cfg)
    outputs = []
    for image, seed in zip(images, seeds):
        with seeded_random_state(seed):
            outputs.append(transform(image))
    return torch.stack(outputs)


def worker_half(cfg, images, seeds):
    worker, pairs = WorkerAugment(cfg), []
    for image, seed in zip(images, seeds):
        with seeded_random_state(seed):
            pairs.append(worker(image))
    uint8, params = zip(*pairs)
    return torch.stack(uint8), torch.stack(params)


def rectangles(params, height=SIZE[0], width=SIZE[1]):
    """B x H x W masks of the erasing rectangles, by plain slicing."""
    masks = torch.zeros(len(params), height, width, dtype=torch.bool)
    for mask, row in zip(masks, params.tolist()):
        if row[Param.ERASE]:
            top, left = row[Param.ERASE_TOP], row[Param.ERASE_LEFT]
            mask[top:top + row[Param.ERASE_HEIGHT], left:left + row[Param.ERASE_WIDTH]] = True
    return masks


@pytest.mark.parametrize("prob,padding,re_prob",
                         list(itertools.product([0.0, 0.5, 1.0], [0, 10], [0.0, 1.0])))
def test_device_path_equals_the_reference_image_for_image(prob, padding, re_prob):
    cfg = make_cfg(prob, padding, re_prob)
    images = source_images()
    expected = reference(cfg, images, SEEDS)
    uint8, params = worker_half(cfg, images, SEEDS)
    assert uint8.dtype == torch.uint8 and tuple(uint8.shape) == (len(SEEDS), 3, *SIZE)
    assert params.shape == (len(SEEDS), NUM_PARAMS)
    flips = params[:, Param.FLIP]
    if prob in (0.0, 1.0):
        assert (flips == int(prob)).all()
    if padding == 0:
        assert (params[:, [Param.CROP_TOP, Param.CROP_LEFT]] == 0).all()
    assert params[:, Param.ERASE].any() == (re_prob > 0)

    augment = DeviceAugment.from_cfg(cfg)
    out = augment(uint8, params)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    # Exactly equal (same float32 operations), padding and flips included, outside rectangles.
    outside = ~rectangles(params)[:, None].expand_as(out)
    assert torch.equal(out[outside], expected[outside])
    # The reference changed exactly the pixels of our rectangles: the same rectangle positions.
    unerased = DeviceAugment(SIZE, padding, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD,
                             erasing=False)(uint8, params)
    changed = (expected != unerased).any(dim=1)
    assert torch.equal(changed, rectangles(params))


def test_erased_rectangles_hold_deterministic_unit_normal_noise_of_their_seed():
    cfg = make_cfg(re_prob=1.0)
    uint8, params = worker_half(cfg, source_images(), SEEDS)
    augment = DeviceAugment.from_cfg(cfg)
    out = augment(uint8, params)
    assert torch.equal(out, augment(uint8, params))
    inside = rectangles(params)[:, None].expand_as(out)
    fill = out[inside]
    assert fill.numel() > 500
    assert abs(fill.mean().item()) < 0.15 and abs(fill.std().item() - 1) < 0.15
    # Another fill seed changes the noise and nothing else.
    reseeded = params.clone()
    reseeded[:, Param.FILL_SEED] += 1
    other = augment(uint8, reseeded)
    assert torch.equal(other[~inside], out[~inside])
    assert (other[inside] != fill).float().mean() > 0.99


def test_seeded_normal_is_unit_normal_per_seed_and_a_pure_function_of_it():
    seeds = torch.tensor([0, 1, 2, 2**32 - 1, 12345, 2**31])
    noise = seeded_normal(seeds, (3, 64, 32))
    assert noise.shape == (6, 3, 64, 32) and noise.dtype == torch.float32
    values = noise.flatten().double()
    assert abs(values.mean().item()) < 0.01 and abs(values.std().item() - 1) < 0.01
    assert abs((values.abs() < 1).double().mean().item() - 0.6827) < 0.01
    assert abs((values.abs() < 2).double().mean().item() - 0.9545) < 0.005
    flat = noise.flatten(1)
    correlation = torch.corrcoef(flat)
    assert (correlation - torch.eye(6)).abs().max() < 0.03  # seeds give unrelated noise
    assert torch.equal(seeded_normal(seeds[[4, 0]], (3, 64, 32)), noise[[4, 0]])


def test_mul32_and_mix32_match_plain_python_32_bit_arithmetic():
    rng = random.Random(0)
    values = [0, 1, 2**32 - 1, 2**31] + [rng.getrandbits(32) for _ in range(200)]
    factors = [0x7FEB352D, 0x846CA68B, 2**32 - 1]

    def lowbias32(x):
        x ^= x >> 16
        x = (x * 0x7FEB352D) % 2**32
        x ^= x >> 15
        x = (x * 0x846CA68B) % 2**32
        return x ^ (x >> 16)

    tensor = torch.tensor(values, dtype=torch.int64)
    for factor in factors:
        assert _mul32(tensor, factor).tolist() == [(v * factor) % 2**32 for v in values]
    assert _mix32(tensor).tolist() == [lowbias32(v) for v in values]


def test_an_image_augments_the_same_in_any_batch():
    cfg = make_cfg(re_prob=1.0)
    uint8, params = worker_half(cfg, source_images(), SEEDS)
    augment = DeviceAugment.from_cfg(cfg)
    whole = augment(uint8, params)
    for order in ([5, 2], [7, 0, 3, 1, 6], [4]):
        part = augment(uint8[order], params[order])
        assert torch.equal(part, whole[order])


def test_device_augment_names_wrong_inputs():
    augment = DeviceAugment.from_cfg(make_cfg())
    params = torch.zeros(2, NUM_PARAMS, dtype=torch.int64)
    with pytest.raises(ValueError, match="uint8 images.*INPUT.DEVICE_AUGMENT"):
        augment(torch.zeros(2, 3, *SIZE), params)
    with pytest.raises(ValueError, match="uint8 images of shape"):
        augment(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), params)
    with pytest.raises(ValueError, match=f"params of shape \\(2, {NUM_PARAMS}\\)"):
        augment(torch.zeros(2, 3, *SIZE, dtype=torch.uint8), params[:, :4])


def first_batch(opts):
    train_loader = make_dataloader(load_config("", opts))[0]
    return next(iter(train_loader))


def test_the_switch_makes_the_loader_yield_uint8_images_and_params(tiny_opts):
    reference_batch = first_batch(tiny_opts)
    assert len(reference_batch) == 4 and reference_batch[0].dtype == torch.float32
    switched = tiny_opts + ["INPUT.DEVICE_AUGMENT", "True"]
    batch = first_batch(switched)
    assert len(batch) == 5
    uint8, pids, camids, viewids, params = batch
    assert uint8.dtype == torch.uint8 and params.shape == (len(uint8), NUM_PARAMS)
    for got, want in zip((pids, camids, viewids), reference_batch[1:]):
        assert torch.equal(got, want)
    cfg = load_config("", switched)
    out = DeviceAugment.from_cfg(cfg)(uint8, params)
    height, width = cfg.INPUT.SIZE_TRAIN
    outside = ~rectangles(params, height, width)[:, None].expand_as(out)
    assert torch.equal(out[outside], reference_batch[0][outside])
    # Workers draw nothing of their own: two of them give the same batch.
    with_workers = first_batch(switched + ["DATALOADER.NUM_WORKERS", "2"])
    for got, want in zip(with_workers, batch):
        assert torch.equal(got, want)
