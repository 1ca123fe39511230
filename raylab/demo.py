"""The main job on an embedded default: APU-global + MGW against random selection on SynthActions.

Generates (or reuses) the small SynthActions set, runs the active-learning loop once per strategy on a
local Ray (or the cluster of `ray.address`), each in its own run directory (cycle 0, before any
selection, is trained and evaluated once and shared: `loop.share_first_cycle`), prints the metrics per
strategy and cycle, and writes the report comparing them. Rerunning resumes or reuses finished runs.
Where the cluster has GPUs, training and scoring use them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from raylab.config import Config, ConfigError
from raylab.data.stream import cluster_gpus, init_ray
from raylab.loop import method_of, metrics_table, run_loop, share_first_cycle, with_strategy
from raylab.rundir import read_metrics

log = logging.getLogger(__name__)

DEMO_STRATEGIES = ("apu-global", "random")


def use_gpus_if_any(cfg: Config, gpus: float) -> Config:
    """The demo on GPUs when the cluster has some: one per training worker, one per scoring actor."""
    if gpus < 1 or cfg.train.use_gpu:
        return cfg
    workers = min(cfg.train.num_workers, int(gpus))
    print(f"{gpus:g} GPU(s) found: training on {workers} GPU worker(s), scoring with one GPU per actor")
    return replace(cfg, train=replace(cfg.train, use_gpu=True, num_workers=workers),
                   score=replace(cfg.score, gpus_per_actor=1.0, actors=min(cfg.score.actors, int(gpus))))


def run_demo(cfg: Config, out: Path, strategies: tuple[str, ...] = DEMO_STRATEGIES) -> Path:
    """Run the loop per strategy in out/<strategy>, print the table, write out/report; returns index.html."""
    from raylab.report import write_report

    if cfg.method != "asl":
        raise ConfigError(f"the demo compares ASL frame strategies; {cfg.name} is method {cfg.method!r}: "
                          "run it with `raylab run` (one run per alstal.score)")
    start = time.perf_counter()
    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    cfg = use_gpus_if_any(cfg, cluster_gpus())
    runs = {}
    for strategy in strategies:
        print(f"== {strategy}: {cfg.loop.cycles} cycles, +{cfg.loop.step_fraction:.1%} of frames per cycle")
        if runs and share_first_cycle(runs[strategies[0]], with_strategy(cfg, strategy), out / strategy):
            print(f"cycle 0 (the initial frames, before any selection) is {strategies[0]}'s: trained once")
        run_loop(with_strategy(cfg, strategy), out / strategy)
        runs[strategy] = out / strategy
    print()
    print(metrics_table({s: read_metrics(r) for s, r in runs.items()}, method_of(cfg).TABLE_METRICS))
    html = write_report(list(runs.values()), out / "report")
    print(f"\ndemo done in {time.perf_counter() - start:.0f} s. Report: {html.resolve()}\n"
          f"Run directories (labels, selections, metrics.jsonl): {', '.join(str(r) for r in runs.values())}")
    return html
