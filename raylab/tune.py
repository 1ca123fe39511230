"""Ray Tune sweeps (`raylab sweep SWEEP.yaml`): every trial a whole active-learning experiment.

A sweep directory holds:

    sweep.json          the sweep's resolved settings (a rerun must match them: it resumes the sweep)
    runs/<trial id>/    each trial's run directory (config.yaml, labels/, metrics.jsonl, ..., trial.json)
    tune/               Ray Tune's experiment (what `Tuner.restore` resumes from)
    results.csv         one row per trial: knob values, cycles, last metric, objective, finished
    report/index.html   best configurations, every trial's curve, the objective against each knob

How a trial runs, and why. A trial runs `raylab.loop.run_loop` on its own run directory with
`ray.in_process: true`: its clips are decoded, its model trained and its frames scored inside the
trial's own process, on the trial's resources (`resources.cpus_per_trial` torch threads, and
`resources.gpus_per_trial` for training and scoring). There is no nested Ray Train run: in Ray 2.60 a
TorchTrainer inside a trial that ASHA stops keeps its workers' placement group unless the dashboard is
installed (its PlacementGroupCleaner polls the State API; ray issue #54305), and the next trial can then
wait for those CPUs forever. With the work inside the trial's process, stopping the trial frees all it
held (tests/test_tune.py checks it). No Trainer is passed to the Tuner (deprecated); the trial function
is a plain Tune function trainable.

After every evaluated cycle the trial reports `objective` (raylab/sweep.py: area under the curve or
the metric at a budget) with a small Tune checkpoint recording how many cycles it reported, so ASHA
can stop poor trials after any cycle and a restored trial neither repeats nor skips a report. A trial
resumes its run directory like `raylab run` does, so a crashed trial (retried up to
`resources.max_failures` times) or a sweep whose driver died (rerun the same `raylab sweep`: Tune's
restore) loses at most the step that was running.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path

import pandas as pd

from raylab.config import to_dict
from raylab.loop import method_of, run_loop
from raylab.rundir import RunStateError, metric_value, read_metrics, write_atomic
from raylab.sweep import (
    TRIAL_FILE,
    SweepConfig,
    best_trial,
    format_table,
    objective_value,
    results_table,
    trial_config,
)

log = logging.getLogger(__name__)

OBJECTIVE = "objective"  # the Tune metric every trial reports
REPORTED_FILE = "reported.json"  # in a trial's Tune checkpoint: {"cycles": number of cycles reported}


def metric_key(metric: str) -> str:
    """The name a metric is reported to Tune under (frame_map@0.5 -> frame_map_0.5: loggers refuse @)."""
    return metric.replace("@", "_")


def sweep_settings(sweep: SweepConfig) -> dict:
    """What must not change when a sweep resumes: everything of the sweep but where Ray runs (ray.*)."""
    settings = dataclasses.asdict(dataclasses.replace(sweep, base=None))
    settings["set"] = {k: v for k, v in sweep.set.items() if not k.startswith("ray.")}
    base = to_dict(sweep.base)
    base.pop("ray")
    return json.loads(json.dumps({**settings, "base": base}, default=str))


def _check_or_save_settings(sweep: SweepConfig, out: Path) -> None:
    path = out / "sweep.json"
    settings = sweep_settings(sweep)
    if path.is_file():
        saved = json.loads(path.read_text())
        differ = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        if differ:
            raise RunStateError(f"{path} holds another sweep (differences in: {', '.join(differ)}); a sweep "
                                "resumes only with its own settings (ray.* may change). Use another --dir.")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(settings, indent=2) + "\n")


def param_space(sweep: SweepConfig) -> dict:
    """Tune's search space: one entry per knob, keyed by its dotted config key."""
    from ray import tune

    domains = {"grid": tune.grid_search, "choice": tune.choice}
    ranges = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
    space = {}
    for knob in sweep.space:
        if knob.kind in domains:
            space[knob.key] = domains[knob.kind](list(knob.values))
        else:
            space[knob.key] = ranges[knob.kind](*knob.values)
    return space


def _search_algorithm(sweep: SweepConfig):
    from ray.tune.search import BasicVariantGenerator

    s = sweep.search
    if s.algorithm != "optuna":  # limits concurrency itself (Tune's max_concurrent_trials is for Searchers)
        return BasicVariantGenerator(random_state=s.seed, max_concurrent=s.max_concurrent)
    try:
        import optuna  # noqa: F401  (OptunaSearch fails later and less clearly without it)
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as e:
        from raylab.config import ConfigError

        raise ConfigError("search.algorithm optuna needs the optuna package: pip install optuna") from e
    return OptunaSearch(metric=OBJECTIVE, mode="max", seed=s.seed)


def _scheduler(sweep: SweepConfig):
    if sweep.scheduler.name == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    c = sweep.scheduler
    return ASHAScheduler(time_attr="training_iteration", max_t=sweep.base.loop.cycles,
                         grace_period=c.grace_period, reduction_factor=c.reduction_factor)


def _trainable(sweep: SweepConfig, runs_dir: Path):
    from ray import tune

    r = sweep.resources
    resources = {"CPU": r.cpus_per_trial, **({"GPU": r.gpus_per_trial} if r.gpus_per_trial else {})}
    trial = tune.with_parameters(run_trial, sweep=sweep, runs_dir=str(runs_dir))
    return tune.with_resources(trial, resources)


def run_trial(params: dict, sweep: SweepConfig, runs_dir: str) -> None:
    """One Tune trial: the active-learning loop of `params` in runs/<trial id>, in this process,
    reporting the objective after every evaluated cycle (module doc)."""
    import torch
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    run = Path(runs_dir) / trial_id
    cfg = trial_config(sweep.base, sweep.config_values(params), sweep.resources,
                       name=f"{sweep.name}-{trial_id}")
    torch.set_num_threads(max(1, int(sweep.resources.cpus_per_trial)))
    run.mkdir(parents=True, exist_ok=True)
    write_atomic(run / TRIAL_FILE, json.dumps({"trial_id": trial_id, "params": params}) + "\n")

    reported = 0
    checkpoint = tune.get_checkpoint()  # set when Tune restores the trial
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            reported = json.loads((Path(d) / REPORTED_FILE).read_text())["cycles"]

    def report_through(records: list[dict]) -> None:
        nonlocal reported
        while reported < len(records):
            done = records[: reported + 1]
            last = done[-1]
            metrics = {OBJECTIVE: objective_value(done, sweep.objective, sweep.metric),
                       metric_key(sweep.metric): metric_value(last, sweep.metric), "cycle": last["cycle"],
                       "labelled_fraction": last["labelled_fraction"], "cost": last["cost"]}
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / REPORTED_FILE).write_text(json.dumps({"cycles": reported + 1}))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
            reported += 1

    if (run / "metrics.jsonl").is_file():
        report_through(read_metrics(run))  # cycles evaluated before a crash, not reported yet
    run_loop(cfg, run, progress=False, after_cycle=lambda _record: report_through(read_metrics(run)))


def _set_aside_unknown_runs(runs_dir: Path) -> None:
    """Run directories left by an earlier start whose Tune experiment cannot be restored (its driver
    died before Tune first saved it) belong to no trial of the new experiment: keep them, out of the
    results, in runs-abandoned-N/."""
    if not any(runs_dir.iterdir()):
        return
    n = 1
    while (runs_dir.parent / f"runs-abandoned-{n}").exists():
        n += 1
    target = runs_dir.parent / f"runs-abandoned-{n}"
    runs_dir.rename(target)
    runs_dir.mkdir()
    log.warning("%s held trials of a sweep start that Tune cannot restore; moved to %s", runs_dir, target)


def run_sweep(sweep: SweepConfig, out: Path, verbose: int = 1, scheduler=None) -> pd.DataFrame:
    """Run (or resume) `sweep` in directory `out`; returns the results table (also out/results.csv)
    and writes the report (out/report/index.html). `scheduler`: a Tune TrialScheduler instead of the
    sweep's own (tests stop a chosen trial with one).

    Raises:
        RunStateError: `out` holds a sweep with other settings.
    """
    out = Path(out).resolve()
    run_trials(sweep, out, verbose, scheduler)
    table = results_table(sweep, out / "runs")
    write_atomic(out / "results.csv", table.to_csv(index=False))
    from raylab.sweep_report import write_sweep_report

    write_sweep_report(sweep, table, out / "report")
    return table


def run_trials(sweep: SweepConfig, out: Path, verbose: int = 1, scheduler=None) -> None:
    """Run (or resume, with Tune's restore) the trials of `sweep`, each in out/runs/<trial id>; logs the
    errors of the trials that failed. What `raylab sweep` and `raylab study` share.

    Raises:
        RunStateError: `out` holds a sweep or study with other settings.
    """
    from ray import tune

    from raylab.data.stream import init_ray

    out = Path(out).resolve()
    _check_or_save_settings(sweep, out)
    base = sweep.base
    init_ray(base.ray.address, base.ray.num_cpus)
    method_of(base).prepare(base)  # the dataset (and features) once, before trials read them
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    experiment = out / "tune"
    trainable = _trainable(sweep, runs_dir)
    if tune.Tuner.can_restore(str(experiment)):
        log.info("resuming %s from %s", sweep.name, experiment)
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        _set_aside_unknown_runs(runs_dir)
        s = sweep.search
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(sweep),
            tune_config=tune.TuneConfig(metric=OBJECTIVE, mode="max", search_alg=_search_algorithm(sweep),
                                        scheduler=scheduler or _scheduler(sweep), num_samples=s.num_samples,
                                        max_concurrent_trials=(s.max_concurrent or None)
                                        if s.algorithm == "optuna" else None),
            # every checkpoint is kept (a few bytes each): a limit forces an experiment snapshot per report
            run_config=tune.RunConfig(name=experiment.name, storage_path=str(out), verbose=verbose,
                                      failure_config=tune.FailureConfig(max_failures=sweep.resources.max_failures)),
        )
    errors = [str(e) for e in tuner.fit().errors]
    if errors:
        log.warning("%d trial(s) failed: %s", len(errors), "; ".join(e.splitlines()[0] for e in errors))


def summary(sweep: SweepConfig, table: pd.DataFrame, out: Path) -> str:
    """What `raylab sweep` prints at the end: the best configuration and the results table."""
    best = best_trial(table)
    lines = [format_table(table, sweep), ""]
    if best is None:
        lines.append("no trial finished all its cycles")
    else:
        knobs = ", ".join(f"{k.key}={best[k.key]:.4g}" if isinstance(best[k.key], float)
                          else f"{k.key}={best[k.key]}" for k in sweep.space)
        lines.append(f"best: trial {best['trial']} ({knobs}): {sweep.objective.kind} of {sweep.metric} "
                     f"{best['objective']:.4f}")
    lines.append(f"results: {Path(out) / 'results.csv'}; report: {Path(out) / 'report' / 'index.html'}")
    return "\n".join(lines)


def run_study(study, out: Path, verbose: int = 1) -> dict:
    """Run (or resume) a study's cells as the trials of its sweep (`StudyConfig.sweep`: every key a
    grid, no scheduler), then write study.json, study.csv and the report; returns study.json's dict.
    A finished study runs nothing again: Tune's restore finds every trial done."""
    from raylab.study_report import write_study

    out = Path(out).resolve()
    run_trials(study.sweep(), out, verbose)
    return write_study(study, out)
