"""Attention rollout (model/attention_rollout.py) and tools/visualize_attention.py, on tiny models."""
import copy
import functools
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from config import load_config
from datasets.bases import read_image
from datasets.transforms import build_test_transforms
from model import make_model
from model.backbones.vit_pytorch import Attention
from model.attention_rollout import (attention_maps, attention_weights, branch_names, jpm_layout,
                                     pixel_maps, recorded_norm1_outputs, rollout,
                                     spread_over_pixels)
from tests.conftest import TINY_TRANSREID_OPTS
from tools import visualize_attention
from datasets.image_list import ImageRecord
from model.trained import SideInfoCounts, TrainedModel
from processor.inference import AUTO
from tools.visualize_attention import (GRID_NAME, GridLayout, caption, grid_picture,
                                       largest_local_difference)

# Default JPM (shift 5, 2 shuffle groups, 4 parts) on the 4 x 2 patches of a 64 x 32 image.
DEFAULT_JPM = []
# 4 x 3 = 12 patches, 5 shuffle groups (3 padded copies), 2 parts of 6 (3 tokens left out).
PADDED_JPM = ["INPUT.SIZE_TRAIN", "[64, 48]", "INPUT.SIZE_TEST", "[64, 48]",
              "MODEL.SHUFFLE_GROUP", "5", "MODEL.DEVIDE_LENGTH", "2"]


@functools.lru_cache(maxsize=None)
def _built(extra_opts: tuple):
    cfg = load_config("", TINY_TRANSREID_OPTS + list(extra_opts))
    torch.manual_seed(0)
    return cfg, make_model(cfg, num_class=4, camera_num=3, view_num=1).eval()


def tiny_model(extra_opts=()):
    """(config, model in eval mode) of the tiny TransReID with `extra_opts`; built once, copied
    so that a test may change the weights."""
    cfg, model = _built(tuple(extra_opts))
    return cfg, copy.deepcopy(model)


# ------------------------------------------------------------------------------ the maths
def plain_rollout(layers):
    """Abnar and Zuidema's rollout, written out with numpy, one layer at a time."""
    result = None
    for weights in layers:
        mean = weights.mean(axis=1)  # over heads: B x rows x T
        rows, tokens = mean.shape[1:]
        mixed = mean + np.eye(rows, tokens)[None]
        mixed = mixed / mixed.sum(axis=2, keepdims=True)
        result = mixed if result is None else np.einsum("brt,bts->brs", mixed, result)
    return result


@pytest.mark.parametrize("last_rows", [6, 1])
def test_rollout_matches_a_plain_numpy_rollout(last_rows):
    generator = torch.Generator().manual_seed(0)
    layers = [torch.softmax(torch.randn(2, 3, 6, 6, generator=generator) * 2, dim=-1)
              for _ in range(3)]
    layers.append(torch.softmax(torch.randn(2, 3, last_rows, 6, generator=generator), dim=-1))
    got = rollout(layers)
    expected = plain_rollout([layer.double().numpy() for layer in layers])
    assert got.shape == (2, last_rows, 6)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1).numpy(), 1.0, rtol=1e-5)  # rows stay distributions


def test_rollout_needs_a_layer():
    with pytest.raises(ValueError, match="at least one layer"):
        rollout([])


def test_attention_weights_are_the_blocks_own_attention():
    """softmax(Q Kᵀ scale) recomputed from qkv, applied to V, gives the block's attention output."""
    torch.manual_seed(0)
    attn = Attention(192, num_heads=3, qkv_bias=True).eval()
    nn.init.normal_(attn.qkv.bias)  # a bias, so that its split between q, k and v is tested too
    normed = torch.randn(2, 9, 192)
    weights = attention_weights(normed, attn)
    values = nn.functional.linear(normed, attn.qkv.weight[384:], attn.qkv.bias[384:])
    values = values.view(2, 9, 3, 64).transpose(1, 2)
    expected = attn.proj((weights @ values).transpose(1, 2).reshape(2, 9, 192))
    torch.testing.assert_close(expected, attn(normed), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(attention_weights(normed, attn, query_rows=1), weights[:, :, :1])


def test_spread_over_pixels_averages_overlapping_patches_by_hand():
    # 2 x 2 patches of 2 x 2 pixels every pixel on a 3 x 4 image: the last column is uncovered.
    maps = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    nan = float("nan")
    expected = torch.tensor([[1.0, 1.5, 2.0, nan],
                             [2.0, 2.5, 3.0, nan],
                             [3.0, 3.5, 4.0, nan]])
    got = spread_over_pixels(maps[None, None], (2, 2), (1, 1), (3, 4))
    assert got.shape == (1, 1, 3, 4)
    torch.testing.assert_close(got[0, 0], expected, equal_nan=True)
    # Patches 4 high every 2 rows, one column: rows 2-3 are seen by both and get the mean.
    got = spread_over_pixels(torch.tensor([[1.0], [3.0]]), (4, 4), (2, 4), (6, 4))
    torch.testing.assert_close(got[:, 0], torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0, 3.0]))


def test_spread_over_pixels_refuses_a_grid_larger_than_the_image():
    with pytest.raises(ValueError, match=r"covers \(4, 4\) pixels, more than the image \(3, 3\)"):
        spread_over_pixels(torch.ones(2, 2), (2, 2), (2, 2), (3, 3))


# ------------------------------------------------------------------------------ JPM layout
def test_jpm_layout_by_hand():
    # 8 patches rolled left by shift - 1 = 4: 4 5 6 7 0 1 2 3; groups (4 5 6 7)(0 1 2 3)
    # interleaved: 4 0 5 1 6 2 7 3; parts of 8 // 4 = 2.
    layout = jpm_layout(tiny_model(DEFAULT_JPM)[1])
    assert layout.parts.tolist() == [[4, 0], [5, 1], [6, 2], [7, 3]]
    assert layout.repeated == () and layout.left_out == ()
    # 12 patches rolled: 4..11 0 1 2 3, padded with 3 copies of the second-to-last (2) to 15;
    # groups (4 5 6)(7 8 9)(10 11 0)(1 2 3)(2 2 2) interleaved: 4 7 10 1 2 5 8 11 2 2 6 9 0 3 2;
    # parts of 12 // 2 = 6, and 0 3 2 left over.
    layout = jpm_layout(tiny_model(PADDED_JPM)[1])
    assert layout.parts.tolist() == [[4, 7, 10, 1, 2, 5], [8, 11, 2, 2, 6, 9]]
    assert layout.repeated == (2,) and layout.left_out == (0, 3)


# ------------------------------------------------------------- a model built to look at a patch
def built_to_attend(model, global_target: int, local_targets) -> None:
    """Make every block an identity on the tokens, whose only content is a one-hot position
    code; inner blocks attend each token to itself, the class token of b1 (or of the last
    backbone block) to patch `global_target`, that of b2 to every patch of `local_targets`."""
    base = model.base
    dim = base.embed_dim
    head_dim = dim // base.blocks[0].attn.num_heads
    with torch.no_grad():
        for param in (base.patch_embed.proj.weight, base.patch_embed.proj.bias, base.cls_token):
            param.zero_()
        if base.sie_embed is not None:
            base.sie_embed.zero_()
        # Token i (0 = class token, patch p = token p + 1) is one-hot at dim i of every head.
        tokens = base.pos_embed.shape[1]
        base.pos_embed.zero_()
        for offset in range(0, dim, head_dim):
            base.pos_embed[0, :, offset:offset + tokens] = torch.eye(tokens)
        jpm = hasattr(model, "b1")
        last = {model.b1[0]: [global_target], model.b2[0]: local_targets} if jpm \
            else {base.blocks[-1]: [global_target]}
        for block in list(base.blocks) + list(last):
            for param in (block.attn.proj.weight, block.attn.proj.bias, block.mlp.fc2.weight,
                          block.mlp.fc2.bias):
                param.zero_()  # the block adds nothing: every block sees the position codes
            query, key, value = block.attn.qkv.weight.view(3, dim, dim)
            key.copy_(torch.eye(dim))
            value.zero_()
            block.attn.qkv.bias.zero_()
            query.copy_(torch.eye(dim))  # inner blocks: each token matches its own key only
            if block in last:
                # The class token's code (dim 0 of a head) is sent to each target's (dim p + 1).
                query.zero_()
                for offset in range(0, dim, head_dim):
                    for target in last[block]:
                        query[offset + target + 1, offset] = 2.0


@pytest.mark.parametrize("extra, global_target, local_targets", [
    # Patches the shuffle moves, one per part: 0 is 2nd of part 1, 5 1st of part 2, ...
    (DEFAULT_JPM, 6, [0, 5, 2, 7]),
    # Patch 2 is copied by the padding: once in part 1, twice in part 2 (both copies credited).
    (PADDED_JPM, 9, [2, 2]),
    (["MODEL.JPM", "False"], 5, []),
])
def test_maps_peak_at_the_patch_the_model_is_built_to_attend(extra, global_target, local_targets):
    _, model = tiny_model(extra)
    built_to_attend(model, global_target, sorted(set(local_targets)))
    height, width = model.base.patch_embed.img_size
    result = attention_maps(model, torch.randn(2, 3, height, width), cam_label=torch.tensor([0, 2]))
    assert result.branches == ("global", *(f"local {p + 1}" for p in range(len(local_targets))))
    maps = result.maps.flatten(2)  # B x branches x patches
    for branch, target in enumerate([global_target, *local_targets]):
        weights = maps[:, branch]
        # Half the last step is the identity (the class token, itself nearly unmixed), half
        # the attention: about 0.5 on the target, almost nothing elsewhere.
        assert (weights.argmax(dim=1) == target).all(), (result.branches[branch], weights)
        assert (weights[:, target] > 0.45).all(), weights
        others = torch.cat([weights[:, :target], weights[:, target + 1:]], dim=1)
        assert (others < 0.02).all(), weights
    if extra is PADDED_JPM:
        assert (maps[:, 1:, [0, 3]] < 0.01).all()  # tail patches: only the backbone's mixing
    if local_targets:
        # A backbone that does not mix tokens lets each branch's own attention show in full.
        assert largest_local_difference(result.maps.numpy()) > 0.95


def test_every_branch_map_holds_the_backbones_class_token_map_at_half_weight_or_more():
    """Why the local maps look like the global one: each map is class_share (>= 0.5) times the
    backbone's rollout of the class token, the same for every branch, plus a non-negative rest
    of total weight at most 1 - class_share."""
    _, model = tiny_model()
    images = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    cameras = torch.tensor([0, 2])
    result = attention_maps(model, images, cam_label=cameras)
    inner = {f"block {i}": block for i, block in enumerate(model.base.blocks[:-1])}
    branches = {"global": model.b1[0], "local": model.b2[0], **inner}
    with torch.no_grad(), recorded_norm1_outputs(branches) as normed:
        model(images, cam_label=cameras)
        backbone = plain_rollout([attention_weights(normed[name], block.attn).double().numpy()
                                  for name, block in inner.items()])
        # The last step's class row: (own attention + 1) / 2 on the class token itself.
        own = [attention_weights(normed[name], branches[name].attn, query_rows=1)
               .mean(1)[:, 0, 0].view(2, -1) for name in ("global", "local")]
    share = result.class_share.double().numpy()
    np.testing.assert_allclose(share, (torch.cat(own, 1).double().numpy() + 1) / 2, rtol=1e-5)
    assert share.shape == (2, 5) and (share >= 0.5).all()
    maps = result.maps.flatten(2).double().numpy()
    rest = maps - share[..., None] * backbone[:, None, 0, 1:]
    assert rest.min() > -1e-6
    assert (rest.sum(-1) <= 1 - share + 1e-6).all()
    assert 0 < largest_local_difference(result.maps.numpy()) < 1


def test_maps_need_a_transformer_in_eval_mode():
    _, model = tiny_model()
    with pytest.raises(ValueError, match="eval mode"):
        attention_maps(model.train(), torch.randn(1, 3, 64, 32), cam_label=torch.tensor([0]))
    with pytest.raises(ValueError, match="transformer re-ID model .*not Linear"):
        attention_maps(nn.Linear(2, 2).eval(), torch.randn(1, 2))
    with pytest.raises(ValueError, match="transformer re-ID model .*not Linear"):
        branch_names(nn.Linear(2, 2))


# ----------------------------------------------------------------------------------- the tool
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """(weight file, image folder, config) of the tiny JPM model and three images."""
    cfg, model = tiny_model()
    folder = tmp_path_factory.mktemp("attention_tool")
    weight = folder / "tiny.pth"
    torch.save(model.state_dict(), weight)
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("0001_c1s1_000001_00.jpg", "b.png", "c.jpg"):
        pixels = rng.integers(0, 256, size=(80, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / name)
    return str(weight), str(images), cfg


def test_tool_writes_a_picture_per_image_and_a_grid(saved_model, tmp_path, tiny_opts):
    matplotlib = pytest.importorskip("matplotlib")  # optional (requirements-dev.txt)
    weight, images, cfg = saved_model
    out = tmp_path / "maps"
    assert visualize_attention.main(["--weight", weight, "--images", images, "--output", str(out),
                                     "--grid-size", "2", "--scale", "1", *tiny_opts]) == 0
    names = ["000_0001_c1s1_000001_00", "001_b", "002_c"]
    assert sorted(os.listdir(out)) == [f"{name}.png" for name in names] + [GRID_NAME]
    layout = GridLayout(panel_width=32, panel_height=64)
    headers = ["image", "global", "local 1", "local 2", "local 3", "local 4"]
    records = [ImageRecord(os.path.join(images, name)) for name in sorted(os.listdir(images))]
    _, model = tiny_model()
    trained = TrainedModel(model, SideInfoCounts(cameras=3, views=0), cfg)
    maps = next(visualize_attention.image_attention(cfg, trained, records, AUTO, AUTO))[1]
    grid = grid_picture(names[:2], headers, caption(maps[:2]), layout)
    texts = [text.text for text in grid.texts]
    assert texts[:8] == headers + names[:2]
    assert texts[8:10] == ["lowest", "highest attention, each map its own range"]
    notes = " ".join(texts[10:])
    assert notes.startswith(f"Local maps differ from the global map by at most "
                            f"{largest_local_difference(maps[:2]):.0%} of the colour scale")
    picture = Image.open(out / GRID_NAME).convert("RGB")
    assert picture.size == grid.size
    # The colour scale runs from the colormap's coldest colour to its hottest.
    left, top, right, bottom = grid.bar
    jet = matplotlib.colormaps["jet"]
    for x, value in ((left, 0.0), (right - 1, 1.0)):
        expected = np.asarray(jet(value)[:3]) * 255
        assert np.abs(np.asarray(picture.getpixel((x, (top + bottom) // 2))) - expected).max() <= 3
    one = grid_picture(names[1:2], headers, caption(maps[1:2]), layout)
    assert Image.open(out / "001_b.png").size == one.size
    # The image panel is the image itself (resized), and heat maps change the pixels.
    picture = np.asarray(Image.open(out / "001_b.png").convert("RGB"), dtype=np.int16)
    left, top = layout.panel_origin(0, 0)
    image = np.asarray(Image.open(os.path.join(images, "b.png")).resize((32, 64), Image.BILINEAR),
                       dtype=np.int16)
    assert np.abs(picture[top:top + 64, left:left + 32] - image).max() <= 1
    left, _ = layout.panel_origin(0, 1)
    assert np.abs(picture[top:top + 64, left:left + 32] - image).mean() > 10


def test_largest_local_difference_and_caption_by_hand():
    nan = float("nan")
    global_map = np.array([[0.0, 1.0], [2.0, 3.0]])  # drawn as 0, 1/3, 2/3, 1
    local = np.array([[10.0, 11.0], [13.0, nan]])  # drawn as 0, 1/3, 1, NaN
    maps = np.stack([global_map, local, global_map * 5])[None]
    assert largest_local_difference(maps) == pytest.approx(1 / 3)
    assert largest_local_difference(maps[:, :1]) is None and caption(maps[:, :1]) == []
    assert caption(maps)[0].startswith("Local maps differ from the global map by at most 33% ")
    flat = np.stack([global_map, np.ones((2, 2))])[None]  # a flat map is drawn all coldest
    assert largest_local_difference(flat) == pytest.approx(1.0)


def test_maps_of_an_unknown_camera_are_the_mean_over_cameras(saved_model):
    weight, images, cfg = saved_model
    _, model = tiny_model()
    records = [ImageRecord(os.path.join(images, "b.png")),  # no camera: the mean
               ImageRecord(os.path.join(images, "c.jpg"), camid=2)]
    batches = list(visualize_attention.image_attention(
        cfg, TrainedModel(model, SideInfoCounts(cameras=3, views=0), cfg), records, AUTO, AUTO))
    assert [rows for rows, _ in batches] == [[0, 1]]
    maps = batches[0][1]
    assert maps.shape == (2, 5, 64, 32)
    image = build_test_transforms(cfg)(read_image(records[0].path))[None]
    per_camera = [pixel_maps(model, attention_maps(model, image, torch.tensor([cam])).maps)
                  for cam in range(3)]
    np.testing.assert_allclose(maps[0], torch.stack(per_camera).mean(0)[0].numpy(), rtol=1e-5,
                               atol=1e-7)
    # Camera 2 really changes the maps (else the mean above would prove nothing).
    assert np.abs(per_camera[2][0].numpy() - per_camera[0][0].numpy()).max() > 1e-4
    image = build_test_transforms(cfg)(read_image(records[1].path))[None]
    np.testing.assert_allclose(
        maps[1], pixel_maps(model, attention_maps(model, image, torch.tensor([2])).maps)[0].numpy(),
        rtol=1e-5, atol=1e-7)


def test_tool_on_benchmark_queries(saved_model, tmp_path, tiny_opts):
    pytest.importorskip("matplotlib")  # optional (requirements-dev.txt)
    weight, _, _ = saved_model
    out = tmp_path / "maps"
    assert visualize_attention.main(["--weight", weight, "--query-index", "0,3", "--output-dir",
                                     str(out), *tiny_opts]) == 0
    assert sorted(os.listdir(out)) == [GRID_NAME, "query_00000.png", "query_00003.png"]
    layout = GridLayout(panel_width=64, panel_height=128)  # the default --scale 2
    width, height = Image.open(out / GRID_NAME).size
    assert width == layout.grid_size(2, 6)[0] and height > layout.grid_size(2, 6)[1]
    with pytest.raises(SystemExit, match=r"--query-index \[9999\] out of range"):
        visualize_attention.main(["--weight", weight, "--query-index", "9999", "--output-dir",
                                  str(tmp_path / "none"), *tiny_opts])


def test_every_argument_is_explained():
    undocumented = [a.dest for a in visualize_attention.build_parser()._actions if not a.help]
    assert not undocumented


def test_tool_without_matplotlib_says_how_to_install_it(saved_model, tmp_path, tiny_opts,
                                                        monkeypatch):
    weight, images, _ = saved_model
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(SystemExit, match="pip install matplotlib"):
        visualize_attention.main(["--weight", weight, "--images", images, "--output-dir",
                                  str(tmp_path / "maps"), *tiny_opts])
    assert not (tmp_path / "maps").exists()


def test_tool_names_a_bad_colormap(saved_model, tmp_path, tiny_opts):
    pytest.importorskip("matplotlib")  # optional (requirements-dev.txt)
    weight, images, _ = saved_model
    with pytest.raises(SystemExit, match="--colormap 'nope' is not a matplotlib colormap"):
        visualize_attention.main(["--weight", weight, "--images", images, "--colormap", "nope",
                                  "--output-dir", str(tmp_path / "maps"), *tiny_opts])


@pytest.mark.parametrize("config_file,message", [
    ("configs/Market/swin_tiny_solider.yml", "has no class token"),
    ("configs/Market/cnn_clipreid.yml", "RN50 has no class token"),
])
def test_models_without_a_class_token_rollout_are_refused_before_any_work(config_file, message):
    from config import load_config
    from tools.visualize_attention import check_attention_model
    from utils.errors import ToolError
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(repo_root, config_file), ["MODEL.PRETRAIN_CHOICE", "none"])
    with pytest.raises(ToolError, match=message):
        check_attention_model(cfg)


def test_a_pass_models_map_is_its_class_tokens_rollout_over_the_patches():
    """PASS's class token and three part tokens lead the sequence: the map is row 0 of a plain
    rollout through every block, over the tokens after the four."""
    cfg, model = _built(("MODEL.PASS", "True", "MODEL.JPM", "False", "MODEL.TRANSFORMER_TYPE",
                         "vit_small_patch16_224_TransReID"))
    images = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    cams = torch.tensor([0, 2])
    inputs = []
    hooks = [block.norm1.register_forward_hook(lambda m, i, out: inputs.append(out))
             for block in model.base.blocks]
    with torch.no_grad():
        model(images, cam_label=cams)
    for hook in hooks:
        hook.remove()
    layers = []
    with torch.no_grad():
        for block, normed in zip(model.base.blocks, inputs):
            heads, (batch, tokens, _) = block.attn.num_heads, normed.shape
            q, k, _ = block.attn.qkv(normed).view(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
            layers.append(torch.softmax(q @ k.transpose(-2, -1) * block.attn.scale, -1).double().numpy())
    expected = plain_rollout(layers)[:, 0, 4:].reshape(2, 1, *model.base.patch_embed.grid_size)
    got = attention_maps(model, images, cams).maps
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-6)
    assert branch_names(model) == ("global",)


def test_clipreid_maps_are_the_rollout_of_the_blocks_own_attention_weights():
    from model.backbones.specs import CLIP_SPECS
    from model.clipreid import CLIPReID
    torch.manual_seed(0)
    model = CLIPReID(CLIP_SPECS['ViT-T-16'], 4, (64, 32), (12, 12), sie_tables=(3, 0)).eval()
    images, cams = torch.randn(2, 3, 64, 32), torch.tensor([0, 2])
    maps = attention_maps(model, images, cam_label=cams)
    # Independently: run the tower block by block, asking nn.MultiheadAttention for its weights.
    encoder = model.image_encoder
    x = encoder.conv1(images).flatten(2).transpose(1, 2)
    cls = encoder.class_embedding.expand(2, 1, -1) + model.sie_embedding(cams, None).unsqueeze(1)
    x = encoder.ln_pre(torch.cat([cls, x], dim=1) + encoder.positional_embedding)
    flow = torch.eye(x.shape[1]).expand(2, -1, -1)
    with torch.no_grad():
        for block in encoder.transformer.resblocks:
            normed = block.ln_1(x)
            weights = block.attn(normed, normed, normed, need_weights=True, average_attn_weights=False)[1]
            step = weights.mean(1) + torch.eye(x.shape[1])
            flow = (step / step.sum(-1, keepdim=True)) @ flow
            x = block(x)
    expected = flow[:, 0, 1:].reshape(2, 1, *model.grid)
    assert maps.branches == ('global',) and maps.maps.shape == (2, 1, 5, 2)
    torch.testing.assert_close(maps.maps, expected, atol=1e-5, rtol=1e-4)
    pixels = pixel_maps(model, maps.maps)
    # Two columns of 16-pixel patches every 12 pixels cover 28 of the 32 columns.
    assert pixels.shape == (2, 1, 64, 32) and torch.isnan(pixels[..., 28:]).all()
    assert not torch.isnan(pixels[..., :28]).any()
    with pytest.raises(ValueError, match="its ResNet has no class token"):
        attention_maps(CLIPReID(CLIP_SPECS['RN50'], 4, (64, 32), (16, 16)).eval(), images)


def test_the_tool_draws_clipreid_maps_per_image_over_its_pixels(saved_model):
    _, images, _ = saved_model
    cfg = load_config("", ["MODEL.NAME", "ViT-T-16", "MODEL.PRETRAIN_CHOICE", "none", "MODEL.DEVICE", "cpu",
                           "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]", "MODEL.STRIDE_SIZE",
                           "[12, 12]", "DATALOADER.NUM_WORKERS", "0"])
    visualize_attention.check_attention_model(cfg)
    torch.manual_seed(0)
    model = make_model(cfg, num_class=4, camera_num=0, view_num=0).eval()
    records = [ImageRecord(os.path.join(images, "b.png")), ImageRecord(os.path.join(images, "c.jpg"))]
    (rows, maps), = visualize_attention.image_attention(
        cfg, TrainedModel(model, SideInfoCounts(cameras=0, views=0), cfg), records, AUTO, AUTO)
    assert rows == [0, 1] and maps.shape == (2, 1, 64, 32)
    image = build_test_transforms(cfg)(read_image(records[1].path))[None]
    np.testing.assert_allclose(maps[1], pixel_maps(model, attention_maps(model, image).maps)[0].numpy(),
                               rtol=1e-5, atol=1e-7)
