"""The main job on an embedded default: APU-global + MGW against random selection on SynthActions.

Generates (or reuses) the small SynthActions set, runs the active-learning loop once per strategy on a
local Ray (or the cluster of `ray.address`), each in its own run directory, prints the metrics per
strategy and cycle, and writes the report comparing them. Rerunning resumes or reuses finished runs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from raylab.config import Config
from raylab.data.stream import init_ray
from raylab.loop import metrics_table, run_loop, with_strategy
from raylab.rundir import read_metrics

log = logging.getLogger(__name__)

DEMO_STRATEGIES = ("apu-global", "random")


def run_demo(cfg: Config, out: Path, strategies: tuple[str, ...] = DEMO_STRATEGIES) -> Path:
    """Run the loop per strategy in out/<strategy>, print the table, write out/report; returns index.html."""
    from raylab.report import write_report

    start = time.perf_counter()
    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    runs = {}
    for strategy in strategies:
        print(f"== {strategy}: {cfg.loop.cycles} cycles, +{cfg.loop.step_fraction:.1%} of frames per cycle")
        run_loop(with_strategy(cfg, strategy), out / strategy)
        runs[strategy] = out / strategy
    print()
    print(metrics_table({s: read_metrics(r) for s, r in runs.items()}))
    html = write_report(list(runs.values()), out / "report")
    print(f"\ndemo done in {time.perf_counter() - start:.0f} s. Report: {html.resolve()}\n"
          f"Run directories (labels, selections, metrics.jsonl): {', '.join(str(r) for r in runs.values())}")
    return html
