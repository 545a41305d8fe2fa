"""The user tools on a tiny synthetic dataset with a tiny (untrained) TransReID, on the CPU."""
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from config import load_config
from datasets import make_dataloader
from datasets.bases import DatasetError
from datasets.image_list import ImageRecord, collect_images
from model import make_model
from model.trained import SideInfoCounts, sie_counts
from processor import distance_matrix, make_evaluator
from processor.inference import AUTO, MEAN, FeatureExtractor, label_options
from tools import export, extract_features, search, visualize_ranks
from tools.drawing import GREEN, GREY, RED, ChartLayout, RankListLayout, x_ticks
from tools.visualize_ranks import protocol_ranking
from utils.errors import ToolError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = (extract_features, search, visualize_ranks, export)
HEIGHT, WIDTH = 64, 32
MEAN_STD = 0.5
NUM_CAMERAS = 3

# The tiny model of the pipeline tests (overlapping patches off for speed), SIE camera and JPM on.
TINY_OPTS = [
    "MODEL.NAME", "transformer",
    "MODEL.TRANSFORMER_TYPE", "deit_tiny_patch16_224_TransReID",
    "MODEL.PRETRAIN_CHOICE", "none",
    "MODEL.SIE_CAMERA", "True",
    "MODEL.JPM", "True",
    "MODEL.DEVICE", "cpu",
    "INPUT.SIZE_TRAIN", f"[{HEIGHT}, {WIDTH}]",
    "INPUT.SIZE_TEST", f"[{HEIGHT}, {WIDTH}]",
    "INPUT.PIXEL_MEAN", f"[{MEAN_STD}, {MEAN_STD}, {MEAN_STD}]",
    "INPUT.PIXEL_STD", f"[{MEAN_STD}, {MEAN_STD}, {MEAN_STD}]",
    "DATASETS.NAMES", "synthetic",
    "DATASETS.SYNTHETIC.NUM_IDS", "8",
    "DATASETS.SYNTHETIC.IMAGES_PER_ID", "4",
    "DATASETS.SYNTHETIC.NUM_CAMERAS", str(NUM_CAMERAS),
    "DATASETS.SYNTHETIC.IMAGE_SIZE", f"[{HEIGHT}, {WIDTH}]",
    "DATALOADER.NUM_WORKERS", "0",
    "TEST.IMS_PER_BATCH", "8",
]


class Setup:
    """A rendered dataset, a saved model and the config that built it."""

    def __init__(self, root: str, work: str, extra_opts=()):
        self.opts = TINY_OPTS + ["DATASETS.ROOT_DIR", root, "OUTPUT_DIR", work] + list(extra_opts)
        self.cfg = load_config("", self.opts)
        torch.manual_seed(0)
        _, _, _, self.num_query, num_classes, camera_num, view_num = make_dataloader(self.cfg)
        self.model = make_model(self.cfg, num_classes, camera_num, view_num).eval()
        self.weight = os.path.join(work, "tiny.pth")
        torch.save(self.model.state_dict(), self.weight)
        self.gallery_dir = find_folder(root, "bounding_box_test")
        self.query_dir = find_folder(root, "query")
        self.work = work

    def args(self, *tool_args):
        """Tool arguments, then the config overrides (as on the command line)."""
        return ["--weight", self.weight, *tool_args, *self.opts]


def find_folder(root: str, name: str) -> str:
    found = [os.path.join(parent, name) for parent, dirs, _ in os.walk(root) if name in dirs]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return Setup(str(tmp_path_factory.mktemp("tools_data")), str(tmp_path_factory.mktemp("tools")))


def reference_feature(setup: Setup, path: str, cam: int) -> torch.Tensor:
    """The model's feature of one image, preprocessed by hand (bilinear resize, scale to [-1, 1])."""
    img = Image.open(path).convert("RGB").resize((WIDTH, HEIGHT), Image.BILINEAR)
    x = (torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
         - MEAN_STD) / MEAN_STD
    with torch.no_grad():
        return setup.model(x[None], cam_label=torch.tensor([cam]), view_label=torch.tensor([0]))[0]


def first_query(setup: Setup) -> str:
    return sorted(os.listdir(setup.query_dir))[0]


def read_index(csv_path: str):
    with open(csv_path, newline="") as handle:
        return list(csv.DictReader(handle))


def market_pid_cam(path: str):
    pid, cam = os.path.basename(path).split("_")[:2]
    return int(pid), int(cam[1]) - 1


# ----------------------------------------------------------------------------- command line
def test_help_runs_as_a_script_and_explains_every_argument():
    result = subprocess.run([sys.executable, "tools/extract_features.py", "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--images" in result.stdout and "example:" in result.stdout
    for tool in TOOLS:
        undocumented = [action.dest for action in tool.build_parser()._actions if not action.help]
        assert not undocumented, (tool.__name__, undocumented)


# -------------------------------------------------------------------------- extract_features
@pytest.fixture(scope="module")
def gallery_features(setup):
    output = os.path.join(setup.work, "feats", "gallery.npy")
    assert extract_features.main(setup.args("--images", setup.gallery_dir, "--output", output)) == 0
    return output


def test_features_follow_the_csv_order_with_labels_from_the_names(setup, gallery_features):
    feats = np.load(gallery_features)
    rows = read_index(gallery_features[:-4] + ".csv")
    paths = sorted(os.path.join(setup.gallery_dir, n) for n in os.listdir(setup.gallery_dir))
    assert [row["path"] for row in rows] == paths
    assert [int(row["index"]) for row in rows] == list(range(len(paths)))
    assert feats.dtype == np.float32 and feats.shape == (len(paths), 5 * 192)  # JPM: global + 4 parts
    for row in rows:
        assert (int(row["pid"]), int(row["camid"])) == market_pid_cam(row["path"])
        assert row["viewid"] == ""
    # 'auto' feeds each image's own camera (from its name) to SIE.
    for i in (0, len(rows) - 1):
        expected = reference_feature(setup, rows[i]["path"], int(rows[i]["camid"]))
        torch.testing.assert_close(torch.from_numpy(feats[i]), expected, atol=2e-4, rtol=1e-4)


def test_unknown_cameras_get_the_mean_over_cameras_or_the_chosen_one(setup, tmp_path):
    image = os.path.join(setup.query_dir, first_query(setup))
    folder = tmp_path / "crops" / "nested"
    folder.mkdir(parents=True)
    shutil.copy(image, folder / "person.jpg")  # a name without pid and camera
    per_camera = torch.stack([reference_feature(setup, image, c) for c in range(NUM_CAMERAS)])
    # 'auto' falls back to 'mean' for a name without a camera (label_options tests 'mean').
    for choice, expected in (("auto", per_camera.mean(0)), ("2", per_camera[2])):
        output = str(tmp_path / f"{choice}.npy")
        extract_features.main(setup.args("--images", str(tmp_path / "crops"), "--output", output,
                                         "--camera", choice))
        torch.testing.assert_close(torch.from_numpy(np.load(output)[0]), expected,
                                   atol=2e-4, rtol=1e-4)
        assert read_index(output[:-4] + ".csv")[0]["pid"] == ""


def test_list_file_paths_are_relative_to_it_and_carry_labels(setup, tmp_path):
    names = sorted(os.listdir(setup.query_dir))[:2]
    list_file = tmp_path / "list.txt"
    rel = os.path.relpath(setup.query_dir, tmp_path)
    list_file.write_text(f"# my images\n{rel}/{names[0]} 7 1 0\n{rel}/{names[1]}\n")
    records = collect_images(str(list_file))
    assert records[0] == ImageRecord(os.path.join(str(tmp_path), rel, names[0]), 7, 1, 0)
    assert (records[1].pid, records[1].camid, records[1].viewid) == (*market_pid_cam(names[1]), None)


@pytest.mark.parametrize("line, message", [
    ("{image} 7 one", r"list.txt:2: '.* 7 one' is not '<image path> <pid> <camid> \[<viewid>\]'"),
    ("{image} 7", r"list.txt:2: '.* 7' is not"),
    ("missing.jpg 7 1", r"list.txt:2: image '.*missing.jpg' does not exist"),
])
def test_bad_list_file_lines_are_named(setup, tmp_path, line, message):
    image = os.path.join(setup.query_dir, sorted(os.listdir(setup.query_dir))[0])
    list_file = tmp_path / "list.txt"
    list_file.write_text("# my images\n" + line.format(image=image) + "\n")
    with pytest.raises((ToolError, DatasetError), match=message):
        collect_images(str(list_file))


def missing_folder(tmp_path) -> str:
    return str(tmp_path / "missing")


def empty_folder(tmp_path) -> str:
    (tmp_path / "empty").mkdir()
    return str(tmp_path / "empty")


def folder_with_a_broken_image(tmp_path) -> str:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "0001_c1_broken.jpg").write_bytes(b"not a jpeg")
    return str(tmp_path / "bad")


@pytest.mark.parametrize("make_input, message", [
    (missing_folder, "missing' does not exist"),
    (empty_folder, "no images .* under folder '.*empty'"),
    (folder_with_a_broken_image, "cannot read image '.*0001_c1_broken.jpg'"),
])
def test_bad_images_are_named_and_nothing_is_written(setup, tmp_path, make_input, message):
    output = tmp_path / "out" / "feats.npy"
    with pytest.raises(SystemExit, match=message):
        extract_features.main(setup.args("--images", make_input(tmp_path), "--output", str(output)))
    assert not output.parent.exists()


def test_a_checkpoint_of_another_config_is_refused_by_name(setup, tmp_path):
    output = tmp_path / "feats.npy"
    args = setup.args("--images", setup.query_dir, "--output", str(output)) + ["MODEL.JPM", "False"]
    with pytest.raises(SystemExit, match="tiny.pth' was not trained with this config"):
        extract_features.main(args)
    assert not output.exists() and not os.listdir(tmp_path)


def test_a_missing_weight_file_is_named(setup, tmp_path):
    with pytest.raises(SystemExit, match="nothing.pth' does not exist"):
        extract_features.main(["--weight", str(tmp_path / "nothing.pth"), "--images",
                               setup.query_dir, "--output", str(tmp_path / "f.npy"), *setup.opts])


# ------------------------------------------------------------------------------------ search
@pytest.fixture(scope="module")
def duplicate_gallery(setup, tmp_path_factory):
    """The synthetic gallery plus an exact copy of the first query image."""
    folder = tmp_path_factory.mktemp("gallery_with_duplicate")
    shutil.copytree(setup.gallery_dir, folder / "gallery")
    query = os.path.join(setup.query_dir, first_query(setup))
    (folder / "gallery" / "copies").mkdir()
    duplicate = folder / "gallery" / "copies" / os.path.basename(query)
    shutil.copy(query, duplicate)
    return query, str(folder / "gallery"), str(duplicate)


def border_at(picture: Image.Image, layout: RankListLayout, position: int):
    return picture.getpixel((layout.cell_left(position) + 1, layout.gap + 1))


def test_search_ranks_the_duplicate_first_and_draws_the_rank_list(setup, duplicate_gallery, tmp_path,
                                                                  capsys):
    query, gallery, duplicate = duplicate_gallery
    topk = 5
    assert search.main(setup.args("--query", query, "--gallery", gallery, "--topk", str(topk),
                                  "--output-dir", str(tmp_path))) == 0
    lines = capsys.readouterr().out.splitlines()
    first = lines[2].split()
    assert first[0] == "1" and first[3] == duplicate and abs(float(first[1])) < 1e-3
    ranked = [line.split() for line in lines[2:2 + topk]]
    assert [int(r[0]) for r in ranked] == list(range(1, topk + 1))
    assert [float(r[1]) for r in ranked] == sorted(float(r[1]) for r in ranked)

    picture = Image.open(tmp_path / f"000_{os.path.splitext(os.path.basename(query))[0]}.png")
    layout = RankListLayout()
    strip_width, strip_height = layout.strip_size(topk)
    assert picture.size[0] == strip_width and picture.size[1] > strip_height  # legend below
    query_pid = market_pid_cam(query)[0]
    for rank, row in enumerate(ranked, 1):
        expected = GREEN if market_pid_cam(row[3])[0] == query_pid else RED
        assert border_at(picture.convert("RGB"), layout, rank) == expected


def test_search_in_saved_features_matches_search_in_the_folder(setup, gallery_features, tmp_path,
                                                              capsys):
    query = os.path.join(setup.query_dir, sorted(os.listdir(setup.query_dir))[1])
    rankings = []
    for i, gallery in enumerate((setup.gallery_dir, gallery_features)):
        search.main(setup.args("--query", query, "--gallery", gallery, "--topk", "4",
                               "--output-dir", str(tmp_path / str(i))))
        rankings.append([line.split()[3] for line in capsys.readouterr().out.splitlines()[2:6]])
    assert rankings[0] == rankings[1]


def test_search_with_re_ranking_and_unknown_identities(setup, duplicate_gallery, tmp_path, capsys):
    query, gallery, duplicate = duplicate_gallery
    unnamed = tmp_path / "q" / "someone.png"
    unnamed.parent.mkdir()
    Image.open(query).save(unnamed)
    assert search.main(setup.args("--query", str(unnamed), "--query", query, "--gallery", gallery,
                                  "--topk", "3", "--rerank", "--output-dir", str(tmp_path / "o"))) == 0
    out = capsys.readouterr().out
    assert "(id ?)" in out and duplicate in out
    picture = Image.open(tmp_path / "o" / "000_someone.png").convert("RGB")
    assert border_at(picture, RankListLayout(), 1) == GREY
    assert (tmp_path / "o" / f"001_{os.path.splitext(os.path.basename(query))[0]}.png").is_file()


def test_extraction_records_the_weights_and_settings_behind_the_features(setup, gallery_features):
    with open(gallery_features[:-4] + ".json") as handle:
        record = json.load(handle)
    with open(setup.weight, "rb") as handle:
        assert record["weight_sha256"] == hashlib.sha256(handle.read()).hexdigest()
    assert record["weight"] == os.path.abspath(setup.weight)
    assert record["TEST.NECK_FEAT"] == setup.cfg.TEST.NECK_FEAT
    assert record["INPUT.SIZE_TEST"] == [HEIGHT, WIDTH]


def test_search_refuses_saved_features_of_other_weights_or_settings(setup, gallery_features,
                                                                     tmp_path):
    query = os.path.join(setup.query_dir, first_query(setup))
    other = tmp_path / "other.pth"
    torch.save({k: v + 1e-3 if v.is_floating_point() else v
                for k, v in setup.model.state_dict().items()}, other)
    args = setup.args("--query", query, "--gallery", gallery_features)
    args[args.index("--weight") + 1] = str(other)
    with pytest.raises(SystemExit, match="was extracted with other weights or settings .*"
                                         "weight_sha256"):
        search.main(args)
    flipped = "after" if setup.cfg.TEST.NECK_FEAT == "before" else "before"
    with pytest.raises(SystemExit, match=f"TEST.NECK_FEAT '{setup.cfg.TEST.NECK_FEAT}' there, "
                                         f"'{flipped}' here"):
        search.main(setup.args("--query", query, "--gallery", gallery_features,
                               "TEST.NECK_FEAT", flipped))


def test_extraction_to_a_folder_that_cannot_exist_fails_before_extracting(setup, tmp_path,
                                                                          monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr(FeatureExtractor, "extract_records",
                        lambda *a, **k: pytest.fail("extracted before checking the output"))
    with pytest.raises(SystemExit, match="cannot write '.*a_file/x.npy'.*choose another --output"):
        extract_features.main(setup.args("--images", setup.gallery_dir, "--output",
                                         str(tmp_path / "a_file" / "x.npy")))


def test_search_refuses_features_of_another_width(setup, tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((1, 7), np.float32))
    (tmp_path / "bad.csv").write_text("index,path,pid,camid,viewid\n0,x.jpg,,,\n")
    with pytest.raises(SystemExit, match="7-d features but this model gives 960-d"):
        search.main(setup.args("--query", os.path.join(setup.query_dir, first_query(setup)),
                               "--gallery", str(bad)))


def test_search_in_saved_features_with_a_bad_label_names_the_csv_line(setup, gallery_features,
                                                                      tmp_path):
    shutil.copy(gallery_features, tmp_path / "bad.npy")
    rows = read_index(gallery_features[:-4] + ".csv")
    rows[1]["camid"] = "c2"
    with open(tmp_path / "bad.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(SystemExit, match=r"bad.csv' line 3: pid, camid and viewid must be "
                                         r"integers or empty, got \[.*'c2'"):
        search.main(setup.args("--query", os.path.join(setup.query_dir, first_query(setup)),
                               "--gallery", str(tmp_path / "bad.npy")))


def test_search_in_saved_features_of_deleted_images_draws_nothing(setup, gallery_features, tmp_path):
    shutil.copy(gallery_features, tmp_path / "old.npy")
    rows = read_index(gallery_features[:-4] + ".csv")
    with open(tmp_path / "old.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "path": str(tmp_path / f"gone_{i}.jpg")} for i, row in enumerate(rows))
    with pytest.raises(SystemExit, match="matched image.* no longer exist, e.g. '.*gone_"):
        search.main(setup.args("--query", os.path.join(setup.query_dir, first_query(setup)),
                               "--gallery", str(tmp_path / "old.npy"), "--output-dir",
                               str(tmp_path / "pictures")))
    assert not (tmp_path / "pictures").exists()


# --------------------------------------------------------------------------- visualize_ranks
def test_visualize_ranks_draws_chosen_queries_and_the_summary(setup, tmp_path):
    out = tmp_path / "ranks"
    # KEY VALUE overrides may follow --query-index directly.
    assert visualize_ranks.main(setup.args("--topk", "3", "--output-dir", str(out),
                                           "--query-index", "0,2")) == 0
    assert sorted(os.listdir(out)) == ["query_00000.png", "query_00002.png", "summary.png"]
    width, height = Image.open(out / "query_00002.png").size
    assert width >= RankListLayout().strip_size(3)[0] and height > RankListLayout().strip_size(3)[1]
    assert Image.open(out / "summary.png").size == (ChartLayout().width, ChartLayout().height)


def test_visualize_ranks_random_queries_are_seeded_and_indices_checked(setup, tmp_path):
    args = visualize_ranks.parse_args(["--num-queries", "3", "--seed", "4"])
    chosen = visualize_ranks.choose_queries(args, setup.num_query)
    assert chosen == visualize_ranks.choose_queries(args, setup.num_query)
    assert len(set(chosen)) == 3 and all(0 <= i < setup.num_query for i in chosen)
    with pytest.raises(SystemExit, match=r"--query-index \[99\] out of range"):
        visualize_ranks.main(setup.args("--query-index", "99", "--output-dir", str(tmp_path)))
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("feat_norm, re_ranking, metric", [
    ("yes", "False", "euclidean"), ("no", "False", "cosine"), ("no", "True", "euclidean"),
    ("no", "True", "cosine"), ("yes", "True", "cosine")])
def test_tool_distances_are_the_evaluators(feat_norm, re_ranking, metric):
    cfg = load_config("", ["TEST.FEAT_NORM", feat_norm, "TEST.RE_RANKING", re_ranking,
                           "TEST.DIST_METRIC", metric, "TEST.RE_RANKING_K1", "6",
                           "TEST.RE_RANKING_K2", "3"])
    generator = torch.Generator().manual_seed(0)
    # Norms from 0.5 to 5, so that normalising (or not) changes the distances.
    feats = torch.randn(40, 8, generator=generator) * torch.linspace(0.5, 5, 40)[:, None]
    evaluator = make_evaluator(cfg, num_query=10)
    evaluator.update((feats, [i % 10 for i in range(40)], [0] * 10 + [1] * 30))
    expected = evaluator.compute()[2]
    np.testing.assert_allclose(distance_matrix(cfg, feats[:10], feats[10:]), expected,
                               rtol=1e-5, atol=1e-6)


def test_protocol_ranking_drops_same_identity_same_camera_images():
    g_pids, g_camids = np.array([1, 2, 1, 3]), np.array([0, 0, 1, 2])
    distances = np.array([0.1, 0.4, 0.3, 0.2])
    assert protocol_ranking(distances, 1, 0, g_pids, g_camids).tolist() == [3, 2, 1]


def test_x_ticks_are_rank_one_and_round_ranks():
    assert x_ticks(50) == [1, 10, 20, 30, 40, 50]
    assert x_ticks(5) == [1, 2, 3, 4, 5]


# ----------------------------------------------------------------------------------- SIE labels
def test_sie_counts_come_from_the_table_or_the_flags():
    cfg = load_config("", ["MODEL.SIE_CAMERA", "True"])
    assert sie_counts(cfg, 6, None, None) == SideInfoCounts(6, 0)
    assert sie_counts(cfg, 0, None, None) == SideInfoCounts(0, 0)
    both = load_config("", ["MODEL.SIE_CAMERA", "True", "MODEL.SIE_VIEW", "True"])
    assert sie_counts(both, 160, 20, None) == SideInfoCounts(20, 8)
    assert sie_counts(both, 160, None, 8) == SideInfoCounts(20, 8)
    with pytest.raises(ToolError, match="pass --num-cameras"):
        sie_counts(both, 160, None, None)
    with pytest.raises(ToolError, match="--num-cameras 7 x --num-views 22 != the 160"):
        sie_counts(both, 160, 7, None)


def test_label_options_per_choice():
    records = [ImageRecord("a.jpg", 1, 2), ImageRecord("b.jpg")]
    assert label_options(records, AUTO, 3, "camera") == [[2], [0, 1, 2]]
    assert label_options(records, MEAN, 3, "camera") == [[0, 1, 2], [0, 1, 2]]
    assert label_options(records, 1, 3, "camera") == [[1], [1]]
    assert label_options(records, MEAN, 0, "camera") == [[0], [0]]  # no SIE: one pass
    with pytest.raises(ToolError, match="camera 2 of 'a.jpg' has no SIE embedding: the model "
                                        "knows 2 cameras"):
        label_options(records, AUTO, 2, "camera")
    with pytest.raises(ToolError, match="--view 4 has no SIE embedding"):
        label_options(records, 4, 3, "view")


# ------------------------------------------------------------------------------------- ONNX
@pytest.fixture(scope="module")
def plain_setup(setup, tmp_path_factory):
    """A model without JPM or SIE, on the same data."""
    return Setup(os.path.dirname(os.path.dirname(setup.gallery_dir)),
                 str(tmp_path_factory.mktemp("plain")), ["MODEL.JPM", "False",
                                                         "MODEL.SIE_CAMERA", "False"])


@pytest.mark.parametrize("which", ["setup", "plain_setup"])
def test_onnx_export_agrees_with_pytorch_on_real_images(which, request, tmp_path, capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    chosen = request.getfixturevalue(which)
    output = tmp_path / "model.onnx"
    assert export.main(chosen.args("--output", str(output))) == 0
    assert "check of the written file over 8 images vs PyTorch" in capsys.readouterr().out

    paths = [os.path.join(chosen.query_dir, n) for n in sorted(os.listdir(chosen.query_dir))[:4]]
    images = torch.stack([
        (torch.from_numpy(np.asarray(Image.open(p).convert("RGB").resize((WIDTH, HEIGHT), Image.BILINEAR),
                                     dtype=np.float32) / 255.0).permute(2, 0, 1) - MEAN_STD) / MEAN_STD
        for p in paths])
    cams = torch.tensor([market_pid_cam(p)[1] for p in paths])
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    feed = {"images": images.numpy(), "cam_label": cams.numpy(), "view_label": np.zeros(4, np.int64)}
    declared = [node.name for node in session.get_inputs()]
    assert declared == (["images", "cam_label"] if which == "setup" else ["images"])
    got = session.run(None, {name: feed[name] for name in declared})[0]
    with torch.no_grad():
        expected = chosen.model(images, cam_label=cams, view_label=torch.zeros(4, dtype=torch.long))
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=1e-4)


def test_onnx_export_without_onnxruntime_says_how_to_install_it(setup, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(SystemExit, match="pip install .*onnxruntime"):
        export.main(setup.args("--output", str(tmp_path / "m.onnx")))
    assert not os.listdir(tmp_path)
