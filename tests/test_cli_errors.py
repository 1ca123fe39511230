"""What a user meets when something is wrong: every subcommand, given bad input, prints one clear message
(no traceback) and exits non-zero, creating nothing; exports never overwrite; run directories work from
any directory and after they are moved. No Ray: every case here fails, or is checked, before Ray starts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from raylab import rundir
from raylab.cli import main
from raylab.config import load_config, to_yaml
from tests import test_oracle

dataset, run = test_oracle.dataset, test_oracle.run  # fixtures: SynthActions, a run waiting for annotations


def cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of `raylab ARGV` (argparse's exits included)."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def bad_files(tmp: Path) -> None:
    (tmp / "afile").write_text("not a table\n")
    (tmp / "bad.yaml").write_text("clips:\n  lenght: 3\n")
    (tmp / "deep.json").write_text("[" * 100_000)
    (tmp / "stad.json").write_text(json.dumps({"labels": 3}))
    (tmp / "ls.json").write_text(json.dumps([{"data": {"video_id": "v", "raylab_run_id": "r",
                                                       "raylab_cycle": 0}, "annotations": 5}]))
    (tmp / "study.yaml").write_text("pipeline: smoke.yaml\ngrid: {loop.strategy: [random]}\n")
    (tmp / "smoke.yaml").write_text("name: smoke\n")
    (tmp / "evil.pkl").write_bytes(b"cbuiltins\nbytes\n(I1000000000000000\ntR.")


# (argv, what the message must say); "RUN" is a run waiting for annotations, "tmp" the working directory
BAD_INPUT = [
    (["synth", "afile"], "afile is a file"),
    (["synth", "s", "--seed", "-1"], "--seed: must be >= 0, got -1"),
    (["synth", "s", "--workers", "0"], "--workers: must be >= 1"),
    (["synth", "s", "--videos", "4"], "--videos: videos=4: a spatiotemporal set needs at least 12"),
    (["convert", "--from", "jhmdb", "nosrc", "out"], "no annotation file"),
    (["convert", "--from", "ucf101-24", "evil.pkl", "out", "--videos", "."], "calls bytes() on a int"),
    (["demo", "bad.yaml"], "unknown key(s) lenght"),
    (["demo", "--set", "seed=-1"], "seed must be >= 0, got -1"),
    (["run", "--set", "ray.num_cpus=-4"], "ray.num_cpus must be > 0"),
    (["run", "--set", "loop.target_metric=frame_map@0.5", "--set", "loop.target_value=-3"],
     "loop.target_value must be in (0, 1]"),
    (["run", "--set", "train.lr=.nan"], "expected a finite number"),
    (["run", "--set", "a=[1"], "is not valid YAML"),
    (["run", "deep.json"], "nested too deeply"),
    (["run", "--run-dir", "nothing"], "nothing holds no run (config.yaml not found); nothing was created"),
    (["sweep", "missing.yaml"], "cannot read sweep missing.yaml"),
    (["study", "missing.yaml"], "cannot read study missing.yaml"),
    (["study", "bad.yaml"], "bad.yaml: unknown key(s) clips"),
    (["study", "study.yaml"], "grid.seed is missing: claims are paired over seeds"),
    (["study", "study.yaml", "--set", "grid.seed=[0]", "--set", "claims=[{a: {seed: 0}, b: {seed: 1}, "
      "metric: frame_map@0.5, at: 0.1}]"], "claims[0].a names the seed"),
    (["status", "nothing"], "nothing is not a run directory"),
    (["export", "nothing", "--format", "cvat"], "nothing is not a run directory"),
    (["export", "RUN", "--format", "cvat", "--out", "afile"], "afile exists: an export never replaces"),
    (["export", "RUN", "--format", "labelstudio", "--out", "RUN/labels/manifest.json", "--force"],
     "inside the label store"),
    (["export", "RUN", "--format", "cvat", "--out", "RUN/state.json", "--force"], "the run's own files"),
    (["import", "nothing", "ls.json"], "nothing is not a run directory"),
    (["import", "RUN", "ls.json"], "'annotations' must be a list, got 5"),
    (["import", "RUN", "deep.json"], "nested more than about"),
    (["report", "nothing", "--out", "rep"], "nothing is not a run directory"),
    (["score", "nothing", "--cycle", "0"], "nothing is not a run directory"),
    (["score", "RUN", "--cycle", "-1"], "--cycle: must be >= 0"),
    (["select", "--scores", "afile", "--labels", "afile", "--index", "afile", "--budget", "3", "--out",
      "o.parquet"], "--index afile: not a readable parquet table"),
    (["select", "--scores", "afile", "--labels", "afile", "--index", "afile", "--budget", "0", "--out",
      "o.parquet"], "--budget: must be >= 1"),
    (["eval", "stad", "stad.json"], "missing key 'videos'"),
    (["eval", "stad", "deep.json"], "nested more than about"),
    (["eval", "tal", "nofile.json"], "nofile.json"),
    (["eval", "rs", "nothing", "nothing2", "--metric", "map@0.5"], "nothing: no metrics.jsonl lines"),
]


def test_every_subcommand_walked(capsys):
    """The table covers every subcommand of the parser."""
    from raylab.cli import build_parser

    def subcommands(parser, dest):
        return next(a for a in parser._actions if a.dest == dest).choices

    commands = subcommands(build_parser(), "command")
    evals = {f"eval {name}" for name in subcommands(commands["eval"], "metric")}
    walked = {a[0] for a, _ in BAD_INPUT} | {f"eval {a[1]}" for a, _ in BAD_INPUT if a[0] == "eval"}
    assert set(commands) | evals <= walked


@pytest.mark.parametrize("argv,message", BAD_INPUT, ids=[" ".join(a[:3]) for a, _ in BAD_INPUT])
def test_bad_input_is_one_message_no_traceback_and_nothing_created(tmp_path, monkeypatch, capsys, run,
                                                                   argv, message):
    run_dir = run[0]
    monkeypatch.chdir(tmp_path)
    bad_files(tmp_path)
    before_run = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    before_here = sorted(p.name for p in tmp_path.iterdir())
    code, err = cli([str(run_dir) if a == "RUN" else a.replace("RUN/", f"{run_dir}/") for a in argv],
                    capsys)
    assert code == 2 and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 6, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before_here  # nothing created here
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before_run  # nothing changed


def test_export_out_is_written_once_then_needs_force(tmp_path, capsys, run):
    run_dir, out = run[0], tmp_path / "tasks.json"
    assert cli(["export", str(run_dir), "--format", "labelstudio", "--out", str(out)], capsys)[0] == 0
    first = out.read_text()
    out.write_text("annotated by people")
    code, err = cli(["export", str(run_dir), "--format", "labelstudio", "--out", str(out)], capsys)
    assert code == 2 and "--force" in err and out.read_text() == "annotated by people"
    argv = ["export", str(run_dir), "--format", "labelstudio", "--out", str(out), "--force"]
    assert cli(argv, capsys)[0] == 0
    assert out.read_text() == first
    # a symbolic link into the label store is the label store
    (tmp_path / "link").symlink_to(run_dir / "labels")
    code, err = cli(["export", str(run_dir), "--format", "cvat", "--out", str(tmp_path / "link" / "x.xml"),
                     "--force"], capsys)
    assert code == 2 and "inside the label store" in err


def test_a_moved_run_works_from_anywhere(tmp_path, monkeypatch, capsys, dataset):
    """config.yaml holds absolute paths: status, export and `run --run-dir` of a run moved elsewhere,
    from another directory, still find its dataset (which stayed put)."""
    import raylab.loop

    root = dataset[0]
    start = tmp_path / "start"
    start.mkdir()
    (start / "data").symlink_to(root.parent)
    monkeypatch.chdir(start)
    cfg = load_config(overrides=["data.root=data/spatiotemporal", "loop.oracle=human"])  # relative
    raylab.loop.open_run(cfg, Path("runs/r"))
    saved = rundir.run_config(start / "runs/r")
    assert saved.data.root == str(start / "data/spatiotemporal")
    shutil.move(start / "runs/r", tmp_path / "moved")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    moved = tmp_path / "moved"
    assert cli(["status", str(moved)], capsys)[0] == 0
    rundir.write_state(moved, cycle=0, step="select")
    sel = pd.DataFrame({"video_id": [rundir.load_run(moved).train["video_id"][0]], "frame": [1],
                        "score": [1.0], "rank": [0], "strategy": ["apu-global"]})
    rundir.write_parquet_atomic(rundir.RunPaths(moved).selection(0), sel)
    assert cli(["export", str(moved), "--format", "cvat"], capsys)[0] == 0
    resumed = []
    monkeypatch.setattr(raylab.loop, "run_loop", lambda cfg, run_dir: resumed.append((cfg, run_dir)))
    assert cli(["run", "--run-dir", str(moved)], capsys)[0] == 0
    assert resumed[0][0].data.root == str(start / "data/spatiotemporal") and resumed[0][1] == moved
    assert sorted(p.name for p in elsewhere.iterdir()) == []  # nothing generated here


def test_relative_paths_in_a_saved_config_are_relative_to_the_run(tmp_path, dataset):
    """A run and its dataset moved together: a relative data.root in config.yaml is taken from the run."""
    root = dataset[0]
    shutil.copytree(root, tmp_path / "data" / "st")
    (tmp_path / "runs" / "r").mkdir(parents=True)
    cfg = load_config(overrides=["data.root=../../data/st"])
    (tmp_path / "runs" / "r" / rundir.CONFIG_FILE).write_text(to_yaml(cfg))
    assert rundir.run_config(tmp_path / "runs" / "r").data.root == str(tmp_path / "data" / "st")
    assert len(rundir.load_run(tmp_path / "runs" / "r").index) > 0
