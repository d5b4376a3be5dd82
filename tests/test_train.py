"""The shared trainer: it fits, each DR phase does its job, nothing recompiles,
the same key gives the same model, and bad input is refused before any work."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from estimators import train as train_module
from estimators.models import init_mf, predict_matrix, predict_mf
from estimators.objectives import Batch, dr_imputation, dr_prediction
from estimators.train import (
    DRConfig,
    RatingData,
    TrainConfig,
    check_inputs,
    fit,
    search,
)
from sim.config import ConfigError

N_USERS, N_ITEMS = 60, 50


@pytest.fixture(scope="module")
def rank2():
    """A fully observed, noiseless rank-2 matrix with continuous values."""
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(N_USERS, 2)) @ rng.normal(size=(N_ITEMS, 2)).T + 3.0
    users, items = np.meshgrid(np.arange(N_USERS), np.arange(N_ITEMS), indexing="ij")
    full = RatingData(
        users.ravel().astype(np.int32),
        items.ravel().astype(np.int32),
        truth.ravel().astype(np.float32),
        np.ones(truth.size),
    )
    return truth, full


@pytest.fixture(scope="module")
def mnar():
    """A partially observed matrix with known propensities, split 80/20."""
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(N_USERS, 2)) @ rng.normal(size=(N_ITEMS, 2)).T + 3.0
    p_observe = 1 / (1 + np.exp(-(truth - 4.0)))  # high ratings seen more often
    observed = np.flatnonzero(rng.random(truth.size) < p_observe.ravel())
    in_train = rng.random(observed.size) < 0.8

    def split(cells, fraction):
        users, items = np.divmod(cells, N_ITEMS)
        return RatingData(
            users.astype(np.int32),
            items.astype(np.int32),
            truth.ravel()[cells].astype(np.float32),
            p_observe.ravel()[cells] * fraction,
        )

    return truth, split(observed[in_train], 0.8), split(observed[~in_train], 0.2)


def rmse(params, truth):
    return float(np.sqrt(np.mean((np.asarray(predict_matrix(params)) - truth) ** 2)))


# ---------------------------------------------------------------------------
# It learns


@pytest.mark.parametrize("optimizer", ["adam", "sparse"])
@pytest.mark.parametrize("objective", ["naive", "ips", "snips", "dr"])
def test_recovers_a_noiseless_rank2_matrix(rank2, objective, optimizer):
    truth, full = rank2
    cfg = TrainConfig(
        dim=4, optimizer=optimizer, lr=0.03, l2=1e-6, batch_size=256,
        max_epochs=100, patience=100,
    )
    result = fit(objective, full, full, N_USERS, N_ITEMS, cfg, DRConfig(),
                 jax.random.key(0))
    assert rmse(result.params, truth) < 0.05
    assert result.epochs_run == 100
    assert result.ess == pytest.approx(truth.size)  # all weights equal
    assert result.max_weight == pytest.approx(1.0)


def test_sparse_equals_dense_adam_when_every_row_is_touched(rank2):
    """One minibatch holding every cell touches every row (each many times):
    lazy Adam with summed duplicates must then take exactly Adam's steps."""
    truth, full = rank2
    params = []
    for optimizer in ["adam", "sparse"]:
        cfg = TrainConfig(dim=3, optimizer=optimizer, lr=0.01, l2=1e-3,
                          batch_size=truth.size, max_epochs=5, patience=5)
        result = fit("ips", full, full, N_USERS, N_ITEMS, cfg, DRConfig(),
                     jax.random.key(3))
        params.append(result.params)
    for leaf in params[0]:
        np.testing.assert_allclose(params[0][leaf], params[1][leaf], rtol=1e-5,
                                   atol=1e-6, err_msg=leaf)


def test_sparse_leaves_untouched_rows_alone():
    params = init_mf(jax.random.key(0), 6, 5, 2, 0.3, 3.0)
    state = train_module._init_opt("sparse", params)
    users, items = jnp.asarray([1, 1, 4]), jnp.asarray([0, 2, 0])
    batch = Batch(users, items, jnp.asarray([4.0, 1.0, 2.0]), jnp.ones(3), jnp.ones(3))

    def loss_of(p, u, i):
        return train_module.naive(p, batch._replace(users=u, items=i), 0.1, 1.0)

    update = jax.jit(lambda p, s: train_module._update("sparse", p, s, loss_of,
                                                       users, items, 0.01))
    new, new_state = update(params, state)
    def moved(leaf):
        return np.flatnonzero(np.any(new[leaf] != params[leaf], axis=1)).tolist()

    assert moved("user_factors") == [1, 4]
    assert moved("item_factors") == [0, 2]
    assert np.asarray(new_state.user_steps).tolist() == [0, 1, 0, 0, 1, 0]
    assert np.asarray(new_state.item_steps).tolist() == [1, 0, 1, 0, 0]


@pytest.mark.parametrize("optimizer", ["adam", "sparse"])
def test_each_dr_phase_lowers_its_own_objective(optimizer):
    spec = train_module._Spec("dr", optimizer, 8, 1, 8, 6, 5)
    hyper = train_module._Hyper(*map(jnp.float32, (1e-3, 0.01, 0.3, 1 / 30)))
    params = init_mf(jax.random.key(0), 6, 5, 2, 0.3, 3.0)
    imputation = init_mf(jax.random.key(1), 6, 5, 2, 0.3, 2.0)
    state = train_module._State(
        params, train_module._init_opt(optimizer, params),
        imputation, train_module._init_opt(optimizer, imputation),
    )
    rng = np.random.default_rng(0)
    batch = Batch(
        jnp.asarray(rng.integers(0, 6, 8)), jnp.asarray(rng.integers(0, 5, 8)),
        jnp.asarray(rng.uniform(1, 5, 8), jnp.float32),
        jnp.asarray(rng.uniform(0.2, 1, 8), jnp.float32),
        jnp.asarray([1, 1, 1, 1, 1, 1, 1, 0], jnp.float32),
    )
    key = jax.random.key(5)
    cell_users, cell_items = train_module._draw_cells(key, spec)

    def prediction_objective(p):
        imputed = predict_mf(imputation, batch.users, batch.items)
        imputed_cells = predict_mf(imputation, cell_users, cell_items)
        return float(dr_prediction(p, batch, imputed, cell_users, cell_items,
                                   imputed_cells, hyper.l2, hyper.density))

    step = jax.jit(train_module._step, static_argnames="spec")
    new = step(state, batch, key, hyper, spec)

    def imputation_objective(q):
        predicted = predict_mf(new.params, batch.users, batch.items)
        return float(dr_imputation(q, batch, predicted, hyper.l2, hyper.density))

    assert prediction_objective(new.params) < prediction_objective(params)
    assert imputation_objective(new.imputation_params) < imputation_objective(
        imputation
    )


def test_early_stopping_keeps_the_best_epoch(mnar):
    truth, train, valid = mnar
    cfg = TrainConfig(dim=4, lr=0.2, l2=0.0, batch_size=64, max_epochs=60, patience=3)
    result = fit("ips", train, valid, N_USERS, N_ITEMS, cfg, DRConfig(),
                 jax.random.key(0))
    assert result.epochs_run < 60  # lr 0.2 without L2 overfits: it stopped
    assert result.epochs_run == result.best_epoch + cfg.patience
    assert result.valid_estimate == min(result.history)
    assert result.best_epoch == int(np.argmin(result.history)) + 1
    # the returned parameters are the best epoch's: recompute its estimate
    error = (np.asarray(predict_matrix(result.params))[valid.users, valid.items]
             - valid.ratings) ** 2
    ips_valid = np.sum(error / valid.propensity) / (N_USERS * N_ITEMS)
    assert ips_valid == pytest.approx(result.valid_estimate, rel=1e-4)


def test_naive_stops_on_the_plain_validation_mse(mnar):
    truth, train, valid = mnar
    cfg = TrainConfig(dim=4, batch_size=256, max_epochs=3)
    result = fit("naive", train._replace(propensity=None),
                 valid._replace(propensity=None), N_USERS, N_ITEMS, cfg, DRConfig(),
                 jax.random.key(0))
    error = (np.asarray(predict_matrix(result.params))[valid.users, valid.items]
             - valid.ratings) ** 2
    assert error.mean() == pytest.approx(result.valid_estimate, rel=1e-4)


def test_diagnostics_of_the_training_weights(mnar):
    truth, train, valid = mnar
    cfg = TrainConfig(dim=2, batch_size=512, max_epochs=1)
    density = train.users.size / (N_USERS * N_ITEMS)
    weights = density / train.propensity
    result = fit("ips", train, valid, N_USERS, N_ITEMS, cfg, DRConfig(),
                 jax.random.key(0))
    assert result.max_weight == pytest.approx(weights.max())
    assert result.ess == pytest.approx(weights.sum() ** 2 / (weights**2).sum())
    assert 1 < result.ess < train.users.size
    for objective, expected in [("dr", weights),
                                ("snips", weights / weights.mean()),
                                ("naive", np.ones_like(weights))]:
        max_weight, ess = train_module._diagnostics(objective, train, density)
        assert max_weight == pytest.approx(expected.max())
        assert ess == pytest.approx(expected.sum() ** 2 / (expected**2).sum())
    assert ess == train.users.size


def test_divergence_is_an_error_not_a_nan(rank2):
    truth, full = rank2
    cfg = TrainConfig(dim=2, lr=1e30, batch_size=512, max_epochs=2)
    with pytest.raises(FloatingPointError,
                       match=r"training diverged: .* lower train.lr \(now 1e\+30\)"):
        fit("naive", full, full, N_USERS, N_ITEMS, cfg, DRConfig(), jax.random.key(0))


# ---------------------------------------------------------------------------
# Compilation and determinism


def test_no_recompilation_across_l2_lr_and_propensities(mnar):
    truth, train, valid = mnar
    cfg = TrainConfig(dim=3, optimizer="sparse", batch_size=128, max_epochs=2,
                      l2_grid=(1e-4, 1e-2, 1e-1))
    fit("dr", train, valid, N_USERS, N_ITEMS, cfg, DRConfig(), jax.random.key(0))
    traces = train_module._TRACE_COUNT[0]
    other = train._replace(propensity=np.clip(train.propensity * 1.5, 0.01, 1.0))
    fit("dr", other, valid, N_USERS, N_ITEMS,
        dataclasses.replace(cfg, l2=0.5, lr=0.003), DRConfig(), jax.random.key(1))
    search("dr", train, valid, N_USERS, N_ITEMS, cfg, DRConfig(), jax.random.key(2))
    assert train_module._TRACE_COUNT[0] == traces
    # a different objective is a different program: the counter does move
    fit("snips", train, valid, N_USERS, N_ITEMS, cfg, DRConfig(), jax.random.key(0))
    assert train_module._TRACE_COUNT[0] == traces + 1


def test_search_keeps_the_grid_point_with_the_best_estimate(mnar):
    truth, train, valid = mnar
    cfg = TrainConfig(dim=3, batch_size=128, max_epochs=4, l2_grid=(1e-4, 3.0))
    best = search("ips", train, valid, N_USERS, N_ITEMS, cfg, DRConfig(),
                  jax.random.key(0))
    each = {
        l2: fit("ips", train, valid, N_USERS, N_ITEMS,
                dataclasses.replace(cfg, l2=l2), DRConfig(), jax.random.key(0))
        for l2 in cfg.l2_grid
    }
    chosen = min(each, key=lambda l2: each[l2].valid_estimate)
    assert best.l2 == chosen
    assert best.valid_estimate == each[chosen].valid_estimate
    assert each[1e-4].valid_estimate != each[3.0].valid_estimate


@pytest.mark.parametrize("optimizer", ["adam", "sparse"])
def test_same_key_same_params(mnar, optimizer):
    truth, train, valid = mnar
    cfg = TrainConfig(dim=3, optimizer=optimizer, batch_size=128, max_epochs=2)
    runs = [
        fit("dr", train, valid, N_USERS, N_ITEMS, cfg, DRConfig(), jax.random.key(k))
        for k in (4, 4, 5)
    ]
    for leaf in runs[0].params:
        np.testing.assert_array_equal(runs[0].params[leaf], runs[1].params[leaf])
    assert not np.array_equal(runs[0].params["user_factors"],
                              runs[2].params["user_factors"])


# ---------------------------------------------------------------------------
# Refusals


def tiny(n=5, **changes):
    data = RatingData(
        users=np.arange(n, dtype=np.int32) % 4,
        items=np.arange(n, dtype=np.int32) % 3,
        ratings=np.linspace(1, 5, n, dtype=np.float32),
        propensity=np.full(n, 0.5),
    )
    return data._replace(**changes)


BAD_INPUTS = [
    ("objective", dict(objective="mse"),
     r"objective must be one of 'naive', 'ips', 'snips', 'dr', got 'mse'"),
    ("ips-without-propensity", dict(train=tiny(propensity=None)),
     r"train.propensity must be given for objective 'ips', got None"),
    ("valid-without-propensity", dict(valid=tiny(propensity=None)),
     r"valid.propensity must be given for objective 'ips', got None"),
    ("propensity-zero", dict(train=tiny(propensity=np.array([1, 1, .5, 0., 1]))),
     r"train.propensity must be in \(0, 1\], got 0.0 \(index 3\)"),
    ("propensity-above-one", dict(train=tiny(propensity=np.array([1, 1.5, 1, 1, 1]))),
     r"train.propensity must be in \(0, 1\], got 1.5 \(index 1\)"),
    ("propensity-nan", dict(valid=tiny(propensity=np.array([1, 1, 1, 1, np.nan]))),
     r"valid.propensity must be in \(0, 1\], got nan \(index 4\)"),
    ("propensity-text", dict(train=tiny(propensity=np.array(list("abcde")))),
     r"train.propensity must be numbers, got 'str32'"),
    ("user-too-large", dict(train=tiny(users=np.array([0, 1, 4, 0, 0]))),
     r"train.users must be in \[0, 4\), got 4 \(index 2\)"),
    ("item-negative", dict(valid=tiny(items=np.array([0, 1, 2, -1, 0]))),
     r"valid.items must be in \[0, 3\), got -1 \(index 3\)"),
    ("float-ids", dict(train=tiny(users=np.zeros(5))),
     r"train.users must be integer ids, got 'float64'"),
    ("ratings-nan", dict(train=tiny(ratings=np.array([1, np.nan, 2, 3, 4]))),
     r"train.ratings must be finite, got nan \(index 1\)"),
    ("ratings-text", dict(train=tiny(ratings=np.array(list("abcde")))),
     r"train.ratings must be numbers, got 'str32'"),
    ("empty-train", dict(train=tiny(n=0)),
     r"train must be non-empty \(at least one rating\), got 0"),
    ("short-items", dict(train=tiny()._replace(items=np.zeros(4, np.int32))),
     r"train.items must be of the same length as train.users \(5\), got 4"),
    ("short-propensity", dict(valid=tiny()._replace(propensity=np.ones(6))),
     r"valid.propensity must be of the same length as valid.users \(5\), got 6"),
    ("2d-users", dict(train=tiny()._replace(users=np.zeros((5, 1), np.int32))),
     r"train.users must be a 1-d array, got \(5, 1\)"),
    ("not-rating-data", dict(train=(1, 2, 3, 4)),
     r"train must be a RatingData, got 'tuple'"),
    ("n-users", dict(n_users=0), r"n_users must be an integer >= 1, got 0"),
    ("n-items", dict(n_items=2.5), r"n_items must be an integer >= 1, got 2.5"),
    ("cfg", dict(cfg={"dim": 3}), r"cfg must be a TrainConfig, got 'dict'"),
    ("dr", dict(dr=None), r"dr must be a DRConfig, got 'NoneType'"),
]


@pytest.mark.parametrize("changes, message", [b[1:] for b in BAD_INPUTS],
                         ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_are_refused_before_any_work(changes, message, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(train_module, "_fit_checked", no_work)
    args = dict(objective="ips", train=tiny(), valid=tiny(), n_users=4, n_items=3,
                cfg=TrainConfig(), dr=DRConfig(), key=jax.random.key(0))
    args.update(changes)
    for entry in (fit, search):
        with pytest.raises(ConfigError, match=message):
            entry(**args)


def test_naive_needs_no_propensity():
    check_inputs("naive", tiny(propensity=None), tiny(propensity=None), 4, 3,
                 TrainConfig(), DRConfig())


BAD_CONFIGS = [
    ("dim", TrainConfig, dict(dim=0), r"train.dim must be an integer >= 1, got 0"),
    ("dim-float", TrainConfig, dict(dim=2.0),
     r"train.dim must be an integer >= 1, got 2.0"),
    ("optimizer", TrainConfig, dict(optimizer="sgd"),
     r"train.optimizer must be one of 'adam', 'sparse', got 'sgd'"),
    ("lr", TrainConfig, dict(lr=0.0), r"train.lr must be a number > 0.0, got 0.0"),
    ("lr-nan", TrainConfig, dict(lr=float("nan")),
     r"train.lr must be a number > 0.0, got nan"),
    ("l2", TrainConfig, dict(l2=-1e-3),
     r"train.l2 must be a number >= 0.0, got -0.001"),
    ("l2-grid-empty", TrainConfig, dict(l2_grid=()),
     r"train.l2_grid must be a non-empty tuple of numbers >= 0, got \(\)"),
    ("l2-grid-list", TrainConfig, dict(l2_grid=[0.1]),
     r"train.l2_grid must be a non-empty tuple of numbers >= 0, got \[0.1\]"),
    ("l2-grid-negative", TrainConfig, dict(l2_grid=(0.1, -1.0)),
     r"train.l2_grid must be a number >= 0.0, got -1.0"),
    ("batch-size", TrainConfig, dict(batch_size=0),
     r"train.batch_size must be an integer >= 1, got 0"),
    ("max-epochs", TrainConfig, dict(max_epochs=0),
     r"train.max_epochs must be an integer >= 1, got 0"),
    ("patience", TrainConfig, dict(patience=0),
     r"train.patience must be an integer >= 1, got 0"),
    ("init-scale", TrainConfig, dict(init_scale=0.0),
     r"train.init_scale must be a number > 0.0, got 0.0"),
    ("unobserved-ratio", DRConfig, dict(unobserved_ratio=0.0),
     r"dr.unobserved_ratio must be a number > 0.0, got 0.0"),
]


@pytest.mark.parametrize("kind, changes, message", [b[1:] for b in BAD_CONFIGS],
                         ids=[b[0] for b in BAD_CONFIGS])
def test_bad_configs_are_refused(kind, changes, message):
    with pytest.raises(ConfigError, match=message):
        kind(**changes)


def test_shuffle_is_a_uniform_permutation():
    """All 24 orders of 4 elements are equally likely: each count is within 4
    binomial standard errors of 2400/24 over 2400 draws."""
    keys = jax.random.split(jax.random.key(11), 2400)
    orders = np.asarray(jax.vmap(lambda k: train_module._shuffle(k, 4))(keys))
    codes = orders @ np.array([64, 16, 4, 1])
    counts = np.array([np.sum(codes == c) for c in np.unique(codes)])
    assert counts.size == 24
    p = 1 / 24
    se = np.sqrt(2400 * p * (1 - p))
    assert np.all(np.abs(counts - 2400 * p) < 4 * se)
    big = np.asarray(train_module._shuffle(jax.random.key(0), 100_003))
    assert np.array_equal(np.sort(big), np.arange(100_003))
    assert not np.array_equal(big, np.arange(100_003))
