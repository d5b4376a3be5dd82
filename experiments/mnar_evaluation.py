"""mnar-evaluation: scoring a prediction matrix from ratings missing not at random.

What it teaches: when people rate mostly what they like, the average error
over the logged ratings describes the logged cells, not the matrix. A model
that is good exactly where ratings are logged looks good, and two models can
be ranked in the wrong order. Weighting each logged cell by the inverse of
its observation probability (IPS, SNIPS; Schnabel et al., ICML 2016, section
3) estimates the full-matrix metric without that bias when the propensities
are right; error imputation (EIB; Steck, KDD 2010) and doubly robust
estimation (DR; Wang et al., ICML 2019) also use an imputed value for the
unlogged cells. Estimated propensities show what survives without an oracle.

Scenario (defaults): a world of 500 users x 500 items with true ratings on 1-5
stars (random-sample marginal of a music-rating study), logged with the
``value`` selection (a rating below 4 stars is alpha times as likely to be
logged per star below 4) at 5% density, about 12,500 ratings per log, swept
over alpha in ``alphas`` = 0.1, 0.25, 0.5, 1 (1 is missing completely at
random). One world per seed; every alpha logs it with the same random numbers
(common random numbers), and the same missing-at-random survey of 10 items per
user is drawn, whose reserved 5% (about 250 ratings) feeds the naive-Bayes
propensities. Rows carry alpha as ``selection.alpha``.

Prediction matrices (``evaluation.matrices``, `sim.predictions`): ``rare-wrong``
(near perfect except the mirror rating on the quarter of cells least likely to
be logged), ``shifted`` (one star too high everywhere, clipped to 1-5),
``rare-noisy`` (noise sd from 0.2 where ratings are most likely logged to 2
where least likely) and ``coarsened`` (stars 1-2 predicted 1.5, 3-5 predicted
4). Rows carry the matrix name in the ``predictions`` column. To score your
own matrices, call ``score_predictions`` with a dict of (U, I) arrays and the
logged cells (or `estimators.evaluation.estimate_matrix_metric` on one matrix);
a config is plain data and carries no matrix.

Metrics of each matrix over the full matrix (`estimators.evaluation`): ``mse``
and ``mae`` (predictions clipped to 1-5, mean over all U x I cells, in squared
stars and stars) and ``dcg@K`` (K = ``evaluation.k`` = 5, gain = the true
star, discount 1 / log2(1 + rank) by the matrix's own ranking of all items,
summed over a user's top K and averaged over users). Methods: ``naive``
(mean over logged cells, propensity ``none``), and ``ips``, ``snips``, ``eib``
and ``dr``, each with propensity ``true`` (the simulator's p_observe) or
``naive-bayes`` (per-star P(O = 1 | r) from the logged ratings and the
reserved survey; Schnabel et al. 2016, section 5). EIB's value does not read
the propensities, only its standard error does, so its two rows differ only in
se and coverage. EIB and DR impute
every cell with the rating ``evaluation.imputed_rating``, by default the mean
of the reserved survey ratings (a constant: the imputed error of a cell is
then the error of the prediction against that rating).

Per seed, alpha, matrix, metric and method x propensity: ``{metric}_estimate``,
``{metric}_error`` (estimate - truth), ``{metric}_rel_error`` (|error| /
truth), ``{metric}_covered`` (1 if the normal
95% interval holds the truth) and ``{metric}_se``; method ``truth`` gives
``{metric}_truth``. With ``predictions`` = ``all``, ``{metric}_misranked_pairs``
is the share of the matrix pairs (with different true values) that the
method orders against their true order. Bias, SD, RMSE and coverage over
seeds are computed in the report (`experiments.ope_common.meta_evaluation`).
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from estimators.evaluation import estimate_matrix_metric, matrix_cell_values
from estimators.evaluation import matrix_metric
from estimators.propensity import naive_bayes_propensity
from experiments.ope_common import markdown_table, meta_evaluation, scored
from sim.config import check, check_range, check_unique
from sim.predictions import PREDICTION_MATRICES, check_predictions, make_predictions
from sim.ratings import MarConfig, SplitConfig, simulate_ratings
from sim.selection import SelectionConfig, check_density
from sim.world import WorldConfig, sample_world

NAME = "mnar-evaluation"
DEFAULT_SEEDS = 30
METHODS = ("naive", "ips", "snips", "eib", "dr")
PROPENSITIES = ("true", "naive-bayes")
KEY_METRICS = ("mse_error", "mae_error")
# The tour's size: a smaller world, three alphas; naive's bias and its wrong
# orderings show at once.
TEACHING: dict[str, str] = {"world.n_users": "300", "world.n_items": "300",
                            "alphas": "[0.1, 0.5, 1.0]"}
TEACHING_SEEDS = 5
_WEIGHTED = ("ips", "snips", "eib", "dr")  # methods that read p_observe
_SCORES = ("estimate", "error", "rel_error", "covered", "se")


@dataclass(frozen=True)
class EvaluationConfig:
    """What is evaluated and how (keys ``evaluation.*``)."""

    k: int = 5  # cut-off K of DCG@K
    matrices: tuple[str, ...] = tuple(PREDICTION_MATRICES)
    imputed_rating: float | None = None  # None: mean of the reserved survey
    smoothing: float = 1.0  # Laplace smoothing of the naive-Bayes star counts

    def __post_init__(self) -> None:
        object.__setattr__(self, "matrices", tuple(self.matrices))
        ok = isinstance(self.k, int) and not isinstance(self.k, bool) and self.k >= 1
        check(ok, "evaluation.k", "an integer >= 1", self.k)
        check(len(self.matrices) >= 1, "evaluation.matrices", "at least one matrix",
              self.matrices)
        for name in self.matrices:
            check(name in PREDICTION_MATRICES, "evaluation.matrices",
                  "names from " + ", ".join(PREDICTION_MATRICES), name)
        if self.imputed_rating is not None:
            check_range(self.imputed_rating, "evaluation.imputed_rating")
        check_range(self.smoothing, "evaluation.smoothing", 0.0, low_open=True)

    def metrics(self) -> tuple[str, ...]:
        return ("mse", "mae", f"dcg@{self.k}")


@dataclass(frozen=True)
class Config:
    world: WorldConfig = field(default_factory=lambda: WorldConfig(n_users=500,
                                                                   n_items=500))
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    mar: MarConfig = field(default_factory=MarConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    alphas: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    methods: tuple[str, ...] = METHODS
    propensities: tuple[str, ...] = PROPENSITIES

    def __post_init__(self) -> None:
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "propensities", tuple(self.propensities))
        check(len(self.alphas) >= 1, "alphas", "at least one value", self.alphas)
        for alpha in self.alphas:
            check_range(alpha, "alphas", 0.0, low_open=True)
        for key in ("alphas", "methods", "propensities"):
            check_unique(getattr(self, key), key)
        default_alpha = SelectionConfig().alpha
        check(self.selection.alpha == default_alpha, "selection.alpha",
              f"left at {default_alpha} (each run sweeps `alphas`; set alphas "
              "instead)", self.selection.alpha)
        check(len(self.methods) >= 1, "methods", "at least one method", self.methods)
        for method in self.methods:
            check(method in METHODS, "methods", "names from " + ", ".join(METHODS),
                  method)
        for source in self.propensities:
            check(source in PROPENSITIES, "propensities",
                  "names from " + ", ".join(PROPENSITIES), source)
        check(bool(self.propensities) or not set(self.methods) & set(_WEIGHTED),
              "propensities", "at least one source when ips, snips, eib or dr run",
              self.propensities)
        check(self.selection.preset == "value", "selection.preset",
              "'value' (the experiment sweeps its alpha)", self.selection.preset)

    def pairs(self) -> list[tuple[str, str]]:
        """Every method x propensity pair that runs."""
        return [(m, s) for m in self.methods
                for s in (self.propensities if m in _WEIGHTED else ("none",))]

    def resolve(self) -> "Config":
        """Fill the preset's marginal and density; refuse an alpha whose
        selection cannot reach the density."""
        world, selection = self.world, self.selection
        if world.marginal is None:
            world = dataclasses.replace(world, marginal=selection.resolved_marginal())
        if selection.density is None:
            selection = dataclasses.replace(selection,
                                            density=selection.resolved_density())
        for alpha in self.alphas:
            check_density(dataclasses.replace(selection, alpha=alpha), world.marginal)
        return dataclasses.replace(self, world=world, selection=selection)


def n_fits(cfg: Config) -> int:
    return len(cfg.alphas)


def score_predictions(
    predictions: dict[str, Any],
    ratings_logged: Any,
    observed: Any,
    p_observe: dict[str, Any],
    imputed_rating: float,
    add: Callable[[str, str, str, str, float], None],
    ratings_true: Any = None,
    methods: tuple[str, ...] = METHODS,
    k: int = 5,
) -> None:
    """Estimate MSE, MAE and DCG@K of each matrix with each method, and score them.

    This is how your own matrices enter: any dict of (U, I) prediction arrays.

    Args:
        predictions: name -> (U, I) finite predicted ratings.
        ratings_logged: (U, I) ratings, read at observed cells only.
        observed: (U, I) bool mask of the logged cells.
        p_observe: propensity source name -> (U, I) p_observe (read at observed
            cells); used by ips, snips, eib and dr, each source in turn.
        imputed_rating: the rating eib and dr impute in every cell.
        add: called as add(predictions_name, method, propensity, metric, value)
            for every row.
        ratings_true: optional (U, I) true ratings; when given, each estimate
            is scored against the truth (error, covered) and pairs of matrices
            ordered against their true order are counted.
        methods: names from ``METHODS``.
        k: the cut-off of DCG@K.
    """
    names = list(predictions)
    shape = np.shape(observed)
    matrices = {name: check_predictions(predictions[name], shape) for name in names}
    metrics = ("mse", "mae", f"dcg@{k}")
    estimates: dict[tuple[str, str, str], dict[str, float]] = {}
    truths: dict[tuple[str, str], float] = {}
    for name, matrix in matrices.items():
        for metric in metrics:
            kind = "dcg" if metric.startswith("dcg") else metric
            cut = k if kind == "dcg" else None
            imputed = matrix_cell_values(matrix, np.full(shape, imputed_rating), kind,
                                         cut)
            truth = None
            if ratings_true is not None:
                truth = matrix_metric(matrix, ratings_true, kind, cut)
                truths[name, metric] = truth
                add(name, "truth", "none", f"{metric}_truth", truth)
            for method in methods:
                sources = p_observe if method in _WEIGHTED else {"none": None}
                for source, p in sources.items():
                    estimate = estimate_matrix_metric(
                        matrix, ratings_logged, observed, p, kind, method, cut,
                        imputed=imputed if method in ("eib", "dr") else None)
                    estimates[method, source, metric, name] = estimate.value
                    if truth is None:
                        add(name, method, source, f"{metric}_estimate", estimate.value)
                        add(name, method, source, f"{metric}_se", estimate.se)
                        continue
                    for score, value in scored(estimate.value, estimate.se,
                                               estimate.ci_low, estimate.ci_high,
                                               truth).items():
                        if score in _SCORES:
                            add(name, method, source, f"{metric}_{score}", value)
    if ratings_true is None or len(names) < 2:
        return
    pairs = {(m, s) for m, s, _, _ in estimates}
    for (method, source), metric in itertools.product(sorted(pairs), metrics):
        flipped = total = 0
        for a, b in itertools.combinations(names, 2):
            true_gap = truths[a, metric] - truths[b, metric]
            if true_gap == 0.0:
                continue
            total += 1
            gap = (estimates[method, source, metric, a]
                   - estimates[method, source, metric, b])
            flipped += int(np.sign(gap) != np.sign(true_gap))
        if total:
            add("all", method, source, f"{metric}_misranked_pairs", flipped / total)


def run_seed(cfg: Config, seed: int, progress=None) -> list[dict]:
    """Rows of one seed: every alpha x matrix x metric x method x propensity."""
    cfg = cfg.resolve()
    e = cfg.evaluation
    sequence = np.random.SeedSequence(seed)
    world_seq, log_seq, matrix_seq = sequence.spawn(3)
    world = sample_world(cfg.world, cfg.world.marginal,
                         np.random.default_rng(world_seq))
    # One stream per built-in matrix, by its place in the registry, so that
    # choosing fewer matrices leaves the others' draws alone.
    matrix_seqs = dict(zip(PREDICTION_MATRICES, matrix_seq.spawn(
        len(PREDICTION_MATRICES))))
    rows: list[dict] = []

    for alpha in cfg.alphas:
        selection = dataclasses.replace(cfg.selection, alpha=alpha)
        # Common random numbers: the same observation and survey draws per alpha.
        log, truth = simulate_ratings(cfg.world, selection, SplitConfig(), cfg.mar,
                                      np.random.default_rng(log_seq), world=world)

        def add(name: str, method: str, source: str, metric: str,
                value: float) -> None:
            if not np.isfinite(value):
                raise FloatingPointError(f"{metric} of {method} x {source} on {name} "
                                         f"at alpha {alpha}, seed {seed} is {value}")
            rows.append({"seed": seed, "selection.alpha": alpha, "predictions": name,
                         "method": method, "propensity": source, "metric": metric,
                         "value": float(value)})

        users = log.observed["user"].to_numpy()
        items = log.observed["item"].to_numpy()
        stars = log.observed["rating"].to_numpy().astype(np.int64)
        observed = np.zeros((world.n_users, world.n_items), dtype=bool)
        observed[users, items] = True
        ratings_logged = np.full(observed.shape, np.nan)
        ratings_logged[users, items] = stars
        survey = log.mar[log.mar["reserved"]]["rating"].to_numpy().astype(np.int64)
        sources = {}
        for source in cfg.propensities:
            if source == "true":
                sources[source] = truth.p_observe
            else:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    per_star = naive_bayes_propensity(stars, observed.size, survey,
                                                      smoothing=e.smoothing,
                                                      n_levels=world.n_levels)
                for warning in caught:  # say where: seed and alpha
                    warnings.warn(f"seed {seed}, alpha {alpha:g}: {warning.message}",
                                  stacklevel=2)
                table = np.ones(observed.shape)
                table[users, items] = per_star[stars - 1]
                sources[source] = table
        imputed = (float(survey.mean()) if e.imputed_rating is None
                   else e.imputed_rating)
        add("all", "log", "none", "n_observed", float(stars.size))
        add("all", "log", "none", "imputed_rating", imputed)
        predictions = {name: make_predictions(
            name, world.ratings, truth.p_observe,
            np.random.default_rng(matrix_seqs[name])) for name in e.matrices}
        score_predictions(predictions, ratings_logged, observed, sources, imputed,
                          add, ratings_true=world.ratings.astype(np.float64),
                          methods=cfg.methods, k=e.k)
        if progress is not None:
            progress()
    return rows


# ------------------------------------------------------------------ report


def _meta(results, metric: str):
    part = results[results["predictions"] != "all"]
    return meta_evaluation(part, ["selection.alpha", "predictions", "method",
                                  "propensity"], prefix=f"{metric}_")


def figures(cfg: Config, results, summary, folder) -> list[str]:
    """Per metric: bias of each method x propensity vs alpha (one panel per
    matrix); share of misranked matrix pairs vs alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments.runner import write_atomic

    names = []
    for metric in cfg.evaluation.metrics():
        meta = _meta(results, metric)
        matrices = list(cfg.evaluation.matrices)
        fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 3.6),
                                 squeeze=False)
        for ax, name in zip(axes[0], matrices):
            part = meta[meta["predictions"] == name]
            for (method, source), group in part.groupby(["method", "propensity"],
                                                        sort=False):
                group = group.sort_values("selection.alpha")
                label = method if source == "none" else f"{method} {source}"
                ax.errorbar(group["selection.alpha"], group["bias"],
                            yerr=1.96 * group["bias_se"].fillna(0), marker="o",
                            capsize=3, label=label)
            ax.axhline(0.0, color="grey", linewidth=0.8)
            ax.set_xscale("log")
            ax.set_xlabel("selection.alpha (1 = missing at random)")
            ax.set_title(name, fontsize=9)
            ax.grid(alpha=0.3)
        axes[0, 0].set_ylabel(f"bias of the {metric} estimate")
        axes[0, -1].legend(fontsize=6)
        fig.tight_layout()
        file = f"bias_{metric.replace('@', '')}.png"
        write_atomic(folder / file, lambda p: fig.savefig(p, dpi=110, format="png"))
        plt.close(fig)
        names.append(file)

    from experiments.report import dose_response

    flips = summary[summary["metric"].str.endswith("_misranked_pairs")]
    if not flips.empty:
        metrics = [f"{m}_misranked_pairs" for m in cfg.evaluation.metrics()
                   if (flips["metric"] == f"{m}_misranked_pairs").any()]
        dose_response(flips, "selection.alpha", metrics, folder / "misranked.png", [])
        names.append("misranked.png")
    return names


def _wrong_orders(cfg: Config, results, metric: str, alpha: float):
    """Pairs that naive orders against the truth in at least half of the seeds:
    (pair, share of seeds, true means, naive means)."""
    part = results[(results["selection.alpha"] == alpha)
                   & (results["predictions"] != "all")]
    truth = part[part["metric"] == f"{metric}_truth"].pivot_table(
        index="seed", columns="predictions", values="value")
    naive = part[(part["method"] == "naive")
                 & (part["metric"] == f"{metric}_estimate")].pivot_table(
        index="seed", columns="predictions", values="value")
    out = []
    for a, b in itertools.combinations(cfg.evaluation.matrices, 2):
        if a not in truth or b not in truth or a not in naive or b not in naive:
            continue
        true_gap = np.sign(truth[a] - truth[b])
        gap = np.sign(naive[a] - naive[b])
        share = float(((gap != true_gap) & (true_gap != 0)).mean())
        if share >= 0.5:
            out.append(((a, b), share, float(truth[a].mean()), float(truth[b].mean()),
                        float(naive[a].mean()), float(naive[b].mean())))
    return out


def lesson(cfg: Config, results, summary) -> str:
    """The report's plain words, computed from the numbers."""
    n_seeds = results["seed"].nunique()
    e = cfg.evaluation
    alphas = sorted(cfg.alphas)
    harsh = alphas[0]
    lines = [f"{n_seeds} seed(s); a {cfg.world.n_users} x {cfg.world.n_items} world, "
             f"`value` selection at density {cfg.selection.resolved_density():g}, "
             f"alpha in {alphas}; matrices {', '.join(f'`{m}`' for m in e.matrices)}.",
             ""]
    for metric in e.metrics():
        meta = _meta(results, metric)
        cell = meta[meta["selection.alpha"] == harsh]
        if cell.empty:
            continue
        lines.append(f"**{metric.upper()} at alpha = {harsh:g}** (the strongest "
                     "selection), over seeds:")
        lines.append("")
        lines.append(markdown_table(cell, ["predictions", "method", "propensity"]))
        lines.append("")
    lines.append("**Where the naive average ranks two matrices in the wrong order** "
                 "in at least half of the seeds (share of seeds; true and naive "
                 "means; rarer flips are noise between near ties):")
    lines.append("")
    any_flip = False
    for metric in e.metrics():
        for alpha in alphas:
            for (a, b), share, ta, tb, na, nb in _wrong_orders(cfg, results, metric,
                                                                alpha):
                any_flip = True
                lines.append(f"- {metric}, alpha {alpha:g}: `{a}` vs `{b}` in "
                             f"{share:.0%} of seeds (truth {ta:.3f} vs {tb:.3f}, "
                             f"naive {na:.3f} vs {nb:.3f})")
    if not any_flip:
        lines.append("- none at these settings.")
    lines.append("")
    flips = summary[summary["metric"].str.endswith("_misranked_pairs")
                    & (summary["selection.alpha"] == harsh)]
    if not flips.empty:
        mean = flips.groupby(["method", "propensity"])["mean"].mean().sort_values()
        parts = ", ".join(f"`{m}`" + ("" if s == "none" else f" x `{s}`")
                          + f" {v:.2f}" for (m, s), v in mean.items())
        lines.append(f"Share of matrix pairs ordered wrongly at alpha = {harsh:g}, "
                     f"averaged over the metrics: {parts}.")
        lines.append("")
    lines.append("With alpha = 1 every star is logged alike and the naive average is "
                 "unbiased; the smaller alpha, the more the log over-represents high "
                 "ratings and the further the naive average drifts from the full "
                 "matrix. IPS and DR with the true propensities stay unbiased; with "
                 "naive-Bayes propensities they inherit the estimate's error.")
    return "\n".join(lines)
