"""The evaluation experiments (ope, ope-slate, mnar-evaluation) end to end on
tiny problems, their closed cases, and their refusals."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from experiments.cli import build_config, main
from experiments.mnar_evaluation import score_predictions
from experiments.runner import run_experiment

OPE = ["world.n_users=60", "world.n_items=8", "ope.rounds=600",
       "temperatures=[0.5, 2.0]", "epsilons=[0.3]", "weight_caps=[2.0, 1000.0]"]
SLATE = ["world.n_users=30", "world.n_items=12", "exposure.slate_size=3",
         "target.slate_size=3", "exposure.visits=400", "slate.cascade_draws=2000"]
MNAR = ["world.n_users=60", "world.n_items=40", "alphas=[0.25, 1.0]"]

OPE_METHODS = {"naive", "dm", "ips", "snips", "ips-cap", "dr", "sndr", "switch-dr"}


def _run(name, sets, seeds, folder):
    return run_experiment(name, build_config(name, None, sets), seeds, folder,
                          show_progress=False)


@pytest.fixture(scope="module")
def ope_rows(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ope")
    return _run("ope", OPE, 2, folder), folder


@pytest.fixture(scope="module")
def slate_rows(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slate")
    return _run("ope-slate", SLATE, 2, folder), folder


@pytest.fixture(scope="module")
def mnar_rows(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnar")
    return _run("mnar-evaluation", MNAR, 2, folder), folder


# --------------------------------------------------------------------- ope


def test_ope_rows_cover_every_grid_point_and_estimator(ope_rows):
    rows, folder = ope_rows
    assert not rows["value"].isna().any()
    errors = rows[(rows["metric"] == "error") & (rows["ope.weight_cap"] == 10.0)]
    points = errors.groupby(["ope.logging_temperature", "ope.epsilon"])
    # the default cell (1.0, 0.05), two temperatures and one mixing share
    assert set(points.groups) == {(1.0, 0.05), (0.5, 0.05), (2.0, 0.05), (1.0, 0.3)}
    for _, part in points:
        assert set(part["method"]) == OPE_METHODS
        assert len(part) == 2 * len(OPE_METHODS)  # two seeds
    capped = rows[(rows["method"] == "ips-cap") & (rows["metric"] == "estimate")]
    assert set(capped["ope.weight_cap"]) == {2.0, 10.0, 1000.0}
    assert set(rows["metric"]) >= {"estimate", "error", "abs_error", "rel_error",
                                   "covered", "se", "ess", "max_weight", "top_share",
                                   "n_capped", "threshold", "value_truth",
                                   "mean_sq_weight"}
    assert set(rows.loc[rows["metric"] == "covered", "value"]) <= {0.0, 1.0}
    report = (folder / "report.md").read_text()
    assert "Default cell, over seeds" in report and "coverage" in report
    for name in ("rmse_vs_skew.png", "bias_variance_vs_cap.png", "default_cell.png"):
        assert (folder / "figures" / name).stat().st_size > 0


def test_ope_errors_are_estimates_minus_the_truth(ope_rows):
    rows, _ = ope_rows
    keys = ["seed", "ope.logging_temperature", "ope.epsilon", "ope.weight_cap"]
    truth = rows[rows["metric"] == "value_truth"].set_index(keys[:3])["value"]
    estimate = rows[rows["metric"] == "estimate"].set_index(keys + ["method"])
    error = rows[rows["metric"] == "error"].set_index(keys + ["method"])["value"]
    expected = estimate["value"] - truth.reindex(
        estimate.index.droplevel(["ope.weight_cap", "method"])).to_numpy()
    assert np.allclose(error.loc[expected.index], expected, rtol=0, atol=1e-12)


def test_ope_cap_above_every_weight_equals_ips(ope_rows):
    rows, _ = ope_rows
    cell = rows[(rows["ope.logging_temperature"] == 1.0)
                & (rows["ope.epsilon"] == 0.05)]
    largest = cell[(cell["method"] == "ips") & (cell["metric"] == "max_weight")]
    assert (largest["value"] < 1000.0).all()
    estimates = cell[cell["metric"] == "estimate"]
    ips = estimates[estimates["method"] == "ips"].set_index("seed")["value"]
    capped = estimates[(estimates["method"] == "ips-cap")
                       & (estimates["ope.weight_cap"] == 1000.0)]
    assert np.array_equal(capped.set_index("seed")["value"], ips)


def test_ope_naive_estimates_the_loggers_value(ope_rows):
    """The logged mean reward is an unbiased estimate of the logger's own
    exact value: within 4 of its standard errors at every seed and cell."""
    rows, _ = ope_rows
    keys = ["seed", "ope.logging_temperature", "ope.epsilon"]
    logger = rows[rows["metric"] == "logger_value_truth"].set_index(keys)["value"]
    naive = rows[rows["method"] == "naive"].pivot_table(index=keys, columns="metric",
                                                         values="value")
    gap = (naive["estimate"] - logger.loc[naive.index]).abs()
    assert (gap <= 4 * naive["se"]).all()


def test_ope_is_deterministic(ope_rows, tmp_path):
    rows, _ = ope_rows
    again = _run("ope", OPE, 1, tmp_path)
    first = rows[rows["seed"] == 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, again)


# --------------------------------------------------------------- ope-slate


def test_slate_rows_cover_both_click_models(slate_rows):
    rows, folder = slate_rows
    assert not rows["value"].isna().any()
    errors = rows[rows["metric"] == "error"]
    assert set(errors["examination.model"]) == {"pbm", "cascade"}
    by_model = errors.groupby("examination.model")["method"]
    assert all(set(m) == {"naive", "pbm-ips", "iips"} for _, m in by_model)
    truth_se = rows[rows["metric"] == "truth_se"].set_index(
        ["seed", "examination.model"])["value"]
    assert (truth_se.xs("pbm", level=1) == 0.0).all()
    assert (truth_se.xs("cascade", level=1) > 0.0).all()
    assert "Over seeds, per click model" in (folder / "report.md").read_text()


def test_slate_naive_estimates_the_loggers_value(slate_rows):
    """The logged clicks per visit estimate the logger's own value (exact under
    the PBM, Monte Carlo under the cascade): within 4 combined standard errors."""
    rows, _ = slate_rows
    keys = ["seed", "examination.model"]
    log = rows[rows["method"] == "log"].pivot_table(index=keys, columns="metric",
                                                     values="value")
    naive = rows[rows["method"] == "naive"].pivot_table(index=keys, columns="metric",
                                                         values="value")
    gap = (naive["estimate"] - log.loc[naive.index, "logger_value_truth"]).abs()
    bound = 4 * np.hypot(naive["se"], log.loc[naive.index, "truth_se"])
    assert (gap <= bound).all()


def test_slate_is_deterministic(slate_rows, tmp_path):
    rows, _ = slate_rows
    again = _run("ope-slate", SLATE, 1, tmp_path)
    first = rows[rows["seed"] == 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, again)


# --------------------------------------------------------- mnar-evaluation


def test_mnar_rows_cover_every_matrix_metric_and_pair(mnar_rows):
    rows, folder = mnar_rows
    assert not rows["value"].isna().any()
    errors = rows[rows["metric"].str.endswith("_error")
                  & ~rows["metric"].str.endswith("rel_error")]
    assert set(errors["metric"]) == {"mse_error", "mae_error", "dcg@5_error"}
    assert set(errors["predictions"]) == {"rare-wrong", "shifted", "rare-noisy",
                                          "coarsened"}
    pairs = set(zip(errors["method"], errors["propensity"]))
    assert pairs == {("naive", "none")} | {(m, s) for m in ("ips", "snips", "eib", "dr")
                                           for s in ("true", "naive-bayes")}
    per_cell = errors.groupby(["seed", "selection.alpha", "predictions", "metric"])
    assert per_cell.size().eq(9).all()
    flips = rows[rows["metric"].str.endswith("_misranked_pairs")]
    assert flips["value"].between(0.0, 1.0).all() and set(flips["predictions"]) == {
        "all"}
    report = (folder / "report.md").read_text()
    assert "wrong order" in report
    assert (folder / "figures" / "bias_mse.png").stat().st_size > 0


def test_mnar_snips_equals_naive_when_missing_at_random(mnar_rows):
    """At alpha = 1 (and no popularity term) every cell has the same true
    propensity, so SNIPS with it is the plain mean over logged cells."""
    rows, _ = mnar_rows
    mar = rows[(rows["selection.alpha"] == 1.0)
               & rows["metric"].str.endswith("_estimate")]
    naive = mar[mar["method"] == "naive"].set_index(["seed", "predictions", "metric"])
    snips = mar[(mar["method"] == "snips") & (mar["propensity"] == "true")].set_index(
        ["seed", "predictions", "metric"])
    assert np.allclose(snips["value"], naive["value"].loc[snips.index], rtol=1e-12)


def test_mnar_is_deterministic(mnar_rows, tmp_path):
    rows, _ = mnar_rows
    again = _run("mnar-evaluation", MNAR, 1, tmp_path)
    first = rows[rows["seed"] == 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, again)


def test_score_predictions_takes_a_users_own_matrix():
    """Without the truth: estimates and standard errors only."""
    rng = np.random.default_rng(0)
    ratings = rng.integers(1, 6, size=(20, 15)).astype(float)
    observed = rng.random(ratings.shape) < 0.3
    p_observe = {"mine": np.full(ratings.shape, 0.3)}
    rows = []
    score_predictions({"own": ratings + 0.5}, np.where(observed, ratings, np.nan),
                      observed, p_observe, 3.0,
                      lambda *row: rows.append(row), methods=("naive", "ips"), k=3)
    metrics = {(r[1], r[2], r[3]) for r in rows}
    assert ("naive", "none", "mse_estimate") in metrics
    assert ("ips", "mine", "dcg@3_se") in metrics
    mse = {r[1]: r[4] for r in rows if r[3] == "mse_estimate"}
    # predictions are clipped to 1-5: a logged 5 has error 0, the others 0.5
    assert mse["naive"] == pytest.approx(0.25 * np.mean(ratings[observed] < 5))


# ----------------------------------------------------------------- refusals

BAD = [
    ("ope-temperature", "ope", ["temperatures=[1.0, 0.0]"],
     r"temperatures must be a number > 0.0, got 0.0"),
    ("ope-epsilon", "ope", ["ope.epsilon=1.5"],
     r"ope.epsilon must be a number >= 0.0 and <= 1.0, got 1.5"),
    ("ope-epsilons", "ope", ["epsilons=[-0.1]"],
     r"epsilons must be a number >= 0.0 and <= 1.0, got -0.1"),
    ("ope-cap", "ope", ["weight_caps=[0.0]"],
     r"weight_caps must be a number > 0.0, got 0.0"),
    ("ope-default-cap", "ope", ["ope.weight_cap=-1.0"],
     r"ope.weight_cap must be a number > 0.0, got -1.0"),
    ("ope-method", "ope", ['methods=["ips", "ipw"]'],
     r"methods must be names from naive, dm, .*got 'ipw'"),
    ("ope-rounds", "ope", ["ope.rounds=1"],
     r"ope.rounds must be an integer >= 2, got 1"),
    ("ope-folds", "ope", ["ope.rounds=3", "ope.folds=4"],
     r"ope.rounds must be >= ope.folds \(4\), got 3"),
    ("ope-one-action", "ope", ["world.n_items=1"],
     r"world.n_items must be an integer >= 2 \(the actions\), got 1"),
    ("ope-noise", "ope", ["ope.target_noise=-1.0"],
     r"ope.target_noise must be a number >= 0.0, got -1.0"),
    ("slate-click-model", "ope-slate", ['click_models=["pbm", "dbn"]'],
     r"click_models must be names from pbm, cascade, got 'dbn'"),
    ("slate-sizes", "ope-slate", ["target.slate_size=3"],
     r"target.slate_size must be equal to exposure.slate_size \(5\), got 3"),
    ("slate-model-policy", "ope-slate", ['target.policy="model"'],
     r"target.policy must be one of uniform, popularity, softmax .*got 'model'"),
    ("slate-too-long", "ope-slate", ["world.n_items=4"],
     r"exposure.slate_size must be an integer in \[1, 4\] \(the catalogue size\), "
     r"got 5"),
    ("slate-draws", "ope-slate", ["slate.cascade_draws=1"],
     r"slate.cascade_draws must be an integer >= 2, got 1"),
    ("slate-examination", "ope-slate", ['examination.model="cascade"'],
     r"examination.model must be 'pbm' \(the click models are set by click_models"),
    ("slate-method", "ope-slate", ['methods=["iips", "dr"]'],
     r"methods must be names from naive, pbm-ips, iips, got 'dr'"),
    ("mnar-preset", "mnar-evaluation", ['selection.preset="uniform"'],
     r"selection.preset must be 'value' \(the experiment sweeps its alpha\), "
     r"got 'uniform'"),
    ("mnar-alpha", "mnar-evaluation", ["alphas=[0.5, 0.0]"],
     r"alphas must be a number > 0.0, got 0.0"),
    ("mnar-density", "mnar-evaluation", ["selection.density=0.5"],
     r"selection.density must be in \(0, [0-9.]+\] for preset 'value'"),
    ("mnar-matrix", "mnar-evaluation", ['evaluation.matrices=["perfect"]'],
     r"evaluation.matrices must be names from rare-wrong, .*got 'perfect'"),
    ("mnar-k", "mnar-evaluation", ["evaluation.k=0"],
     r"evaluation.k must be an integer >= 1, got 0"),
    ("mnar-imputed", "mnar-evaluation", ["evaluation.imputed_rating=nan"],
     r"evaluation.imputed_rating must be a finite number, got nan"),
    ("mnar-source", "mnar-evaluation", ['propensities=["logistic"]'],
     r"propensities must be names from true, naive-bayes, got 'logistic'"),
    ("mnar-no-source", "mnar-evaluation", ["propensities=[]"],
     r"propensities must be at least one source when ips, snips, eib or dr run"),
    ("mnar-method", "mnar-evaluation", ['methods=["naive", "switch-dr"]'],
     r"methods must be names from naive, ips, snips, eib, dr, got 'switch-dr'"),
]


@pytest.mark.parametrize("experiment, sets, message", [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_config_is_refused_before_any_work(experiment, sets, message, tmp_path,
                                               capsys):
    args = ["run", experiment, "--out", str(tmp_path / "o"), "--no-progress"]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "o").exists()
