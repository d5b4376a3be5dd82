"""How a user reacts to a slate: examination, clicks and engagement.

Examination (``examination.model``):

- ``pbm``, the position-based model: rank k is examined with probability
  p_examine = theta_k = (1/k)^eta, eta = ``examination.eta``, independently of
  the other ranks and of relevance (Craswell et al., WSDM 2008; the form used
  by Joachims, Swaminathan and Schnabel, WSDM 2017).
- ``cascade``: the user scans from rank 1 down and examines each rank until the
  first click; after a click nothing further is examined, and without a click
  every rank is examined (Craswell et al., 2008). Given the slate and the
  relevance of its items, p_examine at rank k is prod_{l<k} (1 - P(click_l)).

Clicks: an examined item is clicked with probability ``click.p_relevant`` when
R_ui = 1 and ``click.p_nonrelevant`` when R_ui = 0 (defaults 1 and 0: a click
is exactly "examined and relevant").

Engagement: a click is followed by plays ~ Poisson(lambda0 + lambda1 gamma_ui),
lambda0 = ``engagement.lambda0``, lambda1 = ``engagement.lambda1``; an
impression without a click has 0 plays (a click may also have 0 plays).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.config import check, check_range

__all__ = [
    "EXAMINATION_MODELS",
    "ExaminationConfig",
    "ClickConfig",
    "EngagementConfig",
    "Reaction",
    "p_examine_by_rank",
    "react",
]

EXAMINATION_MODELS = ("pbm", "cascade")


@dataclass(frozen=True)
class ExaminationConfig:
    """Which ranks a user looks at (keys ``examination.*``)."""

    model: str = "pbm"
    eta: float = 1.0  # position-bias exponent of the PBM, theta_k = (1/k)^eta

    def __post_init__(self) -> None:
        check(self.model in EXAMINATION_MODELS, "examination.model",
              "one of " + ", ".join(EXAMINATION_MODELS), self.model)
        check_range(self.eta, "examination.eta", 0.0)


@dataclass(frozen=True)
class ClickConfig:
    """Click noise (keys ``click.*``)."""

    p_relevant: float = 1.0
    p_nonrelevant: float = 0.0

    def __post_init__(self) -> None:
        check_range(self.p_relevant, "click.p_relevant", 0.0, 1.0)
        check_range(self.p_nonrelevant, "click.p_nonrelevant", 0.0, 1.0)


@dataclass(frozen=True)
class EngagementConfig:
    """Plays after a click, Poisson(lambda0 + lambda1 gamma) (keys ``engagement.*``)."""

    lambda0: float = 1.0
    lambda1: float = 10.0

    def __post_init__(self) -> None:
        check_range(self.lambda0, "engagement.lambda0", 0.0)
        check_range(self.lambda1, "engagement.lambda1", 0.0)


@dataclass(frozen=True, eq=False)
class Reaction:
    """One reaction per impression, arrays (n, K) in rank order.

    examined, click: bool; plays: int32; p_examine: float64, the probability
    that the rank was examined (theta_k under the PBM; given the slate's
    relevance under the cascade).
    """

    examined: np.ndarray
    click: np.ndarray
    plays: np.ndarray
    p_examine: np.ndarray


def p_examine_by_rank(cfg: ExaminationConfig, slate_size: int) -> np.ndarray:
    """PBM examination probabilities theta (K,): theta_k = (1/k)^eta, k = 1..K.

    Refused for the cascade model, where examination depends on the clicks
    above and no per-rank probability exists.
    """
    check(cfg.model == "pbm", "examination.model",
          "'pbm' for a per-rank p_examine (under the cascade model examination "
          "depends on the clicks above)", cfg.model)
    ok = isinstance(slate_size, (int, np.integer)) and slate_size >= 1
    check(ok, "slate_size", "an integer >= 1", slate_size)
    ranks = np.arange(1, slate_size + 1, dtype=np.float64)
    return ranks ** -cfg.eta


def react(
    relevant: np.ndarray,
    gamma: np.ndarray,
    examination: ExaminationConfig,
    click: ClickConfig,
    engagement: EngagementConfig,
    rng: np.random.Generator,
) -> Reaction:
    """Draw examination, clicks and plays for slates with relevance (n, K).

    ``relevant`` (n, K) bool is R of each shown item, ``gamma`` (n, K) its true
    relevance probability (for plays). Three child streams of ``rng`` draw
    examination, clicks and plays, so that changing one model leaves the
    others' draws alone.
    """
    relevant = np.asarray(relevant, dtype=bool)
    gamma = np.asarray(gamma, dtype=np.float64)
    check(relevant.ndim == 2 and gamma.shape == relevant.shape, "relevant, gamma",
          "two (n, K) arrays of the same shape", (relevant.shape, gamma.shape))
    n, k = relevant.shape
    exam_rng, click_rng, play_rng = rng.spawn(3)
    p_click = np.where(relevant, click.p_relevant, click.p_nonrelevant)
    would_click = click_rng.random((n, k)) < p_click

    if examination.model == "pbm":
        theta = p_examine_by_rank(examination, k)
        examined = exam_rng.random((n, k)) < theta
        clicked = examined & would_click
        p_examine = np.broadcast_to(theta, (n, k)).copy()
    else:
        first = np.where(would_click.any(axis=1), would_click.argmax(axis=1), k)
        examined = np.arange(k)[None, :] <= first[:, None]
        clicked = examined & would_click
        stay = np.cumprod(1.0 - p_click, axis=1)
        p_examine = np.ones((n, k))
        p_examine[:, 1:] = stay[:, :-1]

    rate = engagement.lambda0 + engagement.lambda1 * gamma
    plays = np.zeros((n, k), dtype=np.int32)
    plays[clicked] = play_rng.poisson(rate[clicked])
    return Reaction(examined, clicked, plays, p_examine)
