"""ope-slate: off-policy evaluation of a ranking policy from logged slates.

What it teaches: with slates of K items the number of possible slates is
astronomical, so weighting whole slates is hopeless; the slate estimators of
Li, Kim and Zitouni (KDD 2018) weight each logged click by the ratio of the
two policies' chances of putting that item at that rank (``iips``) or of
getting it examined at all (``pbm-ips``). Both rest on a click model: under
position-based clicks they are unbiased, under cascade clicks (a click
depends on the items above it) they are not, and this experiment measures by
how much, beside the logged click rate (``naive``), which estimates the
logger's value instead of the target's.

Scenario (defaults): a world of 300 users x 100 items, click probability of
an examined item gamma_ui from `sim.relevance` (mean 0.1 over all pairs),
slates of K = 5. The logger is a Plackett-Luce softmax over a noisy
production score (noise sd 1, temperature 1) with 10% of slates uniform; the
target is a softmax over a better score (noise sd 0.5, temperature 0.5).
Each log has 5,000 visits of users drawn uniformly; relevance is drawn per
impression (R ~ Bernoulli(gamma), clicks noiseless: a click is "examined and
relevant"). The same visits, slates and relevance draws are clicked under
both examination models of ``click_models`` (common random numbers):
``pbm``, rank k examined with probability theta_k = (1/k)^eta, eta =
``examination.eta`` = 1, and ``cascade``, scanning from the top until the
first click. Rows carry the model as ``examination.model``.

The truth is the target's expected clicks per visit on the logged users:
under the PBM exactly, sum_k theta_k sum_i p_rank_pi(u, i, k) gamma_ui
(`sim.bandit.slate_value_pbm`); under the cascade by Monte Carlo over
``slate.cascade_draws`` target slates with exact expected clicks 1 - prod_k
(1 - gamma) per slate (`sim.bandit.slate_value_cascade`), its standard error
reported as ``truth_se`` (coverage is scored against the Monte Carlo value).
``pbm-ips`` uses theta_k = (1/k)^eta under both models: under the cascade
that is the analyst's PBM assumption, not a property of the clicks.

Per seed and click model each method gets the rows of
`experiments.ope_common.scored` (estimate, error, abs_error, rel_error,
covered, se); ``pbm-ips`` and ``iips`` also report ess, max_weight,
top_share and support_violations. The ``log`` rows give the truth
(``value_truth``, with ``truth_se``, 0 under the PBM) and the logger's own
value (``logger_value_truth``, exact under the PBM, Monte Carlo under the
cascade).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from estimators.ope_slate import estimate_slate_values
from experiments.ope_common import markdown_table, meta_evaluation, scored
from experiments.implicit_common import resolve_slate_world
from sim.bandit import slate_value_cascade, slate_value_pbm
from sim.behaviour import (
    EXAMINATION_MODELS,
    ClickConfig,
    EngagementConfig,
    ExaminationConfig,
    p_examine_by_rank,
    react,
)
from sim.config import check, check_unique
from sim.exposure import ExposureConfig, make_policy
from sim.relevance import RelevanceConfig, relevance_probability
from sim.world import WorldConfig, sample_world

NAME = "ope-slate"
DEFAULT_SEEDS = 100
METHODS = ("naive", "pbm-ips", "iips")
KEY_METRICS = ("error", "covered")
# The tour's size: fewer seeds and a cheaper cascade truth (Monte Carlo se
# still about 1e-3, far below the cascade bias it has to show).
TEACHING: dict[str, str] = {"slate.cascade_draws": "50000"}
TEACHING_SEEDS = 20
_Z95 = 1.959963984540054


@dataclass(frozen=True)
class SlateConfig:
    """Settings of the slate truth (keys ``slate.*``)."""

    cascade_draws: int = 100_000  # Monte Carlo slates for the cascade truth

    def __post_init__(self) -> None:
        ok = isinstance(self.cascade_draws, int) and not isinstance(
            self.cascade_draws, bool) and self.cascade_draws >= 2
        check(ok, "slate.cascade_draws", "an integer >= 2", self.cascade_draws)


@dataclass(frozen=True)
class Config:
    world: WorldConfig = field(default_factory=lambda: WorldConfig(n_users=300,
                                                                   n_items=100))
    relevance: RelevanceConfig = field(default_factory=lambda: RelevanceConfig(
        base_rate=0.1))
    exposure: ExposureConfig = field(default_factory=lambda: ExposureConfig(
        policy="softmax", slate_size=5, score_noise=1.0, temperature=1.0,
        epsilon=0.1, visits=5_000))
    target: ExposureConfig = field(default_factory=lambda: ExposureConfig(
        policy="softmax", slate_size=5, score_noise=0.5, temperature=0.5,
        epsilon=0.0, visits=5_000))
    examination: ExaminationConfig = field(default_factory=ExaminationConfig)
    slate: SlateConfig = field(default_factory=SlateConfig)
    click_models: tuple[str, ...] = EXAMINATION_MODELS
    methods: tuple[str, ...] = METHODS

    def __post_init__(self) -> None:
        object.__setattr__(self, "click_models", tuple(self.click_models))
        object.__setattr__(self, "methods", tuple(self.methods))
        check_unique(tuple(self.click_models), "click_models")
        check_unique(tuple(self.methods), "methods")
        check(len(self.click_models) >= 1, "click_models", "at least one model",
              self.click_models)
        for model in self.click_models:
            check(model in EXAMINATION_MODELS, "click_models",
                  "names from " + ", ".join(EXAMINATION_MODELS), model)
        check(len(self.methods) >= 1, "methods", "at least one method", self.methods)
        for method in self.methods:
            check(method in METHODS, "methods", "names from " + ", ".join(METHODS),
                  method)
        for key in ("exposure", "target"):
            policy = getattr(self, key).policy
            check(policy in ("uniform", "popularity", "softmax"), f"{key}.policy",
                  "one of uniform, popularity, softmax (a 'model' policy needs a "
                  "trained model)", policy)
        check(self.target.slate_size == self.exposure.slate_size, "target.slate_size",
              f"equal to exposure.slate_size ({self.exposure.slate_size})",
              self.target.slate_size)
        check(self.examination.model == "pbm", "examination.model",
              "'pbm' (the click models are set by click_models; examination.eta "
              "sets theta)", self.examination.model)

    def resolve(self) -> "Config":
        return resolve_slate_world(self)


def n_fits(cfg: Config) -> int:
    return len(cfg.click_models)


def run_seed(cfg: Config, seed: int, progress=None) -> list[dict]:
    """Rows of one seed: every click model x method, scored against the truth."""
    cfg = cfg.resolve()
    sequence = np.random.SeedSequence(seed)
    (world_seq, logger_seq, target_seq, visit_seq, slate_seq, relevance_seq,
     click_seq, truth_seq) = sequence.spawn(8)
    world = sample_world(cfg.world, cfg.world.marginal,
                         np.random.default_rng(world_seq))
    gamma, _ = relevance_probability(world.score, cfg.relevance)
    logger = make_policy(world, cfg.exposure, np.random.default_rng(logger_seq))
    target = make_policy(world, cfg.target, np.random.default_rng(target_seq))
    k = cfg.exposure.slate_size
    users = np.random.default_rng(visit_seq).integers(world.n_users,
                                                      size=cfg.exposure.visits)
    slates = logger.sample(users, np.random.default_rng(slate_seq))
    gamma_shown = gamma[users[:, None], slates]
    relevant = np.random.default_rng(relevance_seq).random(gamma_shown.shape) < (
        gamma_shown)
    theta = p_examine_by_rank(cfg.examination, k)
    logging_p_rank, target_p_rank = logger.p_rank_table(), target.p_rank_table()
    rows: list[dict] = []

    def add(model: str, method: str, metric: str, value: float) -> None:
        if not np.isfinite(value):
            raise FloatingPointError(f"{metric} of {method} under {model}, seed "
                                     f"{seed} is {value}")
        rows.append({"seed": seed, "examination.model": model, "method": method,
                     "propensity": "none" if method in ("log", "naive") else "true",
                     "metric": metric, "value": float(value)})

    for model in cfg.click_models:
        examination = dataclasses.replace(cfg.examination, model=model)
        # Common random numbers: the same click stream under every model.
        reaction = react(relevant, gamma_shown, examination, ClickConfig(),
                         EngagementConfig(), np.random.default_rng(click_seq))
        clicks = reaction.click.astype(np.float64)
        if model == "pbm":
            truth, truth_se = slate_value_pbm(target_p_rank, gamma, theta, users), 0.0
            logger_value = slate_value_pbm(logging_p_rank, gamma, theta, users)
        else:
            truth_rng, logger_rng = np.random.default_rng(truth_seq).spawn(2)
            truth, truth_se = slate_value_cascade(target, gamma, users,
                                                  cfg.slate.cascade_draws, truth_rng)
            logger_value, _ = slate_value_cascade(logger, gamma, users,
                                                  cfg.slate.cascade_draws, logger_rng)
        add(model, "log", "value_truth", truth)
        add(model, "log", "truth_se", truth_se)
        add(model, "log", "logger_value_truth", logger_value)
        if "naive" in cfg.methods:
            per_visit = clicks.sum(axis=1)
            mean = float(per_visit.mean())
            se = float(per_visit.std(ddof=1)) / np.sqrt(per_visit.size)
            for metric, value in scored(mean, se, mean - _Z95 * se, mean + _Z95 * se,
                                        truth).items():
                add(model, "naive", metric, value)
        names = [m for m in cfg.methods if m != "naive"]
        if names:
            estimates = estimate_slate_values(names, slates, clicks, users,
                                              logging_p_rank, target_p_rank, theta)
            for method, estimate in estimates.items():
                for metric, value in scored(estimate.value, estimate.se,
                                            estimate.ci_low, estimate.ci_high,
                                            truth).items():
                    add(model, method, metric, value)
                for metric in ("ess", "max_weight", "top_share",
                               "support_violations"):
                    add(model, method, metric, getattr(estimate, metric))
        if progress is not None:
            progress()
    return rows


def figures(cfg: Config, results, summary, folder) -> list[str]:
    """Error and coverage per method, one panel set per click model."""
    from experiments.report import interval_plot

    names = []
    for model in cfg.click_models:
        part = summary[(summary["examination.model"] == model)
                       & (summary["method"] != "log")]
        name = f"{model}.png"
        interval_plot(part, ["error", "covered"], folder / name,
                      f"{model} clicks: error against the truth (clicks per visit) "
                      "and 95% interval coverage")
        names.append(name)
    return names


def lesson(cfg: Config, results, summary) -> str:
    """The report's plain words, computed from the numbers."""
    n_seeds = results["seed"].nunique()
    meta = meta_evaluation(results, ["examination.model", "method"])
    lines = [f"{n_seeds} seed(s); a {cfg.world.n_users} x {cfg.world.n_items} world, "
             f"slates of {cfg.exposure.slate_size}, {cfg.exposure.visits:,} visits "
             f"per log; logger softmax (temperature {cfg.exposure.temperature:g}, "
             f"{cfg.exposure.epsilon:.0%} uniform slates), target softmax "
             f"(temperature {cfg.target.temperature:g}); theta_k = (1/k)^"
             f"{cfg.examination.eta:g}.", ""]
    lines.append("**Over seeds, per click model** (bias = mean error in clicks per "
                 "visit, SD of the error, RMSE, mean relative error, share of 95% "
                 "intervals holding the truth):")
    lines.append("")
    lines.append(markdown_table(meta, ["examination.model", "method"]))
    lines.append("")

    def get(model, method):
        part = meta[(meta["examination.model"] == model) & (meta["method"] == method)]
        return None if part.empty else part.iloc[0]

    for model, verdict in (("pbm", "unbiased by construction"),
                           ("cascade", "outside the model they assume")):
        parts = []
        for method in ("pbm-ips", "iips", "naive"):
            row = get(model, method)
            if row is None or not np.isfinite(row["bias_se"]) or row["bias_se"] == 0:
                continue
            z = row["bias"] / row["bias_se"]
            parts.append(f"`{method}` bias {row['bias']:+.4f} ({z:+.1f} Monte Carlo "
                         f"SE), coverage {row['coverage']:.2f}")
        if parts:
            lines.append(f"- **{model}** ({verdict}): " + "; ".join(parts) + ".")
    truth_se = results[(results["metric"] == "truth_se")
                       & (results["examination.model"] == "cascade")]["value"]
    lines.append("")
    if not truth_se.empty:
        lines.append(f"The cascade truth is a Monte Carlo mean with standard error "
                     f"{truth_se.mean():.1e} on average, small next to the "
                     "estimators' errors. Under position-based clicks the item "
                     "estimators recover the target's value from the logger's "
                     "slates; under cascade clicks a click on an item also depends "
                     "on the items ranked above it, which both estimators ignore, "
                     "and their bias is the price of that assumption.")
    return "\n".join(lines)
