"""The built-in experiments, by name."""

from __future__ import annotations

import importlib
from types import ModuleType

from sim.config import ConfigError

# name -> module path; modules are imported on first use so that `biaslab list`
# stays fast.
EXPERIMENTS = {
    "mnar-ratings": "experiments.mnar_ratings",
    "position-bias": "experiments.position_bias",
    "implicit-objectives": "experiments.implicit_objectives",
    "ope": "experiments.ope_bandit",
    "ope-slate": "experiments.ope_slate",
    "mnar-evaluation": "experiments.mnar_evaluation",
}

SUMMARIES = {
    "mnar-ratings": "explicit ratings missing not at random: naive vs IPS / SNIPS / DR "
                    "matrix factorisation, scored on the full true matrix",
    "position-bias": "clicks under position bias: naive vs position-IPS with the true, "
                     "RandPair and EM curves, swept over eta",
    "implicit-objectives": "positive-only clicks under popularity exposure: BCE, BPR, "
                           "WMF, Rel-MF, UBPR against an oracle, with gap closed",
    "ope": "off-policy evaluation of a target policy from logged clicks: naive, DM, "
           "IPS, SNIPS, capped IPS, DR, SNDR, switch-DR against the exact value, "
           "swept over logger skew and weight cap",
    "ope-slate": "slate off-policy evaluation: naive, pbm-ips and iips against the "
                 "exact value under position-based and cascade clicks",
    "mnar-evaluation": "estimating MSE, MAE and DCG@K of prediction matrices from "
                       "MNAR ratings: naive, IPS, SNIPS, EIB, DR, true and estimated "
                       "propensities, swept over selection alpha",
}


def names() -> list[str]:
    return list(EXPERIMENTS)


def get(name: str) -> ModuleType:
    """The experiment module called ``name``; refuses an unknown name."""
    if name not in EXPERIMENTS:
        import difflib

        close = difflib.get_close_matches(name, EXPERIMENTS, n=1, cutoff=0.0)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"experiment must be one of {', '.join(EXPERIMENTS)}, got {name!r}{hint}")
    return importlib.import_module(EXPERIMENTS[name])
