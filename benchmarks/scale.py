"""Scaling on one machine: MC-dropout scoring with 1, 2, 4 actors and Ray Train training with 1, 2 workers.

Everything runs on one local Ray with --num-cpus CPUs (2 on the reference machine) and every Ray worker
(scoring actors, decode tasks, training workers) runs torch with one thread (OMP_NUM_THREADS=1, set
before Ray starts and inherited by its workers; checked with a probe task), so the figures measure
Ray's parallelism, not torch's intra-op threads.

1. Scoring: `raylab.score.score_dataset` (MC dropout, T = 10) over the dense tiling of the small
   SynthActions set's training videos (--passes times over), an actor pool of N scorers on top of the
   Ray Data decode tasks. The actors share --scoring-cpus logical CPUs (cpus_per_actor = scoring_cpus /
   N: 1.5, 0.75, 0.375) and the rest stays free for decode tasks (ray.decode_num_cpus = --decode-cpus,
   0.5: one decode task at a time, whatever N), so only the number of actors changes. Not 0.5 CPU per
   actor for 4 actors: they would hold both CPUs, leaving none to separate decode tasks, and with
   cpus_per_actor equal to decode_num_cpus Ray Data fuses the decode step into the scoring actors (one
   operator: each actor decodes, then scores its batch), another pipeline than that of 1 and 2 actors.
   Frames/s counts scored frames from the first scored batch on (the pool's actors are all started by
   then; actor start-up, torch import and model loading are left out); end-to-end seconds, start-up
   included, are reported beside it.
2. Training: `raylab.train.train_cycle` (Ray Train, gloo DDP) on the clips around the labelled frames
   (--fraction of them), as benchmarks/train.py: the N workers share --train-cpus CPUs (cpus_per_worker =
   train_cpus / N) and the rest is left to the clip stream's decode tasks, as `fit_cycle` checks.
   Clips/s is read off the per-epoch history (the first epoch, which starts the workers and fills the
   stream, is left out); the cycle's wall time, Ray Train start-up and reporting included, beside it.

Each measurement is repeated (--repeats scoring runs, --train-repeats training runs per config, configs
interleaved); the median is the figure and the best run is reported beside it. For each N:
speedup = throughput_N / throughput_1, efficiency = throughput_N / (N x throughput_1). Other work on
the machine takes CPUs from the runs: each run reports other_load, the share of the machine's CPU time
that processes outside this benchmark (and its Ray) used while it ran (0.25: half a core of 2).
Per-config lines go to stdout as they are measured; the last line of output is JSON
{"scoring": {"1": ..., "2": ..., "4": ...}, "training": {"1": ..., "2": ...}, "cpus": ..., ...}.

    python -m benchmarks.scale
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.synth import DEMO_PIPELINE, VIDEOS_HELP, synth_overrides


def _busy_ticks() -> int:
    """CPU time of the whole machine so far (clock ticks: user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]  # guest times are already in user and nice
    return sum(ticks) - ticks[3] - ticks[4]


def _my_processes() -> dict[tuple[int, int], int]:
    """CPU ticks (utime + stime) of this process and its descendants (Ray's processes and workers), by
    (pid, start time)."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()  # from the state field (3rd) on
            except OSError:  # exited meanwhile
                continue
            stats[int(entry)] = (int(fields[1]), int(fields[19]), int(fields[11]) + int(fields[12]))
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    mine, todo = {}, [os.getpid()]
    while todo:
        pid = todo.pop()
        if pid in stats:
            mine[(pid, stats[pid][1])] = stats[pid][2]
        todo.extend(children.get(pid, []))
    return mine


class OtherLoad:
    """The share of the machine's CPU time that processes outside this benchmark used while it ran.

    This process and its descendants are sampled every 0.25 s, so that the CPU time of the processes
    that exit meanwhile (a dataset's actors) still counts as ours; what the machine spent beyond that was
    other work. 0.25 on 2 cores: others took half a core on average. Reads /proc (Linux).
    """

    def __enter__(self):
        self.first, self.last = _my_processes(), {}
        self.busy, self.t0 = _busy_ticks(), time.perf_counter()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while True:
            self.last.update(_my_processes())
            if self.done.wait(0.25):
                return

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.last.update(_my_processes())
        mine = sum(v - self.first.get(k, 0) for k, v in self.last.items())
        other = _busy_ticks() - self.busy - mine
        wall = time.perf_counter() - self.t0
        self.share = max(0.0, other / (os.sysconf("SC_CLK_TCK") * wall * os.cpu_count()))


def scoring_run(videos: dict, ranges: list, checkpoint: Path, cfg, out: Path) -> dict:
    """One run of the scoring pipeline over the clip `ranges` of the tiling, consumed by this driver (its
    outputs are the shard records; a range scored twice rewrites the same shard)."""
    from raylab.data.stream import tile_dataset
    from raylab.score import score_dataset

    c = cfg.clips
    start = time.perf_counter()
    clips = tile_dataset(videos, ranges, (c.height, c.width), num_cpus=cfg.ray.decode_num_cpus)
    records = iter(score_dataset(clips, checkpoint, cfg, out).iter_batches(batch_size=None))
    frames = int(next(records)["frames"].sum())
    first = time.perf_counter()
    steady = sum(int(r["frames"].sum()) for r in records)
    end = time.perf_counter()
    return {"frames_per_s": steady / (end - first), "frames": frames + steady,
            "first_batch_s": first - start, "end_to_end_s": end - start}


def training_run(cfg, run_dir: Path) -> dict:
    """One training cycle; clips/s over the epochs after the first (as benchmarks/train.py)."""
    from raylab.asl import training_dataset
    from raylab.loop import open_run
    from raylab.train import train_cycle

    data, store = open_run(cfg, run_dir)
    result = train_cycle(cfg, run_dir, 0, training_dataset(cfg, data, store, 0), len(data.classes))
    steady = result.history[1:] or result.history
    # each worker reports its own shard (rank 0's metrics): the cluster's clips are clips x workers
    n = cfg.train.num_workers
    clips = sum(h["clips"] for h in steady) * n
    return {"clips_per_s": clips / sum(h["seconds"] for h in steady),
            "epoch_clips_per_s": [h["clips"] * n / h["seconds"] for h in steady],
            "clips_per_epoch": steady[0]["clips"] * n, "cycle_s": result.seconds}


def summary(runs: dict[int, list[float]], key: str) -> dict[str, dict]:
    """Median and best of each config's runs, each with speedup and efficiency against 1 (its median /
    its best). Other work on the machine only ever slows a run down, so the best is the least disturbed."""
    med = {n: statistics.median(v) for n, v in runs.items()}
    best = {n: max(v) for n, v in runs.items()}
    return {str(n): {key: round(med[n], 2), "speedup": round(med[n] / med[1], 3),
                     "efficiency": round(med[n] / (n * med[1]), 3),
                     f"best_{key}": round(best[n], 2), "best_speedup": round(best[n] / best[1], 3),
                     "best_efficiency": round(best[n] / (n * best[1]), 3)}
            for n in runs}


def probe_threads(num_cpus: float) -> int:
    """torch's intra-op threads in a Ray task holding `num_cpus` CPUs."""
    import ray

    @ray.remote
    def threads() -> int:
        import torch

        return torch.get_num_threads()

    return ray.get(threads.options(num_cpus=num_cpus).remote())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--videos", type=int, default=None, help=VIDEOS_HELP)
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--repeats", type=int, default=3, help="scoring runs of each config (median kept)")
    parser.add_argument("--train-repeats", type=int, default=2, help="training runs of each config")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--passes", type=int, default=2, help="passes over the dense tiling per scoring run")
    parser.add_argument("--scoring-cpus", type=float, default=1.5, help="logical CPUs the actor pool shares")
    parser.add_argument("--decode-cpus", type=float, default=0.5, help="ray.decode_num_cpus while scoring")
    parser.add_argument("--train-cpus", type=float, default=1.0, help="CPUs the training workers share")
    parser.add_argument("--fraction", type=float, default=0.1, help="labelled fraction of training frames")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    if min(*args.actors, *args.workers) < 1:
        parser.error("--actors and --workers must be >= 1")
    actors, workers = sorted({1, *args.actors}), sorted({1, *args.workers})

    os.environ["OMP_NUM_THREADS"] = "1"  # before Ray starts: its workers inherit it
    import ray
    import ray.data
    import torch

    from raylab.config import load_config
    from raylab.data.stream import tiling_videos
    from raylab.loop import open_run
    from raylab.models.detector import Detector
    from raylab.score import missing_ranges
    from raylab.train import MODEL_FILE, save_detector

    wall, load_before = time.perf_counter(), os.getloadavg()
    # a Ray of its own even when another is running on this machine (`ray start`), which a plain
    # ray.init() would join
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.DataContext.get_current().print_on_execution_start = False
    score_cpus = {n: args.scoring_cpus / n for n in actors}
    train_cpus = {n: args.train_cpus / n for n in workers}
    threads = {str(c): probe_threads(c) for c in sorted({*score_cpus.values(), *train_cpus.values()})}
    print(f"torch threads in a Ray task, by CPUs held: {threads}", flush=True)

    scoring: dict[int, list[dict]] = {n: [] for n in actors}
    training: dict[int, list[dict]] = {n: [] for n in workers}
    with tempfile.TemporaryDirectory() as tmp:
        synth = synth_overrides(args.preset, args.videos, f"{tmp}/synth")
        # scoring: a fresh model scores (almost) every training frame
        base = load_config(DEMO_PIPELINE, [
            *synth, "labels.init_fraction=0.0001", f"score.trials={args.trials}",
            f"ray.decode_num_cpus={args.decode_cpus}", "clips.clips_per_task=16"])
        data, labels = open_run(base, Path(tmp) / "score_run")
        torch.manual_seed(0)
        checkpoint = Path(tmp) / MODEL_FILE
        save_detector(checkpoint, Detector(base.detector, len(data.classes)))
        c = base.clips
        videos = tiling_videos(data.train, data.root, labels.labelled_frames(), c.length, c.stride)
        ranges = missing_ranges(int(videos["first_clip"][-1]), c.clips_per_task, []) * args.passes
        shards = Path(tmp) / "shards"
        shards.mkdir()
        for r in range(args.repeats):
            for n in actors:
                cfg = replace(base, score=replace(base.score, actors=n, cpus_per_actor=score_cpus[n]))
                with OtherLoad() as load:
                    out = scoring_run(videos, ranges, checkpoint, cfg, shards)
                out["other_load"] = load.share
                scoring[n].append(out)
                print(f"scoring  actors={n} cpus_per_actor={score_cpus[n]:g} run={r}: "
                      f"{out['frames_per_s']:.1f} frames/s from the first batch, {out['frames']} frames, "
                      f"first batch after {out['first_batch_s']:.1f} s, end to end "
                      f"{out['end_to_end_s']:.1f} s, other load {out['other_load']:.2f}", flush=True)

        tbase = load_config(DEMO_PIPELINE, [
            *synth, f"labels.init_fraction={args.fraction}", f"train.epochs={args.epochs}"])
        for r in range(args.train_repeats):
            for n in workers:
                cfg = replace(tbase, train=replace(tbase.train, num_workers=n, cpus_per_worker=train_cpus[n]))
                with OtherLoad() as load:
                    out = training_run(cfg, Path(tmp) / f"train_run{n}_{r}")
                out["other_load"] = load.share
                training[n].append(out)
                print(f"training workers={n} cpus_per_worker={train_cpus[n]:g} run={r}: "
                      f"{out['clips_per_s']:.2f} clips/s (epochs: "
                      f"{', '.join(f'{x:.2f}' for x in out['epoch_clips_per_s'])}), "
                      f"{out['clips_per_epoch']} clips per epoch, cycle {out['cycle_s']:.1f} s, "
                      f"other load {out['other_load']:.2f}", flush=True)

    score_runs = {n: [o["frames_per_s"] for o in runs] for n, runs in scoring.items()}
    train_runs = {n: [o["clips_per_s"] for o in runs] for n, runs in training.items()}
    result = {"scoring": summary(score_runs, "frames_per_s"), "training": summary(train_runs, "clips_per_s")}
    for n, runs in scoring.items():
        result["scoring"][str(n)].update(
            cpus_per_actor=score_cpus[n], runs=[round(x, 1) for x in score_runs[n]],
            end_to_end_s=round(statistics.median(o["end_to_end_s"] for o in runs), 2),
            other_load=[round(o["other_load"], 2) for o in runs])
    for n, runs in training.items():
        result["training"][str(n)].update(
            cpus_per_worker=train_cpus[n], runs=[round(x, 2) for x in train_runs[n]],
            cycle_s=round(statistics.median(o["cycle_s"] for o in runs), 2),
            other_load=[round(o["other_load"], 2) for o in runs])
    result.update(
        cpus=args.num_cpus, cores=os.cpu_count(), torch_threads=threads,
        decode_num_cpus_scoring=args.decode_cpus, decode_num_cpus_training=tbase.ray.decode_num_cpus,
        scoring_timed="from the first scored batch", training_timed="per epoch, first epoch left out",
        repeats={"scoring": args.repeats, "training": args.train_repeats}, trials=args.trials,
        scored_frames=scoring[1][0]["frames"], clips_per_epoch=training[1][0]["clips_per_epoch"],
        epochs_timed=args.epochs - 1, preset=args.preset,
        # other work on the machine: the 1-minute load average before and after, and (other_load, per
        # run above) the share of the CPUs that processes outside this benchmark took
        loadavg_1min=[round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        wall_s=round(time.perf_counter() - wall, 1))
    ray.shutdown()  # its teardown logs (stderr) come before the result
    print(json.dumps(result))


if __name__ == "__main__":
    main()
