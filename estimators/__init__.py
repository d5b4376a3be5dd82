"""biaslab's estimators: what can be learned from a biased log.

Propensity sources, JAX models and objectives on one shared trainer, position
bias estimation, evaluation estimators (error estimation for a prediction
matrix, bandit and slate off-policy evaluation), and metrics against the
truth. Submodules keep their own, larger APIs; the names a user starts from
are re-exported here.
"""

from estimators.evaluation import Estimate, estimate_error, estimate_matrix_metric
from estimators.implicit import ImplicitConfig, ImplicitData, ImpressionData
from estimators.metrics import mae, mse
from estimators.models import NCFConfig, predict, predict_matrix
from estimators.ope import OpeEstimate, cross_fit_rewards, estimate_policy_values
from estimators.ope_slate import SlateEstimate, estimate_slate_values
from estimators.position import position_bias_em, position_bias_randpair
from estimators.position import propensity_error
from estimators.propensity import (
    apply_floor,
    logistic_propensity,
    naive_bayes_propensity,
    popularity_propensity,
)
from estimators.ranking import (
    auc,
    coverage_at_k,
    gini_exposure,
    hr_at_k,
    mean_popularity,
    mrr,
    ndcg_at_k,
    recall_at_k,
)
from estimators.train import (
    DRConfig,
    FitResult,
    RatingData,
    TrainConfig,
    fit,
    fit_implicit,
    search,
    search_implicit,
)

__all__ = [
    "DRConfig", "Estimate", "FitResult", "ImplicitConfig", "ImplicitData",
    "ImpressionData", "NCFConfig", "OpeEstimate", "RatingData", "SlateEstimate",
    "TrainConfig", "apply_floor", "auc", "coverage_at_k", "cross_fit_rewards",
    "estimate_error", "estimate_matrix_metric", "estimate_policy_values",
    "estimate_slate_values", "fit", "fit_implicit", "gini_exposure", "hr_at_k",
    "logistic_propensity", "mae", "mean_popularity", "mrr", "mse",
    "naive_bayes_propensity", "ndcg_at_k", "popularity_propensity",
    "position_bias_em", "position_bias_randpair", "predict", "predict_matrix",
    "propensity_error", "recall_at_k", "search", "search_implicit",
]
