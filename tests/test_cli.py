"""The `raylab` command line: exit codes and what it prints (no Ray)."""

import json

import pytest

from raylab.cli import main
from tests.test_annotations import act_dict, tube, write_act


def test_synth_writes_both_sets_and_prints_a_summary(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "s"), "--preset", "tiny", "--seed", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["spatiotemporal"]["videos"] > 0 and summary["temporal"]["videos"] > 0
    assert (tmp_path / "s" / "spatiotemporal" / "index.parquet").is_file()


def test_convert_good_input_exits_0(tmp_path, capsys):
    src = write_act(tmp_path / "ucf", act_dict())
    assert main(["convert", "--from", "ucf101-24", str(src), str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out)["videos"] == 3


def test_convert_bad_input_exits_nonzero_with_every_problem(tmp_path, capsys):
    data = act_dict()
    data["gttubes"]["Basketball/v_Basketball_g01_c01"][0][0] = tube(10, 13)  # past the last frame
    data["gttubes"]["Fencing/v_Fencing_g02_c01"][1] = [tube(2, 2, (10, 10, 120, 40))]  # outside 96 px
    src = write_act(tmp_path / "ucf", data)
    assert main(["convert", "--from", "ucf101-24", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s)" in err and "nothing was written" in err
    assert "video 'Basketball/v_Basketball_g01_c01' frame 13" in err
    assert "video 'Fencing/v_Fencing_g02_c01' frame 2" in err
    assert not (tmp_path / "out").exists()


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "s" / "spatiotemporal").mkdir(parents=True)
    (tmp_path / "s" / "spatiotemporal" / "x").write_text("keep me")
    assert main(["synth", str(tmp_path / "s"), "--preset", "tiny"]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert (tmp_path / "s" / "spatiotemporal" / "x").read_text() == "keep me"

    bad = tmp_path / "bad.yaml"
    bad.write_text("clips:\n  lenght: 3\n")
    assert main(["demo", str(bad)]) == 2
    assert "unknown key(s) lenght" in capsys.readouterr().err


def test_eval_stad_prints_the_maps_of_the_documented_json(tmp_path, capsys):
    doc = {"labels": ["a", "b"],
           "videos": {"v1": {"nframes": 3, "width": 64, "height": 48,
                             "tubes": [{"label": 0, "boxes": [[1, 0, 0, 9, 9], [2, 0, 0, 9, 9]]}]},
                      "v2": {"nframes": 2, "width": 64, "height": 48, "tubes": []}},
           "frame_detections": [{"video": "v1", "frame": 1, "label": 0, "score": 0.9, "box": [0, 0, 9, 9]},
                                {"video": "v2", "frame": 1, "label": 0, "score": 0.8, "box": [0, 0, 9, 9]},
                                {"video": "v1", "frame": 2, "label": 0, "score": 0.7, "box": [0, 0, 9, 9]}],
           "tube_detections": [{"video": "v1", "label": 0, "score": 0.9,
                                "boxes": [[1, 0, 0, 9, 9], [2, 0, 0, 9, 9]]}]}
    path = tmp_path / "gt_and_pred.json"
    path.write_text(json.dumps(doc))
    assert main(["eval", "stad", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    # ranked: TP (1/1), FP (1/2), TP (2/3); ACT's trapezoid from (recall 0, precision 1):
    # 0.5 * (1 + 1) / 2 + 0 + 0.5 * (1/2 + 2/3) / 2
    assert out["frame_map"]["0.5"] == pytest.approx(0.5 + 0.5 * (0.5 + 2 / 3) / 2, abs=1e-6)
    assert out["video_map"]["0.5"] == pytest.approx(1.0)
    assert "b" in out["classes_without_gt"]


def test_select_reads_files_and_writes_the_selection(tmp_path, capsys):
    import pandas as pd

    from raylab.data.labels import LabelStore

    index = pd.DataFrame({"video_id": ["b", "a"], "num_frames": [4, 3]})
    index.to_parquet(tmp_path / "index.parquet")
    scores = pd.DataFrame({"video_id": ["a", "a", "a", "b", "b", "b", "b"],
                           "frame": [0, 1, 2, 0, 1, 2, 3],
                           "uncertainty": [0.9, 0.1, 0.9, 0.9, 0.2, 0.2, 0.2]})
    scores.to_parquet(tmp_path / "scores.parquet")
    LabelStore(tmp_path / "labels").append([{"video_id": "a", "frame": 1, "cost": 0.0}], 0, "init")
    args = ["select", "--scores", str(tmp_path / "scores.parquet"), "--labels", str(tmp_path / "labels"),
            "--index", str(tmp_path / "index.parquet"), "--budget", "2", "--strategy", "uncertainty",
            "--out", str(tmp_path / "sel.parquet")]
    assert main(args) == 0
    picked = pd.read_parquet(tmp_path / "sel.parquet")
    # three frames tie at 0.9: video b comes first in the index, then a's lower frame
    assert list(zip(picked["video_id"], picked["frame"], picked["rank"])) == [("b", 0, 0), ("a", 0, 1)]
    assert "selected 2 frames" in capsys.readouterr().out
