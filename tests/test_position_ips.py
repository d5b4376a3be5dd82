"""Position-IPS click losses against the loss on true relevance.

Fixed slates, fixed relevance and fixed scores (scores that rank relevant
items higher, as a trained model would: with scores independent of
relevance the label errors cancel and no bias could show). Clicks are drawn
by ``sim.behaviour.react`` REPLICATES times; each draw gives one value of the
click loss averaged over all impressions, and the mean over draws is compared
with the loss on the true relevance labels of the same impressions, with a
tolerance of 4 Monte Carlo standard errors taken from the draws' spread.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from estimators.implicit import click_bce, click_labels
from sim.behaviour import (
    ClickConfig,
    EngagementConfig,
    ExaminationConfig,
    p_examine_by_rank,
    react,
)

N_SLATES, K = 60, 5
REPLICATES = 300


@pytest.fixture(scope="module")
def slates():
    rng = np.random.default_rng(0)
    # users differ in how much of their slate is relevant (90% down to 10%)
    share = np.linspace(0.9, 0.1, N_SLATES)[:, None]
    relevant = rng.random((N_SLATES, K)) < share
    scores = 1.5 * (2 * relevant - 1) + rng.normal(size=(N_SLATES, K))
    gamma = np.full((N_SLATES, K), 0.5)
    return relevant, gamma, scores


@jax.jit
def _loss(form_index, clicks, p_examine, eps_plus, eps_minus, relevance, scores):
    forms = ("click_naive", "click_ips", "click_affine", "click_oracle")
    values = [
        click_bce(scores, click_labels(form, clicks, p_examine, eps_plus,
                                       eps_minus, relevance, 1e-3),
                  jnp.ones_like(scores))
        for form in forms
    ]
    return jnp.stack(values)[form_index]


FORM_INDEX = {"click_naive": 0, "click_ips": 1, "click_affine": 2,
              "click_oracle": 3}


def loss(form, clicks, p_examine, click_cfg, relevant, scores):
    f = np.float32
    return float(_loss(
        FORM_INDEX[form], jnp.asarray(clicks.ravel(), f),
        jnp.asarray(np.broadcast_to(p_examine, clicks.shape).ravel(), f),
        click_cfg.p_relevant, click_cfg.p_nonrelevant,
        jnp.asarray(relevant.ravel(), f), jnp.asarray(scores.ravel(), f),
    ))


def draws(slates, examination, click_cfg, p_examine, forms):
    """(z, mean) per form: z = (mean - truth) / SE over REPLICATES draws."""
    relevant, gamma, scores = slates
    truth = loss("click_oracle", relevant, 1.0, click_cfg, relevant, scores)
    values = {form: [] for form in forms}
    for r in range(REPLICATES):
        reaction = react(relevant, gamma, examination, click_cfg,
                         EngagementConfig(), np.random.default_rng([7, r]))
        theta = p_examine(reaction)
        for form in forms:
            values[form].append(
                loss(form, reaction.click, theta, click_cfg, relevant, scores)
            )
    out = {}
    for form, v in values.items():
        v = np.asarray(v)
        se = v.std(ddof=1) / np.sqrt(v.size)
        assert se > 0  # the clicks are random: the comparison means something
        out[form] = (v.mean() - truth) / se
    return out


def test_pbm_without_noise_ips_is_unbiased_naive_is_not(slates):
    """PBM, eta = 1, no click noise: E[c / theta_k] = R, so the mean
    position-IPS loss is within 4 SE of the loss on R; the naive click loss
    (w = 1) is far off."""
    examination = ExaminationConfig(model="pbm", eta=1.0)
    theta = p_examine_by_rank(examination, K)
    z = draws(slates, examination, ClickConfig(), lambda reaction: theta,
              ["click_ips", "click_affine", "click_naive"])
    assert abs(z["click_ips"]) < 4
    assert abs(z["click_affine"]) < 4  # eps_plus = 1, eps_minus = 0: the same
    assert abs(z["click_naive"]) > 4


def test_pbm_with_noise_needs_the_affine_correction(slates):
    """PBM with click noise (p_relevant 0.8, p_nonrelevant 0.1): the affine
    label (c - theta eps_minus) / (theta (eps_plus - eps_minus)) is unbiased
    and passes; plain IPS has E[c / theta] = 0.8 R + 0.1 (1 - R) and is more
    than 4 SE off."""
    examination = ExaminationConfig(model="pbm", eta=1.0)
    theta = p_examine_by_rank(examination, K)
    z = draws(slates, examination, ClickConfig(0.8, 0.1), lambda reaction: theta,
              ["click_affine", "click_ips"])
    assert abs(z["click_affine"]) < 4
    assert abs(z["click_ips"]) > 4


def test_cascade_biases_a_position_only_curve(slates):
    """Documents a bias. Under the cascade model examination at rank k depends
    on the relevance of the items above it, so no curve theta_k of the rank
    alone is right for every slate. Even the best one, the exact average
    examination probability of each rank over these very slates, with the
    exact noise correction, leaves the corrected loss more than 4 SE away from
    the loss on R. The same correction with each slate's own examination
    probabilities (known to the simulator only) is unbiased again."""
    relevant = slates[0]
    examination = ExaminationConfig(model="cascade")
    click_cfg = ClickConfig(0.6, 0.0)  # some noise, else the cascade is fixed
    exact = react(relevant, slates[1], examination, click_cfg, EngagementConfig(),
                  np.random.default_rng(0)).p_examine
    curve = exact.mean(axis=0)
    z_curve = draws(slates, examination, click_cfg, lambda reaction: curve,
                    ["click_affine"])
    z_exact = draws(slates, examination, click_cfg,
                    lambda reaction: reaction.p_examine, ["click_affine"])
    assert abs(z_curve["click_affine"]) > 4
    assert abs(z_exact["click_affine"]) < 4
