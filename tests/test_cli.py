"""The `raylab` command line: exit codes and what it prints (no Ray)."""

import json

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
