"""Replicates trained together (jax.vmap) against the same fits one by one."""

import jax
import numpy as np
import pytest

from estimators import train as trainer
from estimators.train import (
    VMAP_MAX_WORK,
    DRConfig,
    RatingData,
    TrainConfig,
    choose_mode,
    fit_batch,
    search,
    search_batch,
)
from sim.config import ConfigError

N_USERS, N_ITEMS = 40, 30
RTOL = 1e-4


def ratings_data(rng, n):
    """A low-rank matrix plus noise, logged with propensities in [0.1, 1]."""
    users = rng.integers(0, N_USERS, n).astype(np.int32)
    items = rng.integers(0, N_ITEMS, n).astype(np.int32)
    left, right = rng.normal(size=(N_USERS, 2)), rng.normal(size=(N_ITEMS, 2))
    ratings = 3.0 + (left[users] * right[items]).sum(1) + rng.normal(0, 0.3, n)
    return RatingData(users, items, ratings.astype(np.float32),
                      rng.uniform(0.1, 1.0, n))


@pytest.fixture(scope="module")
def replicates():
    """Three replicates of different lengths (ragged minibatch counts),
    propensities, learning rates, L2 strengths, patience and epoch budgets."""
    rng = np.random.default_rng(7)
    trains = [ratings_data(rng, n) for n in (300, 420, 300)]
    valids = [ratings_data(rng, n) for n in (80, 60, 80)]
    cfgs = [
        TrainConfig(dim=3, batch_size=128, lr=0.02, l2=1e-3, max_epochs=12,
                    patience=2),
        TrainConfig(dim=3, batch_size=128, lr=0.01, l2=1e-2, max_epochs=6,
                    patience=4),
        TrainConfig(dim=3, batch_size=128, lr=0.03, l2=1e-4, max_epochs=12,
                    patience=1),
    ]
    keys = [jax.random.key(k) for k in (3, 4, 5)]
    return trains, valids, cfgs, keys


def assert_same_fit(batched, alone):
    assert batched.epochs_run == alone.epochs_run
    assert batched.best_epoch == alone.best_epoch
    np.testing.assert_allclose(batched.history, alone.history, rtol=RTOL)
    assert batched.valid_estimate == pytest.approx(alone.valid_estimate, rel=RTOL)
    for name, value in alone.params.items():
        scale = np.max(np.abs(value))
        np.testing.assert_allclose(batched.params[name], value, rtol=RTOL,
                                   atol=RTOL * scale, err_msg=name)
    assert (batched.l2, batched.max_weight, batched.ess) == (
        alone.l2, alone.max_weight, alone.ess)


@pytest.mark.parametrize("objective, optimizer", [
    ("naive", "adam"), ("ips", "sparse"), ("dr", "adam"),
])
def test_vmapped_fits_equal_one_by_one_fits(replicates, objective, optimizer):
    trains, valids, cfgs, keys = replicates
    cfgs = [trainer.dataclasses.replace(c, optimizer=optimizer) for c in cfgs]
    batched = fit_batch(objective, trains, valids, N_USERS, N_ITEMS, cfgs,
                        DRConfig(), keys, mode="vmap")
    alone = fit_batch(objective, trains, valids, N_USERS, N_ITEMS, cfgs,
                      DRConfig(), keys, mode="loop")
    for b, a in zip(batched, alone):
        assert_same_fit(b, a)
    # Early stopping by masking ran the replicates for different lengths.
    assert len({r.epochs_run for r in alone}) > 1


def test_difference_is_far_below_the_spread_across_seeds(replicates):
    trains, valids, cfgs, _ = replicates
    seeds = range(8)
    same = [cfgs[0]] * len(seeds)
    data = ([trains[0]] * len(seeds), [valids[0]] * len(seeds))
    keys = [jax.random.key(s) for s in seeds]
    batched = fit_batch("ips", *data, N_USERS, N_ITEMS, same, DRConfig(), keys,
                        mode="vmap")
    alone = fit_batch("ips", *data, N_USERS, N_ITEMS, same, DRConfig(), keys,
                      mode="loop")
    estimates = np.array([r.valid_estimate for r in alone])
    gaps = np.abs(np.array([r.valid_estimate for r in batched]) - estimates)
    assert estimates.std(ddof=1) > 0
    assert gaps.max() < 0.01 * estimates.std(ddof=1)


def test_search_batch_equals_search_per_replicate(replicates):
    trains, valids, cfgs, keys = replicates
    cfg = TrainConfig(dim=3, batch_size=128, max_epochs=5, l2_grid=(1e-4, 1e-1))
    batched = search_batch("ips", trains[:2], valids[:2], N_USERS, N_ITEMS,
                           [cfg, cfg], DRConfig(), keys[:2], mode="vmap")
    for index in range(2):
        alone = search("ips", trains[index], valids[index], N_USERS, N_ITEMS,
                       cfg, DRConfig(), keys[index])
        assert_same_fit(batched[index], alone)


def test_hyperparameters_do_not_recompile(replicates):
    trains, valids, cfgs, keys = replicates
    fit_batch("naive", trains, valids, N_USERS, N_ITEMS, cfgs, DRConfig(), keys,
              mode="vmap")
    before = trainer._TRACE_COUNT[0]
    other = [trainer.dataclasses.replace(c, lr=c.lr / 2, l2=c.l2 * 3) for c in cfgs]
    fit_batch("naive", trains, valids, N_USERS, N_ITEMS, other, DRConfig(),
              keys[::-1], mode="vmap")
    assert trainer._TRACE_COUNT[0] == before


def test_a_diverged_replicate_is_named(replicates):
    trains, valids, cfgs, keys = replicates
    wild = [cfgs[0], trainer.dataclasses.replace(cfgs[1], lr=1e30), cfgs[2]]
    with pytest.raises(FloatingPointError,
                       match=r"diverged in replicate 1: .* lower train.lr"):
        fit_batch("naive", trains, valids, N_USERS, N_ITEMS, wild, DRConfig(),
                  keys, mode="vmap")


def test_chooser_by_size():
    assert choose_mode(1000, 1, 16) == "loop"
    assert choose_mode(1000, 8, 16) == "vmap"
    limit = VMAP_MAX_WORK // (8 * 16)
    assert choose_mode(limit, 8, 16) == "vmap"
    assert choose_mode(limit + 1, 8, 16) == "loop"
    assert choose_mode(1_000_000, 8, 64) == "loop"


def test_auto_follows_the_chooser(replicates, monkeypatch):
    trains, valids, cfgs, keys = replicates
    called = []
    monkeypatch.setattr(trainer, "_fit_vmapped",
                        lambda *args: called.append("vmap") or [])
    monkeypatch.setattr(trainer, "_fit_checked",
                        lambda *args: called.append("loop"))
    monkeypatch.setattr(trainer, "VMAP_MAX_WORK", 0)
    fit_batch("naive", trains[:1] * 2, valids[:1] * 2, N_USERS, N_ITEMS,
              [TrainConfig(max_epochs=1)] * 2, DRConfig(), keys[:2])
    assert called == ["loop", "loop"]
    monkeypatch.setattr(trainer, "VMAP_MAX_WORK", 10**12)
    fit_batch("naive", trains[:1] * 2, valids[:1] * 2, N_USERS, N_ITEMS,
              [TrainConfig(max_epochs=1)] * 2, DRConfig(), keys[:2])
    assert called == ["loop", "loop", "vmap"]


def _bad(replicates, **changes):
    trains, valids, cfgs, keys = replicates
    args = dict(objective="ips", trains=trains[:2], valids=valids[:2],
                n_users=N_USERS, n_items=N_ITEMS, cfgs=cfgs[:2], dr=DRConfig(),
                keys=keys[:2], mode="vmap")
    args.update(changes)
    return args


BAD = [
    ("mode", dict(mode="gpu"), r"mode must be one of 'auto', 'vmap', 'loop', "
     r"got 'gpu'"),
    ("empty", dict(trains=[]), r"trains must be a non-empty list"),
    ("not-a-list", dict(keys=None), r"keys must be a non-empty list"),
    ("lengths", dict(valids="valids[:1]"), r"valids must be one entry per "
     r"replicate \(2, as trains\), got 1"),
    ("shared-dim", dict(cfgs="dim"), r"cfgs\[1\].dim must be equal across "
     r"replicates \(cfgs\[0\].dim = 3\), got 5"),
    ("replicate", dict(trains="zero-propensity"), r"replicate 1: "
     r"train.propensity must be in \(0, 1\], got 0.0 \(index 0\)"),
]


@pytest.mark.parametrize("changes, message", [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_batches_are_refused_before_any_work(replicates, changes, message,
                                                 monkeypatch):
    trains, valids, cfgs, _ = replicates
    if changes.get("valids") == "valids[:1]":
        changes["valids"] = valids[:1]
    if changes.get("cfgs") == "dim":
        changes["cfgs"] = [cfgs[0], trainer.dataclasses.replace(cfgs[1], dim=5)]
    if changes.get("trains") == "zero-propensity":
        propensity = np.array(trains[1].propensity)
        propensity[0] = 0.0
        changes["trains"] = [trains[0], trains[1]._replace(propensity=propensity)]
    monkeypatch.setattr(trainer, "_fit_vmapped", None)  # no work may start
    monkeypatch.setattr(trainer, "_fit_checked", None)
    with pytest.raises(ConfigError, match=message):
        fit_batch(**_bad(replicates, **changes))
    with pytest.raises(ConfigError, match=message):
        search_batch(**_bad(replicates, **changes))
