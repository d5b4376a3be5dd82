"""Scoring estimates against a known truth, per seed and across seeds.

Shared by the evaluation experiments (``ope``, ``ope-slate``,
``mnar-evaluation``). Per seed, an estimate with its standard error and 95%
interval becomes the rows of ``scored``:

- ``estimate``: the point estimate Vhat;
- ``error``: Vhat - V, V the truth of the same seed;
- ``abs_error``: |Vhat - V|;
- ``rel_error``: |Vhat - V| / |V| (left out when V = 0, where it is undefined);
- ``covered``: 1 if the interval [ci_low, ci_high] holds V, else 0;
- ``se``: the estimator's own standard error.

Across seeds (``meta_evaluation``), per group of rows:

- ``bias``: mean error, with ``bias_se`` = sd(error) / sqrt(seeds);
- ``sd``: the standard deviation of the error over seeds. Each seed draws its
  own world and log, so the spread of the error (not of the estimates, which
  would mix in how the truth itself varies between worlds) is the estimator's;
- ``rmse``: sqrt(mean error^2);
- ``rel_error``: mean of the per-seed relative errors;
- ``coverage``: share of seeds whose interval holds the truth, with its
  binomial standard error ``coverage_se`` = sqrt(c (1 - c) / seeds).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["SCORES", "scored", "meta_evaluation", "markdown_table"]

SCORES = ("estimate", "error", "abs_error", "rel_error", "covered", "se")


def scored(value: float, se: float, ci_low: float, ci_high: float,
           truth: float) -> dict[str, float]:
    """The per-seed scores of one estimate against the truth (see the module)."""
    error = value - truth
    out = {"estimate": value, "error": error, "abs_error": abs(error)}
    if truth != 0.0:
        out["rel_error"] = abs(error) / abs(truth)
    out["covered"] = float(ci_low <= truth <= ci_high)
    out["se"] = se
    return out


def meta_evaluation(results: pd.DataFrame, by: list[str],
                    prefix: str = "") -> pd.DataFrame:
    """Bias, SD, RMSE, relative error and coverage over seeds per group.

    Args:
        results: tidy rows (seed, method, propensity, metric, value, ...) that
            hold the metrics ``{prefix}error``, ``{prefix}covered`` and
            optionally ``{prefix}rel_error``.
        by: the columns that define a group (e.g. method, propensity and the
            swept keys).
        prefix: the metric-name prefix (e.g. ``"mse_"``).

    Returns:
        One row per group: the ``by`` columns, seeds, bias, bias_se, sd, rmse,
        rel_error (NaN where absent), coverage and coverage_se.
    """
    names = {f"{prefix}{s}": s for s in ("error", "covered", "rel_error")}
    part = results[results["metric"].isin(list(names))]
    if part.empty:
        return pd.DataFrame(columns=[*by, "seeds", "bias", "bias_se", "sd", "rmse",
                                     "rel_error", "coverage", "coverage_se"])
    wide = part.assign(score=part["metric"].map(names)).pivot_table(
        index=[*by, "seed"], columns="score", values="value", aggfunc="first",
        dropna=False, observed=True)
    wide = wide.dropna(subset=["error"]).reset_index()
    rows = []
    for key, group in wide.groupby(by, sort=False, dropna=False):
        error = group["error"].to_numpy()
        n = error.size
        sd = float(error.std(ddof=1)) if n > 1 else math.nan
        coverage = float(group["covered"].mean())
        rel = (float(group["rel_error"].mean()) if "rel_error" in group
               else math.nan)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), "seeds": n, "bias": float(error.mean()),
                     "bias_se": sd / math.sqrt(n) if n > 1 else math.nan,
                     "sd": sd, "rmse": float(np.sqrt(np.mean(error**2))),
                     "rel_error": rel, "coverage": coverage,
                     "coverage_se": math.sqrt(coverage * (1 - coverage) / n)})
    return pd.DataFrame(rows)


def markdown_table(meta: pd.DataFrame, label: list[str]) -> str:
    """The meta-evaluation as a Markdown table, one line per group."""
    header = [*label, "seeds", "bias (± se)", "SD", "RMSE", "rel. error",
              "coverage (± se)"]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for _, row in meta.iterrows():
        rel = "n/a" if not np.isfinite(row["rel_error"]) else f"{row['rel_error']:.3f}"
        bias_se = ("" if not np.isfinite(row["bias_se"])
                   else f" ± {row['bias_se']:.2g}")
        cells = [f"`{row[c]}`" if isinstance(row[c], str) else f"{row[c]:g}"
                 for c in label]
        cells += [str(int(row["seeds"])), f"{row['bias']:+.4g}{bias_se}",
                  f"{row['sd']:.4g}", f"{row['rmse']:.4g}", rel,
                  f"{row['coverage']:.3f} ± {row['coverage_se']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
