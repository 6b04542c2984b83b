"""The 2-D layout: fitted once, extended without moving anything (`core/layout.py`, `fo/map.py`)."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from conftest import add_embedded_samples, clustered_embeddings

from bubblefence_plugin.core import layout as L


def _npy_round_trip(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in arrays.items():
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        out[name] = np.load(io.BytesIO(buf.getvalue()), allow_pickle=False)
    return out


def test_pca_layout_round_trips_and_places_new_samples_like_the_fit():
    x = clustered_embeddings(300)
    layout, xy = L.fit_layout(x[:200], "pca", seed=3)
    meta, arrays = layout.to_state()
    restored = L.Layout.from_state(meta, _npy_round_trip(arrays))
    np.testing.assert_array_equal(restored.place(x[:200]), xy)
    centred = x[200:] - layout.mean
    np.testing.assert_allclose(
        restored.place(x[200:]), centred @ layout.components.T, rtol=1e-5, atol=1e-6
    )
    again, xy_again = L.fit_layout(x[:200], "pca", seed=3)
    np.testing.assert_array_equal(xy_again, xy)  # same data + seed, same map


def test_knn_placement_is_the_similarity_weighted_mean_of_placed_neighbours():
    layout = L.Layout("tsne", seed=0, dim=3)
    placed = np.eye(3, dtype=np.float32)
    placed_xy = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 8.0]], np.float32)
    between = np.array([[1.0, 1.0, 0.0]], np.float32) / np.sqrt(2)  # sims .71, .71, 0
    np.testing.assert_allclose(layout.place(between, placed, placed_xy), [[2.0, 0.0]], atol=1e-5)
    opposite = -np.ones((1, 3), np.float32) / np.sqrt(3)  # no positive similarity
    np.testing.assert_allclose(layout.place(opposite, placed, placed_xy), [[4 / 3, 8 / 3]])
    with pytest.raises(ValueError, match="placed"):
        layout.place(between)


def test_tsne_layout_fits_a_subsample_and_places_the_rest(monkeypatch):
    monkeypatch.setattr(L, "NONLINEAR_FIT_LIMIT", 60)
    x = clustered_embeddings(90, seed=1)
    layout, xy = L.fit_layout(x, "tsne", seed=0)
    assert xy.shape == (90, 2) and np.isfinite(xy).all()
    meta, arrays = layout.to_state()
    assert meta["method"] == "tsne" and arrays == {}  # nothing to pickle, nothing stored
    np.testing.assert_array_equal(L.fit_layout(x, "tsne", seed=0)[1], xy)


def test_the_default_method_is_tsne_except_for_very_small_or_very_large_maps():
    assert L.default_method(L.DEFAULT_NONLINEAR_MIN - 1) == "pca"
    assert L.default_method(L.DEFAULT_NONLINEAR_MIN) == "tsne"
    assert L.default_method(30_000) == "tsne"
    assert L.default_method(L.DEFAULT_NONLINEAR_MAX + 1) == "pca"


def test_placement_compares_with_a_seeded_subsample_of_a_large_base(monkeypatch):
    x = clustered_embeddings(120, seed=2)
    base, base_xy, new = x[:100], np.random.default_rng(0).normal(size=(100, 2)), x[100:]
    layout = L.Layout("tsne", seed=5, dim=x.shape[1])
    monkeypatch.setattr(L, "PLACE_BASE_LIMIT", 30)
    placed = layout.place(new, base, base_xy)
    rows = L.subsample(100, 30, np.random.default_rng(5))
    np.testing.assert_array_equal(layout.placement_base(100), rows)
    np.testing.assert_array_equal(placed, layout.place(new, base[rows], base_xy[rows]))
    np.testing.assert_array_equal(layout.place(new, base, base_xy), placed)  # same subsample


def _inside(polygon: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Whether each point lies inside a convex counter-clockwise polygon."""
    edges = np.roll(polygon, -1, axis=0) - polygon
    to_points = points[:, None, :] - polygon[None, :, :]
    cross = edges[None, :, 0] * to_points[..., 1] - edges[None, :, 1] * to_points[..., 0]
    return (cross > 0).all(axis=1)


def test_bubble_outlines_hold_their_members():
    rng = np.random.default_rng(0)
    # bubble 0: 40 members, the 10 nearest its middle in the inner shell; bubble 1: one
    # member; bubble 2: two members on a line, no inner shell; bubble 3: none left.
    xy = np.vstack([rng.normal(size=(40, 2)), [[8.0, 8.0]], [[-6.0, 0.0], [-5.0, 0.0]]])
    xy = np.vstack([xy, rng.uniform(-10, 10, size=(30, 2))])  # train samples
    member = np.array([0] * 40 + [1, 2, 2] + [-1] * 30)
    inner = np.zeros(len(xy), bool)
    inner[np.argsort(np.linalg.norm(xy[:40], axis=1))[:10]] = True
    outlines = L.bubble_outlines(xy, member, inner, 4)
    for anchor in range(3):
        polygon = outlines.polygon(anchor)
        assert len(polygon) >= 3 and _inside(polygon, xy[member == anchor]).all()
    inner_polygon = outlines.polygon(0, "inner")
    assert _inside(inner_polygon, xy[inner]).all()
    assert not _inside(inner_polygon, xy[:40][~inner[:40]]).all()  # tighter than the bubble
    assert outlines.inner[1:, 1].tolist() == [0, 0, 0] and outlines.outer[3, 1] == 0
    assert outlines.vertices.dtype == np.float32


def test_nearly_identical_vectors_get_pca_by_default_and_refuse_tsne():
    # Found by a stress test: t-SNE on 50+ identical vectors (a static camera) divided its
    # PCA start by a spread of zero and the process died (SIGSEGV), the App server with
    # it. Run in a child process, so a regression fails the test instead of killing it.
    code = """
import numpy as np
from bubblefence_plugin.core import layout as L
x = np.zeros((80, 512), np.float32)
x[:, 0] = 1
x[:3, 1] = [0.1, 0.2, 0.3]  # 4 distinct vectors in all: still too few
x /= np.linalg.norm(x, axis=1, keepdims=True)
assert L.default_method(80) == "tsne"
layout, xy = L.fit_layout(x, seed=0)
assert layout.method == "pca" and np.isfinite(xy).all(), layout.method
try:
    L.fit_layout(x, "tsne", seed=0)
except ValueError as e:
    assert "5 distinct vectors" in str(e) and "method='pca'" in str(e), e
else:
    raise AssertionError("t-SNE on 4 distinct vectors was not refused")
x[3, 2] = 0.5  # a fifth distinct vector: t-SNE as the default
assert L.fit_layout(x / np.linalg.norm(x, axis=1, keepdims=True), seed=0)[0].method == "tsne"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "ok"


def test_bad_methods_and_states_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="method='mds'.*pca"):
        L.fit_layout(clustered_embeddings(10), "mds")
    monkeypatch.setattr(L, "available_methods", lambda: ("pca", "tsne"))
    with pytest.raises(ValueError, match="umap-learn"):
        L.check_method("umap")
    with pytest.raises(ValueError, match="at least 5 samples"):
        L.fit_layout(clustered_embeddings(4), "tsne")
    with pytest.raises(ValueError, match="version 99"):
        L.Layout.from_state({"method": "pca", "seed": 0, "dim": 4, "version": 99}, {})
    layout, _ = L.fit_layout(clustered_embeddings(20), "pca")
    with pytest.raises(ValueError, match=r"\(n, 16\)"):
        layout.place(np.ones((2, 3), np.float32))


def test_bubble_radii_use_the_90th_percentile_of_member_distances():
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]])
    # bubble 0: 10 members at distances 1..10 (inner shell: the 5 nearest); bubble 1: none;
    # bubble 2: one member at distance 2 and no inner shell; row 11: a train sample.
    xy = np.array([[d, 0.0] for d in range(1, 11)] + [[22.0, 0.0], [5.0, 5.0]])
    member = np.array([0] * 10 + [2, -1])
    inner = np.array([True] * 5 + [False] * 7)
    outer, inner_r = L.bubble_radii(
        xy, member, inner, centres, radius=np.array([0.2, 0.4, 0.1]),
        inner_radius=np.array([0.1, 0.2, -1.0]),
    )  # fmt: skip
    assert outer[0] == pytest.approx(np.quantile(np.arange(1, 11), 0.9))
    assert inner_r[0] == pytest.approx(np.quantile(np.arange(1, 6), 0.9))
    ratio = np.median([outer[0] / 0.2, outer[2] / 0.1])  # no member left: scaled cosine radius
    assert outer[1] == pytest.approx(0.4 * ratio) and inner_r[1] == pytest.approx(outer[1] / 2)
    assert outer[2] == pytest.approx(2.0) and inner_r[2] == 0.0
    assert (inner_r <= outer).all()


# --------------------------------------------------------------------------- on FiftyOne


@pytest.fixture
def viz():
    pytest.importorskip("fiftyone")
    from bubblefence_plugin.fo import map as viz

    return viz


def _positions(viz, ds) -> dict[str, tuple[float, float]]:
    ids, xy = viz.load_points(ds)
    return {i: tuple(p) for i, p in zip(ids, xy.tolist(), strict=True)}


@pytest.mark.fiftyone
def test_the_first_map_is_tsne_and_old_points_do_not_move_when_a_round_adds_samples(
    field_dataset, viz
):
    import bubblefence_plugin.fo as bfo

    ds = field_dataset
    first = bfo.split(ds.limit(120), embeddings_field="emb")
    assert first["map"] == {
        "method": "tsne",
        "refitted": True,
        "n_points": 120,
        "n_new_points": 120,
    }
    before = _positions(viz, ds)
    add_embedded_samples(ds, 40, seed=7)
    second = bfo.split(ds, embeddings_field="emb")
    assert second["map"]["n_new_points"] == 120 and not second["map"]["refitted"]
    after = _positions(viz, ds)
    assert len(after) == 240 and {i: after[i] for i in before} == before  # exactly there
    assert viz.load_layout(ds).layout.method == "tsne"
    assert np.isfinite(np.array(list(after.values()))).all()
    # The Embeddings panel's run: FiftyOne's own manual visualization of the same points.
    assert ds.get_brain_info(viz.VIZ_KEY).config.method == "manual"


@pytest.mark.fiftyone
def test_a_split_of_identical_frames_gets_a_pca_map(fo_datasets, viz):
    # Found by a stress test: 80 identical vectors (a static camera) split, then the
    # first map's t-SNE killed the process (`test_nearly_identical_vectors_...` above).
    import fiftyone as fo

    import bubblefence_plugin.fo as bfo

    ds = fo.Dataset()
    fo_datasets.append(ds)
    frame = np.zeros(512, np.float32)
    frame[0] = 1
    ds.add_samples([fo.Sample(filepath=f"/static/{i}.png", emb=frame) for i in range(80)])
    summary = bfo.split(ds, embeddings_field="emb")
    assert summary["counts_round"]["duplicate"] == 79
    assert summary["map"]["method"] == "pca" and summary["map"]["n_points"] == 80
    assert np.isfinite(viz.load_points(ds)[1]).all()


@pytest.mark.fiftyone
def test_a_pca_map_places_new_samples_by_its_stored_projection(field_dataset, viz):
    import bubblefence_plugin.fo as bfo

    ds = field_dataset
    bfo.split(ds.limit(120), embeddings_field="emb")
    assert viz.build_map(ds, "pca")["method"] == "pca"
    before = _positions(viz, ds)
    layout_before = viz.load_layout(ds).layout
    add_embedded_samples(ds, 40, seed=7)
    bfo.split(ds, embeddings_field="emb")
    after = _positions(viz, ds)
    assert {i: after[i] for i in before} == before
    layout_after = viz.load_layout(ds).layout
    np.testing.assert_array_equal(layout_after.components, layout_before.components)
    # New points sit where the stored projection puts them.
    ids, vectors = ds.select(list(after), ordered=True).values(["id", "emb"])
    x = np.stack(vectors).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(
        np.array([after[i] for i in ids]), layout_after.place(x), rtol=1e-4, atol=1e-5
    )


@pytest.mark.fiftyone
def test_the_stored_outlines_hold_each_bubbles_members(field_dataset, viz):
    from fiftyone import ViewField as F

    import bubblefence_plugin.fo as bfo

    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    stored = viz.load_layout(ds)
    position = dict(zip(*viz.load_points(ds), strict=True))
    for row in stored.anchors.itertuples():
        members = ds.match(F(bfo.ANCHOR_FIELD) == int(row.anchor_id))
        points = np.array([position[i] for i in members.values("id")])
        assert _inside(stored.outline(row), points).all()
        inner = members.match(F(bfo.SHELL_FIELD) == "inner").values("id")
        if inner:
            inner_points = np.array([position[i] for i in inner])
            assert _inside(stored.outline(row, "inner"), inner_points).all()


@pytest.mark.fiftyone
def test_lost_points_of_a_pca_map_come_back_where_they_were(field_dataset, viz):
    import bubblefence_plugin.fo as bfo

    ds = field_dataset
    bfo.split(ds.limit(150), embeddings_field="emb")
    viz.build_map(ds, "pca")
    before = _positions(viz, ds)
    ds.delete_brain_run(viz.VIZ_KEY)
    bfo.split(ds, embeddings_field="emb")
    after = _positions(viz, ds)
    for i, p in before.items():
        np.testing.assert_allclose(after[i], p, atol=1e-6)


@pytest.mark.fiftyone
def test_a_failing_map_update_does_not_fail_the_split(field_dataset, viz, monkeypatch):
    import bubblefence_plugin.fo as bfo

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(viz, "update_map", broken)
    summary = bfo.split(field_dataset, embeddings_field="emb")
    assert summary["n_assigned"] == 200
    assert summary["map_error"] == "RuntimeError: disk full"
    assert "2-D map was not updated" in summary["message"]
    assert bfo.state_info(field_dataset)["n_samples"] == 200
    assert not viz.has_map(field_dataset)
    monkeypatch.undo()
    assert viz.build_map(field_dataset)["n_points"] == 200  # the panel's rebuild


@pytest.mark.fiftyone
def test_the_map_is_cloned_and_reset_removes_it(field_dataset, fo_datasets, viz):
    import bubblefence_plugin.fo as bfo

    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    clone = ds.clone()
    fo_datasets.append(clone)
    assert viz.has_map(clone)
    assert len(viz.load_layout(clone).anchors) == len(viz.load_layout(ds).anchors)
    result = bfo.reset(ds)
    assert {viz.VIZ_KEY, viz.LAYOUT_KEY} <= set(result["removed_runs"])
    assert not viz.has_map(ds) and ds.list_brain_runs() == []


@pytest.mark.fiftyone
def test_build_map_needs_a_split(field_dataset, viz):
    with pytest.raises(ValueError, match="no BubbleFence split"):
        viz.build_map(field_dataset)
    with pytest.raises(ValueError, match="layout method"):
        viz.build_map(field_dataset, "isomap")


@pytest.mark.fiftyone
def test_a_map_with_every_sample_excluded_is_kept_for_their_return(field_dataset, viz):
    # Found by a stress test: "Update the map" deleted the map's runs, the panel blamed
    # something else, and the samples included again were placed by a refit.
    import bubblefence_plugin.fo as bfo

    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")
    before = dict(zip(*viz.load_points(ds), strict=True))
    bfo.exclude(ds)
    assert viz.build_map(ds)["n_points"] == 0
    assert viz.has_map(ds)
    bfo.include_again(ds)
    bfo.split(ds)
    after = dict(zip(*viz.load_points(ds), strict=True))
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[i], before[i]) for i in before)


@pytest.mark.fiftyone
def test_the_bubbles_drawn_and_their_counts_follow_exclusions(field_dataset, viz):
    # Found by a stress test: after Exclude the map drew every bubble with the counts of
    # its last update, and with every sample excluded still drew them all, where a view
    # of the same samples drew none.
    from fiftyone import ViewField as F

    import bubblefence_plugin.fo as bfo

    ds = field_dataset
    bfo.split(ds, embeddings_field="emb")

    def drawn(samples):
        data = viz.map_figure(samples)["data"]
        (centres,) = [t for t in data if t["name"] == viz.BUBBLES_TRACE]
        rows = zip(centres["ids"], centres["customdata"], strict=True)
        return {int(i): tuple(row[4:6]) for i, row in rows}

    def counted(samples):
        held = samples.match(F("split").is_in(["validation", "test"]))
        pairs = zip(*held.values(["anchor_id", "split"]), strict=True)
        out: dict[int, list[int]] = {}
        for anchor, split in pairs:
            out.setdefault(anchor, [0, 0])[split == "test"] += 1
        return {a: tuple(c) for a, c in out.items()}

    assert drawn(ds) == counted(ds)
    largest = max(counted(ds).items(), key=lambda item: sum(item[1]))[0]
    bfo.exclude(ds.match(F("anchor_id") == largest))
    bfo.exclude(ds.match(F("split") == "test").limit(3))
    assert largest not in drawn(ds) and drawn(ds) == counted(ds)
    bfo.exclude(ds)
    assert drawn(ds) == {} == drawn(ds.match(F("filepath").exists()))
