"""Frame-mAP / video-mAP (ACT and VOC protocols), tube NMS, mask metrics: hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raylab.data.rle import rle_encode
from raylab.eval.masks import actionness, best_mask_threshold, calibrate_actionness, component_box_ious
from raylab.eval.predict import calibrate_frame_actionness
from raylab.eval.stad import (
    StadFormatError,
    evaluate_stad,
    evaluate_stad_file,
    iou2d,
    iou3dt,
    mask_iou,
    masks_to_detections,
    nms3dt,
    pixel_iou_accuracy,
    pr_to_ap_act,
    voc_ap,
)

BOX = [0.0, 0.0, 9.0, 9.0]


def tube(frames, box=BOX):
    return [[f, *box] for f in frames]


def dataset(tubes_by_video, frame_dets=(), tube_dets=(), labels=("a", "b"), nframes=10):
    videos = {
        v: {"nframes": nframes, "width": 32, "height": 24, "tubes": [{"label": l, "boxes": b} for l, b in ts]}
        for v, ts in tubes_by_video.items()
    }
    fd = [{"video": v, "frame": f, "label": l, "score": s, "box": b} for v, f, l, s, b in frame_dets]
    td = [{"video": v, "label": l, "score": s, "boxes": b} for v, l, s, b in tube_dets]
    return {"labels": list(labels), "videos": videos, "frame_detections": fd, "tube_detections": td}


# ---- geometry -------------------------------------------------------------------------------------


def test_iou2d_plus_one_vs_continuous():
    a, b = np.array([0, 0, 9, 9]), np.array([5, 0, 14, 9])
    # +1: intersection 5 x 10 = 50, areas 100 -> 50 / 150
    assert iou2d(a, b) == pytest.approx(1 / 3)
    # no +1: intersection 4 x 9 = 36, areas 81 -> 36 / 126
    assert iou2d(a, b, plus_one=False) == pytest.approx(36 / 126)
    assert iou2d(np.array([a, b]), np.array([a])).shape == (2, 1)


def test_iou3dt_partial_temporal_overlap():
    a = np.array(tube([1, 2, 3, 4]))
    b = np.array(tube([3, 4, 5, 6], [0, 0, 9, 4]))
    # temporal: frames 3..4 of 1..6 = 2/6; spatial: 50 / 100 on both overlapping frames
    assert iou3dt(a, b) == pytest.approx(0.5 * 2 / 6)
    assert iou3dt(a, np.array(tube([5, 6]))) == 0.0
    # touching in one frame: temporal 1/6, spatial 1
    assert iou3dt(a, np.array(tube([4, 5, 6]))) == pytest.approx(1 / 6)


def test_iou3dt_tube_with_gap_uses_frames_both_have():
    a = np.array(tube([1, 2, 3, 4]))
    b = np.array([[1, *BOX], [2, 0, 0, 9, 4], [4, *BOX]])  # no frame 3
    # temporal 4/4; spatial mean over frames 1, 2, 4 = (1 + 0.5 + 1) / 3
    assert iou3dt(a, b) == pytest.approx(2.5 / 3)


def test_nms3dt_removes_duplicate_keeps_disjoint():
    t0, t1 = np.array(tube([1, 2, 3])), np.array(tube([1, 2, 3], [0, 0, 9, 8]))
    t2 = np.array(tube([7, 8]))
    assert nms3dt([t1, t0, t2], [0.8, 0.9, 0.7]).tolist() == [1, 2]
    assert nms3dt([t0, t1, t2], [0.9, 0.8, 0.7]).tolist() == [0, 2]
    # iou3dt(t0, t3) = 2/3 * 1 > 0.3: suppressed; at overlap 0.7 it stays
    t3 = np.array(tube([2, 3]))
    assert nms3dt([t0, t3], [0.9, 0.8]).tolist() == [0]
    assert nms3dt([t0, t3], [0.9, 0.8], overlap=0.7).tolist() == [0, 1]
    # equal scores: ACT pops the later tube of its ascending argsort first
    assert nms3dt([t0, t1], [0.5, 0.5]).tolist() == [1]


# ---- AP integration -------------------------------------------------------------------------------


def test_trapezoid_and_voc_ap_differ():
    # tp, fp(duplicate), tp over 2 positives
    precision, recall = np.array([1, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0])
    # ACT: (0.5)(1 + 1)/2 + 0 + (0.5)(0.5 + 2/3)/2
    assert pr_to_ap_act(precision, recall) == pytest.approx(0.5 + 0.25 * (0.5 + 2 / 3), abs=1e-6)
    # VOC: envelope 1 on (0, 0.5], 2/3 on (0.5, 1]
    assert voc_ap(precision, recall) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert pr_to_ap_act(np.zeros(0), np.zeros(0)) == 0.0


# ---- frame-mAP / video-mAP ------------------------------------------------------------------------


def test_perfect_detections():
    frames = [1, 2, 3]
    data = dataset(
        {"v": [(0, tube(frames))]},
        frame_dets=[("v", f, 0, 0.9, BOX) for f in frames],
        tube_dets=[("v", 0, 0.9, tube(frames))],
        labels=("a",),
    )
    for protocol in ("act", "voc"):
        out = evaluate_stad(data, protocol=protocol)
        assert out["frame_map"] == {"0.5": 1.0}
        assert out["video_map"] == {"0.2": 1.0, "0.5": 1.0, "0.75": 1.0, "0.5:0.95": 1.0}


def test_duplicate_is_false_positive_and_miss():
    data = dataset(
        {"v": [(0, tube([1, 2]))]},
        frame_dets=[("v", 1, 0, 0.9, BOX), ("v", 1, 0, 0.8, BOX), ("v", 2, 0, 0.7, BOX)],
        labels=("a",),
    )
    assert evaluate_stad(data)["frame_map"]["0.5"] == pytest.approx(0.5 + 0.25 * (0.5 + 2 / 3), abs=1e-6)
    assert evaluate_stad(data, protocol="voc")["frame_map"]["0.5"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # a miss: one of two boxes found -> recall stops at 0.5
    miss = dataset({"v": [(0, tube([1, 2]))]}, frame_dets=[("v", 1, 0, 0.9, BOX)], labels=("a",))
    assert evaluate_stad(miss)["frame_map"]["0.5"] == pytest.approx(0.5)
    # no tube detections at all: video AP 0
    assert evaluate_stad(miss)["video_map"]["0.5"] == 0.0


def test_detection_in_frame_without_gt_is_false_positive():
    data = dataset(
        {"v": [(0, tube([1]))]},
        frame_dets=[("v", 5, 0, 0.9, BOX), ("v", 1, 0, 0.8, BOX)],
        labels=("a",),
    )
    # fp then tp: precision [0, 0.5], recall [0, 1] -> (1)(0.5 + 0)/2 under ACT's trapezoid
    assert evaluate_stad(data)["frame_map"]["0.5"] == pytest.approx(0.25)
    assert evaluate_stad(data, protocol="voc")["frame_map"]["0.5"] == pytest.approx(0.5)


def test_empty_class_left_out_and_reported():
    data = dataset(
        {"v": [(0, tube([1]))], "w": []},
        frame_dets=[("v", 1, 0, 0.9, BOX), ("w", 1, 1, 0.9, BOX)],
        tube_dets=[("v", 0, 0.9, tube([1])), ("w", 1, 0.8, tube([1]))],
    )
    out = evaluate_stad(data)
    assert out["classes_without_gt"] == ["b"]
    assert out["frame_map"]["0.5"] == 1.0 and out["video_map"]["0.5"] == 1.0
    assert out["per_class"]["b"]["frame_ap"]["0.5"] is None
    assert out["per_class"]["a"]["n_gt_boxes"] == 1 and out["per_class"]["a"]["n_gt_tubes"] == 1


def test_wrong_class():
    data = dataset(
        {"v": [(0, tube([1]))], "w": [(1, tube([1]))]},
        frame_dets=[("v", 1, 1, 0.9, BOX), ("w", 1, 1, 0.5, BOX)],
        tube_dets=[("v", 1, 0.9, tube([1])), ("w", 1, 0.5, tube([1]))],
    )
    out = evaluate_stad(data)
    # class a: nothing detected -> 0; class b: fp then tp -> ACT trapezoid 0.25
    assert out["per_class"]["a"]["frame_ap"]["0.5"] == 0.0
    assert out["per_class"]["b"]["frame_ap"]["0.5"] == pytest.approx(0.25)
    assert out["frame_map"]["0.5"] == pytest.approx(0.125)
    assert out["video_map"]["0.5"] == pytest.approx(0.125)


def test_video_ap_partial_overlap_and_nms():
    gt = {"v": [(0, tube([1, 2, 3, 4]))]}
    # detection covers frames 3..6 exactly on the box: iou3dt = 2/6
    partial = dataset(gt, tube_dets=[("v", 0, 0.9, tube([3, 4, 5, 6]))], labels=("a",))
    out = evaluate_stad(partial, video_thresholds=(0.2, 0.5, "0.3:0.4"))
    assert out["video_map"]["0.2"] == 1.0 and out["video_map"]["0.5"] == 0.0
    assert out["video_map"]["0.3:0.4"] == pytest.approx(1 / 3)  # matched at 0.30 only of 0.30, 0.35, 0.40
    # a near-duplicate tube: removed by ACT's NMS (AP 1), a false positive under voc (no NMS)
    dup = dataset(gt, tube_dets=[("v", 0, 0.9, tube([1, 2, 3, 4])), ("v", 0, 0.8, tube([1, 2, 3]))],
                  labels=("a",))
    assert evaluate_stad(dup)["video_map"]["0.5"] == 1.0
    # a short tube ranked first: iou3dt with the exact one 1/4 <= 0.3, so NMS keeps both; it is a
    # false positive at 0.5 (iou3dt 1/4 with the ground truth): trapezoid (1)(0 + 0.5)/2
    short_first = dataset(gt, tube_dets=[("v", 0, 0.8, tube([1, 2, 3, 4])), ("v", 0, 0.9, tube([1]))],
                          labels=("a",))
    assert evaluate_stad(short_first)["video_map"]["0.5"] == pytest.approx(0.25)


def test_video_ap_duplicate_ranked_first_differs_by_protocol():
    gt = {"v": [(0, tube([1, 2, 3, 4]))]}
    # 0.9: frames 1..3 (iou3dt 3/4, a match); 0.8: the exact tube, iou3dt with the 0.9 one 3/4 > 0.3
    data = dataset(gt, tube_dets=[("v", 0, 0.9, tube([1, 2, 3])), ("v", 0, 0.8, tube([1, 2, 3, 4]))],
                   labels=("a",))
    assert evaluate_stad(data, video_thresholds=(0.5, 0.8))["video_map"] == {"0.5": 1.0, "0.8": 0.0}
    # voc keeps the exact tube (no NMS): at 0.8 it is found second -> precision 0.5 at recall 1
    assert evaluate_stad(data, protocol="voc", video_thresholds=(0.8,))["video_map"]["0.8"] == 0.5


# ---- masks ----------------------------------------------------------------------------------------


def test_mask_iou_arrays_and_rle():
    a = np.zeros((4, 4), bool)
    a[1:3, 1:3] = True
    b = np.roll(a, 1, axis=1)  # 2 shared pixels, union 6
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    rle = {"counts": rle_encode(b).tolist(), "size": [4, 4]}
    assert mask_iou(a, rle) == pytest.approx(1 / 3)
    assert mask_iou(np.stack([a, a]), np.stack([a, b])).tolist() == pytest.approx([1.0, 1 / 3])


def test_pixel_iou_accuracy():
    g = np.zeros((3, 4, 4), bool)
    g[:2, 1:3, 1:3] = True  # frames 0 and 1 have ground truth, frame 2 none
    p = g.copy()
    p[1] = np.roll(g[1], 1, axis=1)  # frame IoU 1/3
    p[2, 0, 0] = True  # stray pixel on a frame without ground truth
    out = pixel_iou_accuracy({"v": p}, {"v": g}, thresholds=(0.3, 0.5))
    assert out["frame"] == {0.3: 1.0, 0.5: 0.5}
    # video IoU: (4 + 2) / (4 + 6 + 1) = 6/11
    assert out["video"] == {0.3: 1.0, 0.5: 1.0}
    assert pixel_iou_accuracy({"v": p}, {"v": g}, (0.55,))["video"] == {0.55: 0.0}
    wrong = pixel_iou_accuracy({"v": p}, {"v": g}, (0.3,), pred_labels={"v": 1}, gt_labels={"v": 0})
    assert wrong == {"frame": {0.3: 0.0}, "video": {0.3: 0.0}}


def test_masks_to_detections():
    fg = np.zeros((3, 8, 8))
    fg[0, 2:4, 1:5] = 0.8  # rows 2..3, cols 1..4
    fg[2, 0:1, 0:1] = 0.6
    fds, tds = masks_to_detections("v", np.array([10, 11, 12]), fg, np.array([0.25, 0.75]), scale_xy=(2, 2))
    assert [d["frame"] for d in fds] == [11, 13]
    assert fds[0]["label"] == 1 and fds[0]["score"] == pytest.approx(0.75 * 0.8)
    # cols 1..4 -> original [2, 10), rows 2..3 -> [4, 8)
    assert fds[0]["box"] == [2.0, 4.0, 10.0, 8.0]
    assert fds[1]["box"] == [0.0, 0.0, 2.0, 2.0]
    assert len(tds) == 1 and tds[0]["score"] == pytest.approx(0.75 * 0.7)
    assert [b[0] for b in tds[0]["boxes"]] == [11, 13]
    fds2, tds2 = masks_to_detections("v", np.arange(3), fg, np.array([0.25, 0.75]), top_k=2)
    assert len(fds2) == 4 and {t["label"] for t in tds2} == {0, 1}


def test_masks_to_detections_box_of_the_largest_component_and_no_box_below_actionness():
    fg = np.zeros((2, 12, 12))
    fg[0, 4:9, 4:8] = 0.9  # the actor: rows 4..8, cols 4..7
    fg[0, 0, 11] = 0.7  # a stray pixel far away would stretch a tight box over the whole frame
    fg[1, 2:4, 2:4] = 0.55  # a weak blob on a frame without an actor
    fds, _ = masks_to_detections("v", np.arange(2), fg, np.array([1.0]))
    assert fds[0]["box"] == [4.0, 4.0, 8.0, 9.0] and fds[0]["score"] == pytest.approx(0.9)
    assert len(fds) == 2
    fds, tds = masks_to_detections("v", np.arange(2), fg, np.array([1.0]), min_actionness=0.6)
    assert [d["frame"] for d in fds] == [1] and [b[0] for b in tds[0]["boxes"]] == [1]
    assert masks_to_detections("v", np.arange(2), fg, np.array([1.0]), min_actionness=0.95) == ([], [])


def test_actionness_window_calls_a_frame_by_the_median_of_its_neighbourhood():
    peaks = np.array([0.9, 0.9, 0.2, 0.9, 0.1, 0.1, 0.8, 0.1, 0.1])  # a one-frame dip, a one-frame spike
    fg = np.zeros((len(peaks), 4, 4))
    fg[:, 1, 2] = peaks
    assert actionness(fg) == pytest.approx(peaks)
    assert actionness(fg, 3) == pytest.approx([0.9, 0.9, 0.9, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert actionness(fg[:1], 3) == pytest.approx([0.9])  # the ends repeat the edge frame
    with pytest.raises(ValueError, match="odd"):
        actionness(fg, 2)
    # with the window the spike's frame gets no detection, the dip's frame gets one, and the frame after
    # the dip (between the dip and a low frame) none
    def frames(window):
        detections, _ = masks_to_detections("v", np.arange(len(peaks)), fg, np.array([1.0]), threshold=0.15,
                                            min_actionness=0.5, actionness_window=window)
        return [d["frame"] for d in detections]

    assert frames(1) == [1, 2, 4, 7]
    assert frames(3) == [1, 2, 3]


def test_mask_threshold_is_the_one_whose_boxes_fit_labelled_frames_best():
    """An under-confident detector (the actor at 0.35, its surround at 0.2): at 0.5 no box, at 0.3 the
    actor's box, at 0.1 the surround's; the calibration picks 0.3's neighbourhood, ties nearest 0.5."""
    fg = np.full((2, 12, 12), 0.05)
    fg[:, 2:10, 2:10] = 0.2
    fg[:, 4:9, 4:8] = 0.35  # rows 4..8, cols 4..7: the box [4, 4, 8, 9] in the targets' convention
    targets = [np.array([[4.0, 4.0, 8.0, 9.0]]), np.array([[0.0, 0.0, 1.0, 1.0], [4.0, 4.0, 8.0, 9.0]])]
    ious = component_box_ious(fg, targets, thresholds=(0.1, 0.3, 0.5))
    assert ious[:, 1] == pytest.approx([1.0, 1.0])  # the actor it covers best, of two
    assert ious[:, 2] == pytest.approx([0.0, 0.0])  # no pixel >= 0.5: no box
    assert 0 < ious[0, 0] < 0.5
    assert best_mask_threshold(ious, (0.1, 0.3, 0.5)) == 0.3
    assert best_mask_threshold(component_box_ious(fg, targets, thresholds=(0.25, 0.3, 0.35)),
                               (0.25, 0.3, 0.35)) == 0.35  # all three give the actor: nearest 0.5
    assert best_mask_threshold(np.zeros((0, 3)), (0.1, 0.3, 0.5)) == 0.5  # no labelled actor


def test_calibrate_actionness_separates_actor_frames_on_labelled_frames():
    scores = np.array([0.1, 0.3, 0.35, 0.6, 0.8, 0.9])
    has = np.array([False, False, False, True, True, True])
    assert calibrate_actionness(scores, has) == pytest.approx((0.35 + 0.6) / 2)
    # overlapping scores: the cut of best balanced accuracy (TPR 1 + TNR 2/3, between 0.2 and 0.3)
    assert calibrate_actionness([0.1, 0.2, 0.3, 0.7, 0.4, 0.9], [0, 0, 1, 0, 1, 1]) == pytest.approx(0.25)
    assert calibrate_actionness([0.5, 0.7], [True, True]) == 0.0  # no negative: detect everywhere
    assert calibrate_actionness([0.5, 0.7], [False, False]) == 0.0


def test_frame_detections_and_tubes_have_their_own_actionness_gate():
    """Frame detections on the frames reaching `min_actionness`, the tube over those reaching
    `tube_min_actionness` (by default the same gate), scored by the mean of its own frames."""
    fg = np.zeros((3, 8, 8))
    fg[:, 2:5, 2:5] = [[[0.9]], [[0.6]], [[0.3]]]  # actionness 0.9, 0.6, 0.3
    fds, tds = masks_to_detections("v", np.arange(3), fg, np.array([1.0]), threshold=0.2, min_actionness=0.5,
                                   tube_min_actionness=0.8)
    assert [d["frame"] for d in fds] == [1, 2]
    assert [b[0] for b in tds[0]["boxes"]] == [1] and tds[0]["score"] == pytest.approx(0.9)
    fds, tds = masks_to_detections("v", np.arange(3), fg, np.array([1.0]), threshold=0.2, min_actionness=0.8,
                                   tube_min_actionness=0.2)
    assert [d["frame"] for d in fds] == [1]
    assert [b[0] for b in tds[0]["boxes"]] == [1, 2, 3] and tds[0]["score"] == pytest.approx(0.6)
    same = masks_to_detections("v", np.arange(3), fg, np.array([1.0]), threshold=0.2, min_actionness=0.5)
    assert same == masks_to_detections("v", np.arange(3), fg, np.array([1.0]), threshold=0.2,
                                       min_actionness=0.5, tube_min_actionness=0.5)


def _labelled_frames(actionness_values, fg_means, actor):
    """Labelled frames of one class for calibrate_frame_actionness: each with a box at [0, 0, 10, 10],
    the actor frames' target on it."""
    n = len(actionness_values)
    box = np.array([0.0, 0.0, 10.0, 10.0])
    targets = [box[None] if a else np.zeros((0, 4)) for a in actor]
    return (np.array(actionness_values), np.ones(n, bool), np.tile(box, (n, 1)), np.array(fg_means),
            np.ones((n, 1)), targets, [np.zeros(len(t), np.int64) for t in targets])


def test_frame_actionness_keeps_a_weak_actor_when_the_frames_without_one_rank_below_it():
    """Frame-mAP ranks detections by score: frames without an actor whose detections score below every
    actor's cost no precision, so the threshold keeps the weak actor (0.4), where balanced accuracy
    (`calibrate_actionness`) cuts it off with the negatives above it."""
    frames = _labelled_frames([0.95, 0.9, 0.4, 0.6, 0.7], [0.9, 0.8, 0.7, 0.2, 0.3], [1, 1, 1, 0, 0])
    assert calibrate_actionness(frames[0], [1, 1, 1, 0, 0]) == pytest.approx(0.8)
    assert calibrate_frame_actionness(*frames) == 0.0


def test_frame_actionness_drops_frames_without_an_actor_whose_detections_outscore_the_actors():
    """Confident detections on frames without an actor (score 0.95) but low actionness: the threshold
    falls between their actionness and the actors', the highest cut of the best frame-mAP."""
    frames = _labelled_frames([0.9, 0.85, 0.3, 0.2], [0.6, 0.5, 0.95, 0.95], [1, 1, 0, 0])
    assert calibrate_frame_actionness(*frames) == pytest.approx((0.3 + 0.85) / 2)
    no_actor = _labelled_frames([0.9, 0.2], [0.6, 0.9], [0, 0])
    assert calibrate_frame_actionness(*no_actor) == 0.0
    many = _labelled_frames(np.linspace(0.5, 1.0, 200), np.full(200, 0.5), np.ones(200, bool))
    assert calibrate_frame_actionness(*many, candidates=8) == 0.0  # every frame an actor: keep them all

# ---- file and errors ------------------------------------------------------------------------------


def test_file_end_to_end(tmp_path):
    data = dataset(
        {"v": [(0, tube([1, 2]))]},
        frame_dets=[("v", 1, 0, 0.9, BOX), ("v", 2, 0, 0.8, BOX)],
        tube_dets=[("v", 0, 0.9, tube([1, 2]))],
        labels=("a",),
    )
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(data))
    out = evaluate_stad_file(path)
    assert out["frame_map"] == {"0.5": 1.0} and out["video_map"]["0.5:0.95"] == 1.0
    json.dumps(out)  # serialisable as printed by the CLI


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("tube_detections"), "missing key 'tube_detections'"),
        (lambda d: d["frame_detections"].append({"video": "x", "frame": 1, "label": 0, "score": 1,
                                                 "box": BOX}), "frame_detections[0]: unknown video 'x'"),
        (lambda d: d["frame_detections"].append({"video": "v", "frame": 11, "label": 0, "score": 1,
                                                 "box": BOX}), "frame 11 outside 1..10"),
        (lambda d: d["tube_detections"].append({"video": "v", "label": 5, "score": 1, "boxes": tube([1])}),
         "tube_detections[0]: label 5 is not an integer in 0..0"),
        (lambda d: d["videos"]["v"]["tubes"][0]["boxes"].append([0, *BOX]),
         "videos['v'].tubes[0].boxes[2]: frame 0 outside 1..10"),
        (lambda d: d["videos"]["v"].pop("nframes"), "videos['v']: needs keys"),
    ],
)
def test_malformed_json_names_file_and_entry(tmp_path, mutate, message):
    data = dataset({"v": [(0, tube([1, 2]))]}, labels=("a",))
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(StadFormatError) as err:
        evaluate_stad_file(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_invalid_json_text(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{")
    with pytest.raises(StadFormatError, match="not valid JSON"):
        evaluate_stad_file(path)


# ---- vectorised code against a plain loop written from ACT's description ---------------------------


def _loop_frame_ap(data, th):
    """One class at a time, detections by score, the best unmatched box of the frame, >= th."""
    aps = []
    for c in range(len(data["labels"])):
        gt = {}
        for v, entry in data["videos"].items():
            for t in entry["tubes"]:
                if t["label"] == c:
                    for f, *box in t["boxes"]:
                        gt.setdefault((v, f), []).append(box)
        npos = sum(len(b) for b in gt.values())
        dets = sorted((d for d in data["frame_detections"] if d["label"] == c), key=lambda d: -d["score"])
        tp = fp = 0
        prec, rec = [], []
        for d in dets:
            boxes = gt.get((d["video"], d["frame"]), [])
            hit = False
            if boxes:
                ious = iou2d(np.array(boxes), np.array(d["box"]))
                j = int(np.argmax(ious))
                if ious[j] >= th:
                    hit = True
                    boxes.pop(j)
            tp, fp = tp + hit, fp + (not hit)
            prec.append(tp / (tp + fp))
            rec.append(tp / npos if npos else 0)
        if npos:
            aps.append(pr_to_ap_act(np.array(prec), np.array(rec)))
    return float(np.mean(aps))


def test_vectorised_frame_ap_matches_loop():
    rng = np.random.default_rng(1)
    videos, dets = {}, []
    for v in range(6):
        tubes = []
        for _ in range(rng.integers(0, 3)):
            x, y = rng.uniform(0, 30, 2)
            tubes.append((int(rng.integers(3)), [[f, x, y, x + 10, y + 12] for f in range(1, 6)]))
        videos[f"v{v}"] = tubes
        for _ in range(25):
            x, y = rng.uniform(0, 30, 2)
            dets.append((f"v{v}", int(rng.integers(1, 6)), int(rng.integers(3)), float(rng.random()),
                         [x, y, x + 10, y + 12]))
    data = dataset(videos, frame_dets=dets, labels=("a", "b", "c"), nframes=5)
    for th in (0.1, 0.3, 0.5):
        got = evaluate_stad(data, frame_thresholds=(th,))["frame_map"][f"{th:g}"]
        assert got == pytest.approx(_loop_frame_ap(data, th), abs=1e-6)


def test_boxes_from_masks_return_the_boxes_the_targets_were_rendered_from():
    """A target rendered from a box (pixel centres in [x1, x2)) reads back as the same box."""
    from raylab.data.targets import FrameLabel, render_foreground

    for box in ([3, 5, 11, 9], [0, 0, 16, 12], [7, 2, 8, 3]):
        label = FrameLabel(np.array([box], np.float32))
        full = render_foreground(label, (12, 16), (12, 16)).astype(float)[None]
        assert masks_to_detections("v", np.array([0]), full, np.array([1.0]))[0][0]["box"] == box
    # at half resolution the output pixels whose centres (1, 3, 5, ...) lie in the box come back
    half = render_foreground(FrameLabel(np.array([[3, 5, 11, 9]], np.float32)), (12, 16), (6, 8))
    fds, _ = masks_to_detections("v", np.array([0]), half.astype(float)[None], np.array([1.0]),
                                 scale_xy=(2, 2))
    assert fds[0]["box"] == [2.0, 4.0, 10.0, 8.0]
