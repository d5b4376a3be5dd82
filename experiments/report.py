"""Figures and a plain-words report from an experiment's results."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from experiments.runner import write_atomic

__all__ = ["write", "interval_plot"]


def _label(row: pd.Series) -> str:
    if row["propensity"] in ("none", ""):
        return str(row["method"])
    return f"{row['method']}\n{row['propensity']}"


def interval_plot(summary: pd.DataFrame, metrics: list[str], path: Path,
                  title: str) -> None:
    """One panel per metric: mean and Student-t 95% interval per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(metrics), 1, figsize=(9, 2.6 * len(metrics)),
                             squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        part = summary[summary["metric"] == metric].reset_index(drop=True)
        labels = [_label(r) for _, r in part.iterrows()]
        low = (part["mean"] - part["ci_low"]).fillna(0)
        high = (part["ci_high"] - part["mean"]).fillna(0)
        ax.errorbar(range(len(part)), part["mean"], yerr=[low, high], fmt="o",
                    capsize=4)
        ax.set_xticks(range(len(part)), labels, fontsize=7)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0, 0].set_title(title)
    fig.tight_layout()
    write_atomic(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def write(experiment: ModuleType, cfg: Any, results: pd.DataFrame,
          summary: pd.DataFrame, out: Path) -> None:
    """Write ``out/figures/*.png`` and ``out/report.md``."""
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    names = experiment.figures(cfg, results, summary, figures)
    text = experiment.lesson(cfg, results, summary)
    lines = [f"# {experiment.NAME}", "", text, "", "## Figures", ""]
    lines += [f"![{name}](figures/{name})" for name in names]
    lines += ["", "## Summary (mean and Student-t 95% interval over seeds)", ""]
    keep = summary[["method", "propensity", "metric", "n", "mean", "ci_low",
                    "ci_high"]]
    lines.append(keep.to_markdown(index=False, floatfmt=".4g")
                 if _has_tabulate() else "```\n" + keep.to_string(index=False)
                 + "\n```")
    write_atomic(out / "report.md", lambda p: p.write_text("\n".join(lines) + "\n"))


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def dose_response(summary: pd.DataFrame, key: str, metrics: list[str], path: Path,
                  others: list[str]) -> None:
    """Metric vs ``key`` per method (and per value of the ``others`` keys), with
    Student-t 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 3.6),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        part = summary[summary["metric"] == metric]
        for label, group in part.groupby(["method", "propensity", *others],
                                         sort=False, dropna=False):
            group = group.sort_values(key)
            name = " ".join(str(v) for v in label if str(v) not in ("none", "nan"))
            low = (group["mean"] - group["ci_low"]).fillna(0)
            high = (group["ci_high"] - group["mean"]).fillna(0)
            ax.errorbar(group[key], group["mean"], yerr=[low, high], marker="o",
                        capsize=3, label=name)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    write_atomic(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def write_sweep(experiment: ModuleType, grid: dict, results: pd.DataFrame,
                summary: pd.DataFrame, out: Path) -> None:
    """Figures of metric vs each swept key, and ``report.md`` with the table."""
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    metrics = list(experiment.KEY_METRICS)
    names = []
    numeric = [k for k in grid if all(isinstance(v, (int, float)) for v in grid[k])]
    for key in numeric:
        others = [k for k in grid if k != key]
        name = f"dose_{key.replace('.', '_')}.png"
        dose_response(summary, key, metrics, figures / name, others)
        names.append(name)
    lines = [f"# Sweep of {experiment.NAME}", "",
             f"{results['seed'].nunique()} seed(s) per grid point; grid: "
             + ", ".join(f"`{k}` in {v}" for k, v in grid.items()), "",
             "## Figures", ""]
    lines += [f"![{n}](figures/{n})" for n in names]
    lines += ["", "## Summary (mean and Student-t 95% interval over seeds)", ""]
    keep = summary[summary["metric"].isin(metrics)][
        ["method", "propensity", *grid, "metric", "n", "mean", "ci_low", "ci_high"]]
    lines += ["```", keep.to_string(index=False), "```"]
    write_atomic(out / "report.md", lambda p: p.write_text("\n".join(lines) + "\n"))
