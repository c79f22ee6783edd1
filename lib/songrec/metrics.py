"""Array -> number functions behind the evaluation: exact blocked search, recall and relevance.

Everything here works on numpy arrays of catalogue *positions* (row numbers of the catalogue),
with ``-1`` for an empty neighbour slot, so that it is testable without Spark.
"""

import numpy as np

MISSING = -1


def exact_topk(
    queries: np.ndarray,
    query_pos: np.ndarray,
    base: np.ndarray,
    k: int,
    block_rows: int = 32768,
    metric: str = "ip",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of each query row over ``base``, the query's own row excluded.

    The catalogue is scanned in blocks of ``block_rows`` so that memory stays at
    ``len(queries) x block_rows`` scores. Ties are broken by catalogue position ascending.

    Args:
        queries: ``[Q, d]`` query vectors.
        query_pos: ``[Q]`` row of each query in ``base`` (excluded from its own result), or -1.
        base: ``[N, d]`` catalogue vectors.
        k: neighbours per query (at most N - 1).
        block_rows: catalogue rows per block.
        metric: ``"ip"`` (inner product; cosine on unit vectors) or ``"l2"`` (Euclidean).

    Returns:
        ``(positions int64 [Q, k], scores float32 [Q, k])``; for ``l2`` the score is the negative
        squared distance (larger is closer).
    """
    if metric not in {"ip", "l2"}:
        raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")
    queries = np.asarray(queries, np.float32)
    if metric == "l2":
        # -|q - b|^2 = (2q . b - |b|^2) - |q|^2: one inner product of [2q, -1] with [b, |b|^2] ranks the
        # catalogue the same, without three more passes over every block of scores (12 features: 0.52x
        # the time of computing the distances from the product, the same lists; docs/design.md).
        base = np.asarray(base, np.float32)
        augmented_q = np.hstack([2 * queries, -np.ones((len(queries), 1), np.float32)])
        augmented_b = np.hstack([base, (base * base).sum(1, keepdims=True)])
        pos, score = exact_topk(augmented_q, query_pos, augmented_b, k, block_rows)
        return pos, score - (queries * queries).sum(1, keepdims=True)
    n_q = len(queries)
    best_pos = np.full((n_q, 0), MISSING, np.int64)
    best_score = np.full((n_q, 0), -np.inf, np.float32)
    lo = 0
    while lo < len(base):
        # A small first block fills the lists cheaply; later blocks only merge what beats them.
        size = block_rows if best_score.shape[1] == k else min(block_rows, max(8 * k, 1024))
        block = np.asarray(base[lo : lo + size], np.float32)
        lo += len(block)
        scores = queries @ block.T
        start = lo - len(block)
        own = query_pos - start
        rows = np.flatnonzero((own >= 0) & (own < len(block)))
        scores[rows, own[rows]] = -np.inf
        if best_score.shape[1] == k and np.isfinite(best_score[:, -1]).all():
            best_pos, best_score = _merge_above(best_pos, best_score, scores, start, k)
            continue
        take = min(k, len(block))
        part = np.argpartition(-scores, take - 1, axis=1)[:, :take] if take < len(block) else np.tile(
            np.arange(len(block)), (n_q, 1)
        )  # fmt: skip
        cand_pos = np.hstack([best_pos, part + start])
        cand_score = np.hstack([best_score, np.take_along_axis(scores, part, 1)])
        order = np.lexsort((cand_pos, -cand_score), axis=1)[:, :k]
        best_pos = np.take_along_axis(cand_pos, order, 1)
        best_score = np.take_along_axis(cand_score, order, 1)
    best_pos[~np.isfinite(best_score)] = MISSING
    return best_pos, best_score.astype(np.float32)


def _merge_above(
    best_pos: np.ndarray, best_score: np.ndarray, scores: np.ndarray, lo: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge a block into full ``[Q, k]`` top lists, looking only at scores >= each row's k-th.

    Once every row holds k finite scores, a block row can only enter a list by reaching its k-th
    score, and after the first blocks very few do: selecting them with one comparison is several
    times cheaper than partitioning every row of the block. Ties keep the lower position, as above.
    """
    n_q = len(best_pos)
    hit_row, hit_col = np.nonzero(scores >= best_score[:, -1:])
    if len(hit_row) == 0:
        return best_pos, best_score
    row = np.concatenate([np.repeat(np.arange(n_q), k), hit_row])
    pos = np.concatenate([best_pos.ravel(), hit_col + lo])
    score = np.concatenate([best_score.ravel(), scores[hit_row, hit_col]])
    order = np.lexsort((pos, -score, row))
    row, pos, score = row[order], pos[order], score[order]
    first = np.searchsorted(row, np.arange(n_q))
    keep = (first[:, None] + np.arange(k)[None, :]).ravel()  # every row has >= k entries (its old list)
    return pos[keep].reshape(n_q, k), score[keep].reshape(n_q, k)


def recall_at(
    found: np.ndarray, exact: np.ndarray, exact_scores: np.ndarray, found_scores: np.ndarray, k: int
) -> float:
    """Mean share of the exact top-``k`` that the approximate top-``k`` recovers, tie-aware.

    A found neighbour counts when it is in the exact top-k or its true score equals the exact
    k-th score (within 1e-6): a tie at the boundary is not a miss.
    """
    found, exact = found[:, :k], exact[:, :k]
    kth = exact_scores[:, k - 1 : k]
    hits = (found[:, :, None] == exact[:, None, :]).any(-1) | (found_scores[:, :k] >= kth - 1e-6)
    hits &= found != MISSING
    return float(np.mean(hits.sum(1) / k))


def share_same(codes: np.ndarray, query: np.ndarray, nbrs: np.ndarray, k: int) -> float | None:
    """Mean share of the top-``k`` neighbours whose label equals the query's (labels < 0 = unknown).

    Queries with an unknown label are skipped; an unknown or missing neighbour counts as a miss. Lists
    narrower than ``k`` (a table of K < k neighbours) are scored over their own width.
    Returns None when no query has a label.
    """
    nb = nbrs[:, :k]
    q_code = codes[query]
    known = q_code >= 0
    if not known.any():
        return None
    nb_code = np.where(nb == MISSING, -2, codes[np.where(nb == MISSING, 0, nb)])
    return float(np.mean((nb_code[known] == q_code[known, None]).sum(1) / nb.shape[1]))


def share_overlap(multi_hot: np.ndarray, query: np.ndarray, nbrs: np.ndarray, k: int) -> float | None:
    """Mean share of the top-``k`` neighbours sharing at least one tag (row of ``multi_hot``) with the query
    (over the lists' own width when it is under ``k``)."""
    nb = nbrs[:, :k]
    known = multi_hot[query].any(1)
    if not known.any():
        return None
    shared = (multi_hot[np.where(nb == MISSING, 0, nb)] & multi_hot[query][:, None, :]).any(-1) & (nb != MISSING)
    return float(np.mean(shared[known].sum(1) / nb.shape[1]))


def hit_rate(similar: list[np.ndarray], nbrs: np.ndarray) -> float | None:
    """Mean share of each query's known similar songs (positions) found among its neighbours."""
    rates = [np.isin(sim, row).mean() for sim, row in zip(similar, nbrs, strict=True) if len(sim)]
    return float(np.mean(rates)) if rates else None


def coverage_and_hubness(nbrs: np.ndarray, n: int) -> tuple[float, int]:
    """Share of the catalogue appearing in any list, and the largest in-degree (hubness)."""
    flat = nbrs[nbrs != MISSING]
    if not len(flat):
        return 0.0, 0
    counts = np.bincount(flat, minlength=n)
    return float((counts > 0).mean()), int(counts.max())
