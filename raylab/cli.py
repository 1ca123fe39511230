"""The `raylab` command line. Each subcommand parses its arguments and calls one library function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from raylab.config import SYNTH_PRESETS
from raylab.quiet import ray_output_to

log = logging.getLogger("raylab")


class UsageError(Exception):
    """A command line that cannot be carried out as given; the message says what to do instead."""


def _cmd_synth(args: argparse.Namespace) -> int:
    from raylab.data.synthetic import generate

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"{args.out} is a file: OUT must be a new or existing folder")

    try:
        summary = generate(args.out, preset=args.preset, seed=args.seed, workers=args.workers,
                           overwrite=args.overwrite, videos=args.videos)
    except ValueError as e:  # too few --videos for the preset's classes
        raise UsageError(f"--videos: {e}") from None
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from raylab.data.annotations import AnnotationError
    from raylab.data.convert import convert

    try:
        summary = convert(args.fmt, args.src, args.out, videos=args.videos, split=args.split)
    except AnnotationError as e:
        print(f"raylab convert: {len(e.problems)} problem(s) in {args.src}; nothing was written:",
              file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from raylab.config import load_config
    from raylab.demo import run_demo

    cfg = load_config(args.pipeline, args.set)
    out = Path(args.run_dir or f"runs/{cfg.name}")
    with ray_output_to(None if args.verbose else out / "logs" / "ray.log"):
        run_demo(cfg, out)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from raylab.config import load_config
    from raylab.loop import run_loop
    from raylab.rundir import CONFIG_FILE, run_config

    if args.pipeline is None and args.run_dir:  # resume a run with its own config; never start one
        if not (Path(args.run_dir) / CONFIG_FILE).is_file():
            raise UsageError(f"{args.run_dir} holds no run ({CONFIG_FILE} not found); nothing was created. "
                             "`raylab run --run-dir DIR` resumes a run; to start one give its pipeline: "
                             f"raylab run PIPELINE --run-dir {args.run_dir}")
        cfg = run_config(Path(args.run_dir), args.set)
    else:
        cfg = load_config(args.pipeline, args.set)
    run = Path(args.run_dir or f"runs/{cfg.name}")
    with ray_output_to(None if args.verbose else run / "logs" / "ray.log"):
        run_loop(cfg, run)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from raylab.sweep import load_sweep
    from raylab.tune import run_sweep, summary

    sweep = load_sweep(args.sweep, args.set)
    out = Path(args.dir or f"runs/{sweep.name}")
    with ray_output_to(None if args.verbose else out / "logs" / "ray.log"):  # Tune's table stays (stdout)
        table = run_sweep(sweep, out, verbose=0 if args.quiet else 1)
    print(summary(sweep, table, out))
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from raylab.study import load_study
    from raylab.study_report import summary
    from raylab.tune import run_study

    study = load_study(args.study, args.set)
    out = Path(args.dir or f"runs/{study.name}")
    with ray_output_to(None if args.verbose else out / "logs" / "ray.log"):  # Tune's table stays (stdout)
        doc = run_study(study, out, verbose=0 if args.quiet else 1)
    print(summary(doc, out))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from raylab.loop import describe_run

    print(describe_run(Path(args.run)))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from raylab.oracle import export_selection

    out = export_selection(Path(args.run), args.format, Path(args.out) if args.out else None,
                           force=args.force)
    print(f"tasks for {args.format} -> {out}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from raylab.oracle import import_annotations

    summary = import_annotations(Path(args.run), Path(args.file))
    print(json.dumps(summary, indent=2))
    print(f"continue the run with: raylab run --run-dir {args.run}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from raylab.report import write_report

    html = write_report([Path(r) for r in args.runs], Path(args.out))
    print(f"report -> {html}")
    return 0


def _cmd_eval_stad(args: argparse.Namespace) -> int:
    from raylab.eval.stad import evaluate_stad_file

    print(json.dumps(evaluate_stad_file(args.file, protocol=args.protocol), indent=2))
    return 0


def _cmd_eval_tal(args: argparse.Namespace) -> int:
    from raylab.eval.tal import evaluate_tal_file

    print(json.dumps(evaluate_tal_file(args.file, preset=args.preset), indent=2))
    return 0


def _cmd_eval_rs(args: argparse.Namespace) -> int:
    from raylab.eval.tal import relative_saving_runs

    print(json.dumps(relative_saving_runs(Path(args.run_a), Path(args.run_b), args.metric, args.level),
                     indent=2))
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from raylab.data.labels import LabelStore
    from raylab.rundir import load_run, run_config
    from raylab.score import score_cycle

    run = Path(args.run)
    data = load_run(run)
    cfg = run_config(run, args.set)  # the run's resolved config, e.g. with another pool size
    with ray_output_to(None if args.verbose else run / "logs" / "ray.log"):
        out = score_cycle(cfg, data, LabelStore(data.paths.labels, index=data.index), args.cycle)
    print(f"scores of cycle {args.cycle} -> {out}")
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from raylab.acquisition.select import STRATEGIES, select_frames
    from raylab.data.labels import LabelStore

    if args.strategy not in STRATEGIES:
        raise UsageError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {args.strategy!r}")
    index = _read_table(args.index, "--index", ("video_id", "num_frames"))
    num_frames = dict(zip(index["video_id"], index["num_frames"]))  # dataset order breaks ties
    labels = Path(args.labels)
    labelled = (LabelStore(labels).to_pandas() if labels.is_dir() else
                _read_table(labels, "--labels", ("video_id", "frame")))
    scores = _read_table(args.scores, "--scores", ("video_id", "frame", "uncertainty"))
    picked = select_frames(scores, labelled[["video_id", "frame"]], num_frames, args.budget, args.strategy,
                           sigma=args.sigma, lam=args.lam, seed=args.seed, min_gap=args.min_gap)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_name(f".{Path(args.out).name}.part")
    picked.to_parquet(tmp, index=False)
    tmp.replace(args.out)
    print(f"selected {len(picked)} frames in {picked['video_id'].nunique()} videos with {args.strategy} "
          f"-> {args.out}")
    return 0


def _read_table(path, flag: str, columns: tuple[str, ...]):
    """A parquet table given on the command line, with the columns a command needs."""
    import pandas as pd
    import pyarrow as pa

    try:
        table = pd.read_parquet(path)
    except (OSError, pa.ArrowException) as e:
        raise UsageError(f"{flag} {path}: not a readable parquet table ({_first_line(e)})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UsageError(f"{flag} {path}: no column(s) {', '.join(missing)} "
                         f"(it has {', '.join(map(str, table.columns))})")
    return table


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _number(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False):
    """An argparse type: a finite `kind` in [low, high] ((low, high] with `low_open`)."""
    import math

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
            hi = "" if high is None else f"<= {high:g}"
            raise argparse.ArgumentTypeError(f"must be {' and '.join(s for s in (lo, hi) if s)}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


COUNT, NON_NEGATIVE = _number(int, 1), _number(int, 0)


def _pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", nargs="?", default=None, help="pipeline YAML (overrides of the defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--run-dir", default=None, help="run directory (default runs/<name>)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raylab", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and Ray's own output on the terminal")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the main job on an embedded default (SynthActions, local Ray)")
    _pipeline_args(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("run", help="run or resume the active-learning loop of a pipeline")
    _pipeline_args(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("sweep", help="Ray Tune sweep of a pipeline's knobs; rerun to resume (docs/sweeps.md)")
    p.add_argument("sweep", help="sweep YAML (pipeline, space, objective, search, scheduler, resources)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the sweep file, e.g. search.num_samples=4 or set.loop.cycles=2")
    p.add_argument("--dir", default=None, help="sweep directory (default runs/<name>)")
    p.add_argument("--quiet", action="store_true", help="no Tune status tables while it runs")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("study", help="a grid of whole runs on Ray Tune and the claims they test, paired "
                       "over seeds; rerun to resume (docs/studies.md)")
    p.add_argument("study", help="study YAML (pipeline, set, arms, grid, claims, statistic, resources)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the study file, e.g. grid.seed=[0,1] or set.loop.cycles=2")
    p.add_argument("--dir", default=None, help="study directory (default runs/<name>)")
    p.add_argument("--quiet", action="store_true", help="no Tune status tables while it runs")
    p.set_defaults(func=_cmd_study)

    p = sub.add_parser("status", help="where a run stands: cycle, step, metrics, pending selection")
    p.add_argument("run", help="run directory")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("export", help="write the pending selection as annotation tasks (human oracle)")
    p.add_argument("run", help="run directory")
    p.add_argument("--format", required=True, choices=["cvat", "labelstudio"])
    p.add_argument("--out", default=None, help="file to write (default RUN/exports/cycle=K/); an existing "
                   "file is refused unless --force, a path in the run other than exports/ always")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("import", help="append annotators' results for the pending selection")
    p.add_argument("run", help="run directory")
    p.add_argument("file", help="CVAT XML or Label Studio JSON export")
    p.set_defaults(func=_cmd_import)

    p = sub.add_parser("report", help="plots and one HTML page of one or several runs")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", required=True, help="folder for the PNGs and index.html")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("score", help="MC-dropout scores of a run's unlabelled frames (actor pool)")
    p.add_argument("run", help="run directory (holds config.yaml and checkpoints/cycle=K)")
    p.add_argument("--cycle", type=NON_NEGATIVE, required=True, help="whose detector scores")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. score.actors=4")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("select", help="pick the frames to annotate next from a score table")
    p.add_argument("--scores", required=True, help="score table (video_id, frame, uncertainty[, entropy])")
    p.add_argument("--labels", required=True, help="label store directory, or parquet (video_id, frame)")
    p.add_argument("--index", required=True, help="the dataset's index.parquet (video order breaks ties)")
    p.add_argument("--budget", type=COUNT, required=True, help="frames to select")
    p.add_argument("--strategy", default="apu-global", help="apu-global, apu-local, random, equidistant, "
                   "uncertainty, entropy, sample")
    p.add_argument("--sigma", type=_number(float, 0, low_open=True), default=1.3,
                   help="APU proximity width in frames")
    p.add_argument("--lam", type=_number(float, 0, 1), default=0.5,
                   help="APU weight of uncertainty vs proximity")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--min-gap", type=NON_NEGATIVE, default=5, help="entropy strategy: frames between picks")
    p.add_argument("--out", required=True, help="selection parquet to write")
    p.set_defaults(func=_cmd_select)

    p = sub.add_parser("eval", help="evaluate predictions against ground truth")
    eval_sub = p.add_subparsers(dest="metric", required=True)
    q = eval_sub.add_parser("stad", help="frame-mAP and video-mAP (docs/evaluation.md)")
    q.add_argument("file", help="GT_AND_PRED.json")
    q.add_argument("--protocol", default="act", choices=["act", "voc"])
    q.set_defaults(func=_cmd_eval_stad)
    q = eval_sub.add_parser("tal", help="mAP at tIoU thresholds (ActivityNet protocol)")
    q.add_argument("file", help="GT_AND_PRED.json")
    q.add_argument("--preset", default="thumos14", choices=["thumos14", "activitynet"])
    q.set_defaults(func=_cmd_eval_tal)
    q = eval_sub.add_parser("rs", help="Relative Saving of run A over baseline run B (AL-STAL Eq.11)")
    q.add_argument("run_a", help="run directory of the method")
    q.add_argument("run_b", help="run directory of the baseline")
    q.add_argument("--metric", required=True, help="e.g. frame_map@0.5 or map@0.5")
    q.add_argument("--level", type=_number(float), default=None,
                   help="metric level (default: the baseline's last)")
    q.set_defaults(func=_cmd_eval_rs)

    p = sub.add_parser("synth", help="generate a SynthActions dataset (spatio-temporal and temporal sets)")
    p.add_argument("out", help="output directory")
    p.add_argument("--preset", default="small", choices=SYNTH_PRESETS)
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--workers", type=COUNT, default=1, help="processes writing videos in parallel")
    p.add_argument("--videos", type=NON_NEGATIVE, default=0,
                   help="videos of each set, in place of the preset's number (0: the preset's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing set in OUT")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("convert", help="convert a dataset you have into raylab's canonical layout")
    p.add_argument("--from", dest="fmt", required=True,
                   choices=["ucf101-24", "jhmdb", "thumos14", "activitynet"])
    p.add_argument("src", help="folder with the annotation file(s), see docs/data-preparation.md")
    p.add_argument("out", help="new dataset directory (must not exist or be empty)")
    p.add_argument("--videos", default=None, help="folder of the video files (default SRC/videos)")
    p.add_argument("--split", type=NON_NEGATIVE, default=0, help="which train/test split of J-HMDB (0, 1, 2)")
    p.set_defaults(func=_cmd_convert)
    for p in [*sub.choices.values(), *eval_sub.choices.values()]:  # -v after the subcommand too
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="debug logging, and Ray's own output on the terminal")
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by input or state a user can fix: reported in one line, no traceback."""
    from raylab.config import ConfigError
    from raylab.data.annotations import AnnotationError
    from raylab.data.bounds import InputBoundError
    from raylab.data.labels import LabelStoreError
    from raylab.data.video import VideoError
    from raylab.eval.stad_json import StadFormatError
    from raylab.eval.tal import RelativeSavingError, TalFormatError
    from raylab.rundir import RunStateError

    return (UsageError, ConfigError, AnnotationError, LabelStoreError, VideoError, RunStateError,
            StadFormatError, TalFormatError, RelativeSavingError, InputBoundError,
            OSError)  # missing or unreadable files, a full disk: said in one line


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.func(args)
    except _user_errors() as e:
        if args.verbose:
            raise
        print(f"raylab {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"raylab {args.command}: interrupted; every step done so far is kept (rerun to resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
