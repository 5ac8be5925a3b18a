"""Unit tests of dcgan.evaluation.metrics and dcgan.evaluation.neighbours: the metric maths against
closed forms
and independent code.

Run with `pytest tests/test_metrics.py`. The Fréchet distance is checked against
closed forms and an independent `scipy.linalg.sqrtm`; KID against a pair-by-pair
loop; the nearest-neighbour functions against `scipy.spatial.distance.cdist`, with
chunks shrunk so that chunk boundaries fall mid-array, and the streamed search over
database blocks against the one-block search; the classifier score and
mode coverage against hand-made predictions with known answers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.linalg import sqrtm
from scipy.spatial.distance import cdist

from dcgan.evaluation import neighbours
from dcgan.evaluation.coverage import copy_ratio, memorisation_ratio, precision_recall
from dcgan.evaluation.metrics import (
    classifier_score,
    frechet_distance,
    frechet_distance_of,
    gaussian_stats,
    kid,
    mode_coverage,
)
from dcgan.evaluation.neighbours import knn_radii, nearest_in_blocks, nn_distances


def _random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    """A well-conditioned, non-diagonal symmetric positive-definite matrix."""
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def test_gaussian_stats_float64_and_matches_numpy():
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    mu, sigma = gaussian_stats(x)
    assert mu.dtype == sigma.dtype == np.float64
    assert mu.shape == (3,) and sigma.shape == (3, 3)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False))
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_stats(x[:1])


def test_set_with_itself_is_zero():
    x = np.random.default_rng(1).normal(size=(500, 16))
    assert frechet_distance_of(x, x) == pytest.approx(0.0, abs=1e-9)


def test_diagonal_gaussians_match_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.1, 3.0, size=5), rng.uniform(0.1, 3.0, size=5)
    # Commuting covariances: Tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(a) - sqrt(b))^2.
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)


def test_non_diagonal_matches_scipy_sqrtm():
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = _random_spd(rng, 6), _random_spd(rng, 6)
    assert not np.allclose(s1 @ s2, s2 @ s1)  # the case the symmetric route is for
    covmean = sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_large_samples_approach_closed_form():
    rng = np.random.default_rng(4)
    mu1, mu2 = np.zeros(4), np.array([1.0, -0.5, 0.0, 2.0])
    s1, s2 = _random_spd(rng, 4), _random_spd(rng, 4)
    exact = frechet_distance(mu1, s1, mu2, s2)
    x1 = rng.multivariate_normal(mu1, s1, size=200_000)
    x2 = rng.multivariate_normal(mu2, s2, size=200_000)
    assert frechet_distance_of(x1, x2) == pytest.approx(exact, rel=0.02)


def test_translation_adds_squared_norm():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 8))
    v = rng.normal(size=8)
    assert frechet_distance_of(x, x + v) == pytest.approx(v @ v, rel=1e-8)


def test_symmetric():
    rng = np.random.default_rng(6)
    x1, x2 = rng.normal(size=(200, 10)), 2.0 * rng.normal(size=(200, 10)) + 0.3
    d12, d21 = frechet_distance_of(x1, x2), frechet_distance_of(x2, x1)
    assert d12 > 1.0
    assert d12 == pytest.approx(d21, rel=1e-9)


def test_singular_covariance_is_finite_and_non_negative():
    # N < D makes both covariances singular: tiny negative eigenvalues must not leak.
    rng = np.random.default_rng(7)
    x1, x2 = rng.normal(size=(5, 32)), rng.normal(size=(5, 32))
    for a, b in [(x1, x1), (x1, x2), (x2, x1)]:
        d = frechet_distance_of(a, b)
        assert np.isfinite(d) and d >= 0.0
    assert frechet_distance_of(x1, x1) == pytest.approx(0.0, abs=1e-9)


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="shapes do not agree"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# --- KID -----------------------------------------------------------------------------


def _mmd2_by_loops(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with kernel (a.b / d + 1)^3, pair by pair, as in Binkowski et al. 2018."""
    d = x.shape[1]

    def k(a, b):
        return (sum(float(ai) * float(bi) for ai, bi in zip(a, b, strict=True)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2.0 * xy


def test_kid_matches_pairwise_loops():
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(7, 3)), rng.normal(loc=0.5, size=(7, 3))
    # One subset of all rows is a permutation of each set, and MMD^2 ignores order.
    mean, std = kid(x, y, subsets=1, subset_size=7)
    assert mean == pytest.approx(_mmd2_by_loops(x, y), rel=1e-12)
    assert std == 0.0


def test_kid_subsets_are_seeded_draws_capped_at_the_smaller_set():
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(9, 4)), rng.normal(size=(5, 4)) + 0.3
    draws = np.random.default_rng(42)  # the documented draws: x's rows, then y's, per subset
    expected = [
        _mmd2_by_loops(x[draws.choice(9, 5, replace=False)], y[draws.choice(5, 5, replace=False)])
        for _ in range(3)
    ]
    mean, std = kid(x, y, subsets=3, subset_size=1000, seed=42)
    assert mean == pytest.approx(np.mean(expected), rel=1e-12)
    assert std == pytest.approx(np.std(expected), rel=1e-10)  # population std, ddof=0
    assert std > 0.0


def test_kid_near_zero_for_one_distribution_and_positive_after_shift():
    rng = np.random.default_rng(12)
    x, y = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same_mean, same_std = kid(x, y, subsets=20, subset_size=200)
    # Unbiased: under the null the mean sits within the subset spread of 0.
    assert abs(same_mean) < 3 * same_std
    shift_mean, shift_std = kid(x, y + 0.5, subsets=20, subset_size=200)
    assert shift_mean > 0.05 and shift_mean > 10 * max(shift_std, abs(same_mean))


def test_kid_is_seeded_and_not_clipped():
    rng = np.random.default_rng(13)
    x, y = rng.normal(size=(60, 4)), rng.normal(size=(60, 4))
    assert kid(x, y, 5, 20, seed=3) == kid(x, y, 5, 20, seed=3)
    assert kid(x, y, 5, 20, seed=3) != kid(x, y, 5, 20, seed=4)
    # Same distribution: an unbiased estimate dips below 0 for some subsets.
    assert min(kid(x, y, 1, 20, seed=s)[0] for s in range(10)) < 0.0


def test_kid_rejects_bad_shapes():
    x = np.zeros((10, 4))
    with pytest.raises(ValueError, match="widths differ"):
        kid(x, np.zeros((10, 5)))
    with pytest.raises(ValueError, match="N >= 2"):
        kid(x, np.zeros((1, 4)))
    with pytest.raises(ValueError, match="N >= 2"):
        kid(x, np.zeros(4))


# --- nearest neighbours ---------------------------------------------------------------


@pytest.fixture(params=[1, 23, None], ids=["1-row-chunks", "odd-chunks", "default-chunks"])
def chunk_elements(request, monkeypatch):
    """Shrink the distance blocks so chunk boundaries fall inside every test array."""
    if request.param is not None:
        monkeypatch.setattr(neighbours, "_CHUNK_ELEMENTS", request.param * 41)
    return request.param


def _brute_knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, k - 1]


@pytest.mark.parametrize("k", [1, 2, 5])
def test_knn_radii_match_cdist(chunk_elements, k):
    # 41 rows: with 23 rows a chunk, the last chunk is partial.
    x = np.random.default_rng(20).normal(size=(41, 5))
    np.testing.assert_allclose(knn_radii(x, k), _brute_knn_radii(x, k), rtol=1e-12)


def test_knn_radii_excludes_only_the_row_itself():
    # Duplicates are other rows: their distance 0 counts, the row's own does not.
    x = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    np.testing.assert_array_equal(knn_radii(x, 1), [0.0, 0.0, 5.0])
    np.testing.assert_array_equal(knn_radii(x, 2), [5.0, 5.0, 5.0])
    with pytest.raises(ValueError, match="k < N"):
        knn_radii(x, 3)


def test_nn_distances_match_cdist(chunk_elements):
    rng = np.random.default_rng(21)
    queries, database = rng.normal(size=(50, 6)), rng.normal(size=(41, 6))
    expected = cdist(queries, database).min(axis=1)
    np.testing.assert_allclose(nn_distances(queries, database), expected, rtol=1e-12)


def test_nn_distances_leave_one_out(chunk_elements):
    rng = np.random.default_rng(22)
    database = rng.normal(size=(41, 3))
    picks = np.array([3, 7, 7, 0, 40, 12])
    exclude = np.array([3, 7, -1, 0, 40, 5])
    d = cdist(database[picks], database)
    d[np.arange(len(picks))[exclude >= 0], exclude[exclude >= 0]] = np.inf
    got = nn_distances(database[picks], database, exclude)
    np.testing.assert_allclose(got, d.min(axis=1), rtol=1e-12)
    # Copies are exactly 0 without their exclusion, and > 0 with it.
    assert got[2] == 0.0 and got[5] == 0.0
    assert np.all(got[[0, 1, 3, 4]] > 0.0)


def test_nn_distances_exact_for_near_copies_far_from_the_origin():
    # |a|^2 + |b|^2 - 2ab would be off by ~1e-5 here; the distances are recomputed directly.
    rng = np.random.default_rng(23)
    database = rng.normal(size=(30, 8)) + 1e3
    assert np.all(nn_distances(database[::3], database) == 0.0)
    near = database[::3] + 1e-7 * rng.normal(size=(10, 8))
    expected = cdist(near, database).min(axis=1)
    assert np.all(expected < 1e-6)
    np.testing.assert_allclose(nn_distances(near, database), expected, rtol=1e-6)


def test_nn_distances_rejects_bad_exclude():
    queries, database = np.zeros((3, 2)), np.ones((4, 2))
    for bad in ([0, 1], [0, 1, 4], [0, -2, 1], [0.0, 1.0, 2.0]):
        with pytest.raises(ValueError, match="exclude"):
            nn_distances(queries, database, np.array(bad))
    with pytest.raises(ValueError, match="exclude"):
        nn_distances(queries, database[:1], np.array([0, -1, -1]))
    with pytest.raises(ValueError, match="widths differ"):
        nn_distances(queries, np.ones((4, 3)))


# --- precision and recall -------------------------------------------------------------


def _brute_precision_recall(real, fake, k):
    precision = np.mean(np.any(cdist(fake, real) <= _brute_knn_radii(real, k), axis=1))
    recall = np.mean(np.any(cdist(real, fake) <= _brute_knn_radii(fake, k), axis=1))
    return precision, recall


def test_precision_recall_match_cdist(chunk_elements):
    rng = np.random.default_rng(30)
    real, fake = rng.normal(size=(41, 4)), 0.6 * rng.normal(size=(37, 4)) + 0.8
    got = precision_recall(real, fake, k=3)
    expected = _brute_precision_recall(real, fake, 3)
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0.0 < got[0] < 1.0 and 0.0 < got[1] < 1.0  # a case with both answers possible


def test_precision_recall_identical_and_disjoint_sets():
    x = np.random.default_rng(31).normal(size=(60, 5))
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)


def test_ball_boundary_counts_as_inside():
    real = np.arange(5.0)[:, None]  # 0..4 on a line: every 1-NN radius is exactly 1
    fake = np.array([[5.0], [6.0]])  # 5 lies on the ball around 4, 6 outside every ball
    assert precision_recall(real, fake, k=1)[0] == 0.5


def test_fake_in_a_corner_of_real_has_high_precision_low_recall():
    rng = np.random.default_rng(32)
    real = rng.uniform(0.0, 1.0, size=(400, 2))
    fake = rng.uniform(0.0, 0.2, size=(400, 2))  # 4% of the real support
    precision, recall = precision_recall(real, fake)
    assert precision > 0.95
    assert recall < 0.1


def test_precision_recall_need_k_below_both_sizes():
    x = np.zeros((5, 2))
    with pytest.raises(ValueError, match="k < N"):
        precision_recall(x, np.ones((3, 2)), k=3)


# --- classifier score and mode coverage -----------------------------------------------


def test_classifier_score_bounds():
    k = 5
    confident_balanced = np.eye(k)[np.arange(50) % k]  # each split of 5 holds every class
    assert classifier_score(confident_balanced) == pytest.approx((k, 0.0), abs=1e-12)
    same_for_all = np.tile([0.1, 0.6, 0.3], (40, 1))
    assert classifier_score(same_for_all) == pytest.approx((1.0, 0.0), abs=1e-12)


def test_classifier_score_matches_hand_computed_kl():
    probs = np.array([[0.5, 0.5], [1.0, 0.0]])  # the 0 must count as 0 log 0 = 0
    marginal = np.array([0.75, 0.25])
    kl = [0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25), math.log(1.0 / 0.75)]
    score, std = classifier_score(probs, splits=1)
    assert score == pytest.approx(math.exp(np.mean(kl)), rel=1e-12)
    assert marginal.sum() == 1.0 and std == 0.0


def test_classifier_score_splits():
    e0, e1 = [1.0, 0.0], [0.0, 1.0]
    halves = np.array([e0, e0, e1, e1])
    # One split sees two classes; two consecutive splits each see one.
    assert classifier_score(halves, splits=1) == pytest.approx((2.0, 0.0))
    assert classifier_score(halves, splits=2) == pytest.approx((1.0, 0.0))
    mixed = np.array([e0, e1, e0, e0])
    assert classifier_score(mixed, splits=2) == pytest.approx((1.5, 0.5))  # scores 2 and 1
    # More splits than rows: one row per split, each scoring 1.
    assert classifier_score(mixed, splits=10) == pytest.approx((1.0, 0.0))
    with pytest.raises(ValueError, match="probs"):
        classifier_score(np.array([0.5, 0.5]))


def _one_hot(classes: list[int], k: int = 4) -> np.ndarray:
    # Soft rows with the same argmax, so only the argmax may count.
    return 0.7 * np.eye(k)[classes] + 0.3 / k


def test_mode_coverage_collapse_and_full_coverage():
    real = _one_hot([0, 1, 2, 3] * 3)
    assert mode_coverage(_one_hot([2] * 6), real, 0.5) == (1, pytest.approx(math.log(4)))
    covered, kl = mode_coverage(_one_hot([3, 2, 1, 0] * 2), real, 0.5)
    assert covered == 4 and kl == pytest.approx(0.0, abs=1e-12)


def test_mode_coverage_threshold_is_inclusive():
    real = _one_hot([0, 1, 2, 3] * 2)  # r = 1/4 each
    samples = _one_hot([0, 1, 1, 1, 2, 2, 3, 3])  # s = 1/8, 3/8, 1/4, 1/4
    assert mode_coverage(samples, real, 0.5)[0] == 4  # 1/8 == 0.5 * 1/4 counts
    assert mode_coverage(samples, real, 0.51)[0] == 3


def test_mode_coverage_class_real_images_never_get():
    real = _one_hot([0, 1, 2] * 2)  # r_3 = 0
    samples = _one_hot([0, 1, 2, 3])  # s = 1/4 each
    covered, kl = mode_coverage(samples, real, 0.1)
    assert covered == 3
    expected = 3 * 0.25 * math.log(0.25 / (1 / 3)) + 0.25 * math.log(0.25 / 1e-12)
    assert kl == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="widths differ"):
        mode_coverage(samples, real[:, :3], 0.1)


def _blocks(database: np.ndarray, size: int) -> list[tuple[int, np.ndarray]]:
    return [(start, database[start:start + size]) for start in range(0, len(database), size)]


@pytest.mark.parametrize("fast", [False, True], ids=["float64", "float32"])
@pytest.mark.parametrize("size", [1, 7, 40, 41])
def test_streamed_search_matches_one_block(chunk_elements, size, fast):
    rng = np.random.default_rng(24)
    database = rng.uniform(-1, 1, size=(41, 12)).astype(np.float32)
    queries = [np.r_[database[[3, 7, 40]], rng.uniform(-1, 1, size=(9, 12))].astype(np.float32),
               rng.normal(size=(5, 12))]
    excludes = [np.array([3, 7, -1, 0, 40, -1, -1, -1, -1, -1, -1, 12]), None]
    one = nearest_in_blocks(queries, [(0, database)], excludes, fast)
    streamed = nearest_in_blocks(queries, _blocks(database, size), excludes, fast)
    for got, want, q, skip in zip(streamed, one, queries, [excludes[0], np.full(5, -1)],
                                  strict=True):
        np.testing.assert_array_equal(got.row, want.row)
        np.testing.assert_array_equal(got.distance, want.distance)
        # The exact nearest by brute force, the excluded row skipped by its global index.
        d = cdist(q.astype(np.float64), database.astype(np.float64))
        d[np.flatnonzero(skip >= 0), skip[skip >= 0]] = np.inf
        np.testing.assert_array_equal(got.row, d.argmin(axis=1))
        np.testing.assert_allclose(got.distance, d.min(axis=1), rtol=1e-12)
    assert streamed[0].distance[2] == 0.0 and (streamed[0].distance[[0, 1, 4]] > 0).all()


def test_one_block_search_is_nn_distances():
    rng = np.random.default_rng(25)
    database, queries = rng.uniform(-1, 1, (60, 784)), rng.uniform(-1, 1, (30, 784))
    exclude = rng.integers(-1, 60, 30)
    for fast in (False, True):
        found = nearest_in_blocks([queries], [(0, database)], [exclude], fast)[0]
        np.testing.assert_array_equal(found.distance, nn_distances(queries, database, exclude,
                                                                   fast))


def test_streamed_search_rejects_bad_input():
    database = np.ones((4, 2))
    with pytest.raises(ValueError, match="exclude"):  # past the last row streamed
        nearest_in_blocks([np.zeros((2, 2))], _blocks(database, 3), [np.array([0, 4])])
    with pytest.raises(ValueError, match="exclude"):  # a one-row database, excluded
        nearest_in_blocks([np.zeros((1, 2))], _blocks(database[:1], 1), [np.array([0])])
    with pytest.raises(ValueError, match="widths differ"):
        nearest_in_blocks([np.zeros((2, 3))], _blocks(database, 3))
    with pytest.raises(ValueError, match="queries"):
        nearest_in_blocks([np.zeros((0, 2))], _blocks(database, 3))


# --- memorisation ---------------------------------------------------------------------


def test_memorisation_ratio_copies_and_fresh_samples():
    rng = np.random.default_rng(40)
    train, test = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    copies = train[:100]
    assert memorisation_ratio(copies, train, test) == 0.0
    # Leave-one-out: a training image is then as far from the rest as a fresh one.
    loo = memorisation_ratio(copies, train, test, exclude=np.arange(100))
    assert 0.8 < loo < 1.25
    fresh = memorisation_ratio(rng.normal(size=(400, 8)), train, test)
    assert 0.85 < fresh < 1.15
    near_copies = copies + 0.01 * rng.normal(size=copies.shape)
    assert memorisation_ratio(near_copies, train, test) < 0.05
    # The median: a minority of far-off samples does not hide a majority of copies.
    assert memorisation_ratio(np.r_[copies[:3], copies[3:5] + 100.0], train, test) == 0.0


def test_memorisation_ratio_rejects_test_that_copies_train():
    train = np.random.default_rng(41).normal(size=(20, 3))
    with pytest.raises(ValueError, match="median"):
        memorisation_ratio(train, train, train[:10])


def test_fast_nn_search_matches_exact_on_pixel_like_rows():
    # float32 ranking on wide rows in [-1, 1] (pixels): the neighbours found are the exact
    # ones up to near-ties, and the distances returned are exact for them.
    rng = np.random.default_rng(11)
    database = rng.uniform(-1, 1, size=(300, 784))
    queries = np.concatenate([database[:20], rng.uniform(-1, 1, size=(50, 784))])
    exact, fast = nn_distances(queries, database), nn_distances(queries, database, fast=True)
    np.testing.assert_allclose(fast, exact, rtol=1e-6)
    assert (fast[:20] == 0).all()  # copies are still found as copies


def test_copy_ratio_is_the_ratio_of_medians():
    assert copy_ratio(np.array([1.0, 2.0, 9.0]), np.array([4.0, 3.0, 5.0, 6.0])) == 2.0 / 4.5
    with pytest.raises(ValueError, match="median"):
        copy_ratio(np.ones(3), np.array([0.0, 0.0, 1.0]))


def test_memorisation_ratio_with_precomputed_test_distances():
    rng = np.random.default_rng(12)
    train, test, samples = (rng.normal(size=(n, 5)) for n in (200, 60, 40))
    shared = nn_distances(test, train)
    assert memorisation_ratio(samples, train, None, test_distances=shared) == pytest.approx(
        memorisation_ratio(samples, train, test))
