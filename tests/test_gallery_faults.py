"""A gallery folder damaged or misused on purpose (deploy/gallery_store.py and its manifest):
every file read back is checked (SHA-256, sizes, the manifest's fields), nothing outside the
folder is read, a killed save leaves nothing behind for long, a duplicate enrolment and an
out-of-range threshold are refused, each in one line naming the file, field or value."""
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

from deploy import gallery as gallery_module, gallery_store, vector_index
from deploy.gallery import Gallery
from deploy.gallery_store import Entry, GalleryError
from tools import gallery as gallery_tool
from test_gallery import MODEL, REPO_ROOT, clustered, contents, new_gallery, same_contents
from test_tools import Setup
from utils.errors import ToolError

HINT = "rebuild it with tools/gallery.py build"


def saved(tmp_path, name="g", ids=6, views=2, seed=0, **kwargs):
    """A saved gallery folder with one segment, and what it holds."""
    folder = str(tmp_path / name)
    feats, entries = clustered(ids, views, seed=seed)
    with new_gallery(folder, feats, entries, **kwargs) as gallery:
        return folder, contents(gallery)


def edit_manifest(folder, change):
    path = os.path.join(folder, "manifest.json")
    manifest = json.load(open(path))
    change(manifest)
    with open(path, "w") as handle:
        json.dump(manifest, handle)


def flip_byte(path, offset):
    """One byte of `path` changed, its size kept, its mtime moved on (as any write does)."""
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0x40
    stat = os.stat(path)
    open(path, "wb").write(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def one_line_error(folder, match):
    with pytest.raises(GalleryError, match=match) as err:
        Gallery.open(folder)
    assert "\n" not in str(err.value)
    return str(err.value)


# ----------------------------------------------------------------------- checksums (SHA-256)
@pytest.mark.parametrize("name, where", [("seg-000001.npy", -5), ("seg-000001.npy", 200),
                                         ("seg-000001.csv", -8)])
def test_a_byte_changed_at_the_same_size_is_named(tmp_path, name, where):
    folder, _ = saved(tmp_path)
    path = os.path.join(folder, name)
    flip_byte(path, where % os.path.getsize(path))
    message = one_line_error(folder, f"'{path}' is damaged: its SHA-256 is not the one "
                                     "manifest.json recorded")
    assert HINT in message


def test_damaged_tombstones_are_named_flipped_or_truncated(tmp_path):
    folder, _ = saved(tmp_path)
    with Gallery.open(folder, writable=True) as gallery:
        gallery.remove(label="s0id2")
        gallery.save()
        tombstones = os.path.join(folder, gallery.manifest.tombstones)
    data = open(tombstones, "rb").read()
    flip_byte(tombstones, len(data) - 3)
    one_line_error(folder, "tomb-000002.npy' is damaged: its SHA-256")
    open(tombstones, "wb").write(data[:-4])
    one_line_error(folder, "tomb-000002.npy")


def test_a_truncated_entry_list_is_named(tmp_path):
    folder, _ = saved(tmp_path)
    path = os.path.join(folder, "seg-000001.csv")
    open(path, "ab").truncate(os.path.getsize(path) - 10)
    one_line_error(folder, r"damaged: 'seg-000001.csv' has \d+ bytes, manifest.json recorded")


def test_a_flipped_saved_index_is_named_in_a_warning_and_built_again(tmp_path, caplog):
    folder = str(tmp_path / "g")
    feats, entries = clustered(100, 4, seed=3)
    with new_gallery(folder, feats, entries, index="hnsw") as gallery:
        gallery.save_index()
        name = gallery.manifest.ann["name"]
    path = os.path.join(folder, name)
    flip_byte(path, os.path.getsize(path) // 2)
    with caplog.at_level(logging.WARNING):
        reopened = Gallery.open(folder)
    assert f"the saved hnsw index '{name}' is missing or damaged" in caplog.text
    assert reopened.searcher.approximate is None  # not read: built when first searched
    distances, positions = reopened.search(feats[:10], 1)
    np.testing.assert_array_equal(positions[:, 0], np.arange(10))  # each row finds itself
    np.testing.assert_allclose(distances[:, 0], 0, atol=1e-5)


def test_a_verified_file_is_not_hashed_again_until_it_changes(tmp_path, monkeypatch):
    folder, expected = saved(tmp_path)
    Gallery.open(folder)  # hashes and remembers every file

    def hashing(*args):
        raise AssertionError("hashed again")

    monkeypatch.setattr(gallery_store, "BackgroundDigest", hashing)
    monkeypatch.setattr(gallery_store, "HashingReader", hashing)
    same_contents(contents(Gallery.open(folder)), expected)
    monkeypatch.undo()
    flip_byte(os.path.join(folder, "seg-000001.npy"), 300)
    one_line_error(folder, "seg-000001.npy' is damaged: its SHA-256")


def test_a_gallery_saved_without_checksums_is_read_then_saving_records_them(tmp_path, caplog):
    folder, expected = saved(tmp_path)

    def format_one(manifest):
        manifest["version"] = 1
        for segment in manifest["segments"]:
            del segment["sha256"], segment["entries_sha256"]
        del manifest["tombstones_sha256"]

    edit_manifest(folder, format_one)
    with caplog.at_level(logging.WARNING):
        same_contents(contents(Gallery.open(folder)), expected)
        Gallery.open(folder)
    assert caplog.text.count("was saved without checksums") == 1  # said once
    assert "saving it again records them" in caplog.text
    with Gallery.open(folder, writable=True) as gallery:
        gallery.save()
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    segment = manifest["segments"][0]
    assert manifest["version"] == 2
    for name, digest in (("seg-000001.npy", segment["sha256"]),
                         ("seg-000001.csv", segment["entries_sha256"])):
        assert digest == hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest()


# ------------------------------------------------------------------------ the manifest's fields
def set_in(keys, value):
    def change(manifest):
        target = manifest
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return change


BAD_FIELDS = [
    (("segments", 0, "rows"), "many", r"field 'rows' of segment 1 is 'many', not an integer"),
    (("segments", 0, "rows"), 10 ** 12, r"segment 1 holds 1000000000000 rows of 24-d float32 "
                                         r"features, which do not fit its \d+ bytes"),
    (("num_tombstones",), 13, r"field 'num_tombstones' is 13, more than the 12 rows"),
    (("threshold",), "x", r"field 'threshold' is 'x', not a finite number in \[0, 2\]"),
    (("threshold",), 3.0, r"field 'threshold' is 3.0, not a finite number"),
    (("threshold",), -0.5, r"field 'threshold' is -0.5"),
    (("threshold",), float("nan"), r"field 'threshold' is NaN"),
    (("threshold_far",), 0, r"field 'threshold_far' is 0, not a finite number in \(0, 1\]"),
    (("dim",), -1, r"field 'dim' is -1, not an integer >= 0"),
    (("dim",), True, r"field 'dim' is true"),
    (("generation",), 1.5, r"field 'generation' is 1.5"),
    (("next_row",), 999, r"field 'next_row' is 999, but the segments end at row 12"),
    (("segments", 0, "first_row"), 3, r"field 'next_row' is 12, but the segments end at row 15"),
    (("num_tombstones",), 2, r"field 'num_tombstones' is 2 without a 'tombstones' file"),
    (("index",), "annoy", r"field 'index' is 'annoy', not one of flat, pq, hnsw, ivf"),
    (("segments",), {}, r"field 'segments' is \{\}, not a list"),
    (("segments", 0, "sha256"), "zz", r"field 'sha256' of segment 1 is 'zz', not a SHA-256"),
    (("segments", 0, "name"), "seg-000009.npy", r"field 'name' of segment 1 names 'seg-000009.npy', newer than"),
    (("extra",), 1, r"unknown field 'extra' in the manifest"),
    (("version",), "2", r"field 'version' is '2'"),
]


@pytest.mark.parametrize("keys, value, match", BAD_FIELDS)
def test_a_manifest_field_of_the_wrong_type_or_range_is_named(tmp_path, keys, value, match):
    folder, _ = saved(tmp_path)
    edit_manifest(folder, set_in(keys, value))
    message = one_line_error(folder, f"gallery '.*g' is damaged: manifest.json: {match}")
    assert message.endswith(HINT + " (or restore the folder from a backup)")


def test_a_manifest_that_is_not_an_object_or_misses_a_field_is_named(tmp_path):
    folder, _ = saved(tmp_path)
    path = os.path.join(folder, "manifest.json")
    original = json.load(open(path))
    json.dump([original], open(path, "w"))
    one_line_error(folder, "manifest.json: is not a gallery manifest")
    del original["segments"][0]["bytes"]
    json.dump(original, open(path, "w"))
    one_line_error(folder, "manifest.json: missing field 'bytes' in segment 1")


def test_a_gallery_with_a_damaged_manifest_can_be_rebuilt_over(tmp_path):
    folder, _ = saved(tmp_path)
    edit_manifest(folder, set_in(("segments", 0, "rows"), "many"))
    feats, entries = clustered(3, 2, seed=8)
    with Gallery.create(folder, MODEL, overwrite=True) as gallery:
        gallery.add(feats, entries)
        gallery.save()
        assert gallery.manifest.segments[0].name == "seg-000002.npy"  # not the old file's name
    assert sorted(os.listdir(folder)) == ["manifest.json", "seg-000002.csv", "seg-000002.npy"]
    assert [e.path for e in Gallery.open(folder).entries] == [e.path for e in entries]


# -------------------------------------------------------------- paths that leave the folder
@pytest.mark.parametrize("keys, outside", [
    (("segments", 0, "name"), "../x/seg-000001.npy"),
    (("segments", 0, "name"), "{x}/seg-000001.npy"),
    (("segments", 0, "name"), "sub/seg-000001.npy"),
    (("tombstones",), "../x/tomb-000001.npy"),
    (("ann",), {"name": "{x}/ann-000001.faiss", "kind": "pq", "rows": 1, "built_from": 1,
                "num_tombstones": 0, "bytes": 1, "sha256": "0" * 64}),
])
def test_a_manifest_naming_a_file_outside_its_folder_is_refused(tmp_path, keys, outside):
    other, _ = saved(tmp_path, "x", seed=5)  # a real gallery next door, which must not be read
    folder, _ = saved(tmp_path)
    if isinstance(outside, dict):
        outside = {**outside, "name": outside["name"].format(x=other)}
    else:
        outside = outside.format(x=other)
    edit_manifest(folder, set_in(keys, outside))
    if keys == ("tombstones",):
        edit_manifest(folder, set_in(("num_tombstones",), 1))
    before = sorted(os.listdir(other))
    message = one_line_error(folder, r"manifest.json: field '\w+'.* names .*, which is not a .* "
                                     r"file of the gallery folder \(\w+-NNNNNN\.\w+\)")
    assert "a manifest names only plain file names inside its folder" in message
    with pytest.raises(GalleryError, match="names"):
        Gallery.open(folder, writable=True)
    assert sorted(os.listdir(other)) == before


# --------------------------------------------------------------- killed saves leave nothing
KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, {root!r})
    from deploy.gallery import Gallery
    from deploy.gallery_store import Entry
    gallery = Gallery.open({folder!r}, writable=True)
    feats = np.random.default_rng(7).normal(size=(6, 24)).astype(np.float32)
    gallery.add(feats, [Entry("k", f"/img/k{{i}}.jpg") for i in range(6)])
    replace = os.replace
    def killed_at_rename(source, target):
        if target.endswith({suffix!r}):
            os.kill(os.getpid(), signal.SIGKILL)
        replace(source, target)
    os.replace = killed_at_rename
    gallery.save()
""")


def test_the_next_writer_removes_what_a_save_killed_at_a_rename_left(tmp_path):
    """Killed as the manifest is renamed: the new segment is complete but unlisted, and the
    manifest's temporary file is left (a kill at a segment's rename leaves its temporary
    file, the case of the next test)."""
    folder, expected = saved(tmp_path)
    files = sorted(os.listdir(folder))
    script = KILLED_SAVE.format(root=REPO_ROOT, folder=folder, suffix="manifest.json")
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = sorted(set(os.listdir(folder)) - set(files) - {".gallery.lock"})
    assert [name for name in left if name.startswith(".tmp_")][0].endswith(".json"), left
    assert "seg-000002.npy" in left and "seg-000002.csv" in left
    same_contents(contents(Gallery.open(folder)), expected)  # the previous gallery, whole
    Gallery.open(folder, writable=True).close()  # the next writer cleans up
    assert sorted(os.listdir(folder)) == files
    same_contents(contents(Gallery.open(folder)), expected)


def test_temp_files_of_atomic_writes_are_removed_but_not_the_users_files(tmp_path):
    folder, _ = saved(tmp_path)
    files = sorted(os.listdir(folder))
    left = [".tmp_ab12cd34.npy", ".tmp_zz_9abcd.json", ".tmp_x0x0x0x0.faiss"]
    users = [".tmp_mine.txt", "notes.txt", "seg-1.npy"]
    for name in left + users:
        open(os.path.join(folder, name), "w").write("x")
    Gallery.open(folder, writable=True).close()
    assert sorted(os.listdir(folder)) == sorted(files + users)
    # A first save killed before any manifest: `build --overwrite` there cleans up too.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    open(fresh / ".gallery.lock", "w").close()
    open(fresh / ".tmp_ab12cd34.npy", "w").write("x")
    Gallery.create(str(fresh), MODEL).close()
    assert not os.path.exists(fresh / ".tmp_ab12cd34.npy")


# ------------------------------------------------------------------------------- duplicates
def test_a_duplicate_enrolment_is_refused_unless_allowed(tmp_path):
    folder, (entries, _) = saved(tmp_path)
    feats = np.ones((2, 24), np.float32)
    with Gallery.open(folder, writable=True) as gallery:
        with pytest.raises(GalleryError, match=f"'{entries[3].path}' is already in gallery "
                                               ".*--allow-duplicates"):
            gallery.add(feats, [Entry("new", "/img/new.jpg"), entries[3]])
        with pytest.raises(GalleryError, match="'/img/new.jpg' is given twice for gallery"):
            gallery.add(feats, [Entry("new", "/img/new.jpg"), Entry("new", "/img/new.jpg")])
        assert len(gallery) == len(entries)  # nothing added
        gallery.add(feats, [entries[3], entries[3]], allow_duplicates=True)
        gallery.add(feats, [Entry("a", ""), Entry("b", "")])  # no path: no image to repeat
        gallery.remove(path=entries[5].path)
        gallery.add(feats[:1], [entries[5]])  # removed, so enrolled anew
        with pytest.raises(GalleryError, match="already in"):
            gallery.add(feats[:1], [entries[5]])
        assert len(gallery) == len(entries) + 4


# ------------------------------------------------------------------- thresholds and options
@pytest.mark.parametrize("threshold, far", [(-1, None), (float("nan"), None), (float("inf"), None),
                                            (3, None), (0.3, 0), (0.3, 1.5), ("x", None)])
def test_set_threshold_refuses_what_is_no_cosine_distance_or_rate(tmp_path, threshold, far):
    folder, _ = saved(tmp_path)
    with Gallery.open(folder, writable=True) as gallery:
        with pytest.raises(GalleryError, match="gallery '.*': the (threshold|false-accept)"):
            gallery.set_threshold(threshold, far)
        gallery.set_threshold(2, 1.0)  # the ends of the ranges are values
        assert gallery.threshold == 2.0


def test_a_calibrated_threshold_a_rounding_error_below_zero_is_zero(tmp_path, monkeypatch):
    folder, _ = saved(tmp_path)
    result = SimpleNamespace(threshold=-1e-7, num_genuine=1, num_impostor=1, tar_at_far={0.1: 1.0})
    monkeypatch.setattr(gallery_module, "self_verification", lambda *args: result)
    with Gallery.open(folder, writable=True) as gallery:
        gallery.calibrate(target_far=0.1)
        assert gallery.threshold == 0.0


@pytest.mark.parametrize("option, value", [("--threshold", "-1"), ("--threshold", "nan"),
                                           ("--threshold", "inf"), ("--threshold", "3"),
                                           ("--threshold", "x"), ("--calibrate-far", "1"),
                                           ("--calibrate-far", "0"), ("--threshold-far", "nan")])
def test_the_tool_refuses_out_of_range_options_in_one_line(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as exit_info:
        gallery_tool.main(["add", "--gallery", str(tmp_path), "--images", str(tmp_path),
                           option, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: argument {option}" in error
    assert ("cosine distance" in error) == (option == "--threshold")


def test_the_tool_refuses_topk_below_one(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gallery_tool.main(["search", "--gallery", str(tmp_path), "--query", str(tmp_path),
                           "--topk", "0"])
    assert "--topk: must be at least 1" in capsys.readouterr().err


# ------------------------------------------------------------------ errors of the files themselves
def test_a_file_that_cannot_be_read_is_named(tmp_path, monkeypatch):
    folder, _ = saved(tmp_path)
    real_open = open

    def denied(path, *args, **kwargs):
        if str(path).endswith(".csv"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(gallery_store, "open", denied, raising=False)
    one_line_error(folder, r"cannot use '.*seg-000001.csv' \(Permission denied\)")


def test_faiss_errors_are_a_warning_and_other_errors_name_the_index(tmp_path, monkeypatch, caplog):
    folder = str(tmp_path / "g")
    feats, entries = clustered(100, 4, seed=3)
    with new_gallery(folder, feats, entries, index="hnsw") as gallery:
        gallery.save_index()
        name = gallery.manifest.ann["name"]
    faiss = vector_index.import_faiss()

    def fails(error):
        def read_index(path):
            raise error
        return read_index

    monkeypatch.setattr(faiss, "read_index", fails(RuntimeError("Error in faiss: bad header")))
    with caplog.at_level(logging.WARNING):
        assert Gallery.open(folder).searcher.approximate is None
    assert "cannot be read (Error in faiss: bad header); building it again" in caplog.text
    monkeypatch.setattr(faiss, "read_index", fails(OSError(5, "Input/output error")))
    with pytest.raises(ToolError, match=f"cannot read the saved index '.*{name}' "
                                        r"\(OSError: .*Input/output error\)"):
        Gallery.open(folder)


# ---------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return Setup(str(tmp_path_factory.mktemp("fault_data")), str(tmp_path_factory.mktemp("faults")))


def test_the_tool_refuses_duplicates_and_a_file_as_gallery(setup, tmp_path, capsys):
    # An identity's image: junk (-1) and distractors (0000) are not enrolled at all.
    image = os.path.join(setup.gallery_dir, next(name for name in sorted(os.listdir(
        setup.gallery_dir)) if not name.startswith(("0000", "-1"))))
    folder = str(tmp_path / "g")
    with pytest.raises(SystemExit, match=r"is given twice for gallery .*--allow-duplicates"):
        gallery_tool.main(["build", "--gallery", folder, "--images", image, "--images", image,
                           *setup.args()])
    assert gallery_tool.main(["build", "--gallery", folder, "--images", image, "--overwrite",
                              *setup.args()]) == 0
    with pytest.raises(SystemExit, match=f"'{image}' is already in gallery"):
        gallery_tool.main(["add", "--gallery", folder, "--images", image, *setup.args()])
    assert len(Gallery.open(folder)) == 1
    assert gallery_tool.main(["add", "--gallery", folder, "--images", image,
                              "--allow-duplicates", *setup.args()]) == 0
    assert len(Gallery.open(folder)) == 2
    a_file = str(tmp_path / "gallery.txt")
    open(a_file, "w").close()
    for command in (["build"], ["add"], ["search"], ["info"]):
        images = ["--images", image] if command[0] in ("build", "add") else []
        images += ["--query", image] if command[0] == "search" else []
        model = setup.args() if command[0] != "info" else []
        with pytest.raises(SystemExit, match=f"gallery '{a_file}'.*is a file, not a"):
            gallery_tool.main([*command, "--gallery", a_file, *images, *model])
