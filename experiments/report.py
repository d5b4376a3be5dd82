"""Figures and plain-words reports (Markdown and self-contained HTML).

`write` and `write_sweep` draw one study's figures and write its
``report.md``; `build` (the `biaslab report DIR` command) rebuilds them from
the stored results and adds ``report.html`` with every figure embedded, for
one study or for a folder of studies (a tour).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from experiments.runner import write_atomic

__all__ = ["write", "write_sweep", "interval_plot", "dose_response", "build", "paired_t"]


def paired_t(results: pd.DataFrame, metric: str, first: dict, second: dict
             ) -> tuple[float | None, int]:
    """Paired t-statistic over seeds of metric(first) - metric(second), where
    ``first`` and ``second`` select rows by column values (e.g. ``{"method":
    "mf-ips", "propensity": "true"}``); None with fewer than 2 common seeds or
    identical values (the statistic is undefined, not NaN)."""
    from scipy import stats

    def values(select: dict) -> pd.Series:
        part = results[results["metric"] == metric]
        for column, value in select.items():
            part = part[part[column] == value]
        return part.set_index("seed")["value"]

    a, b = values(first), values(second)
    seeds = a.index.intersection(b.index)
    if len(seeds) < 2 or float((a[seeds] - b[seeds]).std()) == 0.0:
        return None, len(seeds)
    return float(stats.ttest_rel(a[seeds], b[seeds]).statistic), len(seeds)


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
    metrics = list(getattr(experiment, "REPORT_METRICS", experiment.KEY_METRICS))
    fixed = {"experiment", "method", "propensity", "metric", "n", "mean", "sd",
             "ci_low", "ci_high"}
    swept = [c for c in summary.columns
             if c not in fixed and summary[c].nunique(dropna=False) > 1]
    keep = summary[summary["metric"].isin(metrics)][
        ["method", "propensity", *swept, "metric", "n", "mean", "ci_low", "ci_high"]]
    lines.append(keep.to_markdown(index=False, floatfmt=".4g"))
    lines += ["", "Every metric of every method is in `summary.csv`; the rows per seed "
              "are in `results.parquet`."]
    write_atomic(out / "report.md", lambda p: p.write_text("\n".join(lines) + "\n"))


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
    lines.append(keep.to_markdown(index=False, floatfmt=".4g"))
    write_atomic(out / "report.md", lambda p: p.write_text("\n".join(lines) + "\n"))


def _rebuild(study_dir: Path) -> str:
    """Redraw one study's figures and report.md from its stored results; return
    the Markdown."""
    from experiments import registry
    from sim.config import override

    study = json.loads((study_dir / "study.json").read_text())
    experiment = registry.get(study["experiment"])
    results = pd.read_parquet(study_dir / "results.parquet")
    summary = pd.read_csv(study_dir / "summary.csv")
    if "sweep" in study:
        write_sweep(experiment, study["sweep"]["grid"], results, summary, study_dir)
    else:
        values = {k: json.loads(v) if isinstance(v, str) and v.startswith("[") else v
                  for k, v in study["config"].items()}
        cfg = override(experiment.Config(), values).resolve()
        write(experiment, cfg, results, summary, study_dir)
    return (study_dir / "report.md").read_text()


def _embed_images(html: str, base: Path) -> str:
    """Replace every <img src="relative.png"> by a data: URI of the file."""

    def embed(match: re.Match) -> str:
        path = base / match.group(2)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'{match.group(1)}data:image/png;base64,{data}"'

    return re.sub(r'(<img[^>]*src=")([^"]+\.png)"', embed, html)


HTML_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.45; color: #222; }}
img {{ max-width: 100%; border: 1px solid #ddd; margin: 0.5rem 0; }}
table {{ border-collapse: collapse; font-size: 0.8rem; margin: 0.5rem 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.15rem 0.4rem; text-align: right; }}
code {{ background: #f3f3f3; padding: 0 0.2rem; }}
</style></head><body>
{body}
</body></html>
"""


def build(folder: str | Path) -> Path:
    """Rebuild the report of a study folder, or of every study in a folder
    (one level down), as ``report.md`` and a self-contained ``report.html``."""
    import markdown

    from sim.config import ConfigError

    folder = Path(folder)
    if (folder / "study.json").exists():
        parts = [("", _rebuild(folder))]
    else:
        studies = sorted(p for p in folder.glob("*/study.json")) if folder.is_dir() else []
        if not studies:
            raise ConfigError(
                f"report folder must hold a study (study.json) or studies one level "
                f"down, got {str(folder)!r}")
        parts = [(p.parent.name + "/", _rebuild(p.parent)) for p in studies]
    sections = []
    for prefix, text in parts:
        text = text.replace("](figures/", f"]({prefix}figures/")
        if prefix:  # demote headings one level under the folder's title
            text = re.sub(r"^(#+) ", r"#\1 ", text, flags=re.MULTILINE)
        sections.append(text)
    title = "biaslab report" if len(parts) > 1 or parts[0][0] else parts[0][1].split(
        "\n", 1)[0].lstrip("# ")
    combined = (f"# {title}\n\n" if len(parts) > 1 or parts[0][0] else "") + \
        "\n\n".join(sections)
    if len(parts) > 1 or parts[0][0]:
        write_atomic(folder / "report.md", lambda p: p.write_text(combined))
    body = markdown.markdown(combined, extensions=["tables", "fenced_code"])
    html = HTML_PAGE.format(title=title, body=_embed_images(body, folder))
    write_atomic(folder / "report.html", lambda p: p.write_text(html))
    return folder / "report.html"
