"""The implicit objectives: values against their formulas, gradients against
finite differences (MF and NCF), learning on a tiny problem through the shared
trainer, the validation estimate, compilation, determinism and refusals."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from estimators import train as train_module
from estimators.implicit import (
    IMPRESSION_OBJECTIVES,
    PAIR_OBJECTIVES,
    ImplicitConfig,
    ImplicitData,
    ImpressionData,
    WMFConfig,
    bce,
    bpr,
    click_bce,
    click_labels,
    relmf,
    ubpr,
    wmf,
)
from estimators.models import (
    NCFConfig,
    init_mf,
    init_ncf,
    predict,
    predict_matrix,
)
from estimators.ranking import ndcg_at_k
from estimators.train import (
    TrainConfig,
    check_implicit_inputs,
    fit_implicit,
    search_implicit,
)
from sim.config import ConfigError


def softplus(x):
    return np.logaddexp(0.0, x)


# ---------------------------------------------------------------------------
# Values and gradients


def pair_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        pos=rng.normal(size=4), neg=rng.normal(size=(4, 3)),
        plays=rng.poisson(2, 4).astype(float), p_expose=rng.uniform(0.05, 1, 4),
        neg_clicked=(rng.random((4, 3)) < 0.3).astype(float),
        neg_p_expose=rng.uniform(0.05, 1, (4, 3)),
        mask=np.array([1.0, 1, 1, 0]),
    )


def test_pair_values_match_their_formulas():
    x = pair_inputs()
    pos, neg, mask, floor = x["pos"], x["neg"], x["mask"], 0.1
    mean = lambda per: np.sum(per * mask) / mask.sum()  # noqa: E731
    theta = np.maximum(x["p_expose"], floor)
    neg_theta = np.maximum(x["neg_p_expose"], floor)
    diff = pos[:, None] - neg
    expected = {
        "bce": mean(softplus(-pos) + softplus(neg).sum(1)),
        "bpr": mean(softplus(-diff).mean(1)),
        "wmf": mean((1 + 0.5 * x["plays"]) * (1 - pos) ** 2 + (neg**2).sum(1)),
        "relmf": mean(softplus(-pos) / theta + (1 - 1 / theta) * softplus(pos)
                      + softplus(neg).sum(1)),
        "ubpr": mean(((1 / theta)[:, None] * (1 - x["neg_clicked"] / neg_theta)
                      * softplus(-diff)).mean(1)),
        "ubpr_clip": mean((np.maximum((1 / theta)[:, None]
                                      * (1 - x["neg_clicked"] / neg_theta), 0)
                           * softplus(-diff)).mean(1)),
    }
    j = {k: jnp.asarray(v, jnp.float32) for k, v in x.items()}
    got = {
        "bce": bce(j["pos"], j["neg"], j["mask"]),
        "bpr": bpr(j["pos"], j["neg"], j["mask"]),
        "wmf": wmf(j["pos"], j["neg"], j["plays"], 0.5, j["mask"]),
        "relmf": relmf(j["pos"], j["neg"], j["p_expose"], floor, j["mask"]),
        "ubpr": ubpr(j["pos"], j["neg"], j["p_expose"], j["neg_clicked"],
                     j["neg_p_expose"], floor, False, j["mask"]),
        "ubpr_clip": ubpr(j["pos"], j["neg"], j["p_expose"], j["neg_clicked"],
                          j["neg_p_expose"], floor, True, j["mask"]),
    }
    for name in expected:
        assert float(got[name]) == pytest.approx(expected[name], rel=1e-5), name
    assert expected["ubpr"] != pytest.approx(expected["ubpr_clip"])


def test_click_labels_and_loss_match_their_formulas():
    clicks = np.array([1.0, 0, 1, 0])
    theta = np.array([0.5, 0.2, 0.005, 1.0])
    plus, minus = np.array([0.9, 0.9, 0.8, 1]), np.array([0.1, 0, 0.2, 0])
    relevance = np.array([1.0, 1, 0, 0])
    floored = np.maximum(theta, 0.01)
    expected = {
        "click_naive": clicks,
        "click_ips": clicks / floored,
        "click_affine": (clicks - floored * minus) / (floored * (plus - minus)),
        "click_oracle": relevance,
    }
    args = [jnp.asarray(a, jnp.float32) for a in (clicks, theta, plus, minus,
                                                   relevance)]
    logits = np.array([0.3, -1.0, 2.0, 0.1])
    for form, labels in expected.items():
        got = np.asarray(click_labels(form, *args, 0.01))
        np.testing.assert_allclose(got, labels, rtol=1e-5, err_msg=form)
        loss = click_bce(jnp.asarray(logits, jnp.float32), jnp.asarray(got),
                         jnp.ones(4))
        want = np.mean(labels * softplus(-logits) + (1 - labels) * softplus(logits))
        assert float(loss) == pytest.approx(want, rel=1e-5), form


def closures(model):
    """Each objective (+ the trainer's L2) as a function of the parameters."""
    n_users, n_items = 4, 5
    key = jax.random.key(1)
    if model == "mf":
        params = init_mf(key, n_users, n_items, 2, 0.5, 0.3)
        params = dict(params, user_bias=jnp.linspace(-0.5, 0.5, n_users))
    else:
        params = init_ncf(key, n_users, n_items, 2, (3, 2), 0.5)
        # nonzero biases: with zero biases a pair whose first layer is all
        # off sits exactly on a ReLU kink, where differences are one-sided
        params["mlp"] = tuple(
            dict(layer, b=jnp.linspace(0.2, 0.4, layer["b"].size))
            for layer in params["mlp"]
        )
    x = {k: jnp.asarray(v) for k, v in pair_inputs(2).items()}
    users = jnp.asarray([0, 1, 3, 2])
    items = jnp.asarray([1, 4, 0, 2])
    negatives = jnp.asarray([[0, 2, 3], [1, 1, 0], [4, 2, 1], [3, 0, 4]])
    all_users = jnp.concatenate([users, jnp.repeat(users, 3)])
    all_items = jnp.concatenate([items, negatives.reshape(-1)])
    weights = jnp.concatenate([x["mask"], jnp.repeat(x["mask"], 3)])

    def scored(p):
        logits = predict(p, all_users, all_items)
        return logits[:4], logits[4:].reshape(4, 3)

    def l2(p):
        return train_module._implicit_l2(p, all_users, all_items, weights,
                                         x["mask"], 0.3)

    out = {
        "bce": lambda p: bce(*scored(p), x["mask"]),
        "bpr": lambda p: bpr(*scored(p), x["mask"]),
        "wmf": lambda p: wmf(*scored(p), x["plays"], 0.5, x["mask"]),
        "relmf": lambda p: relmf(*scored(p), x["p_expose"], 0.1, x["mask"]),
        "ubpr": lambda p: ubpr(*scored(p), x["p_expose"], x["neg_clicked"],
                               x["neg_p_expose"], 0.1, False, x["mask"]),
    }
    rng = np.random.default_rng(3)
    clicks = jnp.asarray([1.0, 0, 1, 1])
    theta = jnp.asarray(rng.uniform(0.1, 1, 4))
    plus, minus = jnp.full(4, 0.9), jnp.full(4, 0.1)
    relevance = jnp.asarray([1.0, 0, 0, 1])
    for form in IMPRESSION_OBJECTIVES:
        def click(p, form=form):
            labels = click_labels(form, clicks, theta, plus, minus, relevance, 0.05)
            return click_bce(predict(p, users, items), labels, x["mask"])
        out[form] = click
    return params, {name: (lambda p, f=f: f(p) + l2(p)) for name, f in out.items()}


@pytest.mark.parametrize("model", ["mf", "ncf"])
def test_gradients_match_central_differences(model):
    with jax.enable_x64(True):
        params, losses = closures(model)
        flat, unravel = ravel_pytree(params)
        assert flat.dtype == jnp.float64
        names = list(losses)

        @jax.jit
        def all_losses(v):  # every objective at once: one compilation
            p = unravel(v)
            return jnp.stack([losses[name](p) for name in names])

        step = 1e-6
        basis = np.eye(flat.size) * step
        grads = np.asarray(jax.jacrev(all_losses)(flat))  # (objectives, params)
        shifts = jax.jit(jax.vmap(all_losses))
        numeric = ((np.asarray(shifts(flat + basis))
                    - np.asarray(shifts(flat - basis))) / (2 * step)).T
    for name, grad, approx in zip(names, grads, numeric):
        assert np.abs(grad).max() > 1e-3, name
        np.testing.assert_allclose(grad, approx, rtol=1e-6, atol=1e-8,
                                   err_msg=name)


# ---------------------------------------------------------------------------
# Learning through the shared trainer

N_USERS, N_ITEMS = 80, 40


@pytest.fixture(scope="module")
def world():
    """A rank-2 relevance truth, exposure 0.6 for every pair (so that learning,
    not debiasing, is what is tested), clicked pairs split 80/20, and PBM
    impressions of random slates."""
    rng = np.random.default_rng(0)
    logit = 3 * rng.normal(size=(N_USERS, 2)) @ rng.normal(size=(N_ITEMS, 2)).T
    gamma = 1 / (1 + np.exp(-(logit / np.sqrt(2) - 1.0)))
    relevant = rng.random(gamma.shape) < gamma
    p_expose = np.full(gamma.shape, 0.6)
    users, items = np.nonzero(relevant & (rng.random(gamma.shape) < p_expose))
    in_train = rng.random(users.size) < 0.8

    def pairs(keep):
        return ImplicitData(users[keep].astype(np.int32),
                            items[keep].astype(np.int32), np.ones(keep.sum()),
                            rng.poisson(3, keep.sum()),
                            p_expose[users[keep], items[keep]])

    train, valid = pairs(in_train), pairs(~in_train)
    candidates = np.ones(gamma.shape, bool)
    candidates[train.users, train.items] = False

    slate_users = np.repeat(np.arange(N_USERS), 30)
    slates = np.stack([rng.permutation(N_ITEMS)[:5] for _ in slate_users])
    theta = 1.0 / np.arange(1, 6)
    clicks = relevant[slate_users[:, None], slates] & (rng.random(slates.shape)
                                                       < theta)
    n = slates.size
    split = rng.random(n) < 0.8

    def impressions(keep):
        return ImpressionData(
            np.repeat(slate_users, 5)[keep].astype(np.int32),
            slates.ravel()[keep].astype(np.int32),
            clicks.ravel()[keep].astype(float),
            np.broadcast_to(theta, slates.shape).ravel()[keep],
        )

    return dict(gamma=gamma, train=train, valid=valid, candidates=candidates,
                impressions=(impressions(split), impressions(~split)))


CONFIGS = {
    "mf": TrainConfig(dim=4, lr=0.02, l2=1e-2, batch_size=64, max_epochs=10,
                      patience=10),
    "ncf": TrainConfig(dim=4, lr=0.01, l2=1e-3, batch_size=64, max_epochs=10,
                       patience=10),
}
NCF = NCFConfig(layers=(8,))
WMF = WMFConfig(alpha=0.1)  # plays here carry no signal: a mild confidence


def ndcg_gain(world, params):
    """NDCG@5 against gamma, minus that of a constant score (random order)."""
    scores = np.asarray(predict_matrix(params))
    args = (world["gamma"], world["candidates"], 5)
    return ndcg_at_k(scores, *args).value - ndcg_at_k(np.zeros_like(scores),
                                                      *args).value


@pytest.mark.parametrize("model", ["mf", "ncf"])
@pytest.mark.parametrize("objective", PAIR_OBJECTIVES + ("click_ips",))
def test_training_lowers_the_loss_and_ranks_better_than_random(
    world, objective, model
):
    train, valid = ((world["train"], world["valid"]) if objective != "click_ips"
                    else world["impressions"])
    result = fit_implicit(objective, train, valid, N_USERS, N_ITEMS,
                          CONFIGS[model], ImplicitConfig(), jax.random.key(0),
                          model=model, ncf=NCF, wmf=WMF)
    assert result.best_epoch > 1
    assert result.valid_estimate < result.history[0]
    assert ndcg_gain(world, result.params) > 0.1


def test_sparse_optimizer_learns_the_pair_objectives(world):
    cfg = dataclasses.replace(CONFIGS["mf"], optimizer="sparse")
    result = fit_implicit("bpr", world["train"], world["valid"], N_USERS, N_ITEMS,
                          cfg, ImplicitConfig(sampler="popularity"),
                          jax.random.key(0))
    assert result.valid_estimate < result.history[0]
    assert ndcg_gain(world, result.params) > 0.1


def test_valid_estimate_is_the_click_loss_on_valid(world):
    train, valid = world["impressions"]
    cfg = dataclasses.replace(CONFIGS["mf"], max_epochs=2)
    implicit = ImplicitConfig(propensity_floor=0.3)
    with pytest.warns(RuntimeWarning, match=r"implicit.propensity_floor 0.3 "
                      r"raised \d+ of \d+ train.p_examine values \(smallest 0.2\)"):
        result = fit_implicit("click_ips", train, valid, N_USERS, N_ITEMS, cfg,
                              implicit, jax.random.key(0))
    logits = np.asarray(predict_matrix(result.params))[valid.users, valid.items]
    labels = valid.clicks / np.maximum(valid.p_examine, 0.3)
    expected = np.mean(labels * softplus(-logits) + (1 - labels) * softplus(logits))
    assert result.valid_estimate == pytest.approx(expected, rel=1e-4)
    assert result.max_weight == pytest.approx(1 / 0.3)


def test_no_recompilation_and_same_key_same_params(world):
    cfg = dataclasses.replace(CONFIGS["mf"], max_epochs=2, l2_grid=(1e-3, 1e-1))
    args = (world["train"], world["valid"], N_USERS, N_ITEMS)
    first = fit_implicit("relmf", *args, cfg, ImplicitConfig(), jax.random.key(4))
    traces = train_module._TRACE_COUNT[0]
    again = fit_implicit("relmf", *args, cfg, ImplicitConfig(), jax.random.key(4))
    other = world["train"]._replace(p_expose=world["train"].p_expose * 0.5)
    fit_implicit("relmf", other, world["valid"], N_USERS, N_ITEMS,
                 dataclasses.replace(cfg, lr=0.003, l2=0.5),
                 ImplicitConfig(propensity_floor=0.2), jax.random.key(5))
    search_implicit("relmf", *args, cfg, ImplicitConfig(), jax.random.key(4))
    assert train_module._TRACE_COUNT[0] == traces
    for leaf in first.params:
        np.testing.assert_array_equal(first.params[leaf], again.params[leaf])


# ---------------------------------------------------------------------------
# Refusals


def pairs(n=4, **changes):
    data = ImplicitData(
        users=np.array([0, 0, 1, 2][:n], np.int32),
        items=np.array([0, 1, 1, 2][:n], np.int32),
        clicks=np.ones(n), plays=np.zeros(n), p_expose=np.full(n, 0.5),
    )
    return data._replace(**changes)


def shown(n=4, **changes):
    data = ImpressionData(
        users=np.array([0, 1, 2, 0][:n], np.int32),
        items=np.array([0, 1, 2, 2][:n], np.int32),
        clicks=np.array([1.0, 0, 0, 1][:n]), p_examine=np.full(n, 0.5),
        eps_plus=np.full(n, 0.9), eps_minus=np.full(n, 0.1),
        relevance=np.array([1.0, 0, 1, 1][:n]),
    )
    return data._replace(**changes)


BAD_INPUTS = [
    ("objective", dict(objective="mse"),
     r"objective must be one of 'bce', 'bpr', 'wmf', 'relmf', 'ubpr', "
     r"'click_naive', 'click_ips', 'click_affine', 'click_oracle', got 'mse'"),
    ("model", dict(model="svd"), r"model must be one of 'mf', 'ncf', got 'svd'"),
    ("ncf-sparse", dict(model="ncf", cfg=TrainConfig(optimizer="sparse")),
     r"train.optimizer must be 'adam' for model 'ncf' \(the row-sparse "
     r"optimiser is MF-only\), got 'sparse'"),
    ("implicit-cfg", dict(implicit_cfg={}),
     r"implicit_cfg must be an ImplicitConfig, got 'dict'"),
    ("wmf-cfg", dict(wmf=None), r"wmf must be a WMFConfig, got 'NoneType'"),
    ("ncf-cfg", dict(ncf=()), r"ncf must be an NCFConfig, got 'tuple'"),
    ("impressions-for-pairs", dict(train=shown()),
     r"train must be an ImplicitData, got 'ImpressionData'"),
    ("relmf-without-p-expose", dict(train=pairs(p_expose=None)),
     r"train.p_expose must be given for objective 'relmf', got None"),
    ("p-expose-zero", dict(train=pairs(p_expose=np.array([0.5, 0.0, 1, 1]))),
     r"train.p_expose must be in \(0, 1\], got 0.0 \(index 1\)"),
    ("p-expose-nan", dict(valid=pairs(p_expose=np.array([0.5, 1, 1, np.nan]))),
     r"valid.p_expose must be in \(0, 1\], got nan \(index 3\)"),
    ("clicks-zero", dict(train=pairs(clicks=np.array([1.0, 0, 1, 1]))),
     r"train.clicks must be integers >= 1 \(every row is a clicked pair\), "
     r"got 0.0 \(index 1\)"),
    ("plays-negative", dict(train=pairs(plays=np.array([0.0, 0, -1, 0]))),
     r"train.plays must be finite and >= 0, got -1.0 \(index 2\)"),
    ("repeated-pair", dict(train=pairs(items=np.array([0, 1, 1, 1], np.int32),
                                       users=np.array([0, 0, 1, 1], np.int32))),
     r"train must hold each \(user, item\) pair once, got pair \(1, 1\) at "
     r"indices 2 and 3"),
    ("item-out-of-range", dict(valid=pairs(items=np.array([0, 1, 1, 3], np.int32))),
     r"valid.items must be in \[0, 3\), got 3 \(index 3\)"),
    ("empty", dict(train=pairs(n=0)),
     r"train must be non-empty \(at least one clicked pair\), got 0"),
    ("no-negative-left", dict(train=pairs(users=np.zeros(3, np.int32),
                                          items=np.arange(3, dtype=np.int32),
                                          n=3)),
     r"train must leave every user an unclicked item to sample as a negative, "
     r"got user 0 with all 3 items clicked"),
    ("no-negative-in-both", dict(valid=pairs(n=1)._replace(
        users=np.array([0], np.int32), items=np.array([2], np.int32))),
     r"train and valid together must leave every user an unclicked item to "
     r"sample as a negative, got user 0 with all 3 items clicked"),
    ("popularity-zero-weight", dict(
        objective="bce", implicit_cfg=ImplicitConfig(sampler="popularity"),
        train=pairs(users=np.array([0, 0, 1], np.int32),
                    items=np.array([0, 1, 1], np.int32), n=3)),
     r"train must leave every user an unclicked item of positive weight for "
     r"implicit.sampler 'popularity' \(beta 1.0\), got user 0 with none"),
    ("ubpr-popularity", dict(objective="ubpr",
                             implicit_cfg=ImplicitConfig(sampler="popularity")),
     r"implicit.sampler must be 'uniform' for objective 'ubpr' \(it draws j "
     r"from all items\), got 'popularity'"),
    ("clicks-not-binary", dict(objective="click_ips",
                               train=shown(clicks=np.array([1.0, 2, 0, 0])),
                               valid=shown()),
     r"train.clicks must be 0 or 1, got 2.0 \(index 1\)"),
    ("p-examine-zero", dict(objective="click_ips", train=shown(),
                            valid=shown(p_examine=np.array([0.5, 0.5, 0, 1]))),
     r"valid.p_examine must be in \(0, 1\], got 0.0 \(index 2\)"),
    ("p-examine-nan", dict(objective="click_naive", valid=shown(),
                           train=shown(p_examine=np.array([np.nan, 1, 1, 1]))),
     r"train.p_examine must be in \(0, 1\], got nan \(index 0\)"),
    ("ips-without-p-examine", dict(objective="click_ips", valid=shown(),
                                   train=shown(p_examine=None)),
     r"train.p_examine must be given for objective 'click_ips', got None"),
    ("affine-without-eps", dict(objective="click_affine", valid=shown(),
                                train=shown(eps_minus=None)),
     r"train.eps_minus must be given for objective 'click_affine', got None"),
    ("affine-eps-order", dict(objective="click_affine", valid=shown(),
                              train=shown(eps_plus=np.array([0.9, 0.9, 0.1, .9]))),
     r"train.eps_plus must be > train.eps_minus \(otherwise a click says "
     r"nothing about relevance\), got 0.1 <= 0.1 \(index 2\)"),
    ("eps-above-one", dict(objective="click_affine", valid=shown(),
                           train=shown(eps_plus=np.array([0.9, 1.2, 0.9, .9]))),
     r"train.eps_plus must be in \[0, 1\], got 1.2 \(index 1\)"),
    ("oracle-without-relevance", dict(objective="click_oracle", train=shown(),
                                      valid=shown(relevance=None)),
     r"valid.relevance must be given for objective 'click_oracle', got None"),
    ("relevance-not-binary", dict(objective="click_oracle", valid=shown(),
                                  train=shown(relevance=np.array([1, .5, 0, 0]))),
     r"train.relevance must be 0 or 1, got 0.5 \(index 1\)"),
    ("pairs-for-clicks", dict(objective="click_naive", train=pairs(),
                              valid=shown()),
     r"train must be an ImpressionData, got 'ImplicitData'"),
]


@pytest.mark.parametrize("changes, message", [b[1:] for b in BAD_INPUTS],
                         ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_are_refused_before_any_work(changes, message, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(train_module, "_fit_implicit_checked", no_work)
    args = dict(objective="relmf", train=pairs(), valid=pairs(), n_users=3,
                n_items=3, cfg=TrainConfig(), implicit_cfg=ImplicitConfig(),
                key=jax.random.key(0))
    args.update(changes)
    for entry in (fit_implicit, search_implicit):
        with pytest.raises(ConfigError, match=message):
            entry(**args)


def test_valid_inputs_pass():
    check_implicit_inputs("ubpr", pairs(), pairs(), 3, 3, TrainConfig(),
                          ImplicitConfig())
    check_implicit_inputs("click_affine", shown(), shown(), 3, 3, TrainConfig(),
                          ImplicitConfig(), model="ncf")


BAD_CONFIGS = [
    ("negatives", ImplicitConfig, dict(negatives=0),
     r"implicit.negatives must be an integer >= 1, got 0"),
    ("sampler", ImplicitConfig, dict(sampler="hard"),
     r"implicit.sampler must be one of 'uniform', 'popularity', got 'hard'"),
    ("beta", ImplicitConfig, dict(sampler_beta=-0.5),
     r"implicit.sampler_beta must be a number >= 0.0, got -0.5"),
    ("floor-zero", ImplicitConfig, dict(propensity_floor=0.0),
     r"implicit.propensity_floor must be a number > 0.0 and <= 1.0, got 0.0"),
    ("floor-nan", ImplicitConfig, dict(propensity_floor=float("nan")),
     r"implicit.propensity_floor must be a number > 0.0 and <= 1.0, got nan"),
    ("clip", ImplicitConfig, dict(ubpr_clip=1),
     r"implicit.ubpr_clip must be true or false, got 1"),
    ("alpha", WMFConfig, dict(alpha=-1.0),
     r"wmf.alpha must be a number >= 0.0, got -1.0"),
    ("layers", NCFConfig, dict(layers=(8, 0)),
     r"ncf.layers must be a non-empty tuple of integers >= 1, got \(8, 0\)"),
    ("layers-empty", NCFConfig, dict(layers=()),
     r"ncf.layers must be a non-empty tuple of integers >= 1, got \(\)"),
]


@pytest.mark.parametrize("kind, changes, message", [b[1:] for b in BAD_CONFIGS],
                         ids=[b[0] for b in BAD_CONFIGS])
def test_bad_configs_are_refused(kind, changes, message):
    with pytest.raises(ConfigError, match=message):
        kind(**changes)
