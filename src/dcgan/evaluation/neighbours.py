"""Nearest-neighbour search for the sample metrics (evaluation.coverage): k-NN radii, each
query's nearest database row, in memory or streamed.

Plain NumPy in float64 on feature vectors or flattened pixels, called by `evaluate`.
Every search runs in chunks of query rows and never builds the full (N, M) distance
matrix, so 10,000 samples against 50,000 training images fit in a few seconds. The copy
check's database, the whole training set, need not fit in memory either:
`nearest_in_blocks` reads it as a stream of row blocks (`DATABASE_ELEMENTS` each).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np

from dcgan.evaluation.metrics import as_rows

# Entries per distance block (256 MiB in float64): query rows per chunk = this // database rows.
# Blocks of a few hundred rows keep the GEMM efficient: 4x smaller ones ran 1.6x slower.
_CHUNK_ELEMENTS = 1 << 25
# Entries (rows x width) per streamed database block: 1,365 images at 64x64x3, 21,399 at
# 28x28, so the default mnist-5k training set (4,000) is one block. A block costs about 16
# bytes an entry while it is ranked (the float32 block, its float64 centred copy and the
# float32 GEMM operand): 256 MiB.
DATABASE_ELEMENTS = 1 << 24


class Nearest(NamedTuple):
    """Each query's nearest database row: (N,) float64 distances and (N,) int64 rows."""

    distance: np.ndarray
    row: np.ndarray


def _database_terms(
    database: np.ndarray, offsets: np.ndarray | float, dtype: type,
    centre: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre, col_term, minus2_db_t) of `ranking_blocks`, for database rows taken about
    `centre` (default: their own mean)."""
    centred = np.array(database, dtype=np.float64)  # a copy: centred and scaled in place
    if centre is None:
        centre = centred.mean(axis=0)
    centred -= centre
    col_term = np.einsum("ij,ij->i", centred, centred) + offsets
    centred *= -2.0
    return centre, col_term, centred.T.astype(dtype, copy=False)  # (D, M)


def _centred(queries: np.ndarray, centre: np.ndarray, dtype: type) -> tuple:
    """(row_sq, queries - centre as dtype), converted a chunk of rows at a time."""
    row_sq, out = np.empty(len(queries)), np.empty(queries.shape, dtype)
    step = max(1, _CHUNK_ELEMENTS // max(1, queries.shape[1]))
    for start in range(0, len(queries), step):
        part = np.asarray(queries[start:start + step], np.float64) - centre
        row_sq[start:start + step] = np.einsum("ij,ij->i", part, part)
        out[start:start + step] = part
    return row_sq, out


def _chunks(row_sq: np.ndarray, queries: np.ndarray, minus2_db_t: np.ndarray,
            col_term: np.ndarray) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    step = max(1, _CHUNK_ELEMENTS // minus2_db_t.shape[1])
    for start in range(0, len(queries), step):
        rows = slice(start, min(start + step, len(queries)))
        block = queries[rows] @ minus2_db_t  # (chunk, M)
        block += col_term
        yield rows, row_sq[rows], block


def ranking_blocks(
    queries: np.ndarray, database: np.ndarray, offsets: np.ndarray | float = 0.0,
    dtype: type = np.float64,
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """Yield (rows, row_sq, block) over chunks of query rows, ~_CHUNK_ELEMENTS per block.

    With a_i, b_j the query and database rows less the database mean, row_sq[i] = |a_i|^2
    and block[i, j] = |b_j|^2 - 2 a_i.b_j + offsets[j] (one GEMM per chunk): the squared
    distance less row_sq[i], a per-row constant that callers who only rank never add.
    `dtype` is the GEMM's: float32 halves its time, for callers that only need a near
    neighbour when the nearest is a near-tie (see `nn_distances`).
    """
    # Distances ignore translation; centring shrinks the norms whose cancellation costs accuracy.
    centre, col_term, minus2_db_t = _database_terms(database, offsets, dtype)
    yield from _chunks(*_centred(queries, centre, dtype), minus2_db_t, col_term)


def _row_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Direct differences, not the GEMM trick, whose cancellation would leave exact copies
    # at ~1e-7 instead of 0: the blocks only pick the neighbour.
    return np.linalg.norm(a - b, axis=1)


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Euclidean distance from each row of an (N, D) array to its k-th nearest other row.

    Returns:
        (N,) float64 distances; k = 1 is the nearest, the row itself never counts.

    Raises:
        ValueError: if `features` is not 2-D or not 1 <= k < N.
    """
    (features,) = as_rows(features=features)
    n = len(features)
    if not 1 <= k < n:
        raise ValueError(f"need 1 <= k < N = {n}, got k = {k}")
    neighbour = np.empty(n, dtype=np.intp)
    for rows, _, block in ranking_blocks(features, features):
        own = np.arange(rows.start, rows.stop)
        block[own - rows.start, own] = np.inf
        # k - 1 argmin passes beat argpartition ~30x at the usual k = 3 (cost grows with k).
        for _ in range(k - 1):
            block[own - rows.start, block.argmin(axis=1)] = np.inf
        neighbour[rows] = block.argmin(axis=1)
    return _row_distances(features, features[neighbour])


def nn_distances(
    queries: np.ndarray, database: np.ndarray, exclude: np.ndarray | None = None,
    fast: bool = False,
) -> np.ndarray:
    """Euclidean distance from each query row to its nearest database row.

    `nearest_in_blocks` with the database as one block.

    Args:
        queries, database: (N, D) and (M, D) arrays.
        exclude: optional (N,) integers: database row exclude[i] is skipped for query i
            (-1: none). Leave-one-out, for queries drawn from the database.
        fast: rank candidates with a float32 GEMM (about 2x faster on wide rows such as
            pixels). The returned distance is still exact for the neighbour found, which
            may be a near-tie of the true nearest (relative gap ~1e-6 of |row|^2): fine
            for medians, not for exact-copy decisions far from the data's mean.

    Returns:
        (N,) float64 distances.

    Raises:
        ValueError: if the arrays are not 2-D, the widths differ, or `exclude` is not
            (N,) integers in [-1, M) or leaves a query no database row.
    """
    queries, database = as_rows(queries=queries, database=database)
    return nearest_in_blocks([queries], [(0, database)], [exclude], fast)[0].distance


def _skip(exclude: np.ndarray | None, n: int) -> np.ndarray:
    """`exclude` checked: (n,) integers >= -1; all -1 when None."""
    skip = np.full(n, -1) if exclude is None else np.asarray(exclude)
    if skip.shape != (n,) or not np.issubdtype(skip.dtype, np.integer):
        raise ValueError(f"exclude: need ({n},) integers, got {skip.dtype} {skip.shape}")
    if n and skip.min() < -1:
        raise ValueError(f"exclude: need indices >= -1, got {skip}")
    return skip


def nearest_in_blocks(
    query_sets: Sequence[np.ndarray], blocks: Iterable[tuple[int, np.ndarray]],
    excludes: Sequence[np.ndarray | None] | None = None, fast: bool = False,
) -> list[Nearest]:
    """Each query's nearest row in a database read once, as a stream of row blocks.

    For a database larger than memory (the training set on disk), and for several query
    sets at once, so the database is read once for all. Each block is ranked as in
    `nn_distances`, with one centre for all (the first block's mean): the best squared
    distance so far, row_sq + the block's minimum, is then comparable across blocks (an
    earlier block keeps a tie). When a query's best improves, its distance to the new
    row is computed exactly, by direct differences. With one block this is exactly
    `nn_distances`, chunk for chunk, since each query set is chunked on its own.

    Args:
        query_sets: (N_k, D) arrays, any float dtype (converted a chunk at a time).
        blocks: (start, rows) pairs: database rows start .. start + len(rows) - 1, as
            (M_b, D) arrays (or (M_b, ...) images, flattened), each block once.
        excludes: per query set, None or (N_k,) global database rows to skip (-1: none).
        fast: rank with a float32 GEMM, as in `nn_distances`.

    Returns:
        One `Nearest` per query set: exact distances and global rows.

    Raises:
        ValueError: if a query set is not a 2-D array with rows, widths differ, or an
            `exclude` is not (N_k,) integers in [-1, M) or leaves a query no row (also
            the error for NaN rows, which are nobody's nearest).
    """
    sets = [np.asarray(q) for q in query_sets]
    if bad := [q.shape for q in sets if q.ndim != 2 or not len(q)]:
        raise ValueError(f"queries: need (N >= 1, D) arrays, got {bad}")
    skips = [_skip(e, len(q)) for q, e in zip(sets, excludes or [None] * len(sets), strict=True)]
    dtype = np.float32 if fast else np.float64
    best = [(np.full(len(q), np.inf), np.empty(len(q)), np.full(len(q), -1, np.int64))
            for q in sets]
    centre, centred, total = None, None, 0
    for start, block in blocks:
        block = np.asarray(block).reshape(len(block), -1)  # (M_b, D)
        if any(q.shape[1] != block.shape[1] for q in sets):
            raise ValueError(f"widths differ: queries {[q.shape[1] for q in sets]}, "
                             f"database {block.shape[1]}")
        centre, col_term, minus2_db_t = _database_terms(block, 0.0, dtype, centre)
        if centred is None:  # centred once: the centre is the first block's
            centred = [_centred(q, centre, dtype) for q in sets]
        for q, (row_sq, q_centred), skip, found in zip(sets, centred, skips, best, strict=True):
            for rows, sq, dist in _chunks(row_sq, q_centred, minus2_db_t, col_term):
                _improve(found, q, block, start, rows, sq, dist, skip[rows] - start)
        total = max(total, start + len(block))
    return _found(skips, best, total)


def _found(skips: list[np.ndarray], best: list[tuple], total: int) -> list[Nearest]:
    """`nearest_in_blocks`' results, once every one of the `total` rows has been read."""
    results = []
    for skip, (_, distance, row) in zip(skips, best, strict=True):
        if skip.max() >= total or (row < 0).any():  # (row -1: no finite distance, NaN)
            raise ValueError(f"exclude: need indices in [-1, {total}) that leave each query "
                             f"a row, got {skip}")
        results.append(Nearest(distance, row))
    return results


def _improve(found: tuple, queries: np.ndarray, block: np.ndarray, start: int, rows: slice,
             row_sq: np.ndarray, dist: np.ndarray, local_skip: np.ndarray) -> None:
    """Update (best_sq, distance, row) of the query rows `rows` from one ranked chunk."""
    hit = np.flatnonzero((local_skip >= 0) & (local_skip < len(block)))
    dist[hit, local_skip[hit]] = np.inf
    nearest = dist.argmin(axis=1)
    candidate = row_sq + dist[np.arange(len(nearest)), nearest]
    best_sq, distance, row = found
    better = np.flatnonzero(candidate < best_sq[rows])
    if len(better):
        at = better + rows.start
        best_sq[at], row[at] = candidate[better], start + nearest[better]
        distance[at] = _row_distances(np.asarray(queries[at], np.float64),
                                      np.asarray(block[nearest[better]], np.float64))
