"""The human oracle's round trip: export a pending selection for CVAT / Label Studio, import the answer.

A run directory is built by hand (no training): config, state "select" at cycle 0, an initial label
append, and a selection. The annotators are played by functions that answer the exported tasks with the
ground truth, in each tool's own export layout (CVAT tracks; Label Studio keyframes in percent, frames
numbered from 1), so that a correct import must equal what the simulated oracle reveals.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raylab import rundir
from raylab.config import load_config, to_yaml
from raylab.data.annotations import AnnotationError
from raylab.data.labels import LabelStore
from raylab.oracle import export_selection, import_annotations, reveal_frames
from raylab.oracle_formats import Key, Track, box_at
from tests.annotators import annotated
from tests.conftest import tiny_synth_set

FORMATS = ("cvat", "labelstudio")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The tiny SynthActions set (spatio-temporal): root, meta, index, gt."""
    return tiny_synth_set(tmp_path_factory, "spatiotemporal")


def selection_of(index: pd.DataFrame, gt: pd.DataFrame) -> pd.DataFrame:
    """Per train video (three of them): the first, middle and last frame of its action, and one without."""
    rows = []
    for video in index.loc[index["split"] == "train", "video_id"][:3]:
        tube = sorted(gt.loc[gt["video_id"] == video, "frame"].unique())
        num_frames = int(index.loc[index["video_id"] == video, "num_frames"].iloc[0])
        negative = max(set(range(num_frames)) - set(tube))
        rows += [(video, int(f)) for f in (tube[0], tube[len(tube) // 2], tube[-1], negative)]
    sel = pd.DataFrame(rows, columns=["video_id", "frame"])
    return sel.assign(score=np.linspace(1, 0, len(sel)), rank=np.arange(len(sel)), strategy="apu-global")


@pytest.fixture
def run(tmp_path, dataset):
    """A run waiting for the answer to cycle 0's selection; returns (run dir, gt, selection, classes)."""
    root, meta, index, gt = dataset
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(overrides=[f"data.root={root}", "loop.oracle=human"])
    (run / rundir.CONFIG_FILE).write_text(to_yaml(cfg))
    rundir.new_state(run)
    rundir.write_state(run, cycle=0, step="select")
    init_video = index.loc[index["split"] == "train", "video_id"].iloc[3]
    LabelStore(run / "labels", index=index).append(reveal_frames(gt, {init_video: [0, 5]}), cycle=0,
                                                   source="init")
    selection = selection_of(index, gt)
    rundir.write_parquet_atomic(rundir.RunPaths(run).selection(0), selection)
    return run, gt, selection, list(meta["classes"]), index


def stored(run_dir: Path) -> tuple[int, int]:
    store = LabelStore(run_dir / "labels")
    return len(store), len(store.appends)


def assert_equals_ground_truth(run_dir: Path, gt: pd.DataFrame, selection: pd.DataFrame) -> None:
    rows = LabelStore(run_dir / "labels").to_pandas()
    rows = rows[rows["cycle"] == 1]
    expected = reveal_frames(gt, selection)
    assert set(rows["source"]) == {"human"}
    assert list(zip(rows["video_id"], rows["frame"])) == list(zip(expected["video_id"], expected["frame"]))
    for got, want in zip(rows.itertuples(), expected.itertuples()):
        assert list(got.box_labels) == want.box_labels
        np.testing.assert_allclose(np.array([list(b) for b in got.boxes], float).reshape(-1, 4),
                                   np.array(want.boxes, float).reshape(-1, 4), atol=1e-3)
        assert len(got.mask_rle) == 0 and got.cost == want.cost


# ------------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_stores_what_the_simulated_oracle_reveals(run, fmt):
    run_dir, gt, selection, classes, index = run
    answer = annotated(run_dir, fmt, gt, classes, index)
    summary = import_annotations(run_dir, answer)
    assert_equals_ground_truth(run_dir, gt, selection)
    expected = reveal_frames(gt, selection)
    n_boxes = sum(len(b) for b in expected["boxes"])
    assert summary["cycle"] == 1 and summary["selection_cycle"] == 0 and summary["format"] == fmt
    assert (summary["frames"], summary["boxes"], summary["cost"]) == (len(selection), n_boxes, 2.0 * n_boxes)
    assert summary["negatives"] == 3  # one frame without action per video
    assert LabelStore(run_dir / "labels").appends[-1]["source"] == "human"


def test_exports_name_run_cycle_videos_frames_and_classes(run):
    run_dir, _, selection, classes, _ = run
    state = rundir.read_state(run_dir)
    root = ET.parse(export_selection(run_dir, "cvat")).getroot()
    assert root.findtext("version") == "1.1"
    assert [el.text for el in root.findall("meta/project/labels/label/name")] == classes
    assert {t.findtext("mode") for t in root.findall("meta/project/tasks/task")} == {"interpolation"}
    ours = root.find("meta/raylab")
    assert (ours.get("run_id"), ours.get("cycle")) == (state["run_id"], "0")
    listed = {v.get("id"): [int(f) for f in v.get("frames").split()] for v in ours.findall("video")}
    assert listed == {v: sorted(g["frame"]) for v, g in selection.groupby("video_id")}
    names = [t.findtext("name") for t in root.findall("meta/project/tasks/task")]
    assert all(n.endswith(f"[raylab run={state['run_id']} cycle=0]") for n in names)

    out = export_selection(run_dir, "labelstudio", run_dir / "elsewhere" / "tasks.json")
    tasks = json.loads(out.read_text())
    assert {t["data"]["video_id"]: t["data"]["frames"] for t in tasks} == listed
    assert {t["data"]["raylab_run_id"] for t in tasks} == {state["run_id"]}
    config = ET.parse(out.with_name("tasks_config.xml")).getroot()
    assert [el.get("value") for el in config.iter("Label")] == classes
    assert config.find("VideoRectangle").get("toName") == "video"


def test_export_with_nothing_pending_raises(run):
    run_dir = run[0]
    rundir.write_state(run_dir, step="annotate")
    with pytest.raises(rundir.RunStateError, match="no pending selection"):
        export_selection(run_dir, "cvat")


def test_import_with_nothing_pending_is_refused(run):
    run_dir, gt, _, classes, index = run
    answer = annotated(run_dir, "labelstudio", gt, classes, index)
    rundir.write_state(run_dir, step="annotate")
    before = stored(run_dir)
    with pytest.raises(AnnotationError, match="no pending selection"):
        import_annotations(run_dir, answer)
    assert stored(run_dir) == before


@pytest.mark.parametrize("fmt", FORMATS)
def test_second_import_of_a_cycle_is_refused(run, fmt):
    run_dir, gt, _, classes, index = run
    answer = annotated(run_dir, fmt, gt, classes, index)
    import_annotations(run_dir, answer)
    before = stored(run_dir)
    with pytest.raises(AnnotationError, match="already in the label store"):
        import_annotations(run_dir, answer)
    assert stored(run_dir) == before


def test_cvat_zip_download_is_read(run):
    run_dir, gt, selection, classes, index = run
    answer = annotated(run_dir, "cvat", gt, classes, index)
    zipped = run_dir / "task.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("annotations.xml", answer.read_text())
    import_annotations(run_dir, zipped)
    assert_equals_ground_truth(run_dir, gt, selection)


def test_cvat_images_layout_of_a_single_task_is_read(run):
    """'CVAT for images' of one video task: <meta><task>, an <image id=FRAME> per frame, plain boxes."""
    run_dir, gt, selection, classes, index = run
    selection = selection[selection["video_id"] == selection["video_id"].iloc[0]]
    rundir.write_parquet_atomic(rundir.RunPaths(run_dir).selection(0), selection)
    exported = ET.parse(export_selection(run_dir, "cvat")).getroot()
    task, video = exported.find("meta/project/tasks/task"), selection["video_id"].iloc[0]
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    ET.SubElement(root, "meta").append(task)
    for frame in range(int(task.findtext("size"))):
        image = ET.SubElement(root, "image", id=str(frame), name=f"frame_{frame:06d}", width="64",
                              height="64")
        for r in gt[(gt["video_id"] == video) & (gt["frame"] == frame)].itertuples():
            ET.SubElement(image, "box", label=classes[r.label], occluded="0", xtl=f"{r.x1:.2f}",
                          ytl=f"{r.y1:.2f}", xbr=f"{r.x2:.2f}", ybr=f"{r.y2:.2f}")
    answer = run_dir / "annotations.xml"
    answer.write_text(ET.tostring(root, encoding="unicode"))
    import_annotations(run_dir, answer)
    assert_equals_ground_truth(run_dir, gt, selection)


def test_boxes_within_one_pixel_of_the_frame_are_clipped(run):
    run_dir, gt, selection, classes, index = run
    answer = annotated(run_dir, "labelstudio", gt, classes, index)
    tasks = json.loads(answer.read_text())
    key = tasks[0]["annotations"][0]["result"][0]["value"]["sequence"][0]
    key["x"], key["width"] = -0.5 / 64 * 100, key["width"] + key["x"] + 0.5 / 64 * 100  # 0.5 px left of 0
    answer.write_text(json.dumps(tasks))
    import_annotations(run_dir, answer)
    boxes = LabelStore(run_dir / "labels").to_pandas().query("cycle == 1")["boxes"]
    assert min(b[0] for bs in boxes for b in bs) == 0.0


def test_tasks_of_earlier_cycles_are_left_out(run):
    """One Label Studio project can serve a whole run: tasks of cycles already imported are skipped."""
    run_dir, gt, _, classes, index = run
    first = annotated(run_dir, "labelstudio", gt, classes, index)
    import_annotations(run_dir, first)
    older = json.loads(first.read_text())
    # cycle 1 asks for a frame of another video; the project's export holds the tasks of both cycles
    video = index.loc[index["split"] == "train", "video_id"].iloc[4]
    sel1 = pd.DataFrame({"video_id": [video], "frame": [1], "score": [1.0], "rank": [0],
                         "strategy": "apu-global"})
    rundir.write_parquet_atomic(rundir.RunPaths(run_dir).selection(1), sel1)
    rundir.write_state(run_dir, cycle=1, step="select")
    second = annotated(run_dir, "labelstudio", gt, classes, index)
    project = run_dir / "project.json"
    newer = [{**t, "id": t["id"] + len(older)} for t in json.loads(second.read_text())]
    project.write_text(json.dumps(older + newer))
    assert import_annotations(run_dir, project)["cycle"] == 2
    assert LabelStore(run_dir / "labels").cycles() == [0, 1, 2]

    rundir.write_parquet_atomic(rundir.RunPaths(run_dir).selection(2), sel1.assign(frame=2))
    rundir.write_state(run_dir, cycle=2, step="select")
    with pytest.raises(AnnotationError, match=r"tasks of cycle\(s\) \[0, 1\] only"):
        import_annotations(run_dir, project)


# ------------------------------------------------------------------------------------- refusals
# Each case spoils a correct answer the way a person or a tool could, and names what the error must
# say: a phrase, and whether a problem names a video (True: the first selected one) and a frame.


def _first(tasks):
    return tasks[0]["annotations"][0]["result"][0]["value"]["sequence"]


def _requested_key(tasks):
    """The Label Studio keyframe on the first requested frame of the first task."""
    wanted = tasks[0]["data"]["frames"][0] + 1
    return next(k for k in _first(tasks) if k["frame"] == wanted)


def ls_other_run(tasks):
    for t in tasks:
        t["data"]["raylab_run_id"] = "0" * 32


def ls_other_cycle(tasks):
    for t in tasks:
        t["data"]["raylab_cycle"] = 5


def ls_frame_not_asked(tasks):
    tasks[0]["data"]["frames"].append(max(tasks[0]["data"]["frames"]) - 1)


def ls_unannotated(tasks):
    tasks[0]["annotations"] = []


def ls_skipped(tasks):
    tasks[0]["annotations"][0]["was_cancelled"] = True


def ls_box_outside(tasks):
    _requested_key(tasks)["x"] = 120.0


def ls_degenerate(tasks):
    _requested_key(tasks)["width"] = 0.0


def ls_unknown_label(tasks):
    tasks[0]["annotations"][0]["result"][0]["value"]["labels"] = ["dance"]


def ls_unknown_video(tasks):
    tasks[0]["data"]["video_id"] = "videos/nope"


def ls_video_not_asked(tasks):
    tasks[0]["data"]["video_id"] = "videos/spin_0010"


def ls_bad_keyframe(tasks):
    _first(tasks)[0]["x"] = "left"


LS_CASES = {
    "other run": (ls_other_run, "another run", True, False),
    "other cycle": (ls_other_cycle, "exported for cycle 5", True, False),
    "frame not asked for": (ls_frame_not_asked, "not asked for", True, True),
    "task not annotated": (ls_unannotated, "left unanswered", True, True),
    "task skipped": (ls_skipped, "left unanswered", True, True),
    "box outside the frame": (ls_box_outside, "outside the 64x64 frame", True, True),
    "degenerate box": (ls_degenerate, "empty box", True, True),
    "unknown label": (ls_unknown_label, "unknown label 'dance'", True, True),
    "unknown video": (ls_unknown_video, "unknown video", False, False),
    "video not asked for": (ls_video_not_asked, "not asked for in this cycle", False, False),
    "malformed keyframe": (ls_bad_keyframe, "a keyframe needs", True, True),
}


def _cvat_first_task(root):
    return root.find("meta/project/tasks/task")


def _cvat_requested_box(root):
    """The box, on the first requested frame, of the first track of the first task."""
    ours = root.find("meta/raylab/video")
    frame = ours.get("frames").split()[0]
    track = next(t for t in root.findall("track") if t.get("task_id") == ours.get("task_id"))
    return next(b for b in track.findall("box") if b.get("frame") == frame)


def cvat_other_run(root):
    root.find("meta/raylab").set("run_id", "0" * 32)
    for task in root.findall("meta/project/tasks/task"):
        task.find("name").text = task.findtext("name").replace("run=", "run=0000")


def cvat_other_cycle(root):
    root.find("meta/raylab").set("cycle", "5")
    for task in root.findall("meta/project/tasks/task"):
        task.find("name").text = task.findtext("name").replace("cycle=0", "cycle=5")


def cvat_frame_not_asked(root):
    video = root.find("meta/raylab/video")
    video.set("frames", video.get("frames") + " 1")


def cvat_task_missing(root):
    _cvat_first_task(root).find("name").text = "my video"  # a task not named as exported


def cvat_box_outside(root):
    _cvat_requested_box(root).set("xbr", "70")


def cvat_degenerate(root):
    box = _cvat_requested_box(root)
    box.set("xbr", box.get("xtl"))


def cvat_unknown_label(root):
    root.find("track").set("label", "dance")


def cvat_unknown_video(root):
    name = _cvat_first_task(root).find("name")
    name.text = name.text.replace(root.find("meta/raylab/video").get("id"), "videos/nope")


def cvat_polygon(root):
    ET.SubElement(root.find("track"), "polygon", frame="0", points="1,1;2,2;3,1", outside="0", keyframe="1")


def cvat_wrong_size(root):
    _cvat_first_task(root).find("size").text = "999"


CVAT_CASES = {
    "other run": (cvat_other_run, "another run", True, False),
    "other cycle": (cvat_other_cycle, "exported for cycle 5", True, False),
    "frame not asked for": (cvat_frame_not_asked, "not asked for", True, True),
    "task missing": (cvat_task_missing, "left unanswered", True, True),
    "box outside the frame": (cvat_box_outside, "outside the 64x64 frame", True, True),
    "degenerate box": (cvat_degenerate, "empty box", True, True),
    "unknown label": (cvat_unknown_label, "unknown label 'dance'", True, True),
    "unknown video": (cvat_unknown_video, "unknown video", False, False),
    "not a box": (cvat_polygon, "<polygon>", True, True),
    "another frame count": (cvat_wrong_size, "has 999 frames", True, False),
}


def assert_refused(run_dir: Path, answer: Path, phrase: str, video: str | None, frame: bool) -> None:
    before = stored(run_dir)
    with pytest.raises(AnnotationError) as err:
        import_annotations(run_dir, answer)
    assert stored(run_dir) == before
    assert str(answer) in str(err.value)
    hits = [p for p in err.value.problems if phrase in p.message]
    assert hits, f"no problem says {phrase!r}:\n{err.value}"
    assert all(p.file == str(answer) for p in err.value.problems)
    if video is not None:
        assert any(p.video == video for p in hits), str(err.value)
    if frame:
        assert any(p.frame is not None for p in hits), str(err.value)


@pytest.mark.parametrize("case", LS_CASES)
def test_bad_labelstudio_import_is_refused_and_writes_nothing(run, case):
    run_dir, gt, _, classes, index = run
    spoil, phrase, names_video, names_frame = LS_CASES[case]
    answer = annotated(run_dir, "labelstudio", gt, classes, index)
    tasks = json.loads(answer.read_text())
    video = tasks[0]["data"]["video_id"] if names_video else None
    spoil(tasks)
    answer.write_text(json.dumps(tasks))
    assert_refused(run_dir, answer, phrase, video, names_frame)


@pytest.mark.parametrize("case", CVAT_CASES)
def test_bad_cvat_import_is_refused_and_writes_nothing(run, case):
    run_dir, gt, _, classes, index = run
    spoil, phrase, names_video, names_frame = CVAT_CASES[case]
    answer = annotated(run_dir, "cvat", gt, classes, index)
    root = ET.fromstring(answer.read_text())
    video = root.find("meta/raylab/video").get("id") if names_video else None
    spoil(root)
    answer.write_text(ET.tostring(root, encoding="unicode"))
    assert_refused(run_dir, answer, phrase, video, names_frame)


@pytest.mark.parametrize("fmt, text, phrase", [
    ("cvat", "<annotations><version>1.1</version><meta>", "not well-formed XML"),
    ("labelstudio", '[{"data": {"video_id": ', "not valid JSON"),
    ("labelstudio", "video,frame\n", "neither XML"),
])
def test_malformed_file_is_one_clear_error(run, fmt, text, phrase):
    run_dir = run[0]
    answer = run_dir / f"broken.{fmt}"
    answer.write_text(text)
    assert_refused(run_dir, answer, phrase, None, False)
    assert len(pytest.raises(AnnotationError, import_annotations, run_dir, answer).value.problems) == 1


def test_untouched_cvat_export_is_refused(run):
    run_dir = run[0]
    assert_refused(run_dir, export_selection(run_dir, "cvat"), "not yet annotated", None, False)


def test_untouched_labelstudio_export_is_refused(run):
    run_dir, _, selection, _, _ = run
    exported = export_selection(run_dir, "labelstudio")
    with pytest.raises(AnnotationError) as err:
        import_annotations(run_dir, exported)
    unanswered = [p for p in err.value.problems if "left unanswered" in p.message]
    assert {(p.video, p.frame - 1) for p in unanswered} == set(zip(selection["video_id"], selection["frame"]))


# ------------------------------------------------------------------------------------- tracks


def _key(frame, x, shown=True, continues=True):
    return Key(frame, (x, 0.0, x + 10.0, 10.0), shown, continues)


@pytest.mark.parametrize("keys, frame, x1", [
    ([_key(2, 0.0), _key(6, 8.0)], 1, None),  # before the first key
    ([_key(2, 0.0), _key(6, 8.0)], 2, 0.0),  # on a key
    ([_key(2, 0.0), _key(6, 8.0)], 4, 4.0),  # interpolated linearly
    ([_key(2, 0.0), _key(6, 8.0)], 9, 8.0),  # after the last key, still shown
    ([_key(2, 0.0), _key(4, 0.0, False, False)], 4, None),  # CVAT outside="1" from this frame
    ([_key(2, 0.0), _key(4, 0.0, False, False)], 5, None),
    ([_key(2, 0.0, True, False), _key(6, 8.0)], 2, 0.0),  # Label Studio lifespan off: its own frame shown
    ([_key(2, 0.0, True, False), _key(6, 8.0)], 3, None),  # ... the frames after it not
    ([_key(2, 0.0, True, False), _key(6, 8.0)], 6, 8.0),  # ... until the next key
])
def test_box_at_follows_the_tools_track_rules(keys, frame, x1):
    box = box_at(Track("jump", keys, "track 0"), frame)
    assert (box is None) if x1 is None else box[0] == pytest.approx(x1)
