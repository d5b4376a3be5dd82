"""The ground truth: users, items, true ratings and what can be seen of them.

A world is a users x items matrix of true ratings on 1..K stars. Each cell has a
latent score

    z_ui = b_u + b_i + <x_u, y_i> / sqrt(d) + eps_ui,

with x_u, y_i ~ N(0, I_d), b_u ~ N(0, user_bias_sd^2), b_i ~ N(0, item_bias_sd^2)
and eps_ui ~ N(0, noise^2). Ratings are quantiles of z over the whole matrix:
the cut points are chosen so that the share of cells with each star equals
``world.marginal`` (up to rounding to whole cells). This is how semi-synthetic
MNAR studies build a known full matrix (Schnabel et al., ICML 2016, section 6.1;
Marlin & Zemel, RecSys 2009 for the random-sample marginal).

Item popularity is a separate Zipf-like visibility, pop_i = rank_i^(-a) with the
ranks a random permutation: how often a system shows an item, not how good it is.

Side features are what a propensity model may read: noisy views of the latent
factors at signal-to-noise ratio ``world.feature_snr`` (variance of the signal
over variance of the noise), a noisy view of each bias, and log popularity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.config import check, check_range

__all__ = ["WorldConfig", "World", "sample_world", "MUSIC_MARGINAL"]

# Random-sample marginal of a large public music-rating study (Marlin et al.,
# 2007; Yahoo! R3 random test set), stars 1..5.
MUSIC_MARGINAL = (0.526, 0.242, 0.144, 0.062, 0.026)


def check_marginal(marginal: tuple[float, ...], key: str) -> None:
    """A marginal has at least two non-negative entries summing to 1."""
    ok = isinstance(marginal, tuple) and len(marginal) == 5
    check(ok, key, "a list of 5 probabilities (stars 1..5)", marginal)
    for p in marginal:
        check_range(p, key + " entries", 0.0, 1.0)
    total = float(sum(marginal))
    check(abs(total - 1.0) <= 1e-6, key, f"probabilities summing to 1 (sum {total:.6g})",
          marginal)


@dataclass(frozen=True)
class WorldConfig:
    """Size and shape of the true world (keys ``world.*``).

    ``marginal`` left unset (None) takes the selection preset's marginal, which
    is ``MUSIC_MARGINAL`` for every preset but ``coat-like``.
    """

    n_users: int = 1000
    n_items: int = 1000
    dim: int = 8  # latent dimension d
    user_bias_sd: float = 0.5
    item_bias_sd: float = 0.5
    noise: float = 0.3  # sd of the idiosyncratic term eps_ui
    popularity_exponent: float = 1.0  # Zipf exponent a of item visibility
    feature_snr: float = 2.0  # signal variance / noise variance of side features
    marginal: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for key in ("n_users", "n_items", "dim"):
            value = getattr(self, key)
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            check(ok, f"world.{key}", "an integer >= 1", value)
        check(self.n_users * self.n_items >= 2, "world.n_users * world.n_items",
              "at least 2 cells", self.n_users * self.n_items)
        for key in ("user_bias_sd", "item_bias_sd", "noise", "popularity_exponent"):
            check_range(getattr(self, key), f"world.{key}", 0.0)
        check_range(self.feature_snr, "world.feature_snr", 0.0, low_open=True)
        if self.marginal is not None:
            object.__setattr__(self, "marginal", tuple(self.marginal))
            check_marginal(self.marginal, "world.marginal")


@dataclass(frozen=True, eq=False)
class World:
    """A sampled world. Arrays (U users, I items, d latent dims, K stars):

    ratings (U, I) int8 in 1..K; score (U, I) float32 latent score;
    user_factors (U, d), item_factors (I, d), user_bias (U,), item_bias (I,);
    popularity (I,) in (0, 1], max 1; user_view (U, d), item_view (I, d),
    user_covariates (U, 1), item_covariates (I, 2): the observable features.
    """

    marginal: tuple[float, ...]
    ratings: np.ndarray
    score: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray
    user_bias: np.ndarray
    item_bias: np.ndarray
    popularity: np.ndarray
    user_view: np.ndarray
    item_view: np.ndarray
    user_covariates: np.ndarray
    item_covariates: np.ndarray

    @property
    def n_users(self) -> int:
        return self.ratings.shape[0]

    @property
    def n_items(self) -> int:
        return self.ratings.shape[1]

    @property
    def n_levels(self) -> int:
        return len(self.marginal)

    def true_marginal(self) -> np.ndarray:
        """Share of cells per star, (K,)."""
        counts = np.bincount(self.ratings.ravel(), minlength=self.n_levels + 1)
        return counts[1:] / self.ratings.size


def ratings_from_quantiles(score: np.ndarray, marginal: tuple[float, ...]) -> np.ndarray:
    """Cut ``score`` at its quantiles so star k holds a ``marginal[k-1]`` share.

    The cells are ranked by score (ties by position, which has probability zero
    for continuous scores) and the lowest round(N * P(r <= k)) get star <= k.
    """
    flat = score.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.rint(np.cumsum(marginal) * flat.size).astype(np.int64)
    bounds[-1] = flat.size
    stars = np.empty(flat.size, dtype=np.int8)
    start = 0
    for level, stop in enumerate(bounds, start=1):
        stars[order[start:stop]] = level
        start = stop
    return stars.reshape(score.shape)


def _noisy_view(signal: np.ndarray, snr: float, rng: np.random.Generator) -> np.ndarray:
    """signal + noise with var(signal)/var(noise) = snr (signal standardised)."""
    scale = signal.std() if signal.std() > 0 else 1.0
    noise = rng.normal(0.0, scale / np.sqrt(snr), size=signal.shape)
    return (signal + noise).astype(np.float32)


def sample_world(
    cfg: WorldConfig, marginal: tuple[float, ...], rng: np.random.Generator
) -> World:
    """Draw a world from ``cfg`` with true marginal ``marginal`` using ``rng``."""
    check_marginal(tuple(marginal), "world.marginal")
    n_users, n_items, dim = cfg.n_users, cfg.n_items, cfg.dim
    user_factors = rng.normal(size=(n_users, dim)).astype(np.float32)
    item_factors = rng.normal(size=(n_items, dim)).astype(np.float32)
    user_bias = rng.normal(0.0, cfg.user_bias_sd, n_users).astype(np.float32)
    item_bias = rng.normal(0.0, cfg.item_bias_sd, n_items).astype(np.float32)
    score = user_factors @ item_factors.T / np.float32(np.sqrt(dim))
    score += user_bias[:, None] + item_bias[None, :]
    score += rng.normal(0.0, cfg.noise, size=score.shape).astype(np.float32)
    ratings = ratings_from_quantiles(score, tuple(marginal))

    ranks = rng.permutation(n_items) + 1
    popularity = (ranks.astype(np.float64) ** -cfg.popularity_exponent)
    popularity /= popularity.max()

    snr = cfg.feature_snr
    user_view = _noisy_view(user_factors, snr, rng)
    item_view = _noisy_view(item_factors, snr, rng)
    user_covariates = _noisy_view(user_bias[:, None], snr, rng)
    item_covariates = np.column_stack(
        [_noisy_view(item_bias[:, None], snr, rng)[:, 0], np.log(popularity)]
    ).astype(np.float32)
    return World(
        marginal=tuple(marginal),
        ratings=ratings,
        score=score.astype(np.float32),
        user_factors=user_factors,
        item_factors=item_factors,
        user_bias=user_bias,
        item_bias=item_bias,
        popularity=popularity,
        user_view=user_view,
        item_view=item_view,
        user_covariates=user_covariates,
        item_covariates=item_covariates,
    )
