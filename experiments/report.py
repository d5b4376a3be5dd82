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
