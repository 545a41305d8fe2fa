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
                                     erase_area_bound, seeded_normal)
from datasets.transforms import build_train_transforms, train_random_erasing

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
                             max_erase_area=0)(uint8, params)
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
    # Laid out as documented: channel c's rectangle holds the seed's values c * M + i * w + j.
    area_bound = augment.max_erase_area
    for image, row in zip(out, params.tolist()):
        if row[Param.ERASE]:
            top, left = row[Param.ERASE_TOP], row[Param.ERASE_LEFT]
            h, w = row[Param.ERASE_HEIGHT], row[Param.ERASE_WIDTH]
            values = seeded_normal(torch.tensor([row[Param.FILL_SEED]]), 3 * area_bound)
            patch = values.view(3, area_bound)[:, :h * w].reshape(3, h, w)
            assert torch.equal(image[:, top:top + h, left:left + w], patch)
    # Another fill seed changes the noise and nothing else.
    reseeded = params.clone()
    reseeded[:, Param.FILL_SEED] += 1
    other = augment(uint8, reseeded)
    assert torch.equal(other[~inside], out[~inside])
    assert (other[inside] != fill).float().mean() > 0.99


def test_seeded_normal_is_unit_normal_per_seed_and_a_pure_function_of_it():
    seeds = torch.tensor([0, 1, 2, 2**32 - 1, 12345, 2**31])
    noise = seeded_normal(seeds, 6144)
    assert noise.shape == (6, 6144) and noise.dtype == torch.float32
    values = noise.flatten().double()
    assert abs(values.mean().item()) < 0.02 and abs(values.std().item() - 1) < 0.02
    assert abs((values.abs() < 1).double().mean().item() - 0.6827) < 0.01
    assert abs((values.abs() < 2).double().mean().item() - 0.9545) < 0.005
    # Seeds give unrelated noise, and so do the two halves of each Box-Muller pair.
    assert (torch.corrcoef(noise) - torch.eye(6)).abs().max() < 0.05
    pairs = noise.view(-1, 2).T
    assert abs(torch.corrcoef(pairs)[0, 1].item()) < 0.03
    # Value k depends on the seed and k only: not on the other seeds or on the count.
    assert torch.equal(seeded_normal(seeds[[4, 0]], 6144), noise[[4, 0]])
    assert torch.equal(seeded_normal(seeds, 101), noise[:, :101])


def test_mix32_matches_plain_python_32_bit_arithmetic():
    def hash32(x):
        x ^= x >> 16
        x = (x * 0x21F0AAAD) % 2**32
        x ^= x >> 15
        x = (x * 0x735A2D97) % 2**32
        return x ^ (x >> 15)

    rng = random.Random(0)
    values = [0, 1, 2**31, 2**32 - 1] + [rng.getrandbits(32) for _ in range(500)]
    assert _mix32(torch.tensor(values)).tolist() == [hash32(v) for v in values]


@pytest.mark.parametrize("size", [[32, 16], [256, 128], [384, 128]])
def test_no_erasing_rectangle_exceeds_the_area_bound(size):
    cfg = load_config("", ["INPUT.SIZE_TRAIN", str(size), "INPUT.RE_PROB", "1.0"])
    worker, bound = WorkerAugment(cfg), erase_area_bound(train_random_erasing(cfg), size)
    random.seed(0)
    areas = [h * w for erase, _, _, h, w in (worker._erase_rectangle() for _ in range(20000))
             if erase]
    assert max(areas) <= bound < size[0] * size[1]


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_gives_the_cpu_result():
    cfg = make_cfg(re_prob=1.0)
    uint8, params = worker_half(cfg, source_images(), SEEDS)
    augment = DeviceAugment.from_cfg(cfg)
    on_cpu = augment(uint8, params)
    on_gpu = augment.to("cuda")(uint8.cuda(), params.cuda()).cpu()
    outside = ~rectangles(params)[:, None].expand_as(on_cpu)
    assert torch.equal(on_gpu[outside], on_cpu[outside])
    # The noise: the same integer hashes, log/cos/sin may differ in the last bits.
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-5, atol=1e-5)
