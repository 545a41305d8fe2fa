"""FeatureExtractor on what people pass: PIL images of every mode and gray or RGBA arrays, made
RGB as image files are; camera labels as a list, tuple, array or tensor; empty inputs; and one
clear ToolError for a count mismatch, a bare image where a list belongs and an empty crop."""
import numpy as np
import pytest
import torch
from PIL import Image

from config import load_config
from model import make_model
from model.backbones.specs import eval_feature_dim
from processor import FeatureExtractor
from tests.conftest import TINY_TRANSREID_OPTS
from utils.errors import ToolError

# The shallowest backbone, still with SIE (3 cameras) and JPM; images of the test input size.
OPTS = TINY_TRANSREID_OPTS + ["MODEL.TRANSFORMER_TYPE", "vit_tiny5_patch16_224_TransReID"]
HEIGHT, WIDTH = 64, 32
# Each mode with a lossless format that keeps it, so that the file holds the very same pixels.
MODE_FORMATS = {"L": "png", "LA": "png", "RGBA": "png", "P": "png", "I;16": "png", "1": "png",
                "I": "tiff", "F": "tiff", "CMYK": "tiff", "RGB": "png"}


@pytest.fixture(scope="module")
def extractor():
    cfg = load_config("", OPTS)
    torch.manual_seed(0)
    model = make_model(cfg, num_class=4, camera_num=3, view_num=1)
    return FeatureExtractor(cfg, model, torch.device("cpu"))


def _image(mode: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "I;16":  # 16-bit values, most above 255
        return Image.fromarray(rng.integers(0, 2 ** 16, (HEIGHT, WIDTH), dtype=np.uint16))
    if mode == "F":
        return Image.fromarray(rng.uniform(-50, 300, (HEIGHT, WIDTH)).astype(np.float32))
    if mode == "I":
        return Image.fromarray(rng.integers(-50, 300, (HEIGHT, WIDTH), dtype=np.int32))
    rgba = Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint8))
    return rgba.convert("RGB").convert("P") if mode == "P" else rgba.convert(mode)


def _rgb(gray: np.ndarray) -> Image.Image:
    """An RGB image of gray values, built by hand: the oracle of PIL's conversions."""
    return Image.fromarray(np.repeat(gray[..., None], 3, axis=2).astype(np.uint8))


def test_every_pil_mode_gives_the_features_of_its_file(extractor, tmp_path):
    images = [_image(mode, seed) for seed, mode in enumerate(MODE_FORMATS)]
    assert [image.mode for image in images] == list(MODE_FORMATS)
    paths = []
    for image, (mode, fmt) in zip(images, MODE_FORMATS.items()):
        paths.append(str(tmp_path / f"{mode.replace(';', '_')}.{fmt}"))
        image.save(paths[-1])
    cameras = [1] * len(images)
    by_path = extractor(paths, cameras=cameras)
    assert by_path.shape == (len(images), eval_feature_dim(extractor.cfg))
    assert torch.equal(extractor(images, cameras=cameras), by_path)
    # Lazily opened files too; and the conversions are the ones written out by hand:
    # gray repeated, 16-bit values clipped to 255 (as a 16-bit file has always been read).
    assert torch.equal(extractor([Image.open(path) for path in paths], cameras=cameras), by_path)
    gray = np.asarray(images[0])
    clipped = np.minimum(np.asarray(images[4]), 255)
    torch.testing.assert_close(extractor([_rgb(gray), _rgb(clipped)], cameras=[1, 1]),
                               by_path[[0, 4]], rtol=1e-5, atol=1e-6)  # another batch size


def test_gray_and_four_channel_arrays_are_made_rgb(extractor):
    rgba = np.asarray(_image("RGBA", 0))
    gray = rgba[..., 0]
    expected = extractor([_rgb(gray), Image.fromarray(rgba[..., :3].copy())], cameras=[0, 0])
    assert torch.equal(extractor([gray, rgba], cameras=[0, 0]), expected)
    assert torch.equal(extractor([gray[..., None], rgba[..., [2, 1, 0, 3]]], cameras=[0, 0],
                                 bgr=True), expected)
    with pytest.raises(ToolError, match=r"image 1 is a ndarray of shape \(8, 8, 3\) and dtype "
                                        r"float32; give a path, a PIL image or an H x W \(gray\)"):
        extractor([gray, np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ToolError, match=r"image 0 is a ndarray of shape \(8, 8, 2\) and dtype uint8"):
        extractor([np.zeros((8, 8, 2), np.uint8)])
    with pytest.raises(ToolError, match=r"image 0 is a Tensor; give a path"):
        extractor([torch.zeros(3, 8, 8)])


def test_labels_as_list_tuple_array_or_tensor(extractor):
    images = [_image("RGB", seed) for seed in range(3)]
    expected = extractor(images, cameras=[2, 0, None])
    torch.testing.assert_close(expected[0], extractor(images[:1], cameras=[2])[0], rtol=1e-5,
                               atol=1e-6)
    for cameras in ((2, 0, None), np.array([2, 0, 1]), torch.tensor([2, 0, 1]),
                    [np.int64(2), torch.tensor(0), None]):
        feats = extractor(images, cameras=cameras)
        assert torch.equal(feats[:2], expected[:2]), type(cameras)
    # The model has one view: view labels are ignored, but counted and checked all the same.
    assert torch.equal(extractor(images, cameras=[2, 0, None], views=np.zeros(3, np.int32)), expected)


@pytest.mark.parametrize("cameras, message", [
    ([0, 1, 2, 0], r"^3 images but 4 cameras: give one label per image, None where unknown$"),
    (np.array([0, 1]), r"^3 images but 2 cameras: give one label per image"),
    (torch.tensor([[0, 1, 2]]), r"^cameras= has shape \(1, 3\); give one label per image"),
    (np.array([0.0, 1.0, 2.0]), r"^cameras\[0\] is 0\.0; a label is an integer id"),
    ([0, True, 2], r"^cameras\[1\] is True; a label is an integer id"),
    (2, r"^cameras= is one int; give a list of one label per image .*\[2\] \* len\(images\)"),
    ("012", r"^cameras= is one str; give a list"),
    ([0, 1, 3], r"^camera 3 of image 2 has no SIE embedding: the model knows 3 cameras \(ids 0\.\.2\)"),
    (np.array([0, -1, 2]), r"^camera -1 of image 1 has no SIE embedding"),
])
def test_labels_that_do_not_fit_are_refused_in_one_line(extractor, cameras, message):
    with pytest.raises(ToolError, match=message):
        extractor([_image("RGB", seed) for seed in range(3)], cameras=cameras)


@pytest.mark.parametrize("images, message", [
    ("person.jpg", r"^images is one str, not a list of images: pass a list, e\.g\. extractor\(\[image\]\)$"),
    (b"person.jpg", r"^images is one bytes, not a list of images: pass a list"),
    (Image.new("RGB", (8, 16)), r"^images is one Image, not a list of images: pass a list"),
    (np.zeros((16, 8, 3), np.uint8), r"^images is one ndarray of shape \(16, 8, 3\), not a list"),
    (np.zeros((2, 16, 8, 3), np.uint8), r"list\(array\) splits an N x H x W x C batch\)$"),
    (7, r"^images is of type int; pass a list"),
])
def test_one_image_where_a_list_belongs_is_refused(extractor, images, message):
    with pytest.raises(ToolError, match=message):
        extractor(images)


def test_an_empty_input_gives_zero_rows_of_the_model_width(extractor):
    for empty in ([], (), iter([])):
        feats = extractor(empty, normalize=True)
        assert feats.shape == (0, 5 * 192) and feats.dtype == torch.float32  # JPM: 1 + 4 parts
    with pytest.raises(ToolError, match="0 images but 1 cameras"):
        extractor([], cameras=[0])
    no_jpm = load_config("", OPTS + ["MODEL.JPM", "False"])
    assert eval_feature_dim(no_jpm) == 192


def test_an_empty_crop_is_refused_naming_its_index(extractor):
    frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    with pytest.raises(ToolError, match=r"^image 1 is empty \(an array of shape \(64, 0, 3\)\)"):
        extractor([frame, frame[:, 5:5]])
    with pytest.raises(ToolError, match=r"^image 2 is empty \(0 x 64 pixels\); a crop needs"):
        extractor([frame, frame, Image.new("RGB", (0, HEIGHT))])
    with pytest.raises(ToolError, match=r"^image 0 is empty \(an array of shape \(0, 32\)\)"):
        extractor([frame[:0, :, 0]])
