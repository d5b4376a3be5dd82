"""mnar-ratings: explicit ratings missing not at random, end to end.

What it teaches: people rate what they love, so the logged ratings are mostly
high ones. Matrix factorisation fitted naively to that log learns the log: it
looks good on a held-out slice of the same log and is wrong about the full
matrix of true ratings. Weighting each logged rating by the inverse of its
probability of being logged (IPS, SNIPS, doubly robust) corrects the objective
in expectation, and with the true propensities it does better on the truth.
Estimated propensities show how much of that survives without an oracle.

Scenario (defaults, taken from the semi-synthetic setting of Schnabel et al.,
ICML 2016, section 6.1, not tuned on results): a 1,000 x 1,000 world whose true
ratings follow the random-sample marginal of a music-rating study, logged with
the ``value`` selection (a rating below 4 stars is alpha = 0.25 times as likely
to be logged per star below 4) at 5% density, about 50,000 ratings; split
70/10/20 into train / validation / observed test; a random survey of 10 items
per user, 5% of it reserved for propensity estimation. Every method x
propensity pair trains the same 16-dimensional matrix factorisation with the
same L2 grid and keeps the grid point with the best validation estimate of its
own kind (naive MSE for `mf-naive`, IPS with the same propensity source for
the others). The ``yahoo-like`` and ``coat-like`` presets are one
``--set selection.preset=...`` away.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import jax
import numpy as np

from estimators import metrics, propensity
from estimators.models import predict_matrix
from estimators.train import DRConfig, RatingData, TrainConfig, search_batch
from sim.config import ConfigError, check, check_range, check_unique
from sim.ratings import MarConfig, RatingLog, SplitConfig, Truth, simulate_ratings
from sim.selection import SelectionConfig, check_density
from sim.world import WorldConfig

NAME = "mnar-ratings"
DEFAULT_SEEDS = 5
KEY_METRICS = ("mse_truth", "mse_observed")
# The tour's size: the default world with fewer seeds; the lesson (naive good
# on the observed test, bad on the truth; IPS with true propensities better on
# the truth) shows at once at this size.
TEACHING: dict[str, str] = {}
TEACHING_SEEDS = 3

METHODS = {"mf-naive": "naive", "mf-ips": "ips", "mf-snips": "snips", "mf-dr": "dr"}
PROPENSITIES = ("true", "naive-bayes", "logistic", "popularity")
METRICS = ("mse_truth", "mae_truth", "mse_mar", "mae_mar", "mse_observed",
           "mae_observed")
REPORT_METRICS = METRICS


@dataclass(frozen=True)
class PropensityConfig:
    """How estimated propensities are fitted (keys ``propensity.*``)."""

    smoothing: float = 1.0  # Laplace smoothing of the naive-Bayes star counts
    popularity_power: float = 0.5  # exponent of the item-count power law
    logistic_l2: float = 1e-4  # penalty on the per-user and per-item terms
    logistic_steps: int = 300  # full-batch Adam steps of the logistic fit

    def __post_init__(self) -> None:
        check_range(self.smoothing, "propensity.smoothing", 0.0, low_open=True)
        check_range(self.popularity_power, "propensity.popularity_power", 0.0)
        check_range(self.logistic_l2, "propensity.logistic_l2", 0.0)
        ok = isinstance(self.logistic_steps, int) and self.logistic_steps >= 1
        check(ok, "propensity.logistic_steps", "an integer >= 1", self.logistic_steps)


@dataclass(frozen=True)
class Config:
    world: WorldConfig = field(default_factory=WorldConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    mar: MarConfig = field(default_factory=MarConfig)
    propensity: PropensityConfig = field(default_factory=PropensityConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dr: DRConfig = field(default_factory=DRConfig)
    methods: tuple[str, ...] = tuple(METHODS)
    propensities: tuple[str, ...] = PROPENSITIES

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        check_unique(tuple(self.methods), "methods")
        check_unique(tuple(self.propensities), "propensities")
        object.__setattr__(self, "propensities", tuple(self.propensities))
        check(len(self.methods) >= 1, "methods", "at least one method", self.methods)
        for method in self.methods:
            check(method in METHODS, "methods", "names from " + ", ".join(METHODS),
                  method)
        for source in self.propensities:
            check(source in PROPENSITIES + ("none",), "propensities",
                  "names from none, " + ", ".join(PROPENSITIES), source)
        self.pairs()

    def pairs(self) -> list[tuple[str, str]]:
        """Every valid method x propensity pair; refuses an invalid one."""
        out = []
        for method in self.methods:
            if method == "mf-naive":
                out.append((method, "none"))
                continue
            for source in self.propensities:
                if source == "none":
                    raise ConfigError(
                        f"method x propensity pair must weight {method} by one of "
                        f"{', '.join(PROPENSITIES)}, got {method} x none"
                    )
                out.append((method, source))
        check(bool(out), "methods x propensities", "at least one valid pair",
              (self.methods, self.propensities))
        return out

    def resolve(self) -> "Config":
        """Fill the preset-dependent settings (density, marginal) explicitly."""
        world = self.world
        if world.marginal is None:
            world = _replace(world, marginal=self.selection.resolved_marginal())
        selection = self.selection
        if selection.density is None:
            selection = _replace(selection, density=selection.resolved_density())
        check_density(selection, world.marginal)
        return _replace(self, world=world, selection=selection)


def _replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


def default_config() -> Config:
    return Config().resolve()


def _estimated_p_observe(
    source: str, log: RatingLog, truth: Truth, cfg: Config, key: jax.Array
) -> np.ndarray:
    """p_observe (U, I) from ``source``; only `true` reads the truth."""
    n_users, n_items = log.n_users, log.n_items
    n_cells = n_users * n_items
    observed = log.observed
    world = truth.world
    if source == "true":
        return truth.p_observe
    if source == "naive-bayes":
        reserved = log.mar[log.mar["reserved"]]["rating"].to_numpy()
        per_star = propensity.naive_bayes_propensity(
            observed["rating"].to_numpy(), n_cells, reserved,
            smoothing=cfg.propensity.smoothing, n_levels=world.n_levels)
        # The estimator needs a star for every cell it weights; only logged
        # cells are weighted, and their stars are in the log.
        table = np.zeros((n_users, n_items))
        users, items = observed["user"].to_numpy(), observed["item"].to_numpy()
        table[users, items] = per_star[observed["rating"].to_numpy() - 1]
        return table
    if source == "logistic":
        return propensity.logistic_propensity(
            observed["user"].to_numpy(), observed["item"].to_numpy(), n_users,
            n_items, world.user_view, world.item_view, world.user_covariates,
            world.item_covariates, key, l2=cfg.propensity.logistic_l2,
            steps=cfg.propensity.logistic_steps)
    if source == "popularity":
        counts = np.bincount(observed["item"].to_numpy(), minlength=n_items)
        per_item = propensity.popularity_propensity(
            counts, n_users, power=cfg.propensity.popularity_power)
        return np.broadcast_to(per_item[None, :], (n_users, n_items))
    raise ConfigError(f"propensity must be one of {', '.join(PROPENSITIES)}, "
                      f"got {source!r}")


def _rating_data(frame, p_observe: np.ndarray | None, fraction: float) -> RatingData:
    users = frame["user"].to_numpy().astype(np.int32)
    items = frame["item"].to_numpy().astype(np.int32)
    ratings = frame["rating"].to_numpy().astype(np.float32)
    split_p = None if p_observe is None else p_observe[users, items] * fraction
    return RatingData(users, items, ratings, split_p)


def run_seed(cfg: Config, seed: int, progress=None) -> list[dict]:
    """All rows of one seed: every method x propensity pair, scored.

    Seed s gives the same rows whatever else runs: its numpy stream and its JAX
    key both come from ``SeedSequence(s)`` alone.
    """
    cfg = cfg.resolve()
    sequence = np.random.SeedSequence(seed)
    np_rng = np.random.default_rng(sequence.spawn(1)[0])
    key = jax.random.key(int(sequence.generate_state(1)[0]))
    log, truth = simulate_ratings(cfg.world, cfg.selection, cfg.split, cfg.mar, np_rng)
    world = truth.world
    fraction = log.split_fraction
    train_frame, valid_frame, test_frame = (log.split(s) for s in
                                            ("train", "valid", "test"))
    scored_mar = log.mar[~log.mar["reserved"]]

    rows: list[dict] = []

    def add(method: str, source: str, metric: str, value: float) -> None:
        if not np.isfinite(value):
            raise FloatingPointError(
                f"{metric} of {method} x {source} at seed {seed} is {value}")
        rows.append(dict(seed=seed, method=method, propensity=source, metric=metric,
                         value=float(value)))

    stars = np.arange(1, world.n_levels + 1)
    observed_share = np.bincount(log.observed["rating"], minlength=world.n_levels + 1)
    observed_share = observed_share[1:] / len(log.observed)
    for star, true_share, obs_share in zip(stars, world.true_marginal(),
                                           observed_share):
        add("log", "none", f"share_true_r{star}", true_share)
        add("log", "none", f"share_observed_r{star}", obs_share)
    add("log", "none", "n_observed", len(log.observed))
    add("log", "none", "n_capped", truth.n_capped)

    key_prop, key_fit = jax.random.split(key)
    sources = sorted({s for _, s in cfg.pairs() if s != "none"})
    p_hat: dict[str, np.ndarray] = {}
    for index, source in enumerate(sources):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            raw = _estimated_p_observe(source, log, truth, cfg,
                                       jax.random.fold_in(key_prop, index))
            users = log.observed["user"].to_numpy()
            items = log.observed["item"].to_numpy()
            floored = np.array(raw, dtype=np.float64, copy=True)
            floored[users, items] = propensity.apply_floor(
                floored[users, items], cfg.selection.propensity_floor)
        for warning in caught:
            warnings.warn(f"seed {seed}, propensity {source}: {warning.message}",
                          stacklevel=2)
        p_hat[source] = floored
        if source != "true":
            errors = _per_star_error(source, floored, log, truth, cfg)
            for star, err in zip(stars, errors):
                if np.isfinite(err):
                    add("propensity", source, f"propensity_error_r{star}", err)

    ratings_true = world.ratings.astype(np.float32)
    mar_users, mar_items = scored_mar["user"].to_numpy(), scored_mar["item"].to_numpy()
    test_users, test_items = test_frame["user"].to_numpy(), test_frame["item"].to_numpy()
    # Every pair x L2 grid point of one objective trains as one batch (the
    # trainer picks vmap or one by one by size); pair k keeps its own key.
    pairs = cfg.pairs()
    fitted: dict[int, object] = {}
    for objective in dict.fromkeys(METHODS[method] for method, _ in pairs):
        members = [k for k, (m, _) in enumerate(pairs) if METHODS[m] == objective]
        splits = [(_rating_data(train_frame, p_hat.get(pairs[k][1]),
                                fraction["train"]),
                   _rating_data(valid_frame, p_hat.get(pairs[k][1]),
                                fraction["valid"])) for k in members]
        batch = search_batch(objective, [t for t, _ in splits],
                             [v for _, v in splits], log.n_users, log.n_items,
                             [cfg.train] * len(members), cfg.dr,
                             [jax.random.fold_in(key_fit, k) for k in members])
        fitted.update(zip(members, batch))
    for index, (method, source) in enumerate(pairs):
        result = fitted[index]
        pred = np.asarray(predict_matrix(result.params))
        add(method, source, "mse_truth", metrics.mse(pred.ravel(), ratings_true.ravel()))
        add(method, source, "mae_truth", metrics.mae(pred.ravel(), ratings_true.ravel()))
        mar_pred, mar_true = pred[mar_users, mar_items], ratings_true[mar_users, mar_items]
        add(method, source, "mse_mar", metrics.mse(mar_pred, mar_true))
        add(method, source, "mae_mar", metrics.mae(mar_pred, mar_true))
        test_pred = pred[test_users, test_items]
        test_true = ratings_true[test_users, test_items]
        add(method, source, "mse_observed", metrics.mse(test_pred, test_true))
        add(method, source, "mae_observed", metrics.mae(test_pred, test_true))
        add(method, source, "max_weight", result.max_weight)
        add(method, source, "ess", result.ess)
        add(method, source, "l2", result.l2)
        add(method, source, "epochs", result.epochs_run)
        if progress is not None:
            progress()
    return rows


def _per_star_error(
    source: str, p_hat: np.ndarray, log: RatingLog, truth: Truth, cfg: Config
) -> np.ndarray:
    """Per star r: E[p_hat | r] - E[p_observe | r] over all cells of star r, (K,).

    A diagnostic, so it may read the true stars. Naive Bayes gives one value per
    star; the other sources give a value per cell, averaged over the star's
    cells. A star with no cells gives NaN, which the caller skips.
    """
    ratings = truth.world.ratings.ravel()
    n_levels = truth.world.n_levels
    counts = np.bincount(ratings, minlength=n_levels + 1)[1:]
    true_sum = np.bincount(ratings, weights=truth.p_observe.ravel(),
                           minlength=n_levels + 1)[1:]
    if source == "naive-bayes":
        reserved = log.mar[log.mar["reserved"]]["rating"].to_numpy()
        hat_mean = propensity.naive_bayes_propensity(
            log.observed["rating"].to_numpy(), log.n_users * log.n_items, reserved,
            smoothing=cfg.propensity.smoothing, n_levels=n_levels)
    else:
        hat_sum = np.bincount(ratings, weights=np.asarray(p_hat).ravel(),
                              minlength=n_levels + 1)[1:]
        hat_mean = np.divide(hat_sum, counts, out=np.full(n_levels, np.nan),
                             where=counts > 0)
    true_mean = np.divide(true_sum, counts, out=np.full(n_levels, np.nan),
                          where=counts > 0)
    return hat_mean - true_mean


def n_fits(cfg: Config) -> int:
    return len(cfg.pairs())


def _mean(summary, method: str, source: str, metric: str) -> float | None:
    row = summary[(summary["method"] == method) & (summary["propensity"] == source)
                  & (summary["metric"] == metric)]
    return None if row.empty else float(row["mean"].iloc[0])


def figures(cfg: Config, results, summary, folder) -> list[str]:
    """Methods x metrics with intervals; observed vs true rating marginals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments.report import interval_plot
    from experiments.runner import write_atomic

    fitted = summary[summary["metric"].isin(METRICS)]
    interval_plot(fitted, ["mse_truth", "mse_mar", "mse_observed"],
                  folder / "methods_mse.png",
                  "MSE on the full truth, the MAR survey and the observed test")
    interval_plot(fitted, ["mae_truth", "mae_mar", "mae_observed"],
                  folder / "methods_mae.png",
                  "MAE on the full truth, the MAR survey and the observed test")

    stars = np.arange(1, len(cfg.world.marginal) + 1)  # cfg is resolved
    shares = {kind: [_mean(summary, "log", "none", f"share_{kind}_r{s}") or 0.0
                     for s in stars] for kind in ("true", "observed")}
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.38
    ax.bar(stars - width / 2, shares["true"], width, label="true (all cells)")
    ax.bar(stars + width / 2, shares["observed"], width, label="observed (logged)")
    ax.set_xlabel("stars")
    ax.set_ylabel("share of ratings")
    ax.set_title(f"Rating marginals, selection preset {cfg.selection.preset}")
    ax.legend()
    fig.tight_layout()
    write_atomic(folder / "marginals.png",
                 lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return ["methods_mse.png", "methods_mae.png", "marginals.png"]


def lesson(cfg: Config, results, summary) -> str:
    """The report's plain words, computed from the numbers it describes."""
    from experiments.report import paired_t

    n_seeds = results["seed"].nunique()
    lines = [
        f"{n_seeds} seed(s) of a {cfg.world.n_users} x {cfg.world.n_items} world, "
        f"selection preset `{cfg.selection.preset}` at density "
        f"{cfg.selection.resolved_density():g}.",
        "",
    ]
    top = len(cfg.world.marginal)  # cfg is resolved
    true5 = _mean(summary, "log", "none", f"share_true_r{top}")
    obs5 = _mean(summary, "log", "none", f"share_observed_r{top}")
    if true5 is not None and obs5 is not None:
        lines.append(
            f"**What the log shows.** The top star is {true5:.1%} of all true ratings "
            f"but {obs5:.1%} of the logged ones (figure `marginals.png`): people rate "
            "what they like, so the log over-represents high ratings.")
        lines.append("")
    naive_obs = _mean(summary, "mf-naive", "none", "mse_observed")
    naive_truth = _mean(summary, "mf-naive", "none", "mse_truth")
    if naive_obs is not None and naive_truth is not None:
        if naive_obs < naive_truth:
            lines.append(
                f"**Naive looks good where it was trained.** `mf-naive` has MSE "
                f"{naive_obs:.3f} on the observed test, lower than its MSE "
                f"{naive_truth:.3f} on the full true matrix: a held-out slice of a "
                "biased log shares the log's bias and cannot reveal it.")
        else:
            lines.append(
                f"**The observed test is no easier here.** `mf-naive` has MSE "
                f"{naive_obs:.3f} on the observed test and {naive_truth:.3f} on the full "
                "true matrix: the logged ratings are spread over extreme stars and too "
                "few per user to fit well, so the slice of the log does not flatter "
                "the model at this setting, though it still cannot reveal its bias.")
        lines.append("")
    ips_truth = _mean(summary, "mf-ips", "true", "mse_truth")
    if ips_truth is not None and naive_truth is not None:
        t, n = paired_t(results, "mse_truth", {"method": "mf-naive"},
                        {"method": "mf-ips", "propensity": "true"})
        tail = (f" (paired t = {t:.2f} over {n} seeds)" if t is not None
                else " (one seed: no paired test)")
        better = "lower" if ips_truth < naive_truth else "not lower"
        lines.append(
            f"**Debiasing with true propensities.** `mf-ips` with the true "
            f"propensities reaches MSE {ips_truth:.3f} on the truth, {better} than "
            f"naive's {naive_truth:.3f}{tail}. Inverse-propensity weights make the "
            "training loss an unbiased estimate of the full-matrix loss.")
        lines.append("")
    fitted = summary[summary["metric"] == "mse_truth"].sort_values("mean")
    if not fitted.empty:
        lines.append("**All methods on the truth** (MSE, lower is better):")
        lines.append("")
        for _, row in fitted.iterrows():
            rel = ("" if naive_truth is None
                   else f" ({row['mean'] - naive_truth:+.3f} vs naive)")
            lines.append(f"- `{row['method']}` x `{row['propensity']}`: "
                         f"{row['mean']:.3f}{rel}")
        lines.append("")
    errors = summary[summary["metric"].str.startswith("propensity_error_r")]
    if not errors.empty:
        worst = errors.assign(abs_mean=errors["mean"].abs()).groupby("propensity")[
            "abs_mean"].max()
        parts = ", ".join(f"`{k}` {v:.2g}" for k, v in worst.items())
        lines.append(
            "**Estimated propensities.** Largest per-star error of the mean "
            f"propensity, |E[p_hat | r] - E[p | r]|: {parts}. Where this is large the "
            "debiased methods inherit the error.")
    return "\n".join(lines)
