"""The HTML report of a sweep: the best configurations, every trial's curve, the objective against
each swept knob (`raylab sweep` writes it; `raylab report SWEEP_DIR --out DIR` rewrites it)."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from raylab.report import STYLE, _figure, _img, _save
from raylab.rundir import read_metrics
from raylab.sweep import SweepConfig, best_trial, curve

TOP = 5  # rows of the best-configurations table


def write_sweep_report(sweep: SweepConfig, table: pd.DataFrame, out: Path) -> Path:
    """out/index.html (self-contained: figures embedded) and the figures as PNG files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    best = best_trial(table)
    sections = [
        ("Best configurations", _best_html(sweep, table, best)),
        ("Every trial's curve", _img(plot_curves(sweep, table, out / "curves.png"),
                                     f"{sweep.metric} against the labelled fraction, one line per trial")),
        ("Objective against each knob", _img(plot_knobs(sweep, table, out / "knobs.png"),
                                             "objective against each swept knob")),
        ("Every trial", _table_html(sweep, table)),
    ]
    body = "\n".join(f"<section>\n<h2>{html.escape(t)}</h2>\n{c}\n</section>" for t, c in sections)
    title = f"raylab sweep: {sweep.name}"
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n{STYLE}\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
            f"<p>{html.escape(describe(sweep, table))}</p>\n{body}\n</body>\n</html>\n")
    path = out / "index.html"
    path.write_text(page)
    return path


def describe(sweep: SweepConfig, table: pd.DataFrame) -> str:
    o, s = sweep.objective, sweep.search
    what = (f"area under the {sweep.metric} curve over the labelled fraction"
            + (f" up to {o.budget:.1%}" if o.budget else "") + " (mean height)"
            if o.kind == "auc" else f"{sweep.metric} at {o.budget:.1%} labelled")
    finished = int(table["finished"].sum())
    return (f"{len(table)} trials of {sweep.pipeline.name} ({sweep.base.method}), {s.algorithm} search, "
            f"scheduler {sweep.scheduler.name}; objective: {what}. {finished} trials finished all their "
            f"cycles, {len(table) - finished} were stopped early. The best configuration is the finished "
            "trial with the highest objective.")


def _best_html(sweep: SweepConfig, table: pd.DataFrame, best: pd.Series | None) -> str:
    if best is None:
        return "<p class=empty>no trial finished all its cycles yet</p>"
    knobs = ", ".join(f"{html.escape(k.key)} = <b>{_fmt(best[k.key])}</b>" for k in sweep.space)
    lead = (f"<p>Best: trial {html.escape(str(best['trial']))}: {knobs}; objective "
            f"<b>{best['objective']:.4f}</b>.</p>")
    return lead + _table_html(sweep, table[table["finished"]].head(TOP))


def _table_html(sweep: SweepConfig, table: pd.DataFrame) -> str:
    columns = ["trial", *(k.key for k in sweep.space), "cycles", "labelled_fraction", sweep.metric,
               "objective", "finished"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = ["<tr>" + "".join(f"<td>{html.escape(_fmt(r[c]))}</td>" for c in columns) + "</tr>"
            for _, r in table.iterrows()]
    return (f"<div class=wide><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _fmt(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "stopped early"
    if isinstance(value, (float, np.floating)):
        return "-" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def plot_curves(sweep: SweepConfig, table: pd.DataFrame, path: Path) -> Path:
    """The metric against the labelled fraction, one line per trial: finished trials solid, stopped
    ones dashed, the best one thick."""
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    best = best_trial(table)
    for _, row in table.iterrows():
        records = read_metrics(Path(row["run_dir"]))
        if not records:
            continue
        x, y = curve(records, sweep.metric)
        is_best = best is not None and row["trial"] == best["trial"]
        ax.plot(100 * x, y, marker="o", markersize=3, linestyle="-" if row["finished"] else "--",
                linewidth=2.5 if is_best else 1.0, alpha=1.0 if is_best or row["finished"] else 0.6,
                label=f"{row['trial']} (best)" if is_best else None, zorder=3 if is_best else 2)
    ax.set_xlabel("labelled (%)")
    ax.set_ylabel(sweep.metric)
    ax.set_title("every trial (dashed: stopped early by the scheduler)")
    if best is not None:
        ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_knobs(sweep: SweepConfig, table: pd.DataFrame, path: Path) -> Path:
    """One panel per knob: each trial's objective against the knob's value (filled: finished;
    hollow: stopped early, its objective at the cycle it reached; star: the best)."""
    n = len(sweep.space)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig = _figure(4 * cols, 3.2 * rows)
    best = best_trial(table)
    scored = table[table["objective"].notna()]
    for i, knob in enumerate(sweep.space):
        ax = fig.add_subplot(rows, cols, i + 1)
        values = scored[knob.key]
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        if numeric:
            x = values.to_numpy(dtype=float)
        else:
            levels = [str(v) for v in knob.values] if knob.kind in ("grid", "choice") else \
                sorted(values.astype(str).unique())
            x = np.array([levels.index(str(v)) for v in values], dtype=float)
            ax.set_xticks(range(len(levels)), levels)
        done = scored["finished"].to_numpy(bool)
        y = scored["objective"].to_numpy(float)
        ax.scatter(x[done], y[done], color="C0", label="finished", zorder=3)
        ax.scatter(x[~done], y[~done], facecolors="none", edgecolors="C0", label="stopped early", zorder=2)
        if best is not None:
            bx = x[scored["trial"].to_numpy() == best["trial"]][0]
            ax.scatter([bx], [best["objective"]], marker="*", s=180, color="C3", label="best", zorder=4)
        if knob.kind == "loguniform":
            ax.set_xscale("log")
        ax.set_xlabel(knob.key)
        ax.set_ylabel("objective")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize="small")
    return _save(fig, path)
