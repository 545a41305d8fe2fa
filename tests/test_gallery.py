"""The lasting gallery (deploy/gallery.py, its folder format and tools/gallery.py): search
against a brute-force oracle, save / load / add / remove round trips, saves killed midway, and
each refusal in one line."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from deploy import gallery_store
from deploy.gallery import Gallery
from deploy.gallery_store import Entry, GalleryError
from deploy import vector_index
from deploy.vector_index import ApproximateIndex
from tools import gallery as gallery_tool, search
from test_tools import Setup  # the tiny saved model and rendered images of the tool tests

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIM = 24
MODEL = {"weight": "/models/a.pth", "weight_sha256": "aaaa", "MODEL.TRANSFORMER_TYPE": "vit"}


def clustered(num_ids, views, seed=0, dim=DIM):
    """Unit rows shaped like a re-ID gallery: several noisy views of each identity."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim))
    feats = np.repeat(centres, views, axis=0) + 0.5 * rng.normal(size=(num_ids * views, dim))
    entries = [Entry(f"s{seed}id{i // views}", f"/img/{seed}_{i}.jpg", i % 3) for i in range(len(feats))]
    return feats.astype(np.float32), entries


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def oracle_search(feats, queries, k):
    dist = 1.0 - unit(queries).astype(np.float64) @ unit(feats).astype(np.float64).T
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, 1), order


def new_gallery(folder, feats, entries, **kwargs):
    gallery = Gallery.create(str(folder), MODEL, **kwargs)
    gallery.add(feats, entries)
    gallery.save()
    return gallery


def contents(gallery):
    """Entries and features, in entry order: what must survive a round trip."""
    return gallery.entries, gallery.matrix.rows.copy()


def same_contents(a, b):
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])


# ------------------------------------------------------------------------------------- search
def test_exact_search_equals_a_brute_force_oracle(tmp_path):
    feats, entries = clustered(60, 5)
    queries = feats[::17] + 0.1
    with new_gallery(tmp_path / "g", feats, entries) as gallery:
        distances, positions = gallery.search(queries, k=7)
    expected_d, expected_p = oracle_search(feats, queries, 7)
    np.testing.assert_array_equal(positions, expected_p)
    np.testing.assert_allclose(distances, expected_d, atol=1e-5)


@pytest.mark.parametrize("kind", ["pq", "hnsw", "ivf"])
def test_approximate_search_finds_nearly_all_exact_neighbours(tmp_path, kind):
    feats, entries = clustered(300, 6, seed=1)
    queries = feats[::11]
    with new_gallery(tmp_path / "g", feats, entries, index=kind) as gallery:
        _, positions = gallery.search(queries, k=10)
    _, expected = oracle_search(feats, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(positions, expected)])
    assert recall >= 0.95


def test_pq_distances_are_exact_and_small_galleries_are_searched_exactly(tmp_path):
    feats, entries = clustered(300, 6, seed=5)
    queries = feats[::13] + 0.05
    with new_gallery(tmp_path / "g", feats, entries, index="pq") as gallery:
        distances, positions = gallery.search(queries, k=10)
        gallery.use_index("pq", effort=len(feats))  # every row a candidate: exact
        all_d, all_p = gallery.search(queries, k=10)
    # Re-ranked with the exact rows: each distance is the true one of the row returned.
    true = 1.0 - np.einsum("qd,qkd->qk", unit(queries), unit(feats)[positions])
    np.testing.assert_allclose(distances, true, atol=1e-5)
    assert np.all(np.diff(distances, axis=1) >= 0)
    expected_d, expected_p = oracle_search(feats, queries, 10)
    np.testing.assert_array_equal(all_p, expected_p)
    np.testing.assert_allclose(all_d, expected_d, atol=1e-5)


def test_pq_keeps_its_recall_on_features_that_share_one_direction(tmp_path):
    # Trained models' features do (cosine 0.999 between any two of the quickstart model's):
    # uncentred, the fast scan's 8-bit tables spend their range on it (recall@10 0.11 here).
    feats, entries = clustered(300, 6, seed=7, dim=64)
    shared = np.random.default_rng(8).normal(size=64)
    feats = (unit(feats) + 30 * shared / np.linalg.norm(shared)).astype(np.float32)
    queries = feats[::11]
    with new_gallery(tmp_path / "g", feats, entries, index="pq") as gallery:
        _, positions = gallery.search(queries, k=10)
    _, expected = oracle_search(feats, queries, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(positions, expected)]) >= 0.95


def test_rerank_orders_candidates_by_exact_inner_product_and_puts_missing_last():
    rng = np.random.default_rng(0)
    rows, queries = unit(rng.normal(size=(50, 8))), unit(rng.normal(size=(3, 8)))
    rows, queries = rows.astype(np.float32), queries.astype(np.float32)
    candidates = np.array([[4, 9, 1, 30], [7, -1, 2, 3], [5, -1, -1, 0]])
    similarity, positions = vector_index.rerank(rows, queries, candidates, 3)
    for q, row in enumerate(candidates):
        valid = [c for c in row if c >= 0]
        best = sorted(valid, key=lambda c: -float(rows[c] @ queries[q]))[:3]
        best += [-1] * (3 - len(best))
        assert positions[q].tolist() == best
        np.testing.assert_allclose(similarity[q][:len(valid)],
                                   [rows[c] @ queries[q] for c in best[:len(valid)]], rtol=1e-5)
    assert positions[2, 2] == -1 and similarity[2, 2] == -np.inf


@pytest.mark.parametrize("dim, codes", [(768, 16), (2048, 32), (1536, 32), (384, 16), (24, 12),
                                        (100, 20)])
def test_pq_cuts_rows_into_equal_parts_of_about_48_dimensions_at_least_16(dim, codes):
    assert vector_index.pq_subquantisers(dim) == codes and dim % codes == 0


def test_a_trained_index_is_built_again_once_the_gallery_outgrows_it(tmp_path, monkeypatch):
    built = []
    original = ApproximateIndex.__init__
    monkeypatch.setattr(ApproximateIndex, "__init__",
                        lambda self, kind, matrix: (built.append(len(matrix)),
                                                    original(self, kind, matrix))[1])
    feats, entries = clustered(400, 3, seed=6)
    with new_gallery(tmp_path / "g", feats[:200], entries[:200], index="pq") as gallery:
        gallery.search(feats[:1], 5)
        gallery.add(feats[200:800], entries[200:800])  # 800 rows: 4x those it learnt from
        gallery.search(feats[:1], 5)
        assert built == [200]
        gallery.add(feats[800:], entries[800:])
        _, positions = gallery.search(feats[1000:1001], 1)
    assert built == [200, 1200] and positions[0, 0] == 1000


@pytest.mark.parametrize("kind", ["hnsw", "pq"])
def test_a_saved_index_is_read_and_extended_not_built_again(tmp_path, monkeypatch, kind):
    folder = str(tmp_path / "g")
    feats, entries = clustered(100, 4, seed=3)
    more, more_entries = clustered(10, 2, seed=4)
    with new_gallery(folder, feats, entries, index=kind) as gallery:
        assert gallery.index_file_stale()
        gallery.save_index()
        expected = gallery.search(feats[:20], 5)
    monkeypatch.setattr(ApproximateIndex, "__init__", no_building)
    with Gallery.open(folder, writable=True) as gallery:
        np.testing.assert_array_equal(gallery.search(feats[:20], 5)[1], expected[1])
        gallery.add(more, more_entries)
        gallery.save()
        assert not gallery.index_file_stale(fraction=0.1) and gallery.manifest.ann["rows"] == 400
        assert gallery.manifest.ann["built_from"] == 400
    reopened = Gallery.open(folder)  # reads 400 rows, adds the 20 since
    assert reopened.search(more, 1)[1][:, 0].tolist() == list(range(400, 420))
    with Gallery.open(folder, writable=True) as gallery:
        gallery.remove(label="s4id0")
        gallery.save()
        assert gallery.manifest.ann is None and gallery.index_file_stale()
    assert not [name for name in os.listdir(folder) if name.startswith("ann-")]  # stale: gone
    with pytest.raises(AssertionError, match="built"):
        Gallery.open(folder).search(more, 1)


def test_a_damaged_saved_index_of_the_recorded_size_is_named_and_built_again(tmp_path, caplog):
    folder = str(tmp_path / "g")
    feats, entries = clustered(100, 4, seed=3)
    with new_gallery(folder, feats, entries, index="pq") as gallery:
        gallery.save_index()
        expected = gallery.search(feats[:5], 3)[1]
        name = gallery.manifest.ann["name"]
    path = os.path.join(folder, name)
    size = os.path.getsize(path)
    with open(path, "wb") as handle:
        handle.write(b"\0" * size)
    reopened = Gallery.open(folder)
    assert name in caplog.text and "building it again" in caplog.text
    np.testing.assert_array_equal(reopened.search(feats[:5], 3)[1], expected)


def no_building(*args, **kwargs):
    raise AssertionError("the approximate index was built, not read")


def test_hits_are_matches_at_the_threshold_and_calibration_sets_it(tmp_path):
    feats, entries = clustered(80, 6, seed=2)
    with new_gallery(tmp_path / "g", feats, entries) as gallery:
        assert all(hit.match is None for hit in gallery.hits(feats[:1], 3)[0])
        gallery.set_threshold(0.3, 1e-2)
        hits = gallery.hits(feats[:2], 5)
        assert [h.match for row in hits for h in row] == [h.distance <= 0.3 for row in hits for h in row]
        result = gallery.calibrate(target_far=1e-2)
        gallery.save()
    # The threshold accepts at most 1% of the impostor pairs of the gallery itself.
    dist = 1.0 - unit(feats) @ unit(feats).T
    labels = np.array([e.label for e in entries])
    impostor = dist[labels[:, None] != labels[None, :]]
    assert np.mean(impostor <= result.threshold) <= 1e-2
    assert np.mean(impostor <= result.threshold + 1e-3) > 5e-3  # and not far below it
    saved = Gallery.open(str(tmp_path / "g"))
    assert (saved.threshold, saved.manifest.threshold_far) == (pytest.approx(result.threshold), 1e-2)


# -------------------------------------------------------------------------------- round trips
def test_save_load_add_remove_round_trip(tmp_path):
    folder = str(tmp_path / "g")
    feats, entries = clustered(20, 4)
    more, more_entries = clustered(5, 4, seed=9)
    with new_gallery(folder, feats, entries) as gallery:
        same_contents(contents(Gallery.open(folder)), contents(gallery))
        gallery.add(more, more_entries)
        assert gallery.remove(label="s0id3") == 4          # saved rows: a tombstone
        assert gallery.remove(path="/img/9_0.jpg") == 1  # an unsaved row: just gone
        gallery.save()
        expected = contents(gallery)
        manifest = gallery.manifest
    assert [s.rows for s in manifest.segments] == [80, 19] and manifest.num_tombstones == 4
    keep = [i for i, e in enumerate(entries + more_entries)
            if e.label != "s0id3" and e.path != "/img/9_0.jpg"]
    assert expected[0] == [(entries + more_entries)[i] for i in keep]
    np.testing.assert_allclose(expected[1], unit(np.concatenate([feats, more]))[keep], atol=1e-6)
    reopened = Gallery.open(folder, writable=True)
    same_contents(contents(reopened), expected)
    _, positions = reopened.search(more[1:3], k=5)
    np.testing.assert_array_equal(positions, oracle_search(expected[1], more[1:3], 5)[1])
    reopened.compact()
    reopened.close()
    assert sorted(os.listdir(folder)) == ["manifest.json", "seg-000004.csv", "seg-000004.npy"]
    same_contents(contents(Gallery.open(folder)), expected)


def test_adding_to_a_saved_gallery_writes_only_the_new_rows(tmp_path):
    folder = str(tmp_path / "g")
    feats, entries = clustered(50, 4)
    new_gallery(folder, feats, entries).close()
    before = {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in os.listdir(folder)}
    with Gallery.open(folder, writable=True) as gallery:
        gallery.add(feats[:3], [e._replace(path=e.path + ".again") for e in entries[:3]])
        gallery.save()
    after = {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in os.listdir(folder)}
    assert {n: t for n, t in after.items() if n in before and n != "manifest.json"} == \
        {n: t for n, t in before.items() if n != "manifest.json"}
    new = set(after) - set(before)
    assert new == {"seg-000002.npy", "seg-000002.csv"}
    assert os.path.getsize(os.path.join(folder, "seg-000002.npy")) == 128 + 3 * DIM * 4  # header + 3 rows


# ------------------------------------------------------------------------- saves killed midway
def test_a_fault_between_the_segments_and_the_manifest_keeps_the_previous_gallery(tmp_path,
                                                                                 monkeypatch):
    folder = str(tmp_path / "g")
    feats, entries = clustered(10, 4)
    gallery = new_gallery(folder, feats, entries)
    before = contents(Gallery.open(folder))
    gallery.add(feats[:4], [e._replace(path=e.path + ".again") for e in entries[:4]])
    gallery.remove(label="s0id1")

    def killed(*args):
        raise KeyboardInterrupt("killed before the manifest")

    monkeypatch.setattr(gallery_store, "write_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        gallery.save()
    monkeypatch.undo()
    gallery.close()
    same_contents(contents(Gallery.open(folder)), before)
    # The next writer removes the orphaned files of the killed save.
    Gallery.open(folder, writable=True).close()
    assert sorted(os.listdir(folder)) == ["manifest.json", "seg-000001.csv", "seg-000001.npy"]


WRITER = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {root!r})
    from deploy.gallery import Gallery
    from deploy.gallery_store import Entry
    gallery = Gallery.open({folder!r}, writable=True)
    rng = np.random.default_rng(0)
    for step in range(100000):
        feats = rng.normal(size=(500, 64)).astype(np.float32)
        gallery.add(feats, [Entry(f"{tag}{{step}}", f"/x/{tag}{{step}}_{{i}}.jpg") for i in range(500)])
        if step % 3 == 2:
            gallery.remove(label=f"{tag}{{step - 1}}")
        gallery.save()
        print(step, flush=True)
""")


def test_a_writer_killed_at_any_moment_leaves_a_loadable_gallery(tmp_path):
    folder = str(tmp_path / "g")
    feats, entries = clustered(4, 2, dim=64)
    new_gallery(folder, feats, entries).close()
    for tag, delay in (("a", 0.15),):
        script = WRITER.format(root=REPO_ROOT, folder=folder, tag=tag)
        writer = subprocess.Popen([sys.executable, "-c", script],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "0", writer.stderr.read()  # a save done
        time.sleep(delay)  # then killed amid the following ones
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        gallery = Gallery.open(folder)
        labels = gallery.labels()
        # Every saved step is whole: 500 entries, or none when a later step removed it.
        steps = [label for label in labels if label[0] in "ab"]
        assert all(labels[label] == 500 for label in steps)
        assert len(gallery) == 8 + 500 * len(steps)
        assert steps


# ------------------------------------------------------------------------------------ refusals
def test_a_second_writer_is_refused_and_the_gallery_stays_whole(tmp_path):
    folder = str(tmp_path / "g")
    feats, entries = clustered(5, 2)
    with new_gallery(folder, feats, entries):
        with pytest.raises(GalleryError, match=r"'.*g' is being changed by PID \d+"):
            Gallery.open(folder, writable=True)
        assert len(Gallery.open(folder)) == 10  # readers are welcome


def test_damaged_galleries_are_named_in_one_line(tmp_path):
    folder = str(tmp_path / "g")
    feats, entries = clustered(5, 2)
    new_gallery(folder, feats, entries).close()
    segment = os.path.join(folder, "seg-000001.npy")
    data = open(segment, "rb").read()
    with open(segment, "wb") as handle:
        handle.write(data[:-100])
    with pytest.raises(GalleryError, match=r"damaged: 'seg-000001.npy' has \d+ bytes, .* recorded"):
        Gallery.open(folder)
    with open(os.path.join(folder, "manifest.json"), "w") as handle:
        handle.write('{"format": "transreid-gallery", "version": 1, "dim": ')
    with pytest.raises(GalleryError, match="damaged: manifest.json cannot be read") as err:
        Gallery.open(folder)
    assert "\n" not in str(err.value)
    with pytest.raises(GalleryError, match="is not a gallery"):
        Gallery.open(str(tmp_path))
    (tmp_path / "file").write_text("")
    with pytest.raises(GalleryError, match="cannot create gallery '.*file'"):
        Gallery.create(str(tmp_path / "file"))


def test_a_damaged_entry_list_is_named(tmp_path):
    folder = str(tmp_path / "g")
    feats, entries = clustered(2, 2)
    new_gallery(folder, feats, entries).close()
    csv_path = os.path.join(folder, "seg-000001.csv")
    text = open(csv_path).read().replace(",0\n", ",zero\n", 1)
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    manifest["segments"][0]["entries_bytes"] = len(text.encode())  # same size check passes
    open(csv_path, "w").write(text)
    open(os.path.join(folder, "manifest.json"), "w").write(json.dumps(manifest))
    with pytest.raises(GalleryError, match="seg-000001.csv' is damaged"):
        Gallery.open(folder)


def test_wrong_removals_dimensions_and_models_are_refused(tmp_path):
    folder = str(tmp_path / "g")
    feats, entries = clustered(5, 2)
    with new_gallery(folder, feats, entries) as gallery:
        with pytest.raises(GalleryError, match="has no entry labelled 'nobody'"):
            gallery.remove(label="nobody")
        assert len(gallery) == 10
        with pytest.raises(GalleryError, match="holds 24-d features, the query features are 8-d ones"):
            gallery.search(np.ones((1, 8)))
        with pytest.raises(GalleryError, match="holds 24-d features, the features to add are 8-d"):
            gallery.add(np.ones((1, 8)), [Entry("x", "y")])
        other = {**MODEL, "weight": "/models/b.pth", "weight_sha256": "bbbb"}
        with pytest.raises(GalleryError, match=r"weights '/models/a.pth'.*'aaaa' there, 'bbbb' "
                                               r"here.*the model here is '/models/b.pth'"):
            gallery.check_model(other)
        gallery.check_model(dict(MODEL))
    with pytest.raises(GalleryError, match="already a gallery"):
        Gallery.create(folder, MODEL)


# --------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return Setup(str(tmp_path_factory.mktemp("gallery_data")), str(tmp_path_factory.mktemp("gallery")))


def test_the_tools_build_search_remove_and_refuse_another_model(setup, tmp_path, capsys):
    folder = str(tmp_path / "g")
    assert gallery_tool.main(["build", "--gallery", folder, "--images", setup.gallery_dir,
                              "--threshold", "0.2", "--threshold-far", "0.001",
                              *setup.args()]) == 0
    gallery = Gallery.open(folder)
    # Distractors (0000) and junk (-1) are no identities: not enrolled.
    names = sorted(n for n in os.listdir(setup.gallery_dir) if not n.startswith(("0000", "-1")))
    assert len(gallery) == len(names) and gallery.threshold == 0.2
    assert gallery.manifest.provenance["weight_sha256"]
    # A query that is a gallery image finds itself first, at distance 0, as a match.
    bad = tmp_path / "queries"
    bad.mkdir()
    shutil.copy(os.path.join(setup.gallery_dir, names[0]), bad / names[0])
    (bad / "0001_c1s1_broken.jpg").write_bytes(b"not an image")
    capsys.readouterr()
    gallery_tool.main(["search", "--gallery", folder, "--query", str(bad), "--topk", "3",
                       *setup.args()])
    out = capsys.readouterr().out
    first_hit = out.splitlines()[out.splitlines().index(next(
        line for line in out.splitlines() if line.startswith("query "))) + 2].split()
    assert first_hit[:3] == ["1", "0.0000", "match"] and first_hit[-1].endswith(names[0])
    assert "skipped (cannot be read): " in out and "broken.jpg" in out
    compare_search_modes(setup, folder, tmp_path, capsys)
    label = str(int(names[0].split("_")[0]))
    gallery_tool.main(["remove", "--gallery", folder, "--label", label])
    remaining = Gallery.open(folder)
    assert label not in remaining.labels() and len(remaining) < len(names)
    with pytest.raises(SystemExit, match=f"has no entry labelled '{label}'"):
        gallery_tool.main(["remove", "--gallery", folder, "--label", label])
    gallery_tool.main(["info", "--gallery", folder])
    assert "threshold  0.2000 (FAR 0.001)" in capsys.readouterr().out
    other = str(tmp_path / "other.pth")
    torch.save({k: v + 1 if k.endswith("bias") else v
                for k, v in setup.model.state_dict().items()}, other)
    with pytest.raises(SystemExit, match="weights '.*tiny.pth'.*the model here is '.*other.pth'"):
        gallery_tool.main(["add", "--gallery", folder, "--images", setup.query_dir,
                           "--weight", other, *setup.opts])
    assert len(Gallery.open(folder)) == len(remaining)  # nothing added



def compare_search_modes(setup, folder, tmp_path, capsys):
    """tools/search.py ranks a saved gallery as the image folder it was built from."""
    query = os.path.join(setup.query_dir, sorted(os.listdir(setup.query_dir))[0])

    def ranked_paths(gallery_arg, pictures):
        capsys.readouterr()
        search.main(setup.args("--query", query, "--gallery", gallery_arg, "--topk", "5",
                               "--output-dir", str(tmp_path / pictures)))
        lines = capsys.readouterr().out.splitlines()
        return [(line.split()[-1], float(line.split()[1])) for line in lines[2:7]]

    from_folder, from_saved = ranked_paths(setup.gallery_dir, "a"), ranked_paths(folder, "b")
    assert [os.path.abspath(p) for p, _ in from_folder] == [p for p, _ in from_saved]
    # One unit for users: both show the cosine distance, whatever TEST.DIST_METRIC ranks by.
    np.testing.assert_allclose([d for _, d in from_folder], [d for _, d in from_saved],
                               atol=2e-4)
    with pytest.raises(SystemExit, match="--rerank needs every gallery feature"):
        search.main(setup.args("--query", query, "--gallery", folder, "--rerank"))
