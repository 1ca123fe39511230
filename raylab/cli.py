"""The `raylab` command line. Each subcommand parses its arguments and calls one library function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("raylab")


def _cmd_synth(args: argparse.Namespace) -> int:
    from raylab.data.synthetic import generate

    summary = generate(args.out, preset=args.preset, seed=args.seed, workers=args.workers,
                       overwrite=args.overwrite)
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
    run_demo(cfg, Path(args.run_dir or f"runs/{cfg.name}"))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from raylab.config import load_config
    from raylab.loop import train_and_evaluate

    cfg = load_config(args.pipeline, args.set)
    line = train_and_evaluate(cfg, Path(args.run_dir or f"runs/{cfg.name}"), cycle=args.cycle)
    print(json.dumps({k: v for k, v in line.items() if k != "train_history"}, indent=2))
    return 0


def _cmd_eval_stad(args: argparse.Namespace) -> int:
    from raylab.eval.stad import evaluate_stad_file

    print(json.dumps(evaluate_stad_file(args.file, protocol=args.protocol), indent=2))
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from raylab.config import load_config
    from raylab.score import score_cycle

    run = Path(args.run)
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run / 'config.yaml'} not found: {run} is not a run directory")
    cfg = load_config(run / "config.yaml", args.set)  # the run's resolved config
    out = score_cycle(cfg, run, args.cycle)
    print(f"scores of cycle {args.cycle} -> {out}")
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    import pandas as pd

    from raylab.acquisition.select import select_frames
    from raylab.data.labels import LabelStore

    index = pd.read_parquet(args.index)
    num_frames = dict(zip(index["video_id"], index["num_frames"]))  # dataset order breaks ties
    labels = Path(args.labels)
    labelled = (LabelStore(labels).to_pandas() if labels.is_dir() else pd.read_parquet(labels))
    picked = select_frames(pd.read_parquet(args.scores), labelled[["video_id", "frame"]], num_frames,
                           args.budget, args.strategy, sigma=args.sigma, lam=args.lam, seed=args.seed,
                           min_gap=args.min_gap)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_name(f".{Path(args.out).name}.part")
    picked.to_parquet(tmp, index=False)
    tmp.replace(args.out)
    print(f"selected {len(picked)} frames in {picked['video_id'].nunique()} videos with {args.strategy} "
          f"-> {args.out}")
    return 0


def _pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", nargs="?", default=None, help="pipeline YAML (overrides of the defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--run-dir", default=None, help="run directory (default runs/<name>)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raylab", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the main job on an embedded default (SynthActions, local Ray)")
    _pipeline_args(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("train", help="train one cycle's detector on Ray Train and evaluate it")
    _pipeline_args(p)
    p.add_argument("--cycle", type=int, default=0, help="cycle number (warm-starts from cycle-1)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("score", help="MC-dropout scores of a run's unlabelled frames (actor pool)")
    p.add_argument("run", help="run directory (holds config.yaml and checkpoints/cycle=K)")
    p.add_argument("--cycle", type=int, required=True, help="whose detector scores")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. score.actors=4")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("select", help="pick the frames to annotate next from a score table")
    p.add_argument("--scores", required=True, help="score table (video_id, frame, uncertainty[, entropy])")
    p.add_argument("--labels", required=True, help="label store directory, or parquet (video_id, frame)")
    p.add_argument("--index", required=True, help="the dataset's index.parquet (video order breaks ties)")
    p.add_argument("--budget", type=int, required=True, help="frames to select")
    p.add_argument("--strategy", default="apu-global", help="apu-global, apu-local, random, equidistant, "
                   "uncertainty, entropy, sample")
    p.add_argument("--sigma", type=float, default=1.3, help="APU proximity width in frames")
    p.add_argument("--lam", type=float, default=0.5, help="APU weight of uncertainty vs proximity")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-gap", type=int, default=5, help="entropy strategy: frames between picks")
    p.add_argument("--out", required=True, help="selection parquet to write")
    p.set_defaults(func=_cmd_select)

    p = sub.add_parser("eval", help="evaluate predictions against ground truth")
    eval_sub = p.add_subparsers(dest="metric", required=True)
    q = eval_sub.add_parser("stad", help="frame-mAP and video-mAP (docs/evaluation.md)")
    q.add_argument("file", help="GT_AND_PRED.json")
    q.add_argument("--protocol", default="act", choices=["act", "voc"])
    q.set_defaults(func=_cmd_eval_stad)

    p = sub.add_parser("synth", help="generate a SynthActions dataset (spatio-temporal and temporal sets)")
    p.add_argument("out", help="output directory")
    p.add_argument("--preset", default="small", choices=["tiny", "small", "medium"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes writing videos in parallel")
    p.add_argument("--overwrite", action="store_true", help="replace an existing set in OUT")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("convert", help="convert a dataset you have into raylab's canonical layout")
    p.add_argument("--from", dest="fmt", required=True,
                   choices=["ucf101-24", "jhmdb", "thumos14", "activitynet"])
    p.add_argument("src", help="folder with the annotation file(s), see docs/data-preparation.md")
    p.add_argument("out", help="new dataset directory (must not exist or be empty)")
    p.add_argument("--videos", default=None, help="folder of the video files (default SRC/videos)")
    p.add_argument("--split", type=int, default=0, help="which train/test split of J-HMDB (0, 1, 2)")
    p.set_defaults(func=_cmd_convert)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by input or state a user can fix: reported in one line, no traceback."""
    from raylab.config import ConfigError
    from raylab.data.labels import LabelStoreError
    from raylab.data.video import VideoError

    return (ConfigError, LabelStoreError, VideoError, FileExistsError, FileNotFoundError)


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


if __name__ == "__main__":
    sys.exit(main())
