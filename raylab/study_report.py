"""A study's outputs from its cells' run directories: study.json, study.csv and report/index.html
(mean ± one standard deviation over seeds per arm, against labelled frames and against clicks, and the
claims table). No Ray: `raylab study` writes them after its cells ran, and again on a finished study.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from raylab.claims import at_text, evaluate_claim, format_claims
from raylab.report import STYLE, _figure, _img, _save
from raylab.rundir import metric_value, read_metrics, read_state, write_atomic
from raylab.study import SEED, UNITS, StudyConfig, arm_label
from raylab.sweep import TRIAL_FILE, _table_metrics

AXES = {"frames": "labelled frames (% of the training frames)",
        "clicks": "clicks spent (% of the clicks of labelling every training frame)"}


def read_cells(study: StudyConfig, runs_dir: Path) -> list[dict]:
    """One dict per cell that has a run directory: trial, params, arm, run_dir, finished, records."""
    cells = []
    for trial_file in sorted(Path(runs_dir).glob(f"*/{TRIAL_FILE}")):
        run = trial_file.parent
        trial = json.loads(trial_file.read_text())
        state = read_state(run) if (run / "state.json").is_file() else {}
        cells.append({"trial": trial["trial_id"], "params": trial["params"],
                      "arm": arm_label(study, trial["params"]), "run_dir": str(run),
                      "finished": bool(state.get("finished")), "records": read_metrics(run)})
    return sorted(cells, key=lambda c: [str(c["params"].get(k)) for k in study.keys])


def study_metrics(study: StudyConfig) -> list[str]:
    """The claims' metrics, then the method's table metrics."""
    names = [c.metric for c in study.claims] + [m for m, _ in _table_metrics(study.base)]
    return list(dict.fromkeys(names))


def arm_curves(study: StudyConfig, cells: list[dict], metric: str) -> dict[str, dict]:
    """Per arm, cycle by cycle over its seeds: the mean labelled and clicks fractions, the metric's mean
    and standard deviation, and how many seeds reached the cycle."""
    by_arm: dict[str, list[list[dict]]] = {}
    for cell in cells:
        by_arm.setdefault(cell["arm"], []).append(cell["records"])
    out = {}
    for arm, runs in by_arm.items():
        cycles = max((len(r) for r in runs), default=0)
        rows = {k: [] for k in ("labelled_fraction", "clicks_fraction", "mean", "std", "seeds")}
        for i in range(cycles):
            lines = [r[i] for r in runs if len(r) > i]
            y = np.array([_num(metric_value(line, metric)) for line in lines])
            for key in UNITS.values():
                rows[key].append(float(np.nanmean([_num(line.get(key)) for line in lines])))
            rows["mean"].append(float(np.nanmean(y)))
            rows["std"].append(float(np.nanstd(y, ddof=1)) if len(y) > 1 else 0.0)
            rows["seeds"].append(len(lines))
        out[arm] = rows
    return out


def _num(value) -> float:
    return math.nan if value is None else float(value)


def study_table(study: StudyConfig, cells: list[dict]) -> pd.DataFrame:
    """study.csv: one row per cell and evaluated cycle."""
    metrics = study_metrics(study)
    rows = []
    for cell in cells:
        for line in cell["records"]:
            rows.append({"trial": cell["trial"], **cell["params"], "arm": cell["arm"], "cycle": line["cycle"],
                         "labelled_fraction": line.get("labelled_fraction"),
                         "labelled_frames": line.get("labelled_frames"), "clicks": line.get("cost"),
                         "clicks_fraction": line.get("clicks_fraction"),
                         **{m: metric_value(line, m) for m in metrics},
                         "finished": cell["finished"], "run_dir": cell["run_dir"]})
    keys = [k for k in study.keys if k != "arm"]  # with arms, `arm` is a grid key: one column of it
    columns = ["trial", *keys, "arm", "cycle", "labelled_fraction", "labelled_frames", "clicks",
               "clicks_fraction", *metrics, "finished", "run_dir"]
    return pd.DataFrame(rows, columns=columns)


def write_study(study: StudyConfig, out: Path) -> dict:
    """study.json, study.csv and report/index.html in `out` from out/runs/*; returns study.json's dict."""
    out = Path(out)
    cells = read_cells(study, out / "runs")
    claims = [r for claim in study.claims for r in evaluate_claim(study, claim, cells)]
    doc = {"name": study.name, "pipeline": str(study.pipeline), "method": study.base.method,
           "grid": {k.key: list(k.values) for k in study.grid}, "arms": study.arms,
           "statistic": study.statistic.__dict__,
           "cells": [{k: v for k, v in c.items() if k != "records"} | {"cycles": len(c["records"])}
                     for c in cells],
           "curves": {m: arm_curves(study, cells, m) for m in study_metrics(study)},
           "claims": claims}
    write_atomic(out / "study.json", json.dumps(_finite(doc), indent=1) + "\n")
    write_atomic(out / "study.csv", study_table(study, cells).to_csv(index=False))
    write_study_html(study, doc, out / "report")
    return doc


def _finite(value):
    """NaN and infinities as null: study.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# ---- the HTML page ----------------------------------------------------------------------------------


def write_study_html(study: StudyConfig, doc: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    figures = [_img(plot_metric(doc, metric, out / f"curves_{metric.replace('@', '_')}.png"),
                    f"{metric} against labelled frames and clicks, mean ± sd per arm")
               for metric in doc["curves"]]
    seeds = len(next((k.values for k in study.grid if k.key == SEED), ()))
    lead = (f"{len(doc['cells'])} runs of {study.pipeline.name} ({study.base.method}): "
            f"{len(doc['cells']) // max(seeds, 1)} arms × {seeds} seeds. Claims are paired by seed "
            f"(runs of a seed share their initial labels); interval: {study.statistic.interval}, "
            f"{study.statistic.confidence:.0%}. Curves: mean ± one standard deviation over seeds.")
    body = (f"<section><h2>Claims</h2>{claims_html(doc['claims'])}</section>\n"
            f"<section><h2>Learning curves</h2><div class=figures>{''.join(figures)}</div></section>")
    title = f"raylab study: {study.name}"
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n{STYLE}\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
            f"<p>{html.escape(lead)}</p>\n{body}\n</body>\n</html>\n")
    write_atomic(out / "index.html", page)
    return out / "index.html"


def claims_html(claims: list[dict]) -> str:
    if not claims:
        return "<p class=empty>the study declares no claim</p>"
    head = "".join(f"<th>{h}</th>" for h in ("claim", "metric", "at", "effect", "interval", "seeds",
                                              "verdict", "note"))
    rows = []
    for r in claims:
        ci = "–" if r["ci"] is None else f"[{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}]"
        effect = "–" if r["effect"] is None or not math.isfinite(r["effect"]) else f"{r['effect']:+.4f}"
        cells = [r["claim"], r["metric"], at_text(r), effect, ci, str(r["seeds"]),
                 r["verdict"], r["reason"]]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return f"<div class=wide>{table}</div>"


def plot_metric(doc: dict, metric: str, path: Path) -> Path:
    """Two panels: the metric against labelled frames and against clicks; per arm its mean over seeds
    and a band of ± one standard deviation."""
    fig = _figure(11, 4.2)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (unit, key) in zip(axes, UNITS.items()):
        for i, (arm, c) in enumerate(doc["curves"][metric].items()):
            x = 100 * np.array(c[key], dtype=float)
            y, sd = np.array(c["mean"], dtype=float), np.array(c["std"], dtype=float)
            ax.plot(x, y, "o-", color=f"C{i % 10}", markersize=3, label=arm)
            ax.fill_between(x, y - sd, y + sd, color=f"C{i % 10}", alpha=0.15, linewidth=0)
        ax.set_xlabel(AXES[unit])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(metric)
    axes[1].legend(fontsize="small", loc="lower right")
    return _save(fig, path)


def summary(doc: dict, out: Path) -> str:
    """What `raylab study` prints at the end: the claims table and where the outputs are."""
    finished = sum(c["finished"] for c in doc["cells"])
    return "\n".join([format_claims(doc["claims"]), "",
                      f"{finished} of {len(doc['cells'])} runs finished; study: {Path(out) / 'study.json'}, "
                      f"{Path(out) / 'study.csv'}; report: {Path(out) / 'report' / 'index.html'}"])
