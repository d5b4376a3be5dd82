"""position-bias: clicks under position bias, and position-IPS with three curves.

What it teaches: users examine the top of a slate far more than the bottom,
so a click says "relevant and examined", and examination depends on the rank
the logger chose. A click model fitted naively learns the logger's ranking
back. Weighting each impression by 1 / theta_k (position-IPS, Joachims,
Swaminathan, Schnabel, WSDM 2017) makes the click loss an unbiased estimate of
the loss on true relevance, if theta is right; theta is not in the log, so it
is estimated from a few randomised swaps (RandPair) or by regression EM on the
ordinary log (Wang et al., WSDM 2018), and the lab shows how much each
estimate costs against the true curve.

Scenario (defaults): a 1,000 users x 400 items world; the logger is a softmax
(Plackett-Luce) over a noisy production score (noise sd 1, temperature 0.5),
so which item lands at which rank depends on the item; slates of K = 10;
24,000 visits per log (240,000 impressions), 5% of them RandPair swap visits
that do not feed training; position-based examination theta_k = (1/k)^eta
swept over eta = 0, 0.5, 1, 2, noiseless clicks. For each eta the same
users, slates and relevance are drawn (common random numbers), only the
examinations differ. Methods, identical in model (16-dimensional MF),
objective (pointwise click log-loss) and hyperparameters except for the
weights: `naive` (weight 1), `ips-true` (1/theta_k), `ips-swap` (RandPair
curve), `ips-em` (EM curve); plus `oracle` (the same loss on the true
relevance of the same impressions) and `random` (random scores). Every fit
trains the same 8 epochs (patience = max_epochs: no early stop, so no method
trains longer than another) and keeps its epoch with the best validation loss
of its own kind. The IPS labels c / theta_k exceed 1 at low ranks, where the
pointwise log-loss has no lower bound; a fixed budget keeps that from turning
into a difference in training length.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import jax
import numpy as np

from estimators.implicit import ImplicitConfig, impressions_from_log
from estimators.position import (
    position_bias_em,
    position_bias_randpair,
    propensity_error,
)
from estimators.train import TrainConfig, fit_implicit
from experiments.implicit_common import (
    resolve_slate_world,
    RANKING_METRICS,
    model_scores,
    pair_features,
    score_ranking,
    split_visits,
)
from sim.behaviour import ClickConfig, EngagementConfig, ExaminationConfig
from sim.config import check, check_range, check_unique
from sim.exposure import (
    ExposureConfig,
    InterventionConfig,
    make_policy,
)
from sim.implicit import simulate_implicit
from sim.relevance import RelevanceConfig
from sim.world import WorldConfig, sample_world

NAME = "position-bias"
DEFAULT_SEEDS = 5
METHODS = ("naive", "ips-true", "ips-swap", "ips-em", "oracle", "random")
KEY_METRICS = ("ndcg@10_truth", "recall@10_truth")
TEACHING: dict[str, str] = {"etas": "[0.0, 1.0]"}
TEACHING_SEEDS = 3
OBJECTIVE = {"naive": "click_naive", "ips-true": "click_ips", "ips-swap": "click_ips",
             "ips-em": "click_ips", "oracle": "click_oracle"}


@dataclass(frozen=True)
class EMConfig:
    """Regression EM settings (keys ``em.*``)."""

    iterations: int = 200
    tol: float = 1e-6

    def __post_init__(self) -> None:
        ok = isinstance(self.iterations, int) and self.iterations >= 1
        check(ok, "em.iterations", "an integer >= 1", self.iterations)
        check_range(self.tol, "em.tol", 0.0, low_open=True)


@dataclass(frozen=True)
class Config:
    world: WorldConfig = field(default_factory=lambda: WorldConfig(n_items=400))
    relevance: RelevanceConfig = field(default_factory=RelevanceConfig)
    exposure: ExposureConfig = field(default_factory=lambda: ExposureConfig(
        policy="softmax", visits=24_000))
    examination: ExaminationConfig = field(default_factory=ExaminationConfig)
    click: ClickConfig = field(default_factory=ClickConfig)
    engagement: EngagementConfig = field(default_factory=EngagementConfig)
    intervention: InterventionConfig = field(default_factory=InterventionConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        optimizer="sparse", lr=0.03, l2=1e-4, l2_grid=(1e-4,), batch_size=2048,
        max_epochs=8, patience=8))
    implicit: ImplicitConfig = field(default_factory=ImplicitConfig)
    em: EMConfig = field(default_factory=EMConfig)
    valid_share: float = 0.1  # share of training visits held out for stopping
    etas: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    methods: tuple[str, ...] = METHODS

    def __post_init__(self) -> None:
        object.__setattr__(self, "etas", tuple(float(e) for e in self.etas))
        object.__setattr__(self, "methods", tuple(self.methods))
        check(len(self.etas) >= 1, "etas", "at least one value", self.etas)
        for eta in self.etas:
            # theta_10 = 10^-eta underflows long before eta = 30
            check_range(eta, "etas", 0.0, 30.0)
        check_unique(self.etas, "etas")
        check_unique(self.methods, "methods")
        check(self.examination.eta == ExaminationConfig().eta, "examination.eta",
              f"left at {ExaminationConfig().eta} (each run sweeps `etas`; set etas "
              "instead)", self.examination.eta)
        for method in self.methods:
            check(method in METHODS, "methods", "names from " + ", ".join(METHODS),
                  method)
        check(self.examination.model == "pbm", "examination.model",
              "'pbm' (the experiment estimates a position-based curve)",
              self.examination.model)
        check_range(self.valid_share, "valid_share", 0.0, 1.0, low_open=True,
                    high_open=True)
        check(self.intervention.swap_share > 0 or "ips-swap" not in self.methods,
              "intervention.swap_share", "> 0 when ips-swap runs",
              self.intervention.swap_share)

    def resolve(self) -> "Config":
        return resolve_slate_world(self)


def n_fits(cfg: Config) -> int:
    return len(cfg.etas) * len(cfg.methods)


def run_seed(cfg: Config, seed: int, progress=None) -> list[dict]:
    """Rows of one seed: every eta x method, scored against the truth."""
    cfg = cfg.resolve()
    sequence = np.random.SeedSequence(seed)
    world_seq, policy_seq, log_seq, split_seq, random_seq = sequence.spawn(5)
    key = jax.random.key(int(sequence.generate_state(1)[0]))
    world = sample_world(cfg.world, cfg.world.marginal, np.random.default_rng(world_seq))
    policy = make_policy(world, cfg.exposure, np.random.default_rng(policy_seq))
    k = cfg.exposure.slate_size
    rows: list[dict] = []

    def add(eta: float, method: str, metric: str, value: float) -> None:
        if not np.isfinite(value):
            raise FloatingPointError(f"{metric} of {method} at eta {eta}, seed {seed}"
                                     f" is {value}")
        rows.append({"seed": seed, "examination.eta": eta, "method": method,
                     "propensity": "none", "metric": metric, "value": float(value)})

    for eta_index, eta in enumerate(cfg.etas):
        examination = dataclasses.replace(cfg.examination, eta=eta)
        # Common random numbers: the same stream for every eta.
        # (A fresh SeedSequence each time: spawning from a shared one would
        # advance it and give each eta other draws.)
        log_rng = np.random.default_rng(np.random.SeedSequence(
            log_seq.entropy, spawn_key=log_seq.spawn_key))
        log, truth = simulate_implicit(
            world, log_rng, relevance=cfg.relevance,
            exposure=cfg.exposure, examination=examination, click=cfg.click,
            engagement=cfg.engagement, intervention=cfg.intervention, policy=policy)
        impressions = log.impressions
        training = log.training()
        truth_rows = truth.impressions.loc[training.index]
        valid_visits = split_visits(log.visits.shape[0], cfg.valid_share,
                                    np.random.default_rng(split_seq))
        is_valid = valid_visits[training["visit"].to_numpy()]
        theta_true = truth.theta

        swap = position_bias_randpair(
            impressions["original_position"].to_numpy(),
            impressions["position"].to_numpy(), impressions["click"].to_numpy(),
            impressions["swapped"].to_numpy(), k)
        users, items = training["user"].to_numpy(), training["item"].to_numpy()
        # The relevance model of EM reads observable pair features and the
        # logged log p_shown, which stands for the production model's own score
        # (the system knows it); never the truth.
        features = np.column_stack([pair_features(world, users, items),
                                    np.log(training["p_shown"].to_numpy())])
        em = position_bias_em(training["position"].to_numpy(),
                              training["click"].to_numpy().astype(np.int64),
                              features, k, iterations=cfg.em.iterations,
                              tol=cfg.em.tol)
        estimated = {"ips-swap": swap.theta, "ips-em": em.theta}
        for method, curve in estimated.items():
            if method in cfg.methods:
                add(eta, method, "propensity_error",
                    propensity_error(curve, theta_true, ranks=tuple(range(2, k + 1))))
        # Estimated curves are relative to rank 1 (theta_1 = 1 is assumed: the
        # top rank is always examined); sampling noise can put a rank above 1
        # or at 0, so they are clipped into [implicit.propensity_floor, 1].
        floor = cfg.implicit.propensity_floor
        curves = {"ips-true": theta_true,
                  **{m: np.clip(c, floor, 1.0) for m, c in estimated.items()}}

        train_positives = np.zeros((world.n_users, world.n_items), dtype=bool)
        clicked = training[training["click"].to_numpy() & ~is_valid]
        train_positives[clicked["user"].to_numpy(), clicked["item"].to_numpy()] = True
        relevant = truth_rows["relevant"].to_numpy()
        # One initialisation and shuffling key for every method at this eta, so
        # the methods differ only in their weights.
        fit_key = jax.random.fold_in(key, eta_index)
        for method in cfg.methods:
            if method == "random":
                scores = np.random.default_rng(random_seq).random(
                    (world.n_users, world.n_items))
            else:
                theta = curves.get(method)
                rel = relevant if method == "oracle" else None
                data = impressions_from_log(training, theta=theta, relevance=rel)
                train = _subset(data, ~is_valid)
                valid = _subset(data, is_valid)
                result = fit_implicit(
                    OBJECTIVE[method], train, valid, world.n_users, world.n_items,
                    cfg.train, cfg.implicit,
                    fit_key)
                scores = model_scores(result.params)
                add(eta, method, "epochs", result.epochs_run)
            metrics = score_ranking(scores, truth.gamma, truth.relevant,
                                    train_positives, world.popularity,
                                    metrics=RANKING_METRICS[:2])
            for name, value in metrics.items():
                add(eta, method, name, value)
            if progress is not None:
                progress()
    return rows


def _subset(data, mask: np.ndarray):
    return type(data)(*(None if v is None else np.asarray(v)[mask] for v in data))


def figures(cfg: Config, results, summary, folder) -> list[str]:
    """ndcg@10 and recall@10 vs eta per method; propensity error vs eta."""
    from experiments.report import dose_response

    summary = summary.copy()
    dose_response(summary, "examination.eta", list(KEY_METRICS),
                  folder / "metrics_vs_eta.png", [])
    dose_response(summary, "examination.eta", ["propensity_error"],
                  folder / "propensity_error_vs_eta.png", [])
    return ["metrics_vs_eta.png", "propensity_error_vs_eta.png"]


def lesson(cfg: Config, results, summary) -> str:
    """The report's plain words, computed from the numbers."""
    from experiments.report import paired_t

    n_seeds = results["seed"].nunique()

    def mean(method, metric, eta):
        row = summary[(summary["method"] == method) & (summary["metric"] == metric)
                      & (summary["examination.eta"] == eta)]
        return None if row.empty else float(row["mean"].iloc[0])

    lines = [f"{n_seeds} seed(s); a {cfg.world.n_users} x {cfg.world.n_items} world, "
             f"softmax logger, slates of {cfg.exposure.slate_size}, "
             f"{cfg.exposure.visits:,} visits per log; examination theta_k = "
             f"(1/k)^eta for eta in {list(cfg.etas)}.", ""]
    for eta in cfg.etas:
        naive, ips = mean("naive", "ndcg@10_truth", eta), mean("ips-true",
                                                               "ndcg@10_truth", eta)
        oracle = mean("oracle", "ndcg@10_truth", eta)
        if naive is None or ips is None:
            continue
        t, n = paired_t(results, "ndcg@10_truth",
                        {"method": "ips-true", "examination.eta": eta},
                        {"method": "naive", "examination.eta": eta})
        tail = f" (paired t = {t:.2f} over {n} seeds)" if t is not None else ""
        verdict = "above" if ips > naive else "not above"
        lines.append(f"- **eta = {eta:g}**: `ips-true` ndcg@10 {ips:.4f}, {verdict} "
                     f"`naive` {naive:.4f}{tail}; `oracle` {oracle:.4f}.")
    lines.append("")
    errors = summary[summary["metric"] == "propensity_error"]
    if not errors.empty:
        parts = ", ".join(f"`{r['method']}` at eta {r['examination.eta']:g}: "
                          f"{r['mean']:.3f}" for _, r in errors.iterrows())
        lines.append("**Estimated curves.** Mean relative error of theta_k/theta_1 "
                     f"over ranks 2..10: {parts}.")
        lines.append("")
    lines.append("With eta = 0 every rank is examined: the true curve is flat, so "
                 "`ips-true` trains exactly as `naive`, and a click is the relevance "
                 "itself, so both equal `oracle`. The stronger the position bias, the "
                 "more the naive click model learns the logger's ranking instead of "
                 "relevance, and the more the 1/theta_k weights matter. A wrong curve "
                 "carries its error into the weights.")
    flat = min(cfg.etas)
    oracle = mean("oracle", "ndcg@10_truth", flat)
    above = [(m, mean(m, "ndcg@10_truth", flat)) for m in ("ips-swap", "ips-em")]
    above = [(m, v) for m, v in above if v is not None and oracle is not None
             and v > oracle]
    if above:
        parts = ", ".join(f"`{m}` {v:.4f}" for m, v in above)
        lines.append("")
        lines.append(
            f"**The oracle is not a ceiling on ndcg.** At eta = {flat:g} the estimated "
            f"curves sit a little below 1, so their labels c / theta exceed 1 and weigh "
            f"clicks more: {parts} against `oracle` {oracle:.4f}. The oracle is the "
            "best fit of the log-loss, and a heavier weight on the rare positives "
            "moves a ranking metric on its own; compare methods at the same eta, "
            "where only the weights differ.")
    return "\n".join(lines)
