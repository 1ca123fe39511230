"""Ray-side helpers of tests/test_cluster.py and tests/test_faults.py, and the scenarios that need a Ray
of their own.

A `ray.cluster_utils.Cluster` (a head and worker nodes, each a raylet of its own, on this machine)
cannot share a process with the test session's local Ray, so every cluster scenario runs in a fresh
process, `python -m tests.cluster_jobs SCENARIO RUN_DIR OUT_DIR [OVERRIDE ...]`, started by
`run_scenario`: its own process group (killed whole on a timeout) and its own Ray temporary directory
(RAY_TMPDIR), so that no other process's `ray.init()` finds and joins the test cluster, and nothing of it
outlives the scenario. RUN_DIR is a run opened by the test with the smoke pipeline and OVERRIDEs;
OUT_DIR receives the scenario's `result.json` and the marks its actors leave (RAYLAB_TEST_MARKS).

The scorer and train-function wrappers below are imported by Ray workers (the repository root is on
their path: the driver's working directory), both in those processes and on the shared local Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from raylab.score import MCScorer
from raylab.train import train_func as detector_train_func

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "pipelines" / "smoke.yaml"
MARKS = "RAYLAB_TEST_MARKS"  # env: a folder where actors of a scenario leave marks (set by run_scenario)
SLOW = "RAYLAB_TEST_SCORER_DELAY"  # env: seconds each scoring call sleeps (node removal scenario)


def claim(marker: Path) -> bool:
    """Take a one-shot marker file: True for exactly one caller, across processes (unlink is atomic)."""
    try:
        os.unlink(marker)
    except FileNotFoundError:
        return False
    return True


def node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


# ---- scorers: `raylab.score.MCScorer` plus a fault or a trace ---------------------------------------


class NodeTaggedScorer(MCScorer):
    """MCScorer whose rows also name the node that scored them (column node_id), and which leaves a
    mark per call in $RAYLAB_TEST_MARKS (node, pid, call), sleeping $RAYLAB_TEST_SCORER_DELAY first."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def __call__(self, batch: dict) -> dict:
        self.calls += 1
        marks = os.environ.get(MARKS)
        if marks:
            Path(marks, f"call-{node_id()}-{os.getpid()}-{self.calls}").write_text(str(time.time()))
        time.sleep(float(os.environ.get(SLOW, "0")))
        return super().__call__(batch)

    def score(self, batch: dict) -> dict:
        import numpy as np

        rows = super().score(batch)
        rows["node_id"] = np.full(len(rows["frame"]), node_id(), dtype=object)
        return rows


CRASH_SCORER = "crash-scorer-once"  # armed next to the checkpoint; the scorer that takes it dies


class CrashingScorer(MCScorer):
    """MCScorer whose process dies (os._exit, no cleanup, like a segfault or an OOM kill) in its second
    call when it takes the one-shot marker `crash-scorer-once` next to the checkpoint; it writes
    `scorer-died-<pid>` there first, as evidence."""

    def __init__(self, checkpoint: str, *args, **kwargs):
        super().__init__(checkpoint, *args, **kwargs)
        self.folder, self.calls = Path(checkpoint).parent, 0

    def __call__(self, batch: dict) -> dict:
        self.calls += 1
        if self.calls == 2 and claim(self.folder / CRASH_SCORER):
            (self.folder / f"scorer-died-{os.getpid()}").write_text(str(self.calls))
            os._exit(1)
        return super().__call__(batch)


# ---- training functions: `raylab.train.train_func` plus a fault or a trace --------------------------


def train_func_on_node(config: dict) -> None:
    """The detector's worker function; first leaves rank-<r>.json (rank, node, pid) in $RAYLAB_TEST_MARKS."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    Path(os.environ[MARKS], f"rank-{rank}.json").write_text(
        json.dumps({"rank": rank, "node_id": node_id(), "pid": os.getpid()}))
    detector_train_func(config)


def train_func_dying_once(config: dict) -> None:
    """The detector's worker function on one torch thread (bit-for-bit repeatable); when it takes the
    one-shot marker config["crash_marker"], its process dies (os._exit) right after its second
    `ray.train.report`, i.e. with epochs 0 and 1 reported and checkpointed (train.checkpoint_every=1).
    It writes `<marker>.died-<pid>` first, as evidence."""
    import ray.train
    import torch

    torch.set_num_threads(1)
    marker = Path(config["crash_marker"])
    report, reports = ray.train.report, []

    def report_then_maybe_die(*args, **kwargs):
        report(*args, **kwargs)
        reports.append(args[0] if args else kwargs.get("metrics"))
        if len(reports) == 2 and claim(marker):
            marker.with_name(f"{marker.name}.died-{os.getpid()}").write_text(json.dumps(reports, default=str))
            os._exit(1)

    ray.train.report = report_then_maybe_die  # this worker process only
    detector_train_func(config)


# ---- running a scenario in a process of its own -------------------------------------------------------


def _start(scenario: str, run: Path, out: Path, overrides: list[str], env: dict | None, log_file,
           ray_tmp: Path) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    path = os.pathsep.join(p for p in (str(REPO), environ.get("PYTHONPATH", "")) if p)
    environ.update({"RAY_TMPDIR": str(ray_tmp), MARKS: str(out), "PYTHONPATH": path, **(env or {})})
    return subprocess.Popen([sys.executable, "-m", "tests.cluster_jobs", scenario, str(run), str(out),
                             *overrides], cwd=REPO, env=environ, stdout=log_file, stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_scenario_when(ready, scenario: str, run: Path, out: Path, overrides: list[str],
                       timeout: float = 240, env: dict | None = None) -> None:
    """Start a scenario as `run_scenario` does and, as soon as `ready()` is true, kill its whole process
    group (SIGKILL: the driver, its Ray and every worker, with no cleanup). The test fails if the
    scenario exits first or `ready()` stays false for `timeout` seconds."""
    out.mkdir(parents=True, exist_ok=True)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rlc", dir="/tmp"))
    log = out / "log.txt"
    with open(log, "w") as f:
        proc = _start(scenario, run, out, overrides, env, f, ray_tmp)
        deadline = time.monotonic() + timeout
        try:
            while not ready() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            was_ready, code = ready(), proc.poll()
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            shutil.rmtree(ray_tmp, ignore_errors=True)
    tail = log.read_text()[-4000:]
    assert code is None, f"scenario {scenario} exited ({code}) before it was killed; log:\n{tail}"
    assert was_ready, f"scenario {scenario} not ready after {timeout} s; log:\n{tail}"


def run_scenario(scenario: str, run: Path, out: Path, overrides: list[str], timeout: float = 240,
                 env: dict | None = None) -> dict:
    """`python -m tests.cluster_jobs SCENARIO RUN OUT OVERRIDES` in its own process group and Ray temp
    dir; returns its result.json. On a timeout the whole group is killed (SIGKILL) and the test fails."""
    out.mkdir(parents=True, exist_ok=True)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rlc", dir="/tmp"))  # short: Ray's socket paths live below it
    log = out / "log.txt"
    with open(log, "w") as f:
        proc = _start(scenario, run, out, overrides, env, f, ray_tmp)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            try:  # the group: raylets, GCS and workers that the scenario's own shutdown did not stop
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            shutil.rmtree(ray_tmp, ignore_errors=True)
    tail = log.read_text()[-4000:]
    assert code is not None, f"scenario {scenario} still running after {timeout} s; log:\n{tail}"
    assert code == 0, f"scenario {scenario} failed (exit {code}); log:\n{tail}"
    return json.loads((out / "result.json").read_text())


def start_cluster(head_cpus: float, worker_cpus: tuple[float, ...]):
    """A head and worker nodes on this machine, the driver connected to the head; (cluster, workers)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": head_cpus, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=c, include_dashboard=False) for c in worker_cpus]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    return cluster, workers


def stop_cluster(cluster) -> None:
    import ray

    ray.shutdown()  # the driver first: a Cluster refuses to remove the node its driver is connected to
    cluster.shutdown()


def _open(run: str, overrides: list[str]):
    from raylab.config import load_config
    from raylab.loop import open_run

    cfg = load_config(SMOKE, overrides)
    return (cfg, *open_run(cfg, Path(run)))


def scenario_cycle(run: str, out: Path, overrides: list[str]) -> dict:
    """On a head without CPUs and two workers of 1 CPU: train cycle 0 (`asl.train_step`) with two gloo DDP
    workers, then score it (`score.score_cycle`) with two actors; 0.75 CPU each, so that two never fit
    on one node: one per worker node, decoding in the 0.25 CPU left on each. The score table is moved to
    OUT/scores."""
    import raylab.score
    import raylab.train
    from raylab.asl import train_step
    from raylab.score import score_cycle

    cfg, data, store = _open(run, overrides)
    cluster, workers = start_cluster(0, (1, 1))
    cfg = replace(cfg, train=replace(cfg.train, num_workers=2, cpus_per_worker=0.75),
                  score=replace(cfg.score, actors=2, cpus_per_actor=0.75),
                  ray=replace(cfg.ray, decode_num_cpus=0.25))
    raylab.train.train_func = train_func_on_node  # what train_cycle hands to the TorchTrainer
    raylab.score.MCScorer = NodeTaggedScorer  # what score_dataset hands to map_batches
    train_step(cfg, data, store, 0)
    shutil.move(score_cycle(cfg, data, store, 0), out / "scores")
    stop_cluster(cluster)
    return {"workers": [w.node_id for w in workers]}


def scenario_remove_node(run: str, out: Path, overrides: list[str]) -> dict:
    """Score cycle 0 with two actors (0.75 CPU each) on a head and two workers of 1 CPU; as soon as an
    actor on a worker node has started a batch, remove that node: its raylet, object store and workers
    are stopped (SIGTERM, then SIGKILL), with the actor's batch in flight and the blocks decoded there.
    The head or the other worker has room for the actor Ray restarts."""
    import raylab.score
    from raylab.score import score_cycle

    cfg, data, store = _open(run, overrides)
    cluster, workers = start_cluster(1, (1, 1))
    cfg = replace(cfg, score=replace(cfg.score, actors=2, cpus_per_actor=0.75),
                  ray=replace(cfg.ray, decode_num_cpus=0.25))
    raylab.score.MCScorer = NodeTaggedScorer
    by_id = {w.node_id: w for w in workers}
    done, event = threading.Event(), {}

    def remove_a_busy_worker():
        while not done.is_set():
            busy = [m for m in out.glob("call-*") if m.name.split("-")[1] in by_id]
            if busy:
                victim = busy[0].name.split("-")[1]
                marks = sorted(m.name for m in out.glob("call-*"))
                event.update(removed=victim, marks_before=marks)
                cluster.remove_node(by_id[victim])
                event["scoring_running_after_removal"] = not done.is_set()
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=remove_a_busy_worker)
    watcher.start()
    try:
        path = score_cycle(cfg, data, store, 0)
    finally:
        done.set()
        watcher.join()
    stop_cluster(cluster)
    return {"scores": str(path), "workers": list(by_id), **event}


HOLD = "RAYLAB_TEST_HOLD_AFTER"  # env: a HoldingScorer scores this many blocks, then hangs


class HoldingScorer(MCScorer):
    """MCScorer that scores (and commits) $RAYLAB_TEST_HOLD_AFTER blocks, then hangs in its next call
    until its process is killed: a scoring step caught mid-way, deterministically."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def __call__(self, batch: dict) -> dict:
        self.calls += 1
        while self.calls > int(os.environ[HOLD]):
            time.sleep(1)
        return super().__call__(batch)


def scenario_score_held(run: str, out: Path, overrides: list[str]) -> dict:
    """Score cycle 0 on a local Ray of this process's own with one HoldingScorer; never returns (the
    test kills the process group once the shards it waits for are committed)."""
    import raylab.score

    cfg, data, store = _open(run, overrides)
    raylab.score.MCScorer = HoldingScorer
    raylab.score.score_cycle(cfg, data, store, 0)
    return {"finished": True}  # a test that sees this has failed: the scorer should have hung


SCENARIOS = {"cycle": scenario_cycle, "remove_node": scenario_remove_node, "score_held": scenario_score_held}


def main(argv: list[str]) -> None:
    scenario, run, out, *overrides = argv
    out = Path(out)
    result = SCENARIOS[scenario](run, out, overrides)
    (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
