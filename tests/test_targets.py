import numpy as np
import pytest

from raylab.data.rle import rle_decode, rle_encode, rle_to_box
from raylab.data.targets import (
    FrameLabel,
    clip_targets,
    frame_label,
    group_labels,
    in_changed_gap,
    labels_near,
    pseudo_label,
    render_foreground,
)
from raylab.proximity import mgw_weights


def box_label(*box):
    return FrameLabel(np.array([box], dtype=np.float32))


EMPTY = FrameLabel(np.zeros((0, 4), np.float32))


def test_mgw_weights_exact_values():
    w = mgw_weights(np.arange(6), np.array([1, 5]), sigma=1.0)
    d = np.array([1, 0, 1, 2, 1, 0])
    assert np.allclose(w, np.exp(-(d**2) / 2.0))
    assert w[1] == 1 and w[5] == 1


def test_mgw_limits_are_masking_and_interpolation():
    frames, annotated = np.arange(10), np.array([2, 7])
    masking = mgw_weights(frames, annotated, 1.3, "masking")
    assert masking.tolist() == [0, 0, 1, 0, 0, 0, 0, 1, 0, 0]
    assert np.allclose(mgw_weights(frames, annotated, 1e-4), masking)
    interp = mgw_weights(frames, annotated, 1.3, "interpolation")
    assert interp.tolist() == [1.0] * 10
    assert np.allclose(mgw_weights(frames, annotated, 1e6), interp)


def test_mgw_weights_without_annotation_are_zero():
    for weighting in ("mgw", "masking", "interpolation"):
        assert mgw_weights(np.arange(4), np.array([], int), 1.3, weighting).tolist() == [0, 0, 0, 0]


def test_pseudo_label_interpolates_boxes_between_annotations():
    labels = {0: box_label(0, 0, 10, 10), 4: box_label(8, 4, 18, 14)}
    mid = pseudo_label(labels, 1)
    assert np.allclose(mid.boxes, [[2, 1, 12, 11]])
    assert pseudo_label(labels, 4) is labels[4]


def test_pseudo_label_pairs_actors_by_track_not_by_position():
    """Two actors listed in swapped order in the next annotated frame are each interpolated with
    themselves; an actor shown only in the nearest frame keeps its box there."""
    a, b = [0, 0, 10, 10], [50, 50, 60, 60]
    first = frame_label([a, b], tracks=[0, 1])
    second = frame_label([[b[0] + 4, b[1], b[2] + 4, b[3]], [a[0] + 4, a[1], a[2] + 4, a[3]]], tracks=[1, 0])
    mid = pseudo_label({0: first, 4: second}, 1)
    assert mid.tracks == (0, 1)
    np.testing.assert_allclose(mid.boxes, [[1, 0, 11, 10], [51, 50, 61, 60]])
    # without identities the same labels pair by position: each box drifts towards the other actor
    blind = pseudo_label({0: frame_label([a, b]), 4: frame_label(second.boxes)}, 1)
    assert abs(blind.boxes[0, 0] - 1) > 10
    # an actor that leaves: shown on the nearest side only, kept as it is there; the other interpolated
    leaves = pseudo_label({0: first, 4: frame_label([second.boxes[1]], tracks=[0])}, 1)
    np.testing.assert_allclose(leaves.boxes, [[1, 0, 11, 10], b])


def test_pseudo_label_takes_the_nearest_for_empty_frames_and_the_ends():
    labels = {2: box_label(0, 0, 4, 4), 6: EMPTY, 9: box_label(1, 1, 5, 5)}
    assert pseudo_label(labels, 0) is labels[2]  # before the first annotation
    assert pseudo_label(labels, 4) is labels[2]  # tie -> the earlier one
    assert pseudo_label(labels, 5).empty  # nearest is the labelled negative
    assert pseudo_label(labels, 12) is labels[9]
    assert pseudo_label({}, 3) is None


def test_render_foreground_fills_boxes_by_pixel_centres_and_scales():
    fg = render_foreground(box_label(2, 1, 6, 3), (8, 8), (8, 8))
    expected = np.zeros((8, 8), np.uint8)
    expected[1:3, 2:6] = 1
    assert np.array_equal(fg, expected)
    small = render_foreground(box_label(2, 1, 6, 3), (8, 8), (4, 4))
    assert small.sum() == 2 and small[0:2, 1:3].sum() == 2


def test_render_foreground_uses_masks_when_present():
    mask = np.zeros((6, 6), np.uint8)
    mask[1:4, 2:5] = 1
    mask[2, 3] = 0
    label = frame_label([[2, 1, 5, 4]], [rle_encode(mask)])
    assert np.array_equal(render_foreground(label, (6, 6), (6, 6)), mask)


def test_an_interpolated_actors_mask_is_moved_and_scaled_onto_its_interpolated_box():
    """Between two annotated frames of one actor, `moved` draws the nearest frame's mask in the
    interpolated box (shifted, and scaled per axis); `copied`, the default, leaves it where it was drawn."""
    shape = np.array([[1, 0, 1, 1], [1, 1, 0, 1], [0, 1, 1, 1], [1, 1, 1, 0]], np.uint8)  # no symmetry
    mask = np.zeros((16, 16), np.uint8)
    mask[2:6, 2:6] = shape
    first = frame_label([[2, 2, 6, 6]], [rle_encode(mask)], tracks=[0])
    # four frames later the actor is 4 pixels to the right and twice as large (an 8x8 box)
    labels = {0: first, 4: frame_label([[6, 2, 14, 10]], [rle_encode(np.zeros((16, 16)))], tracks=[0])}
    one = pseudo_label(labels, 1, pseudo_masks="moved")  # box: 3/4 first + 1/4 second = [3, 2, 8, 7]
    np.testing.assert_allclose(one.boxes, [[3, 2, 8, 7]])
    fg = render_foreground(one, (16, 16), (16, 16))
    assert fg[:2].sum() == 0 and fg[7:].sum() == 0 and fg[:, :3].sum() == 0 and fg[:, 8:].sum() == 0
    # pixel centres 0.5, 1.5, ... of the 5-pixel box fall at 0.4, 1.2, 2.0, 2.8, 3.6 in the 4-pixel mask
    assert np.array_equal(fg[2:7, 3:8], shape[np.ix_([0, 1, 2, 2, 3], [0, 1, 2, 2, 3])])
    two = pseudo_label(labels, 2, pseudo_masks="moved")  # halfway: the earlier frame; box [4, 2, 10, 8]
    expected = np.zeros((16, 16), np.uint8)
    expected[2:8, 4:10] = shape[np.ix_([0, 1, 1, 2, 3, 3], [0, 1, 1, 2, 3, 3])]  # 0.33, 1.0, 1.67, ...
    assert np.array_equal(render_foreground(two, (16, 16), (16, 16)), expected)
    # copied: the mask stays where the first frame has it, whatever the box says
    copied = pseudo_label(labels, 1)
    np.testing.assert_allclose(copied.boxes, one.boxes)
    assert np.array_equal(render_foreground(copied, (16, 16), (16, 16)), mask)
    # at the training size the moved mask is sampled like any mask; a box partly outside the frame clips
    assert render_foreground(one, (16, 16), (8, 8)).sum() == fg[1::2, 1::2].sum()
    # box [14, 2, 18, 6]: two columns inside the frame
    outside = render_foreground(pseudo_label({0: first, 4: frame_label([[26, 2, 30, 6]], tracks=[0])}, 2,
                                             pseudo_masks="moved"), (16, 16), (16, 16))
    assert np.array_equal(outside[2:6, 14:], shape[:, :2]) and outside.sum() == shape[:, :2].sum()
    # an annotated frame, the ends of a video and clip targets follow the same rule
    assert pseudo_label(labels, 0, pseudo_masks="moved") is first
    assert pseudo_label(labels, 6, pseudo_masks="moved") is labels[4]
    frames = np.arange(3)
    moved_fg = clip_targets(labels, frames, (16, 16), (16, 16), 1.3, pseudo_masks="moved")["fg"]
    copied_fg = clip_targets(labels, frames, (16, 16), (16, 16), 1.3)["fg"]
    assert np.array_equal(moved_fg[1], fg) and np.array_equal(copied_fg[1], mask)
    with pytest.raises(ValueError, match="pseudo_masks"):
        pseudo_label(labels, 1, pseudo_masks="warped")


def test_rle_round_trip_and_box():
    mask = np.random.default_rng(0).random((7, 5)) > 0.6
    counts = rle_encode(mask)
    assert np.array_equal(rle_decode(counts, 7, 5), mask.astype(np.uint8))
    ys, xs = np.nonzero(mask)
    assert rle_to_box(counts, 7, 5).tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert rle_encode(np.ones((2, 2))).tolist() == [0, 4]
    with pytest.raises(ValueError):
        rle_decode(counts, 5, 5)


def test_clip_targets_combine_labels_pseudo_labels_and_weights():
    labels = {3: box_label(0, 0, 2, 2), 5: EMPTY}
    t = clip_targets(labels, np.array([2, 3, 4, 5, 6]), (4, 4), (4, 4), sigma=1.0, changed_gaps="nearest")
    assert t["annotated"].tolist() == [False, True, False, True, False]
    assert t["fg"].sum(axis=(1, 2)).tolist() == [4, 4, 4, 0, 0]
    assert np.allclose(t["weight"], np.exp(-np.array([1, 0, 1, 0, 1]) ** 2 / 2))


def test_changed_gaps_are_those_whose_annotations_show_different_actors():
    a, b = [0, 0, 10, 10], [50, 50, 60, 60]
    both = frame_label([a, b], tracks=[0, 1])
    swapped = frame_label([b, a], tracks=[1, 0])  # the same two actors, listed the other way round
    one = frame_label([a], tracks=[0])
    other = frame_label([b], tracks=[1])  # one actor, but not the same one
    labels = {2: both, 5: swapped, 8: one, 11: other, 14: EMPTY, 17: EMPTY, 20: one}
    annotated = np.array(sorted(labels))
    gap = in_changed_gap(labels, np.arange(23), annotated)
    assert np.flatnonzero(gap).tolist() == [6, 7, 9, 10, 12, 13, 18, 19]  # leaves / swaps / leaves / enters
    # without identities, actors count: two boxes on each side pair, two against one do not
    blind = {0: frame_label([a, b]), 3: frame_label([b, a]), 6: frame_label([a])}
    assert in_changed_gap(blind, np.arange(7), np.array([0, 3, 6])).tolist() == [0, 0, 0, 0, 1, 1, 0]
    assert not in_changed_gap({4: one}, np.arange(9), np.array([4])).any()  # one annotation: only ends


def test_clip_targets_skip_changed_gaps_unless_told_nearest():
    labels = {2: box_label(0, 0, 2, 2), 6: EMPTY, 9: EMPTY}
    frames = np.arange(12)
    nearest = clip_targets(labels, frames, (4, 4), (4, 4), sigma=1.3, changed_gaps="nearest")
    skip = clip_targets(labels, frames, (4, 4), (4, 4), sigma=1.3)
    gap = np.isin(frames, [3, 4, 5])
    assert (nearest["weight"][gap] > 0).all() and (skip["weight"][gap] == 0).all()
    assert np.array_equal(skip["weight"][~gap], nearest["weight"][~gap])  # ends and same-actor gaps
    assert np.array_equal(skip["fg"], nearest["fg"])  # the targets themselves do not change
    masking = clip_targets(labels, frames, (4, 4), (4, 4), 1.3, "masking")
    assert masking["weight"].tolist() == clip_targets(labels, frames, (4, 4), (4, 4), 1.3, "masking",
                                                      changed_gaps="nearest")["weight"].tolist()
    with pytest.raises(ValueError, match="changed_gaps"):
        clip_targets(labels, frames, (4, 4), (4, 4), 1.3, changed_gaps="drop")


def test_labels_near_gives_the_same_targets_as_all_labels():
    rng = np.random.default_rng(0)
    annotated = np.sort(rng.choice(100, 12, replace=False))
    labels = {int(a): box_label(a % 7, 0, a % 7 + 3, 4) if a % 3 else EMPTY for a in annotated}
    for start in range(0, 92, 7):
        frames = np.arange(start, start + 8)
        near = labels_near(annotated, frames)
        subset = {int(a): labels[int(a)] for a in near}
        full = clip_targets(labels, frames, (8, 16), (8, 16), 1.3)
        part = clip_targets(subset, frames, (8, 16), (8, 16), 1.3)
        for key in full:
            assert np.array_equal(full[key], part[key])


def test_group_labels_reads_label_store_rows(tmp_path):
    from raylab.data.labels import LabelStore

    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 1:3] = 1
    store = LabelStore(tmp_path / "labels")
    store.append([{"video_id": "a", "frame": 3, "boxes": [[1, 1, 3, 3]], "box_labels": [0],
                   "mask_rle": [rle_encode(mask).tolist()], "cost": 2.0},
                  {"video_id": "a", "frame": 7, "cost": 0.0}], cycle=0, source="init")
    grouped = group_labels(store.table())
    assert sorted(grouped["a"]) == [3, 7] and grouped["a"][7].empty
    assert np.array_equal(render_foreground(grouped["a"][3], (4, 4), (4, 4)), mask)
