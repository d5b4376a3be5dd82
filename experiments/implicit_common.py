"""Pieces shared by the implicit-feedback experiments: scoring a model against
the relevance truth, splitting a log, and the observable pair features."""

from __future__ import annotations

import numpy as np

from estimators import ranking
from estimators.models import predict_matrix
from sim.world import World

__all__ = ["RANKING_METRICS", "EXPOSURE_METRICS", "score_ranking", "pair_features",
           "split_visits", "model_scores", "resolve_slate_world"]

K = 10
RANKING_METRICS = (f"ndcg@{K}_truth", f"recall@{K}_truth", f"hr@{K}_truth",
                   "mrr_truth", "auc_truth")
EXPOSURE_METRICS = (f"gini@{K}", f"coverage@{K}", f"mean_popularity@{K}")


def resolve_slate_world(cfg):
    """The ``resolve`` of an experiment config with ``world`` and ``exposure``
    parts: refuse a slate longer than the catalogue before any work, and fix
    the world's marginal (the music marginal when unset)."""
    import dataclasses

    from sim.exposure import check_slate_size
    from sim.world import MUSIC_MARGINAL

    check_slate_size(cfg.exposure.slate_size, cfg.world.n_items)
    if cfg.world.marginal is None:
        return dataclasses.replace(cfg, world=dataclasses.replace(
            cfg.world, marginal=MUSIC_MARGINAL))
    return cfg


def model_scores(params) -> np.ndarray:
    """Scores (U, I) of a fitted MF or NCF."""
    return np.asarray(predict_matrix(params), dtype=np.float64)


def score_ranking(
    scores: np.ndarray,
    gamma: np.ndarray,
    relevant: np.ndarray,
    train_positives: np.ndarray,
    popularity: np.ndarray,
    metrics: tuple[str, ...] = RANKING_METRICS + EXPOSURE_METRICS,
) -> dict[str, float]:
    """Every ranking metric of ``scores`` (U, I) against the truth, as defined
    in the README glossary: candidates are all items but the user's training
    positives (``train_positives`` (U, I) bool); `ndcg@K_truth` uses the
    graded gain ``gamma``, the others binary ``relevant``; users without a
    relevant candidate are excluded (their count is in ``n_excluded_*``)."""
    candidates = ~train_positives
    out: dict[str, float] = {}
    for name in metrics:
        if name == f"ndcg@{K}_truth":
            result = ranking.ndcg_at_k(scores, gamma, candidates, K)
        elif name == f"recall@{K}_truth":
            result = ranking.recall_at_k(scores, relevant, candidates, K)
        elif name == f"hr@{K}_truth":
            result = ranking.hr_at_k(scores, relevant, candidates, K)
        elif name == "mrr_truth":
            result = ranking.mrr(scores, relevant, candidates)
        elif name == "auc_truth":
            result = ranking.auc(scores, relevant, candidates)
        else:
            continue
        out[name] = result.value
        out[f"n_excluded_{name}"] = float(result.n_excluded)
    topk = ranking.top_k(scores, candidates, K)
    if f"gini@{K}" in metrics:
        out[f"gini@{K}"] = ranking.gini_exposure(topk, scores.shape[1])
    if f"coverage@{K}" in metrics:
        out[f"coverage@{K}"] = ranking.coverage_at_k(topk, scores.shape[1])
    if f"mean_popularity@{K}" in metrics:
        out[f"mean_popularity@{K}"] = ranking.mean_popularity(topk, popularity)
    return out


def pair_features(world: World, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Observable features of pairs (n, d + 3): the elementwise product of the
    user's and the item's noisy latent views, the user's covariate and the
    item's covariates (noisy bias, log popularity). Never the latent truth."""
    return np.column_stack([
        world.user_view[users] * world.item_view[items],
        world.user_covariates[users],
        world.item_covariates[items],
    ]).astype(np.float64)


def split_visits(n_visits: int, valid_share: float, rng: np.random.Generator
                 ) -> np.ndarray:
    """A boolean (n_visits,) mask of validation visits, a ``valid_share`` of them."""
    valid = np.zeros(n_visits, dtype=bool)
    valid[rng.permutation(n_visits)[: int(round(valid_share * n_visits))]] = True
    return valid
