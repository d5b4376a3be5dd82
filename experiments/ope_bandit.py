"""ope: off-policy evaluation of a recommender from its own logged clicks.

What it teaches: the average reward in a log is the value of the policy that
wrote the log, not of the one we would like to deploy. Importance weighting
(IPS and its relatives) reweights the log towards the target and is unbiased
with the true logging probabilities, at a price in variance that grows with
how far the logger is from the target; capping the weights buys the variance
back with bias; a reward model (DM) has no variance problem but carries its
own bias, and doubly robust estimators combine the two. Every estimate here
is scored against the exact value of the target, with the estimator's own
95% interval checked for coverage.

Scenario (defaults): a world of 1,000 users and A = 20 items (the actions);
the expected reward of showing item a to user u is the click probability
q(u, a) = gamma_ua of `sim.relevance` (mean 0.1 over all pairs). One round =
one visit: a user drawn uniformly, one item shown, one click or not. The
logger is a softmax over a noisy production score (the world's latent score
plus N(0, 1) noise drawn once per pair) at temperature 1, mixed with 5%
uniform exploration (every importance weight is then at most A / 0.05 =
400). The target is a softmax over a better score (noise sd 0.5) at
temperature 0.5, without exploration. Each log has 10,000 rounds. The value
is the exact expected clicks per round of the target on the logged users,
V = (1/n) sum_i sum_a pi(a | u_i) q(u_i, a) (`sim.bandit.policy_value`).

Sweeps, all on one world and one set of logged users per seed (common random
numbers: the grid points differ only in the logger): the logging temperature
over ``temperatures`` at the default mixing share, the mixing share over
``epsilons`` at the default temperature, and the cap of ``ips-cap`` over
``weight_caps`` on the default cell's log. Rows carry the grid point as
``ope.logging_temperature``, ``ope.epsilon`` and ``ope.weight_cap``.

Methods (`estimators.ope`): ``naive`` (the logged mean reward with its i.i.d.
interval), ``dm``, ``ips``, ``snips``, ``ips-cap`` (cap ``ope.weight_cap``),
``dr``, ``sndr``, ``switch-dr`` (threshold chosen by the rule of Wang et al.
2017, reward bound 1). The reward model of dm / dr / sndr / switch-dr is the
per-action ridge regression of `estimators.ope.cross_fit_rewards` on the
user's observable side features (`World.user_view`, `World.user_covariates`),
cross-fitted over ``ope.folds`` folds.

Per seed and grid point each method gets the rows of
`experiments.ope_common.scored` (estimate, error, abs_error, rel_error,
covered, se); ``ips``, ``ips-cap`` and ``switch-dr`` also report the
diagnostics of the weights they apply (ess, max_weight, top_share, n_capped;
snips, dr and sndr apply the plain weights of ips), switch-dr its threshold.
The ``log`` rows give the truth (``value_truth``), the logger's own value
(``logger_value_truth``) and the skew of the logger against the target,
``mean_sq_weight`` = (1/n) sum_i sum_a pi^2 / mu, the exact E[w^2] that
scales the variance of IPS (1 when the logger is the target). Bias, SD, RMSE,
relative error and coverage over seeds are computed in the report
(`experiments.ope_common.meta_evaluation`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from estimators.ope import cross_fit_rewards, estimate_policy_values
from experiments.ope_common import markdown_table, meta_evaluation, scored
from sim.bandit import policy_value, simulate_bandit, softmax_policy
from sim.config import check, check_range, check_unique
from sim.relevance import RelevanceConfig, relevance_probability
from sim.world import MUSIC_MARGINAL, WorldConfig, sample_world

NAME = "ope"
DEFAULT_SEEDS = 200
METHODS = ("naive", "dm", "ips", "snips", "ips-cap", "dr", "sndr", "switch-dr")
KEY_METRICS = ("error", "covered")
# The tour's size: fewer seeds and a shorter sweep; the naive bias, the
# variance of IPS at high skew and the cap's trade-off all show at once.
TEACHING: dict[str, str] = {"temperatures": "[0.25, 1.0, 4.0]",
                            "epsilons": "[0.05, 0.5]"}
TEACHING_SEEDS = 40
_DIAGNOSED = ("ips", "ips-cap", "switch-dr")  # methods with their own weights
_SWEPT = ("ope.logging_temperature", "ope.epsilon", "ope.weight_cap")


@dataclass(frozen=True)
class OpeConfig:
    """The bandit log, the two policies and the estimators' settings (``ope.*``).

    Temperatures are of softmax(score / T); noise sds are in units of the
    world's latent score (whose spread over pairs is about 1).
    """

    rounds: int = 10_000  # logged rounds n per log
    logging_temperature: float = 1.0  # the default cell's logging temperature
    logging_noise: float = 1.0  # sd of the logger's production-score noise
    epsilon: float = 0.05  # the default cell's uniform mixing share
    target_temperature: float = 0.5
    target_noise: float = 0.5  # sd of the target's score noise
    weight_cap: float = 10.0  # cap c of ips-cap in every cell but the cap sweep
    folds: int = 2  # cross-fitting folds of the reward model
    ridge: float = 1.0  # ridge penalty of the reward model

    def __post_init__(self) -> None:
        for key in ("rounds", "folds"):
            value = getattr(self, key)
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 2
            check(ok, f"ope.{key}", "an integer >= 2", value)
        check(self.rounds >= self.folds, "ope.rounds", f">= ope.folds ({self.folds})",
              self.rounds)
        for key in ("logging_temperature", "target_temperature", "weight_cap",
                    "ridge"):
            check_range(getattr(self, key), f"ope.{key}", 0.0, low_open=True)
        for key in ("logging_noise", "target_noise"):
            check_range(getattr(self, key), f"ope.{key}", 0.0)
        check_range(self.epsilon, "ope.epsilon", 0.0, 1.0)


@dataclass(frozen=True)
class Config:
    world: WorldConfig = field(default_factory=lambda: WorldConfig(n_items=20))
    relevance: RelevanceConfig = field(default_factory=lambda: RelevanceConfig(
        base_rate=0.1))
    ope: OpeConfig = field(default_factory=OpeConfig)
    temperatures: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    epsilons: tuple[float, ...] = (0.05, 0.2, 0.5)
    weight_caps: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
    methods: tuple[str, ...] = METHODS

    def __post_init__(self) -> None:
        for key in ("temperatures", "epsilons", "weight_caps"):
            object.__setattr__(self, key, tuple(float(v) for v in getattr(self, key)))
        object.__setattr__(self, "methods", tuple(self.methods))
        check_unique(tuple(self.temperatures), "temperatures")
        check_unique(tuple(self.epsilons), "epsilons")
        check_unique(tuple(self.weight_caps), "weight_caps")
        check_unique(tuple(self.methods), "methods")
        for value in self.temperatures:
            check_range(value, "temperatures", 0.0, low_open=True)
        for value in self.epsilons:
            check_range(value, "epsilons", 0.0, 1.0)
        for value in self.weight_caps:
            check_range(value, "weight_caps", 0.0, low_open=True)
        check(len(self.methods) >= 1, "methods", "at least one method", self.methods)
        for method in self.methods:
            check(method in METHODS, "methods", "names from " + ", ".join(METHODS),
                  method)
        check(self.world.n_items >= 2, "world.n_items",
              "an integer >= 2 (the actions)", self.world.n_items)

    def resolve(self) -> "Config":
        if self.world.marginal is None:
            return dataclasses.replace(self, world=dataclasses.replace(
                self.world, marginal=MUSIC_MARGINAL))
        return self

    def cells(self) -> list[tuple[float, float]]:
        """The (logging temperature, epsilon) grid points, default cell first."""
        default = (self.ope.logging_temperature, self.ope.epsilon)
        points = [(t, self.ope.epsilon) for t in self.temperatures]
        points += [(self.ope.logging_temperature, e) for e in self.epsilons]
        return [default] + sorted(set(points) - {default})


def n_fits(cfg: Config) -> int:
    return len(cfg.cells())


def run_seed(cfg: Config, seed: int, progress=None) -> list[dict]:
    """Rows of one seed: every grid point x method, scored against the truth."""
    cfg = cfg.resolve()
    o = cfg.ope
    sequence = np.random.SeedSequence(seed)
    world_seq, noise_seq, context_seq, log_seq, fold_seq = sequence.spawn(5)
    world = sample_world(cfg.world, cfg.world.marginal,
                         np.random.default_rng(world_seq))
    q, _ = relevance_probability(world.score, cfg.relevance)  # (U, A)
    score = world.score.astype(np.float64)
    noise_rng = np.random.default_rng(noise_seq)
    target_score = score + o.target_noise * noise_rng.standard_normal(score.shape)
    logging_score = score + o.logging_noise * noise_rng.standard_normal(score.shape)
    target_table = softmax_policy(target_score, o.target_temperature)

    contexts = np.random.default_rng(context_seq).integers(world.n_users,
                                                           size=o.rounds)
    target = target_table[contexts]  # (n, A)
    truth = policy_value(target, q[contexts])
    features = np.column_stack([world.user_view, world.user_covariates])[contexts]
    rows: list[dict] = []

    def add(point, method: str, metric: str, value: float, cap: float) -> None:
        if not np.isfinite(value):
            raise FloatingPointError(f"{metric} of {method} at {point}, seed {seed} "
                                     f"is {value}")
        rows.append({"seed": seed, "ope.logging_temperature": point[0],
                     "ope.epsilon": point[1], "ope.weight_cap": cap,
                     "method": method, "propensity": "none" if method in (
                         "log", "naive", "dm") else "true", "metric": metric,
                     "value": float(value)})

    for index, point in enumerate(cfg.cells()):
        logging_table = softmax_policy(logging_score, point[0], point[1])
        # Common random numbers: the same stream draws every grid point's log.
        log = simulate_bandit(q, logging_table, o.rounds,
                              np.random.default_rng(log_seq), contexts=contexts)
        cap = o.weight_cap
        add(point, "log", "value_truth", truth, cap)
        add(point, "log", "logger_value_truth",
            policy_value(log.logging, q[contexts]), cap)
        add(point, "log", "mean_sq_weight",
            float(np.einsum("ij,ij->", target, target / log.logging)) / o.rounds, cap)

        if "naive" in cfg.methods:
            mean = float(log.rewards.mean())
            se = float(log.rewards.std(ddof=1)) / np.sqrt(o.rounds)
            for metric, value in scored(mean, se, mean - 1.959963984540054 * se,
                                        mean + 1.959963984540054 * se, truth).items():
                add(point, "naive", metric, value, cap)
        names = [m for m in cfg.methods if m != "naive"]
        if names:
            predictions = None
            if set(names) & {"dm", "dr", "sndr", "switch-dr"}:
                predictions = cross_fit_rewards(
                    log.actions, log.rewards, world.n_items,
                    np.random.default_rng(fold_seq), n_folds=o.folds,
                    features=features, l2=o.ridge)
            estimates = estimate_policy_values(
                names, target, log.actions, log.rewards, log.logging, predictions,
                weight_cap=o.weight_cap)
            for method, estimate in estimates.items():
                _add_estimate(add, point, method, estimate, truth, cap)
            if index == 0 and "ips-cap" in names:
                caps = [c for c in cfg.weight_caps if c != o.weight_cap]
                for c in caps:
                    estimate = estimate_policy_values(
                        ["ips-cap"], target, log.actions, log.rewards, log.logging,
                        weight_cap=c)["ips-cap"]
                    _add_estimate(add, point, "ips-cap", estimate, truth, c)
        if progress is not None:
            progress()
    return rows


def _add_estimate(add, point, method, estimate, truth, cap) -> None:
    for metric, value in scored(estimate.value, estimate.se, estimate.ci_low,
                                estimate.ci_high, truth).items():
        add(point, method, metric, value, cap)
    if method in _DIAGNOSED:
        for metric in ("ess", "max_weight", "top_share", "n_capped"):
            add(point, method, metric, getattr(estimate, metric), cap)
    if method == "switch-dr":
        add(point, method, "threshold", estimate.threshold, cap)


# ------------------------------------------------------------------ report


def _default(cfg: Config, frame):
    return frame[(frame["ope.logging_temperature"] == cfg.ope.logging_temperature)
                 & (frame["ope.epsilon"] == cfg.ope.epsilon)
                 & (frame["ope.weight_cap"] == cfg.ope.weight_cap)]


def _skew(results):
    """Mean over seeds of mean_sq_weight per (temperature, epsilon)."""
    part = results[results["metric"] == "mean_sq_weight"]
    return part.groupby(list(_SWEPT[:2]))["value"].mean()


def figures(cfg: Config, results, summary, folder) -> list[str]:
    """RMSE vs skew per estimator; bias, SD and RMSE of ips-cap vs the cap;
    coverage and error at the default cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments.report import interval_plot
    from experiments.runner import write_atomic

    meta = meta_evaluation(results, ["method", *_SWEPT])
    skew = _skew(results)
    cells = meta[meta["ope.weight_cap"] == cfg.ope.weight_cap].copy()
    cells["skew"] = [skew.get((t, e), np.nan) for t, e in
                     zip(cells["ope.logging_temperature"], cells["ope.epsilon"])]
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, group in cells.groupby("method", sort=False):
        group = group.sort_values("skew")
        ax.plot(group["skew"], group["rmse"], marker="o", label=method)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("skew of the logger: E[w^2] = mean sum_a pi^2 / mu (1 = on-policy)")
    ax.set_ylabel("RMSE (clicks per round)")
    ax.set_title("Error against the truth as the logger moves away from the target")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_atomic(folder / "rmse_vs_skew.png",
                 lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)

    capped = meta[(meta["method"] == "ips-cap")
                  & (meta["ope.logging_temperature"] == cfg.ope.logging_temperature)
                  & (meta["ope.epsilon"] == cfg.ope.epsilon)].sort_values(
                      "ope.weight_cap")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(capped["ope.weight_cap"], capped["bias"].abs(), marker="o",
            label="|bias|")
    ax.plot(capped["ope.weight_cap"], capped["sd"], marker="s", label="SD")
    ax.plot(capped["ope.weight_cap"], capped["rmse"], marker="^", label="RMSE")
    ips = _default(cfg, meta)
    ips = ips[ips["method"] == "ips"]
    if not ips.empty:
        ax.axhline(float(ips["rmse"].iloc[0]), color="grey", linestyle="--",
                   label="RMSE of ips (no cap)")
    ax.set_xscale("log")
    ax.set_xlabel("weight cap c of ips-cap")
    ax.set_ylabel("clicks per round")
    ax.set_title("Capping the weights: bias against variance (default cell)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_atomic(folder / "bias_variance_vs_cap.png",
                 lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)

    cell = _default(cfg, summary)
    cell = cell[cell["method"] != "log"]
    interval_plot(cell, ["error", "covered"], folder / "default_cell.png",
                  "Default cell: error against the truth and 95% interval coverage")
    return ["rmse_vs_skew.png", "bias_variance_vs_cap.png", "default_cell.png"]


def lesson(cfg: Config, results, summary) -> str:
    """The report's plain words, computed from the numbers."""
    o = cfg.ope
    n_seeds = results["seed"].nunique()
    meta = meta_evaluation(results, ["method", *_SWEPT])
    default = _default(cfg, meta)
    truth = _default(cfg, results)
    truth = truth[truth["metric"] == "value_truth"]["value"]
    lines = [f"{n_seeds} seed(s); a world of {cfg.world.n_users} users and "
             f"{cfg.world.n_items} actions, {o.rounds:,} logged rounds per log. "
             f"Default cell: logging softmax at temperature {o.logging_temperature:g} "
             f"with {o.epsilon:.0%} uniform exploration, target softmax at "
             f"temperature {o.target_temperature:g}, ips-cap at c = "
             f"{o.weight_cap:g}. Mean true value of the target "
             f"{truth.mean():.4f} clicks per round.", ""]
    lines.append("**Default cell, over seeds** (bias = mean error, SD of the error, "
                 "RMSE, mean relative error |error| / truth, share of 95% "
                 "intervals holding the truth):")
    lines.append("")
    lines.append(markdown_table(default, ["method"]))
    lines.append("")

    def row(method):
        part = default[default["method"] == method]
        return None if part.empty else part.iloc[0]

    naive = row("naive")
    if naive is not None and np.isfinite(naive["bias_se"]) and naive["bias_se"] > 0:
        z = abs(naive["bias"]) / naive["bias_se"]
        lines.append(f"**The log's own average misleads.** `naive` is off by "
                     f"{naive['bias']:+.4f} on average, {z:.0f} "
                     "Monte Carlo standard errors from zero: it estimates the value of "
                     "the logger, not of the target.")
        lines.append("")
    inside = [m for m in ("ips", "snips", "dr", "sndr")
              if row(m) is not None and 0.90 <= row(m)["coverage"] <= 0.98]
    outside = [f"`{m}` {row(m)['coverage']:.3f}" for m in ("ips", "snips", "dr", "sndr")
               if row(m) is not None and m not in inside]
    if inside or outside:
        text = ", ".join(f"`{m}` {row(m)['coverage']:.3f}" for m in inside)
        lines.append(f"**Coverage** of the 95% intervals over {n_seeds} seeds in the "
                     f"default cell, between 0.90 and 0.98 for: {text or 'none'}"
                     + (f"; outside that range: {', '.join(outside)}" if outside
                        else "") + ". "
                     "`dm`'s interval ignores the reward model's bias and "
                     "`ips-cap`'s the cap's, so their coverage says how large those "
                     "biases are.")
        lines.append("")
    skew = _skew(results)
    if len(skew) > 1:
        worst, best = skew.idxmax(), skew.idxmin()
        parts = []
        for method in ("ips", "snips", "dr", "switch-dr", "dm"):
            at = {}
            for point in (best, worst):
                part = meta[(meta["method"] == method)
                            & (meta["ope.logging_temperature"] == point[0])
                            & (meta["ope.epsilon"] == point[1])
                            & (meta["ope.weight_cap"] == o.weight_cap)]
                if not part.empty:
                    at[point] = float(part["rmse"].iloc[0])
            if len(at) == 2:
                parts.append(f"`{method}` {at[best]:.4f} -> {at[worst]:.4f}")
        lines.append(f"**Skew costs variance.** From the mildest logger (temperature "
                     f"{best[0]:g}, exploration {best[1]:g}; E[w^2] = "
                     f"{skew[best]:.2f}) to the harshest (temperature {worst[0]:g}, "
                     f"exploration {worst[1]:g}; E[w^2] = {skew[worst]:.1f}) the RMSE "
                     f"moves: {', '.join(parts)} (figure `rmse_vs_skew.png`).")
        lines.append("")
    capped = meta[(meta["method"] == "ips-cap")
                  & (meta["ope.logging_temperature"] == o.logging_temperature)
                  & (meta["ope.epsilon"] == o.epsilon)].sort_values("ope.weight_cap")
    if len(capped) > 1:
        best = capped.loc[capped["rmse"].idxmin()]
        ips = row("ips")
        tail = (f", against {ips['rmse']:.4f} for uncapped `ips`" if ips is not None
                else "")
        lines.append(f"**The cap trades variance for bias.** Over caps "
                     f"{', '.join(f'{c:g}' for c in capped['ope.weight_cap'])}, the "
                     f"lowest RMSE of `ips-cap` is {best['rmse']:.4f} at c = "
                     f"{best['ope.weight_cap']:g} (bias {best['bias']:+.4f}, SD "
                     f"{best['sd']:.4f}){tail}; smaller caps are biased downwards "
                     "(figure `bias_variance_vs_cap.png`).")
    return "\n".join(lines)
