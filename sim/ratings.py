"""The explicit-rating log a system would hold, with the truth kept beside it.

`simulate_ratings` samples a world, draws which ratings are logged (missing not
at random, see `sim.selection`), splits the logged ratings into train /
validation / observed-test, and draws a separate missing-at-random (MAR) sample
of ``mar.items_per_user`` random items per user, independent of the logging,
as a randomised survey would (the design of the Yahoo! R3 and Coat test sets).
A seeded ``mar.reserve`` share of that MAR sample is set aside for propensity
estimation and never scored.

Within a split holding a share f of the logged ratings (chosen uniformly at
random), a cell lands in that split with probability f * p_observe; estimators
that need the split's own propensity (validation estimates, doubly robust) use
that product.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sim.config import check, check_range
from sim.selection import SelectionConfig, observe_probability
from sim.world import World, WorldConfig, sample_world

__all__ = [
    "SplitConfig",
    "MarConfig",
    "RatingLog",
    "Truth",
    "simulate_ratings",
    "save",
    "load",
]

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class SplitConfig:
    """Shares of the logged ratings per split (keys ``split.*``); test is the rest."""

    train: float = 0.7
    valid: float = 0.1

    def __post_init__(self) -> None:
        check_range(self.train, "split.train", 0.0, 1.0, low_open=True, high_open=True)
        check_range(self.valid, "split.valid", 0.0, 1.0, low_open=True, high_open=True)
        check(self.train + self.valid < 1.0, "split.train + split.valid",
              "below 1 (the rest is the observed test)", self.train + self.valid)

    def fractions(self) -> dict[str, float]:
        return {"train": self.train, "valid": self.valid,
                "test": 1.0 - self.train - self.valid}


@dataclass(frozen=True)
class MarConfig:
    """The missing-at-random sample (keys ``mar.*``)."""

    items_per_user: int = 10
    reserve: float = 0.05  # share kept for propensity estimation, never scored

    def __post_init__(self) -> None:
        ok = isinstance(self.items_per_user, int) and self.items_per_user >= 1
        check(ok, "mar.items_per_user", "an integer >= 1", self.items_per_user)
        check_range(self.reserve, "mar.reserve", 0.0, 1.0, low_open=True,
                    high_open=True)


@dataclass(frozen=True, eq=False)
class RatingLog:
    """What the system records.

    observed: DataFrame (user, item, rating, split) of the logged MNAR ratings,
    split in {"train", "valid", "test"}; mar: DataFrame (user, item, rating,
    reserved) of the random survey; split_fraction: share of logged ratings per
    split.
    """

    n_users: int
    n_items: int
    observed: pd.DataFrame
    mar: pd.DataFrame
    split_fraction: dict[str, float]

    def split(self, name: str) -> pd.DataFrame:
        check(name in SPLITS, "split", "one of " + ", ".join(SPLITS), name)
        return self.observed[self.observed["split"] == name]


@dataclass(frozen=True, eq=False)
class Truth:
    """What only the simulator knows: the world and p_observe (U, I)."""

    world: World
    p_observe: np.ndarray
    scale: float
    n_capped: int


def _mar_sample(
    n_users: int, n_items: int, mar: MarConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    per_user = min(mar.items_per_user, n_items)
    keys = rng.random((n_users, n_items))
    items = np.argpartition(keys, per_user - 1, axis=1)[:, :per_user]
    items = np.sort(items, axis=1)
    users = np.repeat(np.arange(n_users), per_user)
    return users, items.ravel()


def simulate_ratings(
    world_cfg: WorldConfig,
    selection: SelectionConfig,
    split: SplitConfig,
    mar: MarConfig,
    rng: np.random.Generator,
    world: World | None = None,
) -> tuple[RatingLog, Truth]:
    """Sample a world, log MNAR ratings, split them, and draw the MAR survey.

    Pass ``world`` to log ratings of an existing world (the one an implicit
    log was drawn from, say: one truth, both channels); ``world_cfg`` is then
    not used. Named child streams of ``rng`` keep each stage's randomness
    separate, so a change in one stage (say the split shares) leaves the
    others' draws alone.
    """
    world_rng, observe_rng, split_rng, mar_rng = rng.spawn(4)
    if world is None:
        marginal = world_cfg.marginal or selection.resolved_marginal()
        world = sample_world(world_cfg, marginal, world_rng)
    p_observe, scale, n_capped = observe_probability(world, selection)
    observed_mask = observe_rng.random(p_observe.shape) < p_observe
    users, items = np.nonzero(observed_mask)
    check(users.size >= 3, "observed ratings", "at least 3 (raise the density)",
          int(users.size))

    fractions = split.fractions()
    n_obs = users.size
    n_train = int(round(fractions["train"] * n_obs))
    n_valid = int(round(fractions["valid"] * n_obs))
    labels = np.array(["test"] * n_obs, dtype=object)
    order = split_rng.permutation(n_obs)
    labels[order[:n_train]] = "train"
    labels[order[n_train:n_train + n_valid]] = "valid"
    observed = pd.DataFrame({
        "user": users.astype(np.int32),
        "item": items.astype(np.int32),
        "rating": world.ratings[users, items].astype(np.int8),
        "split": pd.Categorical(labels, categories=list(SPLITS)),
    })
    realised = {name: float((labels == name).mean()) for name in SPLITS}

    reserve_rng, sample_rng = mar_rng.spawn(2)
    mar_users, mar_items = _mar_sample(world.n_users, world.n_items, mar, sample_rng)
    n_reserved = int(round(mar.reserve * mar_users.size))
    reserved = np.zeros(mar_users.size, dtype=bool)
    reserved[reserve_rng.permutation(mar_users.size)[:n_reserved]] = True
    mar_table = pd.DataFrame({
        "user": mar_users.astype(np.int32),
        "item": mar_items.astype(np.int32),
        "rating": world.ratings[mar_users, mar_items].astype(np.int8),
        "reserved": reserved,
    })
    log = RatingLog(world.n_users, world.n_items, observed, mar_table, realised)
    return log, Truth(world, p_observe, scale, n_capped)


_WORLD_MATRICES = ("user_factors", "item_factors", "user_view", "item_view",
                   "user_covariates", "item_covariates")


def _matrix_frame(prefix: str, arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    columns = {}
    for name, array in arrays.items():
        array = array if array.ndim == 2 else array[:, None]
        for j in range(array.shape[1]):
            columns[f"{name}__{j}"] = array[:, j]
    return pd.DataFrame(columns).rename_axis(prefix)


def _unframe(frame: pd.DataFrame, name: str, ndim: int) -> np.ndarray:
    cols = [c for c in frame.columns if c.split("__")[0] == name]
    cols.sort(key=lambda c: int(c.split("__")[1]))
    array = frame[cols].to_numpy()
    return array if ndim == 2 else array[:, 0]


def save(log: RatingLog, truth: Truth, folder: str | Path, meta: dict) -> None:
    """Write the log and the truth as Parquet tables plus ``meta.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    log.observed.to_parquet(folder / "observed.parquet", index=False)
    log.mar.to_parquet(folder / "mar.parquet", index=False)
    world = truth.world
    cells = pd.DataFrame({
        "rating": world.ratings.ravel(),
        "score": world.score.ravel(),
        "p_observe": truth.p_observe.ravel(),
    })
    cells.to_parquet(folder / "truth_cells.parquet", index=False)
    users = _matrix_frame("user", {n: getattr(world, n) for n in
                                   ("user_factors", "user_view", "user_covariates",
                                    "user_bias")})
    items = _matrix_frame("item", {n: getattr(world, n) for n in
                                   ("item_factors", "item_view", "item_covariates",
                                    "item_bias", "popularity")})
    users.to_parquet(folder / "truth_users.parquet", index=False)
    items.to_parquet(folder / "truth_items.parquet", index=False)
    info = {
        "n_users": log.n_users,
        "n_items": log.n_items,
        "split_fraction": log.split_fraction,
        "marginal": list(world.marginal),
        "scale": truth.scale,
        "n_capped": truth.n_capped,
        "meta": meta,
    }
    (folder / "meta.json").write_text(json.dumps(info, indent=2, sort_keys=True))


def load(folder: str | Path) -> tuple[RatingLog, Truth, dict]:
    """Read back what `save` wrote; arrays come back bit for bit."""
    folder = Path(folder)
    info = json.loads((folder / "meta.json").read_text())
    n_users, n_items = info["n_users"], info["n_items"]
    observed = pd.read_parquet(folder / "observed.parquet")
    mar = pd.read_parquet(folder / "mar.parquet")
    cells = pd.read_parquet(folder / "truth_cells.parquet")
    users = pd.read_parquet(folder / "truth_users.parquet")
    items = pd.read_parquet(folder / "truth_items.parquet")
    shape = (n_users, n_items)
    world = World(
        marginal=tuple(info["marginal"]),
        ratings=cells["rating"].to_numpy().reshape(shape),
        score=cells["score"].to_numpy().reshape(shape),
        user_bias=_unframe(users, "user_bias", 1),
        item_bias=_unframe(items, "item_bias", 1),
        popularity=_unframe(items, "popularity", 1),
        **{name: _unframe(users if name.startswith("user") else items, name, 2)
           for name in _WORLD_MATRICES},
    )
    truth = Truth(world, cells["p_observe"].to_numpy().reshape(shape),
                  info["scale"], info["n_capped"])
    log = RatingLog(n_users, n_items, observed, mar, info["split_fraction"])
    return log, truth, info["meta"]
