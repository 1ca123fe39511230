"""The annotation tools of the human oracle: CVAT (XML 1.1, video tracks) and Label Studio (JSON tasks).

Writing: `cvat_document`, `labelstudio_tasks` and `labelstudio_config` turn the requests of a pending
selection into what each tool loads. Reading: `parse_annotations` turns what each tool exports into one
neutral form, one `Unit` per task (a video, the run and cycle it was exported for, its tracks), reporting
only what is malformed; raylab/oracle.py judges the units against the run and its selection.

Both tools annotate video with tracks: keyframes joined by linear interpolation. `box_at` gives a track's
box on any frame by the tools' own rules:
- CVAT for video 1.1 exports a track's box on every frame it spans (keyframe="0" where interpolated); a
  box with outside="1" hides the object from that frame until the next box with outside="0".
- Label Studio exports keyframes only (value.sequence; frames numbered from 1; x, y, width, height in
  percent of the frame); a keyframe with enabled=false ends the object's lifespan after that frame.
Frames here are raylab's, 0-based; `Parsed.frame_base` says how the file numbers them (for messages).
"""

from __future__ import annotations

import bisect
import math
import re
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from raylab.data import bounds
from raylab.data.annotations import AnnotationError, Problem

# A CVAT task is named "<video_id> [raylab run=<run_id> cycle=<K>]": the name is all of raylab's that
# survives a trip through CVAT, so it carries the video and the run.
TASK_NAME_RE = re.compile(r"^\s*(?P<video>.+?)\s*\[raylab run=(?P<run>\w+) cycle=(?P<cycle>\d+)\]\s*$")
CVAT_SHAPES = ("box", "polygon", "polyline", "points", "cuboid", "ellipse", "mask", "skeleton", "tag")


class Report:
    """Collects the problems of one file: `report(video, frame, message)`."""

    def __init__(self, file: str):
        self.file, self.problems = file, []

    def __call__(self, video: str | None, frame: int | None, message: str) -> None:
        self.problems.append(Problem(self.file, video, frame, message))


@dataclass(frozen=True)
class Request:
    """The frames of one video that a selection asks annotators for."""

    video: str
    path: str  # absolute path of the video file
    url: str  # how Label Studio reaches the file
    num_frames: int
    fps: float
    height: int
    width: int
    frames: list[int]  # 0-based, ascending


@dataclass(frozen=True)
class Key:
    """A track's keyframe: a box (pixels) on one frame, and whether the object is there and stays."""

    frame: int  # 0-based
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 pixels of the stored video
    shown: bool  # the object is on this frame (CVAT: outside="0"; Label Studio: always)
    continues: bool  # the object stays after this frame, up to the next key (CVAT: outside="0"; LS: enabled)


@dataclass
class Track:
    """One object over time, as a tool stores it."""

    label: str | None  # class name; None when the file gave no usable one (already reported)
    keys: list[Key]  # ascending frames, one key per frame
    where: str  # how the file names it, for messages ("track 3", "region 'aB1'")


@dataclass
class Unit:
    """One task of an exported file: one video's annotations, and whom they were made for."""

    where: str  # "task 7"
    video: str
    run_id: str
    cycle: int
    annotated: bool  # the tool holds an answer (Label Studio: a submitted annotation; CVAT: always)
    tracks: list[Track] = field(default_factory=list)
    listed: list[int] | None = None  # the frames (0-based) the task says were asked for, when it says
    size: int | None = None  # frames of the video as the tool decoded it, when the file says
    frame_size: tuple[int, int] | None = None  # (width, height) as the tool read it, when the file says


@dataclass
class Parsed:
    """What `parse_annotations` read from one file."""

    file: str
    fmt: str  # "cvat" | "labelstudio"
    frame_base: int  # how the file numbers frames: 0 (CVAT) or 1 (Label Studio)
    units: list[Unit]
    claims: list[tuple[str | None, int | None, str]]  # (run_id, cycle, where) stated outside the units
    problems: list[Problem]


def box_at(track: Track, frame: int) -> tuple[float, float, float, float] | None:
    """The box of `track` on `frame` (0-based), or None where the object is not shown."""
    frames = [k.frame for k in track.keys]
    i = bisect.bisect_right(frames, frame) - 1
    if i < 0:
        return None
    prev = track.keys[i]
    if prev.frame == frame:
        return prev.box if prev.shown else None
    if not prev.continues:
        return None
    if i + 1 == len(track.keys):
        return prev.box
    nxt = track.keys[i + 1]
    r = (frame - prev.frame) / (nxt.frame - prev.frame)  # both tools interpolate corners linearly
    return tuple(a + (b - a) * r for a, b in zip(prev.box, nxt.box))


def task_name(video: str, run_id: str, cycle: int) -> str:
    return f"{video} [raylab run={run_id} cycle={cycle}]"


# ------------------------------------------------------------------------------------------ writing


def cvat_document(requests: list[Request], classes: list[str], run_id: str, cycle: int) -> str:
    """A CVAT XML 1.1 document (project layout: one interpolation task per video) with no tracks yet.

    The <raylab> element in <meta> repeats the run, the cycle and the frames asked for per video; CVAT
    ignores it, and the tasks' names carry the video and the run back through CVAT's own export.
    """
    root = ET.Element("annotations")
    root.append(ET.Comment(
        f" raylab run {run_id}, cycle {cycle}: in one CVAT project with these labels, create one task per "
        "video from the whole video file (frame step 1), named exactly as below; draw a box track around "
        "every actor on each frame listed in <raylab>; export the project as 'CVAT for video 1.1' "))
    _text(root, "version", "1.1")
    meta = ET.SubElement(root, "meta")
    project = ET.SubElement(meta, "project")
    _text(project, "name", f"raylab run={run_id} cycle={cycle}")
    labels = ET.SubElement(project, "labels")
    for name in classes:
        label = ET.SubElement(labels, "label")
        _text(label, "name", name)
        _text(label, "type", "bbox")
        ET.SubElement(label, "attributes")
    tasks = ET.SubElement(project, "tasks")
    ours = ET.SubElement(meta, "raylab", run_id=run_id, cycle=str(cycle))
    for task_id, r in enumerate(requests, start=1):
        task = ET.SubElement(tasks, "task")
        for tag, value in (("id", task_id), ("name", task_name(r.video, run_id, cycle)),
                           ("size", r.num_frames), ("mode", "interpolation"), ("overlap", 0),
                           ("start_frame", 0), ("stop_frame", r.num_frames - 1), ("frame_filter", "")):
            _text(task, tag, str(value))
        size = ET.SubElement(task, "original_size")
        _text(size, "width", str(r.width))
        _text(size, "height", str(r.height))
        _text(task, "source", Path(r.path).name)
        ET.SubElement(ours, "video", task_id=str(task_id), id=r.video, path=r.path,
                      num_frames=str(r.num_frames), fps=f"{r.fps:g}", width=str(r.width),
                      height=str(r.height), frames=" ".join(map(str, r.frames)))
    _text(meta, "dumped", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    el = ET.SubElement(parent, tag)
    el.text = text
    return el


def labelstudio_tasks(requests: list[Request], run_id: str, cycle: int) -> list[dict]:
    """Label Studio tasks, one per video; `data` keys are what the labeling config and the import read."""
    tasks = []
    for r in requests:
        shown = ", ".join(str(f + 1) for f in r.frames)
        tasks.append({"data": {
            "video": r.url,
            "video_id": r.video,
            "path": r.path,
            "fps": r.fps,
            "num_frames": r.num_frames,
            "width": r.width,
            "height": r.height,
            "frames": list(r.frames),  # raylab's, 0-based
            "ls_frames": [f + 1 for f in r.frames],  # as Label Studio's player numbers them
            "raylab_run_id": run_id,
            "raylab_cycle": cycle,
            "instructions": f"Draw a box around every actor on frames {shown} (as numbered by the player); "
                            "a listed frame without boxes is recorded as showing no action.",
        }})
    return tasks


def labelstudio_config(classes: list[str]) -> str:
    """The labeling config to paste into the project: video, box tracks, one label per class."""
    view = ET.Element("View")
    ET.SubElement(view, "Header", value="$video_id")
    ET.SubElement(view, "Text", name="instructions", value="$instructions")
    labels = ET.SubElement(view, "Labels", name="label", toName="video")
    for name in classes:
        ET.SubElement(labels, "Label", value=name)
    ET.SubElement(view, "Video", name="video", value="$video", framerate="$fps")
    ET.SubElement(view, "VideoRectangle", name="box", toName="video")
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


# ------------------------------------------------------------------------------------------ reading


def parse_annotations(path: Path, sizes: dict[str, tuple[int, int, int]]) -> Parsed:
    """Read a CVAT XML (or the ZIP CVAT downloads) or a Label Studio JSON export, told apart by content.

    Args:
        path: the file.
        sizes: video_id -> (num_frames, height, width) of the dataset index (Label Studio's percent
            coordinates are turned into pixels with it).

    Raises:
        AnnotationError: a file that cannot be read at all (missing, not XML / JSON, not a tool's export).
    """
    file = str(path)
    try:
        data = _xml_in_zip(path) if zipfile.is_zipfile(path) else bounds.read_bytes(path)
        text = data.decode("utf-8-sig")
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError, bounds.InputBoundError) as e:
        raise _malformed(file, f"cannot read the file: {e}") from None
    head = text.lstrip()[:1]
    if head == "<":
        return _parse_cvat(file, text)
    if head in ("[", "{"):
        return _parse_labelstudio(file, text, sizes)
    raise _malformed(file, "neither XML (CVAT) nor JSON (Label Studio)")


def _malformed(file: str, message: str) -> AnnotationError:
    return AnnotationError([Problem(file, None, None, message)], header=f"cannot import {file}:")


def _xml_in_zip(path: Path) -> bytes:
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith(".xml")]
        if len(names) != 1:
            raise _malformed(str(path), f"a ZIP must hold one XML file (CVAT's annotations.xml), has {names}")
        return bounds.read_zip_member(z, names[0])


# ---- CVAT


def _parse_cvat(file: str, text: str) -> Parsed:
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise _malformed(file, "XML with a DOCTYPE or entities is refused (CVAT never writes them)")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise _malformed(file, f"not well-formed XML: {e}") from None
    if root.tag != "annotations":
        raise _malformed(file, f"root element <{root.tag}>, expected CVAT's <annotations>")
    report = Report(file)
    version = (root.findtext("version") or "").strip()
    if version and not version.startswith("1."):
        report(None, None, f"CVAT XML version {version}; raylab reads 1.1")
    units = _cvat_units(root, report)
    claims = []
    ours = root.find("meta/raylab")
    if ours is not None:  # raylab's own export, filled in by a script rather than by CVAT
        claims.append((ours.get("run_id"), _int(ours.get("cycle")), "the <raylab> element"))
        for v in ours.findall("video"):
            unit, frames = units.get(v.get("task_id", "")), [_int(f) for f in v.get("frames", "").split()]
            if unit is not None and None in frames:
                report(unit.video, None, f"<raylab> lists frames {v.get('frames')!r}")
            elif unit is not None:
                unit.listed = frames
    boxes = _cvat_tracks(root, units, report) + _cvat_images(root, units, report)
    if ours is not None and boxes == 0 and units:
        report(None, None, "holds no box at all: this is the file raylab exported, not yet annotated. Import "
               "CVAT's export of the annotated tasks; if every requested frame truly shows no action, delete "
               "the <raylab> element to record them all as negatives")
    return Parsed(file, "cvat", 0, list(units.values()), claims, report.problems)


def _cvat_units(root: ET.Element, report: Report) -> dict[str, Unit]:
    """Task id -> Unit, from <meta><task> (a task export) or <meta><project><tasks> (a project export)."""
    tasks = root.findall("meta/task") + root.findall("meta/project/tasks/task")
    if not tasks:
        report(None, None, "<meta> lists no task: import the annotations.xml of CVAT's 'CVAT for video 1.1' "
               "export (of the project, or of its one task)")
    units = {}
    for task in tasks:
        tid, name = (task.findtext("id") or "").strip(), task.findtext("name") or ""
        m = TASK_NAME_RE.match(name)
        if m is None:
            report(None, None, f"task {tid} is named {name!r}, which does not end in '[raylab run=RUN "
                   "cycle=K]': name each CVAT task as in the file raylab exported, so that its video and "
                   "run are known")
            continue
        w, h = _int(task.findtext("original_size/width")), _int(task.findtext("original_size/height"))
        units[tid] = Unit(f"task {tid}", m["video"], m["run"], int(m["cycle"]), annotated=True,
                          size=_int(task.findtext("size")), frame_size=(w, h) if w and h else None)
    return units


def _cvat_unit(el: ET.Element, units: dict[str, Unit], report: Report) -> Unit | None:
    """The task a <track> or <image> belongs to (its task_id, or the file's one task)."""
    tid = el.get("task_id")
    if not units:  # no usable task: reported already
        return None
    if tid is None and len(units) == 1:
        return next(iter(units.values()))
    if tid in units:
        return units[tid]
    what = f"<{el.tag} id={el.get('id')!r}>"
    if tid is None:
        report(None, None, f"{what} has no task_id and the file holds {len(units)} tasks")
    else:
        report(None, None, f"{what} belongs to task {tid}, not one of the raylab tasks in <meta>")
    return None


def _cvat_tracks(root: ET.Element, units: dict[str, Unit], report: Report) -> int:
    count = 0
    for el in root.findall("track"):
        unit, where, keys = _cvat_unit(el, units, report), f"track {el.get('id')}", []
        video = unit.video if unit else None
        for shape in el:
            if shape.tag == "box":
                key = _cvat_box(shape, video, where, report)
                keys += [key] if key else []
            elif shape.tag in CVAT_SHAPES:
                report(video, _int(shape.get("frame")), f"{where} holds a <{shape.tag}>: raylab reads boxes")
        count += len(keys)
        if unit is not None:
            unit.tracks.append(_track(unit, el.get("label"), keys, where, report))
    return count


def _cvat_images(root: ET.Element, units: dict[str, Unit], report: Report) -> int:
    """<image id=FRAME> layouts ('CVAT for images' of a video task): each box is a one-frame track."""
    images = root.findall("image")
    if images and len(units) > 1:
        report(None, None, "<image> elements in a file of several tasks: export 'CVAT for video 1.1'")
        return 0
    count = 0
    for el in images:
        unit, frame = _cvat_unit(el, units, report), _int(el.get("id"))
        for i, shape in enumerate(el):
            where = f"image {el.get('id')} <{shape.tag}> {i}"
            if unit is None or shape.tag not in CVAT_SHAPES:
                continue
            box = _floats(shape, ("xtl", "ytl", "xbr", "ybr")) if shape.tag == "box" else None
            if frame is None or frame < 0 or box is None:
                report(unit.video, frame, f"{where}: raylab reads boxes with numbers xtl, ytl, xbr, ybr on "
                       "images with an integer id >= 0 (the frame)")
                continue
            unit.tracks.append(Track(shape.get("label"), [Key(frame, box, True, False)], where))
            count += 1
    return count


def _cvat_box(el: ET.Element, video: str | None, where: str, report: Report) -> Key | None:
    frame, outside = _int(el.get("frame")), el.get("outside", "0")
    box = _floats(el, ("xtl", "ytl", "xbr", "ybr"))
    if frame is None or frame < 0 or box is None or outside not in ("0", "1"):
        report(video, frame, f"{where}: a <box> needs an integer frame >= 0, numbers xtl, ytl, xbr, ybr and "
               "outside 0 or 1")
        return None
    if abs(_float(el.get("rotation")) or 0.0) > 1e-6:
        report(video, frame, f"{where}: rotated box (rotation {el.get('rotation')}); raylab stores "
               "axis-aligned boxes: set the rotation to 0")
        return None
    return Key(frame, box, shown=outside == "0", continues=outside == "0")


def _floats(el: ET.Element, names: tuple[str, ...]) -> tuple[float, ...] | None:
    values = tuple(_float(el.get(n)) for n in names)
    return None if None in values else values


# ---- Label Studio


def _parse_labelstudio(file: str, text: str, sizes: dict[str, tuple[int, int, int]]) -> Parsed:
    try:
        tasks = bounds.loads_json(text)
    except ValueError as e:
        raise _malformed(file, f"not valid JSON: {e}") from None
    tasks = [tasks] if isinstance(tasks, dict) else tasks
    if not isinstance(tasks, list):
        raise _malformed(file, "expected a list of Label Studio tasks (export the project as JSON)")
    report, units = Report(file), []
    for i, task in enumerate(tasks):
        unit = _ls_unit(i, task, report)
        if unit is None:
            continue
        units.append(unit)
        annotations = task.get("annotations") or []
        if not isinstance(annotations, list):
            report(unit.video, None, f"{unit.where}: 'annotations' must be a list, got {_shown(annotations)}")
            annotations = []
        done = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
        if len(done) > 1:
            report(unit.video, None, f"{unit.where} has {len(done)} annotations: keep one (delete the others "
                   "in Label Studio) and export again")
        unit.annotated = len(done) == 1
        results = (done[0].get("result") or []) if unit.annotated else []
        if not isinstance(results, list):
            report(unit.video, None, f"{unit.where}: an annotation's 'result' must be a list of regions, "
                   f"got {_shown(results)}")
            results = []
        if unit.annotated and unit.video in sizes:  # an unknown video is reported with the selection
            for result in results:
                if isinstance(result, dict) and result.get("type") == "videorectangle":
                    unit.tracks.append(_ls_track(unit, result, sizes[unit.video], report))
    return Parsed(file, "labelstudio", 1, units, [], report.problems)


def _ls_unit(i: int, task, report: Report) -> Unit | None:
    data = task.get("data") if isinstance(task, dict) else None
    where = f"task {_shown(task.get('id', f'#{i}'))}" if isinstance(task, dict) else f"task #{i}"
    if not isinstance(data, dict):
        report(None, None, f"{where} is not a Label Studio task (no 'data')")
        return None
    video, run_id, cycle = data.get("video_id"), data.get("raylab_run_id"), _int(data.get("raylab_cycle"))
    if not isinstance(video, str) or not isinstance(run_id, str) or cycle is None:
        report(video if isinstance(video, str) else None, None, f"{where} lacks data.video_id, "
               "data.raylab_run_id or data.raylab_cycle: annotate the tasks of `raylab export --format "
               "labelstudio`")
        return None
    listed = data.get("frames")
    frames = [_int(f) for f in listed] if isinstance(listed, list) else [None]
    if None in frames:
        report(video, None, f"{where}: data.frames must be a list of frame numbers, got {listed!r}"[:200])
    return Unit(where, video, run_id, cycle, annotated=False, listed=None if None in frames else frames)


def _ls_track(unit: Unit, result: dict, size: tuple[int, int, int], report: Report) -> Track:
    _, height, width = size
    value = result.get("value") if isinstance(result.get("value"), dict) else {}
    where = f"{unit.where} region {_shown(result.get('id'))}"
    labels, sequence = value.get("labels"), value.get("sequence")
    one = isinstance(labels, list) and len(labels) == 1 and isinstance(labels[0], str)
    if not one:
        report(unit.video, None, f"{where} needs exactly one label, has {labels!r}")
    if not isinstance(sequence, list) or not sequence:
        report(unit.video, None, f"{where} has no keyframes (value.sequence)")
    keys = []
    for item in sequence if isinstance(sequence, list) else []:
        item = item if isinstance(item, dict) else {}
        frame, enabled = _int(item.get("frame")), item.get("enabled", True)
        x, y, w, h = (_float(item.get(k)) for k in ("x", "y", "width", "height"))
        if frame is None or frame < 1 or None in (x, y, w, h) or not isinstance(enabled, bool):
            report(unit.video, frame, f"{where}: a keyframe needs an integer frame >= 1, numbers x, y, "
                   f"width, height (percent) and a boolean enabled; got {item!r}"[:300])
        elif abs(_float(item.get("rotation")) or 0.0) > 1e-6:
            report(unit.video, frame, f"{where}: rotated box (rotation {item.get('rotation')}); raylab "
                   "stores axis-aligned boxes: set the rotation to 0")
        else:  # percent of the frame -> pixels of the stored video
            box = (x / 100 * width, y / 100 * height, (x + w) / 100 * width, (y + h) / 100 * height)
            keys.append(Key(frame - 1, box, shown=True, continues=enabled))
    return _track(unit, labels[0] if one else None, keys, where, report, base=1)


# ---- shared


def _track(unit: Unit, label, keys: list[Key], where: str, report: Report, base: int = 0) -> Track:
    """A track with keys sorted by frame; two keys on one frame is a problem (an object is in one place)."""
    keys = sorted(keys, key=lambda k: k.frame)
    for a, b in zip(keys, keys[1:]):
        if a.frame == b.frame:
            report(unit.video, a.frame + base, f"{where} has two boxes on this frame")
    return Track(label if isinstance(label, str) else None, keys, where)


def _shown(value, limit: int = 60) -> str:
    """repr of a value for a message, cut at `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int(value) -> int | None:
    """An integer from an int, an integral float or a decimal string; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (int, str)):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _float(value) -> float | None:
    """A finite float from a number or a string; else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        v = float(value)
    except ValueError:
        return None
    return v if math.isfinite(v) else None
