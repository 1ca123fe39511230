"""Plots of one or more runs and one self-contained HTML page holding them.

    out/
        index.html                  every figure embedded as a base64 data URI: the page works alone
        curve_<metric>_<thr>.png    metric vs labelled fraction, one line per run (Figure 1 / Table 1 style)
        timelines.png               where in a few videos the frames were picked (Figure 3 style)
        selections_per_video.png    histogram of selected frames per video (Figure 7 style)
        thumbnails.png              selected frames of the first run with their ground-truth boxes

No Ray here. Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot,
so importing this module leaves the process's matplotlib backend alone.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from raylab.data.label_rows import LABELS_SCHEMA
from raylab.data.labels import LabelStore
from raylab.data.video import VideoError, read_frames
from raylab.rundir import (
    RunData,
    RunStateError,
    load_run,
    metric_value,
    read_metrics,
    read_state,
    strategy_name,
    write_atomic,
)

log = logging.getLogger(__name__)

# (family, threshold) in metrics.jsonl's "metrics", with the papers' short names
CURVE_METRICS = (("frame_map", "0.5"), ("video_map", "0.2"), ("video_map", "0.5"),  # ASL
                 ("map", "0.5"), ("map", "avg"))  # AL-STAL: mAP@0.5 and the mean over the preset's tIoUs
SHORT_NAMES = {"frame_map": "f-mAP", "video_map": "v-mAP", "map": "mAP"}
SELECTION_COLUMNS = {"video_id": str, "frame": np.int64, "score": float, "rank": np.int64,
                     "strategy": str, "cycle": np.int64}
NO_SELECTION = "no selection yet"
GT_COLOUR, INIT_COLOUR, BOX_COLOUR = "#cfe3f3", "0.45", "#ffd400"


@dataclass
class ReportRun:
    """What the report reads from one run directory."""

    path: Path
    data: RunData
    state: dict
    metrics: list[dict]  # metrics.jsonl, one dict per evaluated cycle
    selections: pd.DataFrame  # every cycle's selection: SELECTION_COLUMNS (whole-video rows expanded)
    labels: pd.DataFrame  # the label store's rows (LABELS_SCHEMA)
    label: str = field(default="")  # name in legends and tables, set by run_labels

    @property
    def strategy(self) -> str:
        return strategy_name(self.data.cfg)


def write_report(runs: list[Path], out: Path, videos_shown: int = 4, thumbnails: int = 8) -> Path:
    """Write the PNG figures and `out/index.html` comparing `runs`.

    Args:
        runs: run directories (each with config.yaml, state.json and at least one metrics.jsonl line).
        out: output directory, created when missing.
        videos_shown: training videos drawn in the timeline figure (those with the most selected frames).
        thumbnails: selected frames of the first run drawn with their ground-truth boxes.

    Returns:
        the path of index.html.

    Raises:
        RunStateError: a directory is not a run, or a run has no evaluated cycle yet.
    """
    if not runs:
        raise ValueError("write_report needs at least one run directory")
    loaded = [load_report_run(Path(r)) for r in runs]
    for run, label in zip(loaded, run_labels([r.strategy for r in loaded], [r.path for r in loaded])):
        run.label = label
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    methods = {r.data.cfg.method for r in loaded}
    if len(methods) > 1:
        raise RunStateError(f"one report compares runs of one method; these mix {', '.join(sorted(methods))}")
    unit = labelled_unit(loaded)
    curves = [_img(p, f"learning curve {p.stem}") for p in plot_learning_curves(loaded, out)]
    sections = [
        ("Learning curves", _paragraph(
            f"Each metric against the labelled fraction of the training {unit}, one line per run (the "
            "papers' Figure 1), and the same numbers per cycle (Table 1). mAP in %.")
         + f"<div class=figures>{''.join(curves)}</div>" + metrics_table(loaded)),
    ]
    if unit == "videos":
        sections.append(("Selected videos", _paragraph(
            "The videos each run sent to the oracle, per cycle, highest score first (AL-STAL selects whole "
            "videos; random has no score).") + selected_videos_table(loaded)))
    else:
        sections += frame_sections(loaded, out, videos_shown, thumbnails)
    page = out / "index.html"
    write_atomic(page, render_html(loaded, sections))
    log.info("report of %d run(s) written to %s", len(loaded), page)
    return page


def frame_sections(loaded: list[ReportRun], out: Path, videos_shown: int, thumbnails: int) -> list:
    """ASL's figures of the selected frames: timelines, frames per video, thumbnails."""
    return [
        ("Where the frames were picked", _paragraph(
            "Each strip is one run over a video's frames: shaded = ground-truth action, grey ticks = initial "
            "labels, coloured ticks = the frames selected in each cycle (the papers' Figure 3).")
         + _img_or_empty(plot_timelines(loaded, out, videos_shown), "selection timelines")),
        ("Selected frames per video", _paragraph(
            "How many frames each training video received over all cycles, per run (the papers' Figure 7).")
         + _img_or_empty(plot_selection_histogram(loaded, out), "selected frames per video")),
        (f"Selected frames of {loaded[0].label}", _paragraph(
            "The highest-scoring frames of the latest selection first, with their ground-truth boxes.")
         + _img_or_empty(plot_thumbnails(loaded[0], out, thumbnails), "selected frames")),
    ]


def selected_videos_table(runs: list[ReportRun]) -> str:
    """HTML table: one row per run and cycle with the selected videos (and scores)."""
    rows = []
    for run in runs:
        picked = run.selections.drop_duplicates(["cycle", "video_id"])  # whole-video rows were expanded
        for k, sel in picked.groupby("cycle", sort=True):
            videos = ", ".join(f"{v}" + ("" if math.isnan(sc) else f" ({sc:.3g})")
                               for v, sc in zip(sel["video_id"], sel["score"].astype(float)))
            rows.append(f"<tr><td>{html.escape(run.label)}</td><td>{k}</td><td>{html.escape(videos)}</td></tr>")
    if not rows:
        return _paragraph(NO_SELECTION)
    return ("<table class=metrics><thead><tr><th>run</th><th>cycle</th><th>videos (score)</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


# ---- loading -------------------------------------------------------------------------------------------


def load_report_run(run: Path) -> ReportRun:
    """Read a run directory for the report (nothing is written to it)."""
    data = load_run(run)  # RunStateError when run has no config.yaml or its dataset is missing
    state = read_state(run)
    try:
        metrics = read_metrics(run)
    except json.JSONDecodeError as e:
        raise RunStateError(f"{data.paths.metrics} is not valid JSON lines: {e}") from e
    if not metrics:
        raise RunStateError(f"{data.paths.metrics} is missing or empty: run {run} has no evaluated cycle to "
                            "report yet; let `raylab run` evaluate cycle 0 first")
    num_frames = dict(zip(data.index["video_id"], data.index["num_frames"]))
    return ReportRun(Path(run), data, state, metrics, _read_selections(data, num_frames),
                     _read_labels(data, num_frames))


def _read_selections(data: RunData, num_frames: dict[str, int]) -> pd.DataFrame:
    """selections/cycle=K.parquet of every K, concatenated with a cycle column."""
    found = []
    for p in data.paths.path.glob("selections/cycle=*.parquet"):
        m = re.fullmatch(r"cycle=(\d+)\.parquet", p.name)
        if m:
            found.append((int(m.group(1)), p))
    parts = [pd.read_parquet(p).assign(cycle=k) for k, p in sorted(found)]
    parts = [df for df in parts if len(df)]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in SELECTION_COLUMNS.items()})
    sel = pd.concat(parts, ignore_index=True)
    return _expand_whole_video(sel, num_frames).astype({"frame": np.int64, "cycle": np.int64})


def _read_labels(data: RunData, num_frames: dict[str, int]) -> pd.DataFrame:
    if not data.paths.labels.is_dir():  # LabelStore would create it; the report writes nothing in a run
        return LABELS_SCHEMA.empty_table().to_pandas()
    return _expand_whole_video(LabelStore(data.paths.labels).to_pandas(), num_frames)


def _expand_whole_video(df: pd.DataFrame, num_frames: dict[str, int]) -> pd.DataFrame:
    """Rows with frame -1 (a whole video) become one row per frame of that video."""
    whole = df["frame"].to_numpy() < 0
    if not whole.any():
        return df
    expanded = df[whole].assign(frame=[np.arange(num_frames.get(v, 0)) for v in df.loc[whole, "video_id"]])
    expanded = expanded.explode("frame").dropna(subset=["frame"])
    return pd.concat([df[~whole], expanded], ignore_index=True).astype({"frame": np.int64})


def run_labels(strategies: list[str], paths: list[Path]) -> list[str]:
    """Legend names: the strategy, plus the run directory's name when runs share a strategy."""
    shared = Counter(strategies)
    labels = [s if shared[s] == 1 else f"{s} ({Path(p).resolve().name})" for s, p in zip(strategies, paths)]
    if len(set(labels)) < len(labels):  # same strategy and same directory name (or one run given twice)
        labels = [f"{label} [{i + 1}]" for i, label in enumerate(labels)]
    return labels


# ---- learning curves (Figure 1, Table 1) ----------------------------------------------------------------


def present_metrics(runs: list[ReportRun]) -> list[tuple[str, str]]:
    """The CURVE_METRICS that at least one line of one run has."""
    return [(f, t) for f, t in CURVE_METRICS
            if any(metric_value(line, f"{f}@{t}") is not None for run in runs for line in run.metrics)]


def labelled_unit(runs: list[ReportRun]) -> str:
    """What the runs label: "videos" (AL-STAL) or "frames" (ASL)."""
    return "videos" if runs[0].data.cfg.method == "alstal" else "frames"


def plot_learning_curves(runs: list[ReportRun], out: Path) -> list[Path]:
    """One PNG per metric: metric (%) against labelled fraction (%), one line per run."""
    written = []
    for family, threshold in present_metrics(runs):
        name = f"{SHORT_NAMES[family]}@{threshold}"
        fig = _figure(5.5, 3.8)
        ax = fig.subplots()
        for run in runs:
            points = sorted((100 * line.get("labelled_fraction", math.nan), 100 * value)
                            for line in run.metrics
                            if (value := metric_value(line, f"{family}@{threshold}")) is not None)
            if points:
                ax.plot(*zip(*points), "o-", label=run.label)
        unit = labelled_unit(runs)
        ax.set(xlabel=f"labelled {unit} (%)", ylabel=f"{name} (%)", title=f"{name} vs labelled {unit}")
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, out / f"curve_{family}_{threshold}.png"))
    return written


def metrics_table(runs: list[ReportRun]) -> str:
    """HTML table: one row per cycle; per run the labelled %, cost (clicks) and each present metric."""
    metrics = present_metrics(runs)
    cost = "cost (videos)" if labelled_unit(runs) == "videos" else "cost (clicks)"
    columns = ["labelled %", cost] + [f"{SHORT_NAMES[f]}@{t}" for f, t in metrics]
    by_cycle = [{int(line["cycle"]): line for line in run.metrics} for run in runs]
    head = "<tr><th rowspan=2>cycle</th>" + "".join(
        f"<th colspan={len(columns)}>{html.escape(run.label)}</th>" for run in runs) + "</tr>"
    head += "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) * len(runs) + "</tr>"
    rows = []
    for cycle in sorted(set().union(*by_cycle)):
        cells = [str(cycle)]
        for lines in by_cycle:
            line = lines.get(cycle)
            if line is None:
                cells += ["–"] * len(columns)
                continue
            cells += [_fmt(line.get("labelled_fraction"), 100, ".1f"), _fmt(line.get("cost"), 1, ",.0f")]
            cells += [_fmt(metric_value(line, f"{f}@{t}"), 100, ".1f") for f, t in metrics]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    table = f"<table class=metrics><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
    return f"<div class=wide>{table}</div>"  # scrolls sideways when many runs make it wide


def _fmt(value, scale: float, spec: str) -> str:
    return "–" if value is None else format(scale * float(value), spec)


# ---- selections over the timeline (Figure 3) ------------------------------------------------------------


def videos_to_show(runs: list[ReportRun], n: int) -> list[str]:
    """The n training videos with the most selected frames over all runs (ties: video_id order)."""
    counts: Counter = Counter()
    for run in runs:
        train = set(run.data.train["video_id"])
        counts.update(v for v in run.selections["video_id"] if v in train)
    return [v for v, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def plot_timelines(runs: list[ReportRun], out: Path, videos_shown: int) -> Path | None:
    """A strip per (video, run) over the video's frames; None when no run has a selection yet."""
    videos = videos_to_show(runs, videos_shown)
    if not videos:
        return None
    fig = _figure(10, 0.55 * len(videos) * len(runs) + 0.5 * len(videos) + 1.0)
    axes = fig.subplots(len(videos) * len(runs), 1, squeeze=False)[:, 0]
    cycles: set[int] = set()
    for i, video in enumerate(videos):
        for j, run in enumerate(runs):
            ax = axes[i * len(runs) + j]
            if j > 0:  # the strips of one video share the frame axis, labelled under the last one
                ax.sharex(axes[i * len(runs)])
            cycles |= _draw_strip(ax, run, video)
            if j == 0:
                ax.set_title(f"{video} ({_class_name(run, video)})", fontsize=9, loc="left")
            if j < len(runs) - 1:
                ax.tick_params(labelbottom=False)
            else:
                ax.set_xlabel("frame", fontsize=8)
    cmap = colormaps["tab10"]
    handles = [Patch(color=GT_COLOUR, label="ground-truth action"), Line2D([], [], color=INIT_COLOUR,
               label="initial labels")]
    handles += [Line2D([], [], color=cmap(c % 10), lw=2, label=f"cycle {c}") for c in sorted(cycles)]
    fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 6), fontsize=8)
    return _save(fig, out / "timelines.png")


def _draw_strip(ax, run: ReportRun, video: str) -> set[int]:
    """One run's strip for one video; returns the cycles drawn."""
    ax.set(yticks=[], ylim=(0, 1))
    ax.set_ylabel(run.label, rotation=0, ha="right", va="center", fontsize=8)
    ax.tick_params(labelsize=7)
    info = run.data.index[run.data.index["video_id"] == video]
    if info.empty:
        ax.text(0.5, 0.5, "video not in this run's dataset", transform=ax.transAxes, ha="center", va="center")
        return set()
    ax.set_xlim(-0.5, int(info["num_frames"].iloc[0]) - 0.5)
    gt = run.data.gt
    for start, stop in _segments(gt.loc[gt["video_id"] == video, "frame"].to_numpy()):
        ax.axvspan(start - 0.5, stop - 0.5, color=GT_COLOUR, lw=0)
    labels = run.labels
    init = labels.loc[(labels["video_id"] == video) & (labels["source"] == "init"), "frame"]
    ax.vlines(init, 0.2, 0.8, colors=INIT_COLOUR, lw=1.5)
    if run.selections.empty:
        ax.text(0.5, 0.5, NO_SELECTION, transform=ax.transAxes, ha="center", va="center", fontsize=8)
        return set()
    sel = run.selections[run.selections["video_id"] == video]
    cmap = colormaps["tab10"]
    for cycle, group in sel.groupby("cycle"):
        ax.vlines(group["frame"], 0.05, 0.95, colors=[cmap(int(cycle) % 10)], lw=2)
    return {int(c) for c in sel["cycle"]}


def _segments(frames: np.ndarray) -> list[tuple[int, int]]:
    """Runs of consecutive frames as [start, stop) pairs."""
    frames = np.unique(frames)
    if frames.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(frames) > 1)
    starts = np.r_[frames[0], frames[breaks + 1]]
    stops = np.r_[frames[breaks], frames[-1]] + 1
    return list(zip(starts.tolist(), stops.tolist()))


# ---- selected frames per video (Figure 7) ---------------------------------------------------------------


def plot_selection_histogram(runs: list[ReportRun], out: Path) -> Path | None:
    """Per run, a histogram of how many frames each training video had selected (all cycles)."""
    if all(run.selections.empty for run in runs):
        return None
    fig = _figure(0.5 + 3.4 * len(runs), 3.2)
    axes = fig.subplots(1, len(runs), squeeze=False, sharey=True)[0]
    for ax, run in zip(axes, runs):
        ax.set(title=run.label, xlabel="selected frames in a video")
        if run.selections.empty:
            ax.text(0.5, 0.5, NO_SELECTION, transform=ax.transAxes, ha="center", va="center")
            ax.set_xticks([])
            continue
        picked = run.selections.drop_duplicates(["video_id", "frame"])
        counts = picked.groupby("video_id").size().reindex(run.data.train["video_id"], fill_value=0)
        ax.hist(counts, bins=np.arange(counts.max() + 2) - 0.5, color="#4c78a8", edgecolor="white")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("training videos")
    return _save(fig, out / "selections_per_video.png")


# ---- thumbnails ----------------------------------------------------------------------------------------


def thumbnail_frames(run: ReportRun, n: int) -> pd.DataFrame:
    """The n selected frames to draw: latest cycle first, highest score first within a cycle."""
    order = run.selections.sort_values(["cycle", "score", "rank", "video_id", "frame"],
                                       ascending=[False, False, True, True, True], na_position="last")
    return order.drop_duplicates(["video_id", "frame"]).head(max(n, 0)).reset_index(drop=True)


def plot_thumbnails(run: ReportRun, out: Path, n: int) -> Path | None:
    """Selected frames decoded from their videos, with the ground-truth boxes of each frame."""
    picks = thumbnail_frames(run, n)
    if picks.empty:
        return None
    ncols = min(4, len(picks))
    nrows = math.ceil(len(picks) / ncols)
    fig = _figure(2.6 * ncols, 2.9 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, pick in zip(axes, picks.itertuples(index=False)):
        _draw_thumbnail(ax, run, pick.video_id, int(pick.frame), int(pick.cycle))
    for ax in axes[len(picks):]:
        ax.set_axis_off()
    return _save(fig, out / "thumbnails.png")


def _draw_thumbnail(ax, run: ReportRun, video: str, frame: int, cycle: int) -> None:
    info = run.data.index[run.data.index["video_id"] == video].iloc[0]
    try:
        ax.imshow(read_frames(info["path"], [frame])[0])  # [H, W, 3] uint8
    except VideoError as e:  # one unreadable video should not cost the whole report
        log.warning("report: cannot draw frame %d of %s: %s", frame, video, e)
        ax.set(xlim=(0, info["width"]), ylim=(info["height"], 0))
        ax.text(0.5, 0.5, f"cannot decode:\n{e.reason}", transform=ax.transAxes, ha="center", va="center",
                fontsize=7, wrap=True)
    gt = run.data.gt
    boxes = gt.loc[(gt["video_id"] == video) & (gt["frame"] == frame), ["x1", "y1", "x2", "y2"]]
    for box in boxes.itertuples():
        ax.add_patch(Rectangle((box.x1, box.y1), box.x2 - box.x1, box.y2 - box.y1, fill=False,
                               edgecolor=BOX_COLOUR, lw=1.5))
    ax.set_title(f"{video}\nframe {frame}, cycle {cycle}, {_class_name(run, video)}", fontsize=7)
    ax.set_axis_off()


def _class_name(run: ReportRun, video: str) -> str:
    labels = run.data.index.loc[run.data.index["video_id"] == video, "label"]
    classes = run.data.classes
    label = int(labels.iloc[0]) if len(labels) else -1
    return classes[label] if 0 <= label < len(classes) else "several classes"


# ---- figures and the page -------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=100)
    return path


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _img_or_empty(path: Path | None, alt: str) -> str:
    return _img(path, alt) if path is not None else f"<p class=empty>{NO_SELECTION}</p>"


def _paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; white-space: nowrap; }
td:first-child, .runs td { text-align: left; }
img { display: block; max-width: 100%; margin: 1em 0; }
.figures { display: flex; flex-wrap: wrap; gap: 0 1em; }
.figures img { max-width: 540px; width: 100%; }
.wide { overflow-x: auto; }
.empty { color: #777; font-style: italic; }
</style>"""

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>$title</title>
$style
</head>
<body>
<h1>$title</h1>
<table class=runs>
<thead><tr><th>run</th><th>directory</th><th>strategy</th><th>dataset</th><th>cycles evaluated</th>
<th>last step</th></tr></thead>
<tbody>$runs</tbody>
</table>
$sections
</body>
</html>
""")


def render_html(runs: list[ReportRun], sections: list[tuple[str, str]]) -> str:
    """The page: a table of the runs, then each (heading, html body) section."""
    rows = []
    for run in runs:
        step = (f"finished ({run.state.get('stop_reason') or 'done'})" if run.state.get("finished")
                else f"cycle {run.state['cycle']}: {run.state['step'] or 'nothing done yet'}")
        cells = [run.label, str(run.path), run.strategy, run.data.meta.get("name", str(run.data.root)),
                 str(len(run.metrics)), step]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    body = "\n".join(f"<section>\n<h2>{html.escape(title)}</h2>\n{content}\n</section>"
                     for title, content in sections)
    title = "raylab report: " + ", ".join(run.label for run in runs)
    return PAGE.substitute(title=html.escape(title), style=STYLE, runs="".join(rows), sections=body)
