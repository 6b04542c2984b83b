"""Regions of the embedding space (core/regions.py): the seeded k-means fit, the join
distance, and how later rows join a region or open one, against brute force."""

import numpy as np
import pytest
from conftest import clustered_embeddings, unit

from bubblefence_plugin.core.regions import JOIN_QUANTILE, MIN_HALF, RegionIndex, _split_mixed


def blobs(sizes=(30, 30, 30), d=16, spread=0.02, seed=0):
    """Tight blobs around orthogonal directions (blob j around axis j)."""
    rng = np.random.default_rng(seed)
    parts = [np.eye(d)[j] + spread * rng.normal(size=(n, d)) for j, n in enumerate(sizes)]
    return unit(np.vstack(parts)), np.repeat(np.arange(len(sizes)), sizes)


def nearest_brute(x, centres):
    return np.argmax(x.astype(np.float64) @ centres.T.astype(np.float64), axis=1)


def test_fit_finds_well_separated_blobs():
    x, blob = blobs()
    index = RegionIndex.fit(x, seed=0, n_regions=3)
    assert len(index) == 3
    region = nearest_brute(x, index.centres)
    # The same partition as the blobs: one region per blob.
    assert len(set(zip(region.tolist(), blob.tolist(), strict=True))) == 3
    # Each centre is its members' normalised mean, a unit vector.
    for r in range(3):
        mean = x[region == r].astype(np.float64).sum(axis=0)
        assert np.allclose(index.centres[r], mean / np.linalg.norm(mean), atol=1e-5)
    assert np.allclose(np.linalg.norm(index.centres, axis=1), 1.0, atol=1e-5)


def test_join_distance_is_the_quantile_of_distances_to_the_own_centre():
    x = clustered_embeddings(200, 16, seed=2)
    index = RegionIndex.fit(x, seed=0, n_regions=14)
    distance = 1.0 - (x.astype(np.float64) @ index.centres.T.astype(np.float64)).max(axis=1)
    assert index.join_distance == pytest.approx(np.quantile(distance, JOIN_QUANTILE), abs=1e-6)
    # Splitting regions that hold two clusters leaves it as the k-means regions' (the
    # same k-means: 14 = round(sqrt(200)), the same seed).
    split = RegionIndex.fit(x, seed=0)
    assert len(split) > 14 and split.join_distance == index.join_distance


@pytest.mark.parametrize(("n", "k"), [(1, 1), (5, 2), (90, 9), (200, 14), (400, 20)])
def test_about_sqrt_n_regions_in_one_broad_cluster(n, k):
    x = unit(np.random.default_rng(2).normal(size=(n, 16)))
    assert len(RegionIndex.fit(x, seed=0)) == k  # round(sqrt(n)): no region is split


def test_a_region_holding_two_clusters_is_split():
    """Twelve clusters far apart and ten k-means regions: some region holds two
    clusters; split, every cluster has regions of its own."""
    x, blob = blobs(sizes=(9,) * 12, d=32, spread=0.05, seed=5)
    merged = nearest_brute(x, RegionIndex.fit(x, seed=0, n_regions=10).centres)
    assert any(len(np.unique(blob[merged == r])) > 1 for r in np.unique(merged))
    region = nearest_brute(x, RegionIndex.fit(x, seed=0).centres)
    assert all(len(np.unique(blob[region == r])) == 1 for r in np.unique(region))


def test_split_mixed_parts_clusters_of_min_half_and_keeps_one_broad_cluster():
    """One region around each data set: two clusters far apart are two regions when the
    smaller has MIN_HALF members, one below; one broad cluster keeps its centre."""
    for small, parts in ((MIN_HALF, 2), (MIN_HALF - 1, 1)):
        x, blob = blobs(sizes=(40, small), d=32, spread=0.05, seed=6)
        centres = _split_mixed(x, unit(x.sum(axis=0)[None, :]), np.zeros(len(x), int))
        assert len(centres) == parts
        if parts == 2:
            region = nearest_brute(x, centres)
            assert all(len(np.unique(region[blob == b])) == 1 for b in (0, 1))
            assert region[blob == 0][0] != region[blob == 1][0]
    broad = unit(np.random.default_rng(7).normal(size=(300, 16)))
    centre = unit(broad.sum(axis=0)[None, :])
    assert np.array_equal(_split_mixed(broad, centre, np.zeros(300, int)), centre)


def test_no_more_regions_than_rows():
    x = clustered_embeddings(4, 16, seed=2)
    assert len(RegionIndex.fit(x, seed=0, n_regions=10)) == 4


def test_fit_is_deterministic_for_a_seed_and_fits_only_the_rows_given():
    x = clustered_embeddings(300, 16, seed=4)
    a = RegionIndex.fit(x, seed=11)
    b = RegionIndex.fit(x, seed=11)
    assert np.array_equal(a.centres, b.centres) and a.join_distance == b.join_distance
    c = RegionIndex.fit(x, seed=12)
    assert not np.array_equal(a.centres, c.centres)
    rows = np.arange(0, 300, 3)
    on_rows = RegionIndex.fit(x, seed=11, rows=rows)
    gathered = RegionIndex.fit(x[rows], seed=11)
    assert np.array_equal(on_rows.centres, gathered.centres)


def test_fit_refuses_no_rows():
    with pytest.raises(ValueError, match="at least one sample"):
        RegionIndex.fit(clustered_embeddings(5, 16), seed=0, rows=np.empty(0, np.int64))


def test_identical_rows_make_the_smallest_join_distance():
    x = np.tile(unit(np.array([[1.0, 2.0, 3.0]])), (5, 1))
    index = RegionIndex.fit(x, seed=0)
    assert index.join_distance == 1e-6
    far = unit(np.array([[1.0, 2.0, 3.1]]))
    grown, region = index.assign(np.vstack([x[:1], far]))
    assert region[0] < len(index) and region[1] == len(index)


def test_assign_joins_the_nearest_region_or_opens_new_ones_in_input_order():
    x, _ = blobs()
    index = RegionIndex.fit(x, seed=0, n_regions=3)
    old_centres = index.centres.copy()
    rng = np.random.default_rng(5)
    near = unit(old_centres + 0.002 * rng.normal(size=(3, 16)))
    # Two rows around axis 5 (one new region) and one around axis 9 (another).
    new_a = unit(np.eye(16)[5] + 0.002 * rng.normal(size=(2, 16)))
    new_b = unit(np.eye(16)[9][None, :])
    rows = np.vstack([new_a[:1], near[:2], new_b, new_a[1:], near[2:]])
    grown, region = index.assign(rows)
    expected_old = nearest_brute(near, index.centres)
    assert region[[1, 2, 5]].tolist() == expected_old.tolist() == [0, 1, 2]
    # The first far row leads region 3; the second of its kind joins it; axis 9 opens 4.
    assert region[[0, 4, 3]].tolist() == [3, 3, 4]
    assert len(grown) == 5
    assert np.array_equal(grown.centres[:3], old_centres)  # earlier centres never move
    assert np.array_equal(grown.centres[3], rows[0]) and np.array_equal(grown.centres[4], rows[3])
    assert grown.join_distance == index.join_distance
    assert len(index) == 3  # the index assigned from is left as it was


def test_small_rounds_after_a_burst_open_regions_only_up_to_the_cap(monkeypatch):
    """After a first round of one burst (a tiny join distance), rounds of fewer than
    `MIN_FIT_ROWS` varied rows open a region per row by leader clustering, but no more
    than `MAX_REGIONS` in all: past it, a far row joins its nearest region, old or
    opened (brute force). They opened a region per row without end (3,600 in 60
    rounds of 60)."""
    from bubblefence_plugin.core import regions

    monkeypatch.setattr(regions, "MAX_REGIONS", 40)
    rng = np.random.default_rng(2)
    burst = unit(np.eye(16)[0] + 0.01 * rng.normal(size=(200, 16)))
    index = RegionIndex.fit(burst, seed=0)
    varied = clustered_embeddings(600, 16, seed=4)
    regions_of = []
    for part in np.array_split(varied, 30):  # 30 rounds of 20 far rows
        index, region = index.assign(part)
        regions_of.append(region)
    assert len(index) == 40
    region = np.concatenate(regions_of)
    # Once the cap is reached, every row is in the region of its nearest centre.
    first_full = np.flatnonzero(region >= 39)[0]
    late = np.arange(first_full + 1, len(varied))
    assert np.array_equal(region[late], nearest_brute(varied[late], index.centres))


def test_assign_follows_the_join_distance_row_by_row():
    x, _ = blobs()
    index = RegionIndex.fit(x, seed=0, n_regions=3)
    sims = (x.astype(np.float64) @ index.centres.T.astype(np.float64)).max(axis=1)
    far = 1.0 - sims > index.join_distance
    assert 0 < far.sum() < 5  # the 1 % of the fitted rows beyond the quantile
    grown, region = index.assign(x)
    # Rows within the join distance take their nearest region; the others open regions.
    assert region[~far].tolist() == nearest_brute(x[~far], index.centres).tolist()
    assert (region[far] >= 3).all()
    assert len(grown) == 3 + len(np.unique(region[far]))
    # Within the join distance a row gets the same region alone as within a batch.
    near, _ = index.assign(x[~far])
    assert len(near) == 3
    for i in np.flatnonzero(~far)[[0, 31, -1]]:
        assert index.assign(x[i : i + 1])[1].tolist() == [region[i]]


def test_assign_rows_of_a_larger_array_in_steps_equals_assigning_their_copy(monkeypatch):
    """`assign(embeddings, rows)` reads the rows a step at a time (no copy of a round's
    rows) and gives what assigning the gathered rows gives, new regions included."""
    import bubblefence_plugin.core.regions as regions

    x, _ = blobs()
    index = RegionIndex.fit(x, seed=0, n_regions=3)
    rows = np.random.default_rng(1).permutation(len(x))[: len(x) // 2 + 7]
    monkeypatch.setattr(regions, "ROW_STEP", 13)
    grown, region = index.assign(x, rows)
    whole, expected = index.assign(x[rows])
    assert region.tolist() == expected.tolist() and np.array_equal(grown.centres, whole.centres)
    assert len(grown) > 3  # far rows opened regions in both


def test_many_rows_far_from_every_region_get_regions_fitted_on_them():
    """A fit on one tight blob (a first round that is one burst) has a tiny join
    distance; a later batch of broad rows lies beyond it. From `MIN_FIT_ROWS` such rows
    on, they get regions fitted on them as a first round's are, about sqrt(n) of them,
    not one per row (the leader loop opened 40,000 regions for 50,000 rows)."""
    rng = np.random.default_rng(3)
    burst = unit(np.eye(16)[10] + 0.001 * rng.normal(size=(300, 16)))
    index = RegionIndex.fit(burst, seed=0)
    broad, _ = blobs(sizes=(400, 400, 400), spread=0.3, seed=4)
    assert (1.0 - (broad @ index.centres.T).max(axis=1) > index.join_distance).all()
    grown, region = index.assign(broad, seed=0)
    fitted = RegionIndex.fit(broad, seed=0)
    assert np.array_equal(grown.centres[: len(index)], index.centres)  # never move
    assert np.array_equal(grown.centres[len(index) :], fitted.centres)
    assert len(fitted) <= 2 * np.sqrt(len(broad))
    assert region.tolist() == (len(index) + nearest_brute(broad, fitted.centres)).tolist()
    assert grown.join_distance == max(index.join_distance, fitted.join_distance)
    again, region_again = index.assign(broad, seed=0)
    assert np.array_equal(again.centres, grown.centres) and np.array_equal(region_again, region)


def test_a_burst_first_then_varied_data_splits_with_a_region_per_cluster_part():
    """Through the pipeline: a first round of one tight cluster, then 3,000 rows of ten
    broad clusters; the second round's regions are fitted on those rows."""
    from bubblefence_plugin import BubbleFence, BubbleFenceConfig

    rng = np.random.default_rng(5)
    burst = unit(np.eye(32)[0] + 0.02 * rng.normal(size=(400, 32)))  # cosine ~0.987
    bf = BubbleFence(BubbleFenceConfig(seed=0))
    bf.ingest(burst)
    assert "duplicate" not in set(bf.assignments()["split"])  # a burst of distinct frames
    first = len(bf._regions)
    bf.ingest(clustered_embeddings(3000, dim=32, seed=6))
    assert 10 <= len(bf._regions) - first <= 2 * np.sqrt(3000)
    shares = bf.assignments()["split"].iloc[400:].isin(["validation", "test"]).mean()
    assert abs(shares - 0.2) < 0.05
