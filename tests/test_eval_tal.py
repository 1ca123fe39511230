"""mAP at tIoU (the official ActivityNet evaluation's numbers) and Relative Saving: hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raylab.eval.tal import (
    PRESETS,
    TalFormatError,
    evaluate_tal,
    evaluate_tal_file,
    interpolated_ap,
    relative_saving,
    relative_saving_runs,
    segment_iou,
    threshold_key,
)


def gt(video, label, start, end):
    return {"video": video, "label": label, "t_start": start, "t_end": end}


def pred(video, label, start, end, score):
    return {**gt(video, label, start, end), "score": score}


def doc(ground_truth, predictions):
    return {"ground_truth": ground_truth, "predictions": predictions}


# ---- tIoU and AP ----------------------------------------------------------------------------------------


def test_segment_iou_union_counts_both_lengths():
    # [0, 10] and [5, 20]: intersection 5, union 10 + 15 - 5 = 20
    assert segment_iou(0.0, 10.0, 5.0, 20.0) == 0.25
    assert segment_iou(0.0, 1.0, 2.0, 3.0) == 0.0  # disjoint: the gap is clipped to 0
    assert np.isnan(segment_iou(5.0, 5.0, 3.0, 3.0))  # two zero-length segments: 0 / 0, as the official


def test_interpolated_ap_pads_and_takes_the_precision_envelope():
    # TP, FP, TP over 2 positives: precision 1, 1/2, 2/3; recall 1/2, 1/2, 1
    # envelope at the recall steps: 1 at 1/2, 2/3 at 1 -> 1/2 * 1 + 1/2 * 2/3
    assert interpolated_ap(np.array([1, 0.5, 2 / 3]), np.array([0.5, 0.5, 1])) == pytest.approx(5 / 6)
    # recall never reaches 1: the padded point (1, 0) adds nothing
    assert interpolated_ap(np.array([1.0]), np.array([0.5])) == 0.5


def test_threshold_keys_without_float_noise():
    assert [threshold_key(t) for t in PRESETS["activitynet"]] == [
        "0.5", "0.55", "0.6", "0.65", "0.7", "0.75", "0.8", "0.85", "0.9", "0.95"]
    assert PRESETS["activitynet"] == tuple(np.linspace(0.5, 0.95, 10))


# ---- mAP: hand-computed cases ------------------------------------------------------------------------


def test_perfect_predictions_give_ap_one():
    truth = [gt("v1", "a", 0.0, 10.0), gt("v1", "b", 12.5, 20.0), gt("v2", "a", 3.0, 4.0)]
    out = evaluate_tal(doc(truth, [{**g, "score": 0.5} for g in truth]))
    assert out["preset"] == "thumos14" and out["thresholds"] == [0.3, 0.4, 0.5, 0.6, 0.7]
    assert out["map"] == {k: 1.0 for k in ("0.3", "0.4", "0.5", "0.6", "0.7")}
    assert out["average_map"] == 1.0
    assert out["per_class"]["b"]["0.7"] == 1.0


def test_duplicate_on_one_ground_truth_is_a_false_positive():
    truth = [gt("v", "a", 0, 10), gt("v", "a", 20, 30)]
    preds = [pred("v", "a", 0, 10, 0.9), pred("v", "a", 0, 10, 0.8), pred("v", "a", 20, 30, 0.7)]
    # TP, FP (the duplicate), TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    # interpolated: 1/2 * 1 + 1/2 * max(2/3) = 5/6
    assert evaluate_tal(doc(truth, preds))["map"]["0.5"] == pytest.approx(5 / 6)


def test_tiou_equal_to_the_threshold_counts():
    truth = [gt("v", "a", 0, 2)]
    out = evaluate_tal(doc(truth, [pred("v", "a", 0, 1, 0.9)]), thresholds=[0.5, 0.6])  # tIoU 1/2 exactly
    assert out["map"] == {"0.5": 1.0, "0.6": 0.0}
    assert out["preset"] == "custom"


def test_activitynet_thresholds_are_the_official_linspace():
    # tIoU 9/10 is the double 0.9, above linspace's 0.8999999999999999: a hit at "0.9", not at 0.95
    out = evaluate_tal(doc([gt("v", "a", 0, 10)], [pred("v", "a", 0, 9, 0.9)]), preset="activitynet")
    assert out["map"]["0.9"] == 1.0 and out["map"]["0.95"] == 0.0


def test_activitynet_average_is_the_mean_over_thresholds():
    # tIoU 0.8: a hit at 0.5, 0.55, ..., 0.8 (7 thresholds), a miss at 0.85, 0.9, 0.95 -> 7/10
    out = evaluate_tal(doc([gt("v", "a", 0, 10)], [pred("v", "a", 0, 8, 0.9)]), preset="activitynet")
    assert list(out["map"]) == ["0.5", "0.55", "0.6", "0.65", "0.7", "0.75", "0.8", "0.85", "0.9", "0.95"]
    assert out["average_map"] == pytest.approx(0.7)


def test_matched_ground_truth_is_skipped_for_the_next_best():
    truth = [gt("v", "a", 0, 10), gt("v", "a", 5, 15)]
    # the first takes [0, 10]; the second overlaps [0, 10] by 8/12 and [5, 15] by 7/13
    preds = [pred("v", "a", 0, 10, 0.9), pred("v", "a", 2, 12, 0.8)]
    out = evaluate_tal(doc(truth, preds), thresholds=[0.5, 0.6])
    assert out["map"]["0.5"] == 1.0  # [0, 10] is taken, so the second matches [5, 15] (7/13 >= 0.5)
    assert out["map"]["0.6"] == 0.5  # 7/13 < 0.6: a false positive after one hit -> recall 1/2 at precision 1


def test_class_without_predictions_counts_zero():
    truth = [gt("v", "a", 0, 10), gt("v", "b", 20, 30)]
    out = evaluate_tal(doc(truth, [pred("v", "a", 0, 10, 0.9)]))
    assert out["per_class"]["b"] == {k: 0.0 for k in ("0.3", "0.4", "0.5", "0.6", "0.7")}
    assert out["map"]["0.5"] == 0.5


def test_labels_only_in_predictions_are_ignored():
    truth = [gt("v", "a", 0, 10)]
    preds = [pred("v", "z", 0, 10, 0.99), pred("v", "a", 0, 10, 0.5)]
    out = evaluate_tal(doc(truth, preds))
    assert list(out["per_class"]) == ["a"] and out["ignored_labels"] == ["z"]
    assert out["map"]["0.5"] == 1.0


def test_predictions_in_videos_without_ground_truth_are_false_positives():
    # the official code: no ground truth of the class in the video -> false positive
    preds = [pred("elsewhere", "a", 0, 10, 0.9), pred("v", "a", 0, 10, 0.8)]
    out = evaluate_tal(doc([gt("v", "a", 0, 10)], preds))
    assert out["map"]["0.5"] == 0.5  # FP then TP: precision 1/2 at recall 1
    assert out["predictions_in_videos_without_gt"] == 1


def test_zero_length_segments_match_as_in_the_official_code():
    # 0 / 0 = nan is not < threshold there, so it matches at every threshold, wherever it lies
    out = evaluate_tal(doc([gt("v", "a", 3, 3)], [pred("v", "a", 5, 5, 0.9)]))
    assert out["average_map"] == 1.0


def test_classes_follow_the_ground_truth_order():
    truth = [gt("v", "b", 0, 1), gt("v", "a", 2, 3), gt("w", "b", 0, 1)]
    assert list(evaluate_tal(doc(truth, []))["per_class"]) == ["b", "a"]


# ---- input checks --------------------------------------------------------------------------------------


OK = {"video": "v7", "label": "a", "t_start": 0, "t_end": 1, "score": 1}


@pytest.mark.parametrize(
    "entry, message",
    [
        ({k: v for k, v in OK.items() if k != "score"}, "predictions[1] (video 'v7'): missing 'score'"),
        ({**OK, "t_start": 4}, "predictions[1] (video 'v7'): t_end 1 < t_start 4"),
        ({**OK, "t_start": float("nan")}, "t_start is not a finite number (nan)"),
        ({**OK, "score": float("inf")}, "score is not a finite number (inf)"),
        ({**OK, "label": 3}, "label must be a string, got 3"),
        ({**OK, "t_start": "0"}, "t_start must be a number, got '0'"),
        ({k: v for k, v in OK.items() if k != "video"}, "predictions[1]: missing 'video'"),
    ],
)
def test_bad_prediction_is_named(entry, message):
    data = doc([gt("v", "a", 0, 1)], [pred("v", "a", 0, 1, 0.5), entry])
    with pytest.raises(TalFormatError, match="1 problem") as err:
        evaluate_tal(data)
    assert message in str(err.value)


def test_every_problem_is_reported_and_structure_is_checked():
    data = doc([gt("v", "a", 2, 1), {"video": "w"}], [])
    with pytest.raises(TalFormatError) as err:
        evaluate_tal(data)
    text = str(err.value)
    assert "ground_truth[0] (video 'v'): t_end 1 < t_start 2" in text
    assert "ground_truth[1] (video 'w'): missing 'label', 't_start', 't_end'" in text
    with pytest.raises(TalFormatError, match="'ground_truth' and 'predictions'"):
        evaluate_tal({"ground_truth": []})
    with pytest.raises(TalFormatError, match="nothing to evaluate"):
        evaluate_tal(doc([], []))
    with pytest.raises(ValueError, match="unknown preset"):
        evaluate_tal(doc([gt("v", "a", 0, 1)], []), preset="thumos")


def test_evaluate_file(tmp_path):
    path = tmp_path / "tal.json"
    path.write_text(json.dumps(doc([gt("v", "a", 0, 1)], [pred("v", "a", 0, 1, 1.0)])))
    assert evaluate_tal_file(path, preset="activitynet")["average_map"] == 1.0
    path.write_text("{")
    with pytest.raises(TalFormatError, match="not valid JSON"):
        evaluate_tal_file(path)
    path.write_text(json.dumps(doc([gt("v", "a", 0, 1)], [{"video": "v"}])))
    with pytest.raises(TalFormatError, match=str(path)):
        evaluate_tal_file(path)


# ---- the vectorised matching equals a plain loop over the official algorithm ---------------------------


def loop_tiou(p, g):
    inter = max(0.0, min(p["t_end"], g["t_end"]) - max(p["t_start"], g["t_start"]))
    union = (g["t_end"] - g["t_start"]) + (p["t_end"] - p["t_start"]) - inter
    with np.errstate(invalid="ignore"):
        return np.float64(inter) / np.float64(union)


def loop_ap(precision, recall):
    p, r = [0.0, *precision, 0.0], [0.0, *recall, 1.0]
    for i in range(len(p) - 2, -1, -1):
        p[i] = max(p[i], p[i + 1])
    return np.sum(np.array([(r[i] - r[i - 1]) * p[i] for i in range(1, len(r)) if r[i] != r[i - 1]]))


def loop_class_ap(truth, preds, thresholds):
    """One class: rank by argsort()[::-1], scan ground truths by tiou argsort()[::-1], skip the used."""
    if not preds:
        return np.zeros(len(thresholds))
    order = np.argsort(np.array([p["score"] for p in preds], np.float64))[::-1]
    used = np.zeros((len(thresholds), len(truth)), bool)
    tp = np.zeros((len(thresholds), len(preds)))
    for rank, i in enumerate(order):
        mine = [j for j, g in enumerate(truth) if g["video"] == preds[i]["video"]]
        ious = np.array([loop_tiou(preds[i], truth[j]) for j in mine])
        for t, thr in enumerate(thresholds):
            for s in ious.argsort()[::-1]:
                if ious[s] < thr:
                    break
                if not used[t, mine[s]]:
                    used[t, mine[s]], tp[t, rank] = True, 1
                    break
    tp_cum, fp_cum = np.cumsum(tp, axis=1), np.cumsum(1 - tp, axis=1)
    precision, recall = tp_cum / (tp_cum + fp_cum), tp_cum / len(truth)
    return np.array([loop_ap(precision[t], recall[t]) for t in range(len(thresholds))])


def loop_per_class(data, thresholds):
    labels = list(dict.fromkeys(g["label"] for g in data["ground_truth"]))
    return {
        c: loop_class_ap([g for g in data["ground_truth"] if g["label"] == c],
                         [p for p in data["predictions"] if p["label"] == c], thresholds)
        for c in labels
    }


def segments(draw, n, with_score):
    out = []
    for _ in range(n):
        start = draw(st.integers(0, 12)) / 2
        entry = gt(draw(st.sampled_from(["v0", "v1", "v2"])), draw(st.sampled_from(["a", "b", "c"])),
                   start, start + draw(st.integers(0, 8)) / 2)
        if with_score:
            entry["video"] = draw(st.sampled_from(["v0", "v1", "v2", "v9"]))  # v9: no ground truth
            entry["label"] = draw(st.sampled_from(["a", "b", "c", "z"]))  # z: no ground truth
            entry["score"] = draw(st.sampled_from([0.1, 0.5, 0.9])) if draw(st.booleans()) else draw(
                st.floats(0, 1))  # many ties, some not
        out.append(entry)
    return out


@st.composite
def documents(draw):
    truth = segments(draw, draw(st.integers(1, 25)), False)
    return doc(truth, segments(draw, draw(st.integers(0, 60)), True))


@settings(max_examples=300, deadline=None)
@given(data=documents(), preset=st.sampled_from(["thumos14", "activitynet"]))
def test_vectorised_equals_loop(data, preset):
    out = evaluate_tal(data, preset=preset)
    expected = loop_per_class(data, PRESETS[preset])
    assert list(out["per_class"]) == list(expected)
    for c, aps in expected.items():
        assert list(out["per_class"][c].values()) == aps.tolist()  # exactly, not approximately
    means = np.stack(list(expected.values()), axis=1).mean(axis=1)
    assert list(out["map"].values()) == means.tolist()
    assert out["average_map"] == means.mean()


def test_many_predictions_per_video_match_the_loop():
    # groups of more than 16 predictions and ground truths: numpy's sorts are no longer insertion sorts
    rng = np.random.default_rng(3)
    starts = rng.integers(0, 40, 30).astype(float)
    truth = [gt("v", "a", s, s + rng.integers(1, 10)) for s in starts]
    preds = [pred("v", "a", s, s + rng.integers(1, 10), float(rng.choice([0.2, 0.4, 0.6])))
             for s in rng.integers(0, 40, 200).astype(float)]
    out = evaluate_tal(doc(truth, preds), preset="activitynet")
    expected = loop_class_ap(truth, preds, PRESETS["activitynet"])
    assert list(out["per_class"]["a"].values()) == expected.tolist()


# ---- Relative Saving ------------------------------------------------------------------------------------

A = [(0.05, 0.20), (0.10, 0.30), (0.15, 0.35)]  # proposed
B = [(0.05, 0.20), (0.10, 0.25), (0.15, 0.30)]  # baseline


def test_relative_saving_at_the_baseline_final_performance():
    out = relative_saving(A, B)
    # B needs 0.15 to reach its final 0.30; A reaches 0.30 at 0.10 -> (0.15 - 0.10) / 0.15
    assert out["metric_level"] == 0.30
    assert (out["n_a"], out["n_b"]) == (pytest.approx(0.10), pytest.approx(0.15))
    assert out["rs"] == pytest.approx(1 / 3)


def test_relative_saving_interpolates_between_points():
    # 0.25 lies half-way between A's 0.20 (at 0.05) and 0.30 (at 0.10): N_A = 0.075; B reaches it at 0.10
    out = relative_saving(A, B, metric_level=0.25)
    assert out["n_a"] == pytest.approx(0.075) and out["rs"] == pytest.approx(0.25)
    # and the same level inside B's segment: 0.275 -> B at 0.125, A at 0.0875
    out = relative_saving(A, B, metric_level=0.275)
    assert out["n_b"] == pytest.approx(0.125) and out["n_a"] == pytest.approx(0.0875)
    assert out["rs"] == pytest.approx(0.3)


def test_relative_saving_per_baseline_point_and_order():
    out = relative_saving(list(reversed(A)), B)  # points in any order
    assert [p["rs"] for p in out["per_point"]] == pytest.approx([0, 0.25, 1 / 3])
    # a level A reaches at its first point: N_A is that point's amount (no extrapolation)
    assert relative_saving(A, B, metric_level=0.1)["n_a"] == 0.05


def test_relative_saving_errors_when_a_curve_never_reaches_the_level():
    with pytest.raises(ValueError, match=r"curve B \(baseline\) never reaches metric 0.33: its best is 0.3"):
        relative_saving(A, B, metric_level=0.33)
    with pytest.raises(ValueError, match=r"curve A \(proposed\) never reaches metric 0.3"):
        relative_saving([(0.1, 0.1), (0.2, 0.2)], B)
    with pytest.raises(ValueError, match="finite"):
        relative_saving([(0.1, float("nan"))], B)


def write_run(path, points, family="map"):
    path.mkdir()
    lines = [{"cycle": i, "labelled_fraction": x, "cost": 0, "metrics": {family: {"0.5": m, "0.3": m + 0.1}}}
             for i, (x, m) in enumerate(points)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_relative_saving_of_two_runs(tmp_path):
    run_a, run_b = write_run(tmp_path / "tpe", A), write_run(tmp_path / "random", B)
    out = relative_saving_runs(run_a, run_b, "map@0.5")
    assert out["rs"] == pytest.approx(1 / 3) and out["metric"] == "map@0.5"
    assert relative_saving_runs(run_a, run_b, "map@0.3")["metric_level"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match=r"no cycle has metric 'video_map@0.5'.*'map@0.3', 'map@0.5'"):
        relative_saving_runs(run_a, run_b, "video_map@0.5")
    with pytest.raises(ValueError, match="no metrics.jsonl lines"):
        relative_saving_runs(tmp_path / "nothing", run_b, "map@0.5")
