"""biaslab's simulator: what happened, and what was true.

The world (true ratings and relevance), the observation of explicit ratings
missing not at random, slate policies with exact propensities, user behaviour,
the logs a system would keep, and the truth kept beside them. See DESIGN.md
and the README for the data flow; each module documents its formulas.
"""

from sim.behaviour import ClickConfig, EngagementConfig, ExaminationConfig, react
from sim.config import ConfigError
from sim.exposure import ExposureConfig, InterventionConfig, SlatePolicy, make_policy
from sim.implicit import (
    ImplicitTruth,
    ImpressionLog,
    clicks_by_pair,
    p_expose_pair,
    simulate_implicit,
)
from sim.ratings import MarConfig, RatingLog, SplitConfig, Truth, load, save
from sim.ratings import simulate_ratings
from sim.relevance import RelevanceConfig
from sim.selection import PRESETS, SelectionConfig, observe_probability
from sim.world import MUSIC_MARGINAL, World, WorldConfig, sample_world

__all__ = [
    "ClickConfig", "ConfigError", "EngagementConfig", "ExaminationConfig",
    "ExposureConfig", "ImplicitTruth", "ImpressionLog", "InterventionConfig",
    "MUSIC_MARGINAL", "MarConfig", "PRESETS", "RatingLog", "RelevanceConfig",
    "SelectionConfig", "SlatePolicy", "SplitConfig", "Truth", "World", "WorldConfig",
    "clicks_by_pair", "load", "make_policy", "observe_probability", "p_expose_pair",
    "react", "sample_world", "save", "simulate_implicit", "simulate_ratings",
]
