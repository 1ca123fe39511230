"""Oracles: who answers a selection with annotations.

The simulated oracle (what both papers do) reveals the ground truth of the requested frames. A
requested frame outside every action tube is answered with no box: a labelled negative.

The human oracle is a round trip through an annotation tool (formats in oracle_formats.py):
`export_selection` writes the pending selection of a run as CVAT or Label Studio tasks, and
`import_annotations` reads the tool's export back, checks all of it against the run and the selection,
and appends it to the label store as the next cycle (source "human") in one atomic append, or writes
nothing and lists every problem. A requested frame on which the annotator drew no box is an annotated
negative, as with the simulated oracle: CVAT has no per-frame "done" flag, so a task present in a CVAT
file answers all its requested frames; in Label Studio a task answers them once it has a submitted
annotation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from raylab import rundir
from raylab.data.annotations import BOX_TOLERANCE_PX, AnnotationError, Problem
from raylab.data.label_rows import WHOLE_VIDEO, index_lookup
from raylab.data.labels import LabelStore, LabelValidationError
from raylab.oracle_formats import (
    Parsed,
    Report,
    Request,
    Unit,
    box_at,
    cvat_document,
    labelstudio_config,
    labelstudio_tasks,
    parse_annotations,
)

log = logging.getLogger(__name__)

CLICKS_PER_ACTOR = 2.0  # a box is drawn with two clicks (opposite corners)
FORMATS = {"cvat": "cvat.xml", "labelstudio": "labelstudio.json"}  # format -> default file name
# what a run directory holds of raylab's own (rundir.py): never an export's target
RUN_OWN = ("labels", "checkpoints", "scores", "selections", "metrics", "pseudo", "report", rundir.CONFIG_FILE,
           rundir.STATE_FILE, "metrics.jsonl")


def _requests_frame(requests: Mapping[str, np.ndarray] | pd.DataFrame) -> pd.DataFrame:
    if isinstance(requests, pd.DataFrame):
        return requests[["video_id", "frame"]].astype({"frame": np.int64})
    rows = [(v, int(f)) for v, frames in requests.items() for f in np.asarray(frames).ravel()]
    return pd.DataFrame(rows, columns=["video_id", "frame"]).astype({"frame": np.int64})


def reveal_frames(
    gt: pd.DataFrame,
    requests: Mapping[str, np.ndarray] | pd.DataFrame,
    clicks_per_actor: float = CLICKS_PER_ACTOR,
) -> pd.DataFrame:
    """Ground truth of the requested frames, as label-store rows.

    Args:
        gt: spatio-temporal ground truth (schema.GT_BOXES_SCHEMA columns).
        requests: video_id -> frames, or a table with video_id and frame columns.
        clicks_per_actor: annotation cost of one actor on one frame.

    Returns:
        one row per requested frame, in request order: video_id, frame, boxes (list of [x1, y1, x2, y2]),
        box_labels, box_tracks (the ground truth's actor of each box), mask_rle (one RLE per box, or []
        when the ground truth has boxes only), cost (actors x clicks_per_actor).
    """
    req = _requests_frame(requests).reset_index(drop=True)
    req["_order"] = np.arange(len(req))
    hits = req.merge(gt.astype({"frame": np.int64}), on=["video_id", "frame"], how="inner")
    hits = hits.sort_values(["_order", "actor"])
    by_request = {order: group for order, group in hits.groupby("_order", sort=False)}
    rows = []
    for order, video_id, frame in zip(req["_order"], req["video_id"], req["frame"]):
        group = by_request.get(order)
        if group is None:
            boxes, labels, tracks, masks = [], [], [], []
        else:
            boxes = group[["x1", "y1", "x2", "y2"]].to_numpy(np.float32).tolist()
            labels = group["label"].astype(int).tolist()
            tracks = group["actor"].astype(int).tolist()
            masks = [] if group["mask_rle"].isna().any() else [list(m) for m in group["mask_rle"]]
        rows.append((video_id, int(frame), boxes, labels, tracks, masks, clicks_per_actor * len(boxes)))
    return pd.DataFrame(rows, columns=["video_id", "frame", "boxes", "box_labels", "box_tracks", "mask_rle",
                                       "cost"])


def reveal_videos(gt: pd.DataFrame, video_ids, cost_per_video: float = 1.0) -> pd.DataFrame:
    """Ground-truth segments of whole videos (AL-STAL), as label-store rows.

    Args:
        gt: temporal ground truth (schema.GT_SEGMENTS_SCHEMA: video_id, t_start, t_end, label).
        video_ids: the videos to annotate, in request order.
        cost_per_video: annotation cost of one video (AL-STAL counts videos).

    Returns:
        one row per video: video_id, frame -1 (whole video), segments (list of {t_start, t_end, label},
        by start time; [] for a video without actions), cost.
    """
    by_video = {v: g.sort_values(["t_start", "t_end"]) for v, g in gt.groupby("video_id", sort=False)}
    rows = []
    for video_id in video_ids:
        g = by_video.get(video_id)
        segments = [] if g is None else [{"t_start": float(a), "t_end": float(b), "label": int(c)}
                                         for a, b, c in zip(g["t_start"], g["t_end"], g["label"])]
        rows.append((video_id, WHOLE_VIDEO, segments, float(cost_per_video)))
    return pd.DataFrame(rows, columns=["video_id", "frame", "segments", "cost"])


# ------------------------------------------------------------------------------------- human oracle


def export_selection(run: Path, fmt: str, out: Path | None = None, force: bool = False) -> Path:
    """Write the pending selection of a run as tasks for an annotation tool.

    Args:
        run: the run directory; its last completed step must be "select" (rundir.pending_selection).
        fmt: "cvat" (one XML 1.1 document, a task per video) or "labelstudio" (a JSON list of tasks, a task
            per video, and the labeling config written next to it as <stem>_config.xml).
        out: the file to write; default exports/cycle=K/cvat.xml or labelstudio.json in the run.
        force: replace an existing `out` (and Label Studio's config next to it). A path inside the run
            other than exports/ (its label store, state, config) is refused whatever `force` says.

    Returns:
        the path written.

    Raises:
        RunStateError: nothing is pending (or the run or its selection is missing), or `out` is refused.
        ValueError: an unknown format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    run = Path(run)
    state, cycle = rundir.read_state(run), rundir.pending_selection(run)
    if cycle is None:
        raise rundir.RunStateError(
            f"run {run} has no pending selection: its last step is {state['step']!r} of cycle "
            f"{state['cycle']}; `raylab run` stops after a selection when loop.oracle is human")
    data = rundir.load_run(run)
    requests = selection_requests(data, rundir.read_selection(run, cycle))
    if out is None:
        out = data.paths.exports(cycle) / FORMATS[fmt]  # raylab's own file: written again on a rerun
    else:
        out = Path(out)
        written = [out] if fmt == "cvat" else [out, out.with_name(f"{out.stem}_config.xml")]
        for path in written:
            check_export_target(run, path, force)
    if fmt == "cvat":
        rundir.write_atomic(out, cvat_document(requests, data.classes, state["run_id"], cycle))
    else:
        config = out.with_name(f"{out.stem}_config.xml")
        rundir.write_atomic(config, labelstudio_config(data.classes))
        tasks = labelstudio_tasks(requests, state["run_id"], cycle)
        rundir.write_atomic(out, json.dumps(tasks, indent=1) + "\n")
    log.info("run %s cycle %d: %d frames of %d videos exported for %s -> %s", run, cycle,
             sum(len(r.frames) for r in requests), len(requests), fmt, out)
    return out


def check_export_target(run: Path, out: Path, force: bool) -> None:
    """Refuse to export onto a run's own files (its label store, state, config, checkpoints, scores,
    selections, metrics), whatever `force` says, or onto an existing file unless `force`."""
    run, target = Path(run).resolve(), Path(out).resolve()  # symbolic links followed
    first = target.relative_to(run).parts[:1] if target == run or run in target.parents else ()
    if first == ("labels",):
        raise rundir.RunStateError(f"{out} is inside the label store of {run}: an export never writes "
                                   "there (--force or not); choose a file outside labels/")
    if first and first[0] in RUN_OWN:
        raise rundir.RunStateError(f"{out} is one of the run's own files ({first[0]}): "
                                   "an export never writes there; choose a file under exports/ or outside "
                                   "the run")
    if target.is_dir():
        raise rundir.RunStateError(f"{out} is a folder: --out names the file to write")
    if target.exists() and not force:
        raise rundir.RunStateError(f"{out} exists: an export never replaces a file silently; choose another "
                                   "--out, or pass --force to replace it")


def selection_requests(data: rundir.RunData, selection: pd.DataFrame) -> list[Request]:
    """The selection grouped by video (in dataset index order), frames ascending."""
    wanted: dict[str, list[int]] = {}
    for v, f in zip(selection["video_id"], selection["frame"]):
        wanted.setdefault(v, []).append(int(f))
    unknown = sorted(set(wanted) - set(data.index["video_id"]))
    if unknown:
        raise rundir.RunStateError(f"the selection of {data.paths.path} names videos missing from the "
                                   f"dataset index: {unknown[:5]}")
    base = data.root / data.meta.get("video_root", ".")
    rows = data.index[data.index["video_id"].isin(list(wanted))]
    return [Request(r.video_id, r.path, _local_files_url(Path(r.path), base), int(r.num_frames),
                    float(r.fps), int(r.height), int(r.width), sorted(set(wanted[r.video_id])))
            for r in rows.itertuples(index=False)]


def _local_files_url(path: Path, base: Path) -> str:
    """Label Studio's URL of a file served from local storage with the document root at `base`."""
    try:
        rel = path.resolve().relative_to(base.resolve())
    except ValueError:
        rel = path.resolve().relative_to(path.anchor)  # outside the video folder: document root "/"
    return f"/data/local-files/?d={rel.as_posix()}"


def import_annotations(run: Path, file: Path) -> dict:
    """Append an annotation tool's answer to the pending selection of a run, after checking all of it.

    The file is the tool's export: CVAT XML 1.1 (or its ZIP) or Label Studio JSON, told apart by content.
    Only the requested frames are stored; boxes on other frames (a track's keyframes, CVAT's interpolated
    boxes) serve to place those. Boxes may stick out of the frame by 1 pixel and are clipped to it.

    Returns:
        {"cycle": K + 1 (the append's cycle), "selection_cycle": K, "frames", "boxes", "negatives"
        (frames without a box), "cost" (clicks), "format", "file", "seq" (the append's number)}.

    Raises:
        AnnotationError: every problem found, each naming file, video and frame (as the file numbers
            frames: Label Studio from 1); nothing is written. Among them: no pending selection, cycle
            K's answer already imported, a file for another run or cycle, unknown videos or labels,
            frames not asked for, requested frames left unanswered, boxes outside the frame or empty.
    """
    run, file = Path(run), Path(file)
    report = Report(str(file))
    state, cycle = rundir.read_state(run), rundir.pending_selection(run)
    if cycle is None:
        report(None, None, f"run {run} has no pending selection (its last step is {state['step']!r} of "
               f"cycle {state['cycle']}): there is nothing to import")
        raise AnnotationError(report.problems)
    data = rundir.load_run(run)
    store = LabelStore(data.paths.labels, index=data.index)
    done = [e for e in store.appends if e["cycle"] == cycle + 1]
    if done:
        report(None, None, f"the answer to cycle {cycle}'s selection is already in the label store (append "
               f"{done[0]['seq']}, source {done[0]['source']}, {done[0]['created_at']}); nothing is imported "
               f"twice: continue the run with `raylab run --run-dir {run}`")
        raise AnnotationError(report.problems)
    selection = rundir.read_selection(run, cycle)
    sizes = index_lookup(data.index)
    parsed = parse_annotations(file, sizes)
    units = pending_units(parsed, str(file), state["run_id"], cycle)
    rows = answer_rows(parsed, units, selection, sizes, data.classes, data.cfg.loop.clicks_per_actor)
    try:
        seq = store.append(rows, cycle=cycle + 1, source="human")
    except LabelValidationError as e:
        raise AnnotationError([Problem(str(file), None, None, p) for p in e.problems]) from None
    boxes = [len(b) for b in rows["boxes"]]
    summary = {"cycle": cycle + 1, "selection_cycle": cycle, "frames": len(rows), "boxes": sum(boxes),
               "negatives": boxes.count(0), "cost": float(rows["cost"].sum()), "format": parsed.fmt,
               "file": str(file), "seq": seq}
    log.info("run %s: imported %s", run, summary)
    return summary


def pending_units(parsed: Parsed, file: str, run_id: str, cycle: int) -> list[Unit]:
    """The tasks of the file made for this run's pending cycle; AnnotationError for another run or cycle.

    Tasks of earlier cycles of the same run are left out (one Label Studio or CVAT project may serve a
    whole run); a file with no task of the pending cycle is refused.
    """
    report, seen = Report(file), set()
    expect = f"run {run_id} waits for the answer to cycle {cycle}"
    for claimed_run, claimed_cycle, where in parsed.claims:
        if (claimed_run, claimed_cycle) != (run_id, cycle):
            report(None, None, f"{where} says run {claimed_run} cycle {claimed_cycle}, but {expect}")
    for u in parsed.units:
        if u.run_id != run_id and u.run_id not in seen:
            seen.add(u.run_id)
            report(u.video, None, f"{u.where} was exported for another run ({u.run_id}); {expect}")
        elif u.run_id == run_id and u.cycle > cycle and u.cycle not in seen:
            seen.add(u.cycle)
            report(u.video, None, f"{u.where} was exported for cycle {u.cycle}; {expect}")
    current = [u for u in parsed.units if u.run_id == run_id and u.cycle == cycle]
    earlier = sorted({u.cycle for u in parsed.units if u.run_id == run_id and u.cycle < cycle})
    if earlier and not current and not report.problems:
        report(None, None, f"holds tasks of cycle(s) {earlier} only, but {expect}: export its selection "
               "(raylab export) and annotate those tasks")
    if report.problems:
        problems = report.problems + parsed.problems
        raise AnnotationError(problems, header=_header(problems, parsed))
    if earlier:
        log.info("%s: tasks of earlier cycles %s left out", file, earlier)
    return current


def answer_rows(parsed: Parsed, units: list[Unit], selection: pd.DataFrame, sizes: dict,
                classes: list[str], clicks_per_actor: float) -> pd.DataFrame:
    """Label-store rows answering `selection` from the tasks of the pending cycle, or AnnotationError.

    Returns:
        one row per selected frame, in selection order: video_id, frame, boxes (pixels, clipped to the
        frame), box_labels, mask_rle ([]), cost (clicks_per_actor per box).
    """
    file = parsed.file
    requested: dict[str, set[int]] = {}
    for v, f in zip(selection["video_id"], selection["frame"]):
        requested.setdefault(v, set()).add(int(f))
    report = Report(file)
    report.problems += parsed.problems
    by_video = _units_by_video(units, requested, sizes, report)
    class_index = {name: i for i, name in enumerate(classes)}
    for video, u in by_video.items():
        _check_unit(u, requested[video], sizes[video], class_index, parsed.frame_base, report)
    rows = []
    for video, frame in zip(selection["video_id"], selection["frame"]):
        frame, u = int(frame), by_video.get(video)
        at = frame + parsed.frame_base
        if u is None or not u.annotated:
            why = ("the file holds no task for this video" if u is None else
                   f"{u.where} has no annotation (submit it in Label Studio; a skipped task does not count)")
            report(video, at, f"requested frame left unanswered: {why}")
            continue
        boxes, labels = _frame_boxes(u, frame, sizes[video], class_index, at, report)
        rows.append((video, frame, boxes, labels, [], clicks_per_actor * len(boxes)))
    if report.problems:
        raise AnnotationError(report.problems, header=_header(report.problems, parsed))
    return pd.DataFrame(rows, columns=["video_id", "frame", "boxes", "box_labels", "mask_rle", "cost"])


def _units_by_video(units: list[Unit], requested: dict, sizes: dict, report: Report) -> dict[str, Unit]:
    by_video: dict[str, Unit] = {}
    for u in units:
        if u.video not in sizes:
            report(u.video, None, f"{u.where}: unknown video, not in the dataset index")
        elif u.video not in requested:
            report(u.video, None, f"{u.where}: this video was not asked for in this cycle")
        elif u.video in by_video:
            report(u.video, None, f"{u.where} and {by_video[u.video].where} both answer this video: delete "
                   "one of them and export again")
        else:
            by_video[u.video] = u
    return by_video


def _check_unit(u: Unit, requested: set[int], size: tuple[int, int, int], class_index: dict, base: int,
                report: Report) -> None:
    """What is wrong with a task of a requested video, apart from its boxes on the requested frames."""
    num_frames, height, width = size
    if u.size is not None and u.size != num_frames:
        report(u.video, None, f"{u.where} has {u.size} frames, the video has {num_frames} in the dataset "
               "index: create the task from the whole video file, frame step 1")
    if u.frame_size is not None and u.frame_size != (width, height):
        report(u.video, None, f"{u.where} shows frames of {u.frame_size[0]}x{u.frame_size[1]} pixels, the "
               f"video has {width}x{height} in the dataset index: annotate the same video file")
    for f in sorted(set(u.listed or requested) - requested):
        report(u.video, f + base, f"{u.where} lists a frame that was not asked for")
    for f in sorted(requested - set(u.listed or requested)):
        report(u.video, f + base, f"{u.where} does not list this requested frame: it was exported from "
               "another selection")
    for t in u.tracks:
        if t.label is not None and t.label not in class_index:
            first = t.keys[0].frame + base if t.keys else None
            report(u.video, first, f"{t.where}: unknown label {t.label!r}; the classes are "
                   f"{list(class_index)}")
        outside = [k.frame for k in t.keys if k.frame >= num_frames]
        if outside:
            report(u.video, outside[0] + base, f"{t.where}: a box on a frame outside the video "
                   f"({num_frames} frames)")


def _frame_boxes(u: Unit, frame: int, size: tuple[int, int, int], class_index: dict, at: int,
                 report: Report) -> tuple[list[list[float]], list[int]]:
    """The boxes (clipped to the frame) and class indices that the tracks of `u` show on `frame`."""
    _, height, width = size
    tol = BOX_TOLERANCE_PX
    boxes, labels = [], []
    for t in u.tracks:
        box = box_at(t, frame)
        if box is None or t.label not in class_index:  # label problems are reported once per track
            continue
        x1, y1, x2, y2 = box
        shown = "[" + ", ".join(f"{v:.2f}" for v in box) + "]"
        if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
            report(u.video, at, f"{t.where}: box {shown} lies outside the {width}x{height} frame (by more "
                   f"than {tol:g} pixel)")
            continue
        x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
        y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
        if not (x1 < x2 and y1 < y2):
            report(u.video, at, f"{t.where}: empty box {shown}: needs x1 < x2 and y1 < y2")
            continue
        boxes.append([x1, y1, x2, y2])
        labels.append(class_index[t.label])
    return boxes, labels


def _header(problems: list[Problem], parsed: Parsed) -> str:
    n = len(problems)
    frames = " (frames as Label Studio numbers them, from 1)" if parsed.frame_base == 1 else ""
    return f"{n} problem{'s' if n != 1 else ''} in the annotations{frames}; nothing was imported:"
