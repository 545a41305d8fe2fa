"""What a user is told about pre-trained weights: where to download them (by backbone and stem),
a trained model handed in as pre-trained weights, and which errors the pickle inspection hides."""
from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import pytest
import torch

from config import load_config
from model import make_model
from model import checkpoint_formats as formats
from model import weights
from model.backbones import TransReID
from model.checkpoint_formats import CheckpointFormatError
from model.weights import CheckpointMismatchError, WeightsNotFoundError
from tests.ssl_synthetic import TINY, synthetic_state
from test_model import CAMERA_NUM, NUM_CLASSES, VIEW_NUM, tiny_cfg
from test_model import tiny_vits  # noqa: F401  (fixture)
from utils.errors import UserError

REPO = Path(__file__).resolve().parent.parent
SSL_CONFIGS = [f"{dataset}/{name}.yml" for name in ("vit_small_ssl", "vit_small_ics_ssl", "vit_base_ics_ssl_384")
               for dataset in ("Market", "MSMT17")]


def ssl_links_in_docs() -> dict:
    """File name -> link, read from the table of docs/ssl.md, which copies TransReID-SSL's README."""
    rows = re.findall(r"^\| `(\w+\.pth)` \| [^|]+ \| (https://\S+) \|$",
                      (REPO / "docs" / "ssl.md").read_text(), flags=re.MULTILINE)
    return dict(rows)


def backbone_for(cfg) -> TransReID:
    """A tiny ViT with the config's stem: the hint depends on the name and the stem only."""
    return TransReID(img_size=(64, 32), stride_size=16, qkv_bias=True, stem_conv=cfg.MODEL.STEM_CONV, **TINY)


# --------------------------------------------------------------------------------------------
# The download hint follows the backbone and the stem
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", SSL_CONFIGS)
def test_a_missing_ssl_checkpoint_links_the_one_its_config_names(config, tmp_path):
    links = ssl_links_in_docs()
    assert sorted(links) == ["vit_base_ics_cfs_lup.pth", "vit_small_cfs_lup.pth", "vit_small_ics_cfs_lup.pth"]
    cfg = load_config(str(REPO / "configs" / config))
    wanted = os.path.basename(cfg.MODEL.PRETRAIN_PATH)
    missing = str(tmp_path / wanted)
    # As create_transformer_base calls it.
    with pytest.raises(WeightsNotFoundError) as error:
        backbone_for(cfg).load_param(missing, cfg.MODEL.TRANSFORMER_TYPE, cfg.MODEL.PRETRAIN_HW_RATIO)
    message = str(error.value)
    assert f"({wanted}) from {links[wanted]} into pretrained/" in message
    assert [url for url in links.values() if url in message] == [links[wanted]]
    assert "jx_vit_base" not in message and "\n" not in message


def test_imagenet_weights_in_an_ics_backbone_name_the_ics_checkpoint(tmp_path):
    path = tmp_path / "vit_small_cfs_lup.pth"
    torch.save(synthetic_state(stem=False), path)
    cfg = load_config(str(REPO / "configs" / "Market" / "vit_small_ics_ssl.yml"))
    with pytest.raises(CheckpointMismatchError) as error:
        backbone_for(cfg).load_param(str(path), cfg.MODEL.TRANSFORMER_TYPE, 2)
    last_line = str(error.value).splitlines()[-1]
    assert "with the convolution stem (MODEL.STEM_CONV)" in last_line
    assert f"(vit_small_ics_cfs_lup.pth) from {ssl_links_in_docs()['vit_small_ics_cfs_lup.pth']}" in last_line


def test_a_stem_without_published_weights_says_so_instead_of_an_imagenet_link(tmp_path):
    cfg = tiny_cfg("MODEL.STEM_CONV", True, transformer_type="deit_tiny_patch16_224_TransReID")
    with pytest.raises(WeightsNotFoundError) as error:
        backbone_for(cfg).load_param(str(tmp_path / "none.pth"), cfg.MODEL.TRANSFORMER_TYPE)
    message = str(error.value)
    assert ("no published weights fit deit_tiny_patch16_224_TransReID with the ICS stem (MODEL.STEM_CONV True); "
            "TransReID-SSL publishes ViT-S/16+ICS (vit_small_ssl_patch16_224_TransReID), ViT-B/16+ICS "
            "(vit_base_patch16_224_TransReID)") in message
    assert "https://" not in message and "set MODEL.STEM_CONV False" in message


# --------------------------------------------------------------------------------------------
# A trained model given as pre-trained weights
# --------------------------------------------------------------------------------------------
def pretrained_from(path, *opts):
    cfg = tiny_cfg("MODEL.PRETRAIN_CHOICE", "imagenet", "MODEL.PRETRAIN_PATH", str(path), *opts)
    return make_model(cfg, NUM_CLASSES, CAMERA_NUM, VIEW_NUM)


JPM_SIE = ("MODEL.JPM", True, "MODEL.SIE_CAMERA", True)


def test_a_trained_model_as_pretrain_path_is_one_line_saying_where_it_goes(tiny_vits, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    weights_file = run / "transformer_2.pth"
    trained = make_model(tiny_cfg(*JPM_SIE), NUM_CLASSES, CAMERA_NUM, VIEW_NUM)
    torch.save(trained.state_dict(), weights_file)  # as train.py saves transformer_<epoch>.pth
    with pytest.raises(CheckpointFormatError) as error:
        pretrained_from(weights_file, *JPM_SIE)
    assert isinstance(error.value, UserError)
    assert str(error.value) == (
        f"'{weights_file}' is a trained TransReID model, not pre-trained backbone weights for MODEL.PRETRAIN_PATH "
        f"(PRETRAIN_CHOICE 'imagenet'): test it with python test.py --config_file CONFIG TEST.WEIGHT {weights_file}, "
        "continue its training with python train.py --config_file CONFIG MODEL.RESUME "
        "RUN_FOLDER/last_checkpoint.pth, or train from it with MODEL.PRETRAIN_CHOICE finetune")
    # In a run folder, the run's own config and resume state are named.
    (run / "config.yaml").write_text("")
    torch.save({"model": trained.state_dict(), "optimizer": {}, "epoch": 2}, run / "last_checkpoint.pth")
    with pytest.raises(CheckpointFormatError) as error:
        pretrained_from(run / "last_checkpoint.pth", *JPM_SIE)
    message = str(error.value)
    assert f"--config_file {run / 'config.yaml'} TEST.WEIGHT {run / 'last_checkpoint.pth'}" in message
    assert f"MODEL.RESUME {run / 'last_checkpoint.pth'}, or" in message
    # The advice holds: the file starts a model with PRETRAIN_CHOICE finetune.
    cfg = tiny_cfg("MODEL.PRETRAIN_CHOICE", "finetune", "MODEL.PRETRAIN_PATH", str(weights_file), *JPM_SIE)
    finetuned = make_model(cfg, NUM_CLASSES, CAMERA_NUM, VIEW_NUM)
    torch.testing.assert_close(finetuned.state_dict(), trained.state_dict())


def test_a_trained_resnet50_as_its_imagenet_weights_is_refused_too(tmp_path):
    path = tmp_path / "resnet50_1.pth"
    torch.save(make_model(tiny_cfg("MODEL.NAME", "resnet50"), NUM_CLASSES, CAMERA_NUM, VIEW_NUM).state_dict(), path)
    # The check comes before any key is compared, so the receiving module does not matter.
    with pytest.raises(CheckpointFormatError, match=r"^'.*resnet50_1\.pth' is a trained TransReID model, not "):
        weights.load_imagenet_resnet(torch.nn.Module(), str(path))


# --------------------------------------------------------------------------------------------
# Reading which objects a file pickles: damage is expected, anything else is a bug
# --------------------------------------------------------------------------------------------
def with_data_pkl(source: Path, target: Path, change) -> Path:
    """A copy of the torch.save archive `source` whose data.pkl is `change(data)` (None: left out);
    its CRCs are right, so only the pickle is damaged."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as new:
        for name in old.namelist():
            data = old.read(name)
            if name.endswith("/data.pkl"):
                data = change(data)
                if data is None:
                    continue
            new.writestr(name, data)
    return target


@pytest.mark.parametrize("change", [
    lambda data: data[:10],  # cut off: EOFError
    lambda data: data[:2] + b"\xff" + data[3:],  # an unknown opcode: UnpicklingError
    lambda data: b"\x80\x02c\xff\xfe\nx\n.",  # a global whose name is no UTF-8: UnicodeDecodeError
    lambda data: None,  # no data.pkl: torch's RuntimeError
], ids=["truncated", "opcode", "name", "missing"])
def test_a_damaged_pickle_cannot_be_listed(tmp_path, change):
    clean = tmp_path / "clean.pth"
    torch.save({"w": torch.zeros(2)}, clean)
    assert formats.unsafe_globals(str(clean), "zip") == []
    damaged = with_data_pkl(clean, tmp_path / "damaged.pth", change)
    assert formats.unsafe_globals(str(damaged), "zip") is None


def test_a_bug_while_listing_pickled_objects_is_not_hidden(tmp_path, monkeypatch):
    clean = tmp_path / "clean.pth"
    torch.save({"w": torch.zeros(2)}, clean)

    def broken(path):
        raise TypeError("a bug, not damage")
    monkeypatch.setattr(torch.serialization, "get_unsafe_globals_in_checkpoint", broken)
    with pytest.raises(TypeError, match="a bug, not damage"):
        formats.unsafe_globals(str(clean), "zip")
