"""The implicit-feedback experiments end to end on tiny problems, and their
refusals."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from experiments.cli import build_config, main
from experiments.runner import run_experiment

TINY_WORLD = ["world.n_users=80", "world.n_items=40", "world.dim=3",
              "train.dim=4", "train.max_epochs=2", "train.batch_size=256"]
PB = TINY_WORLD + ["exposure.visits=3000", "exposure.slate_size=5", "etas=[0.0, 1.0]",
                   "intervention.swap_share=0.2", "em.iterations=20",
                   "train.l2_grid=[0.0001]"]
IO = TINY_WORLD + ["exposure.visits=3000", "exposure.slate_size=5",
                   "train.l2_grid=[0.001]", "relevance.base_rate=0.1"]


@pytest.fixture(scope="module")
def position_rows(tmp_path_factory):
    cfg = build_config("position-bias", None, PB)
    return run_experiment("position-bias", cfg, 2, tmp_path_factory.mktemp("pb"),
                          show_progress=False)


@pytest.fixture(scope="module")
def objective_rows(tmp_path_factory):
    cfg = build_config("implicit-objectives", None, IO)
    return run_experiment("implicit-objectives", cfg, 2,
                          tmp_path_factory.mktemp("io"), show_progress=False)


def test_position_bias_rows_cover_every_eta_and_method(position_rows):
    rows = position_rows
    assert not rows["value"].isna().any()
    assert sorted(rows["examination.eta"].unique()) == [0.0, 1.0]
    ndcg = rows[rows["metric"] == "ndcg@10_truth"]
    assert ndcg.groupby(["seed", "examination.eta"])["method"].nunique().eq(6).all()
    errors = rows[rows["metric"] == "propensity_error"]
    assert set(errors["method"]) == {"ips-swap", "ips-em"}
    # At eta = 0 every rank is examined: the true curve is flat and the IPS
    # weights are 1, so ips-true trains exactly as naive does.
    flat = ndcg[ndcg["examination.eta"] == 0.0].pivot(index="seed", columns="method",
                                                      values="value")
    assert np.allclose(flat["ips-true"], flat["naive"])


def test_position_bias_is_deterministic(position_rows, tmp_path):
    cfg = build_config("position-bias", None, PB)
    again = run_experiment("position-bias", cfg, 1, tmp_path, show_progress=False)
    first = position_rows[position_rows["seed"] == 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, again)


def test_implicit_objectives_rows_and_gap_closed(objective_rows):
    rows = objective_rows
    assert not rows["value"].isna().any()
    methods = set(rows[rows["metric"] == "ndcg@10_truth"]["method"])
    assert methods == {"mf-bce", "mf-bpr", "mf-wmf", "mf-relmf", "mf-ubpr", "oracle",
                       "random"}
    gaps = rows[rows["metric"] == "gap_closed_ndcg@10_truth"]
    by = gaps.set_index(["seed", "method"])["value"]
    for seed in rows["seed"].unique():
        assert by[(seed, "mf-bce")] == 0.0 and by[(seed, "oracle")] == 1.0
    for metric in ("gini@10", "coverage@10", "mean_popularity@10"):
        assert (rows["metric"] == metric).sum() == 2 * 7


BAD = [
    ("eta-negative", "position-bias", ["etas=[1.0, -0.5]"],
     r"etas must be a number >= 0.0 and <= 30.0, got -0.5"),
    ("eta-repeated", "position-bias", ["etas=[1.0, 1.0]"],
     r"etas must be a list without repeated entries, got \[1.0, 1.0\]"),
    ("eta-set-directly", "position-bias", ["examination.eta=2.0"],
     r"examination.eta must be left at 1.0 \(each run sweeps `etas`; set etas "
     r"instead\), got 2.0"),
    ("slate-too-long", "position-bias", ["world.n_items=8", "exposure.slate_size=10"],
     r"exposure.slate_size must be an integer in \[1, 8\] \(the catalogue size\), "
     r"got 10"),
    ("click-probability", "implicit-objectives", ["click.p_relevant=1.5"],
     r"click.p_relevant must be a number >= 0.0 and <= 1.0, got 1.5"),
    ("unknown-method", "implicit-objectives", ['methods=["mf-bce", "mf-xyz"]'],
     r"methods must be names from mf-bce, .*got 'mf-xyz'"),
    ("cascade-relmf", "implicit-objectives", ['examination.model="cascade"'],
     r"examination.model must be 'pbm' when mf-relmf or mf-ubpr run"),
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
