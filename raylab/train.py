"""Training of one active-learning cycle on Ray Train (DDP: gloo on CPU, nccl on GPU).

Shared by both models of raylab (the ASL detector here, the AL-STAL localizer in raylab/localize.py):

- `worker_loop` is the Ray-aware body of a worker: it resumes from Ray Train's checkpoint after a worker
  failure (or warm-starts from the previous cycle), wraps the model for DDP, runs a plain-torch epoch
  function over its shard of the Ray Data stream, reports metrics and has rank 0 save checkpoints.
- `fit_cycle` sets up the TorchTrainer from the config (a unique run name, storage, failure and
  checkpoint policies, the per-epoch history log, the CPU check) and leaves the cycle's weights in
  `checkpoints/cycle=K/model.pt`. With `ray.in_process` it runs the same worker function in this
  process instead (`InProcessSession`: a sweep trial trains inside its own resources, no nested Ray
  Train run), writing the same files.

The detector's own pieces: `train_epoch` (plain torch), `train_func` (builds the model, calls
`worker_loop`) and `train_cycle`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from raylab.config import Config
from raylab.losses import detector_loss
from raylab.models.detector import (
    Detector,
    DetectorConfig,
    batch_tensors,
    load_weights,
    random_crop,
    random_flip,
)

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"  # {"model": state_dict, "optimizer": ..., "epoch": int, "num_classes": int, ...}


@dataclass(frozen=True)
class CycleResult:
    checkpoint: Path  # checkpoints/cycle=K/model.pt
    history: list[dict]  # one dict of metrics per epoch (rank 0)
    seconds: float


# ---------------------------------------------------------------- shared by every model


class RayTrainSession:
    """What `worker_loop` asks of its surroundings, on a Ray Train worker."""

    def restart_state(self) -> dict | None:
        """The checkpoint Ray Train restarts the workers from after a failure (MODEL_FILE's dict)."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            return torch.load(Path(d) / MODEL_FILE, map_location="cpu", weights_only=False)

    def prepare(self, model: torch.nn.Module) -> tuple[torch.nn.Module, torch.device]:
        import ray.train.torch

        return ray.train.torch.prepare_model(model), ray.train.torch.get_device()

    def shard(self):
        import ray.train

        return ray.train.get_dataset_shard("train")

    def rank(self) -> int:
        import ray.train

        return ray.train.get_context().get_world_rank()

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


class InProcessSession:
    """`worker_loop`'s surroundings in this process (`ray.in_process`): one rank, the cycle's dataset
    (a `LocalDataset`), rank 0's history appended to `history` and each checkpoint copied to `out`."""

    def __init__(self, dataset, out: Path, history: Path, device: torch.device):
        self.dataset, self.out, self.history, self.device = dataset, out, history, device

    def restart_state(self) -> None:
        return None  # nothing restarts in process: an interrupted cycle is trained again from its start

    def prepare(self, model: torch.nn.Module) -> tuple[torch.nn.Module, torch.device]:
        return model.to(self.device), self.device

    def shard(self):
        return self.dataset

    def rank(self) -> int:
        return 0

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        _append_history(self.history, metrics)
        if checkpoint_dir:
            _copy_atomic(Path(checkpoint_dir) / MODEL_FILE, self.out / MODEL_FILE)


def _append_history(path: Path, metrics: dict) -> None:
    line = {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
    log.info("train epoch %d: %s", line.get("epoch", -1),
             " ".join(f"{k}={v:.4g}" for k, v in line.items() if isinstance(v, float)))


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.part")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


def rng_states() -> list[dict]:
    """The torch RNG state (CPU and CUDA) of every rank, on every rank (a collective call under DDP):
    dropout draws from it, so a restarted worker needs its own to continue exactly."""
    import torch.distributed as dist

    state = {"cpu": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [state]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def _restore_rng(states: list[dict] | None, rank: int) -> None:
    if not states or rank >= len(states):  # another world size: the seeded state is all there is
        return
    torch.set_rng_state(states[rank]["cpu"])
    if states[rank]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(states[rank]["cuda"])


def epoch_lr(lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """The learning rate of `epoch` (0-based) of a cycle of `epochs`: `lr` throughout ("constant"), or
    decayed from `lr` at the first epoch towards 0 along a half cosine ("cosine", lr·(1 + cos(π·epoch /
    epochs))/2): the last epochs take small steps, so a cycle ends on settled weights rather than
    wherever the last steps at the full rate left them. A function of the epoch alone, so a worker
    restarted from a checkpoint continues on the same schedule."""
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")


def worker_loop(config: dict, model: torch.nn.Module, run_epoch: Callable, save: Callable,
                warm_start: Callable) -> None:
    """The Ray-aware part of a training worker, for any model (runs on every worker).

    Args:
        config: the loop config of `base_loop_config` (plus the model's own keys); its "session" entry,
            when present, replaces Ray Train (`InProcessSession`).
        model: freshly built on every rank from the same seed (DDP also broadcasts rank 0's weights).
        run_epoch: plain torch, `run_epoch(model, batches, optimizer, device, amp) -> metrics dict`.
        save: `save(path, model, optimizer=state_dict, epoch=int, rng=list)` writes MODEL_FILE; its
            "model", "optimizer", "epoch" and "rng" (every rank's RNG state) entries are what a
            restarted worker resumes from, exactly where the run without the failure would be.
        warm_start: `warm_start(model, path)` loads the weights of config["warm_start"] when set.
    """
    session = config.get("session") or RayTrainSession()
    optimizer_state, first_epoch = None, 0
    state = session.restart_state()  # set when Ray Train restarts the workers after a failure
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer_state, first_epoch = state["optimizer"], state["epoch"] + 1
    elif config.get("warm_start"):
        warm_start(model, config["warm_start"])
    model, device = session.prepare(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    shard, rank = session.shard(), session.rank()
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
        _restore_rng(state.get("rng"), rank)
    amp = config["mixed_precision"] and device.type == "cuda"
    for epoch in range(first_epoch, config["epochs"]):
        start = time.perf_counter()
        lr = epoch_lr(config["lr"], config["lr_schedule"], epoch, config["epochs"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        # a different order every epoch, the same on every run
        batches = shard.iter_batches(batch_size=config["batch_size"], batch_format="numpy",
                                     local_shuffle_buffer_size=4 * config["batch_size"],
                                     local_shuffle_seed=config["seed"] + epoch)
        metrics = run_epoch(model, batches, optimizer, device, amp)
        metrics.update(epoch=epoch, lr=lr, seconds=time.perf_counter() - start)
        last = epoch == config["epochs"] - 1
        periodic = config["checkpoint_every"] and (epoch + 1) % config["checkpoint_every"] == 0
        rng = rng_states() if last or periodic else None  # every rank takes part
        if (last or periodic) and rank == 0:
            with tempfile.TemporaryDirectory() as d:
                save(Path(d) / MODEL_FILE, model, optimizer=optimizer.state_dict(), epoch=epoch, rng=rng)
                session.report(metrics, checkpoint_dir=Path(d))
        else:
            session.report(metrics)


def base_loop_config(cfg: Config, run_dir: Path, cycle: int, fallback_weights: str = "") -> dict:
    """The loop config keys `worker_loop` reads, from the config.

    warm_start: checkpoints/cycle=K-1/model.pt when `train.warm_start` is set and it exists, else
    `fallback_weights` (a user's weights file, or "" for a random initialisation). Absolute paths:
    Ray Train workers run in a directory of their own.
    """
    t = cfg.train
    previous = run_dir / "checkpoints" / f"cycle={cycle - 1}" / MODEL_FILE
    warm = str(previous.resolve()) if t.warm_start and previous.is_file() else fallback_weights
    return {"warm_start": warm, "epochs": t.epochs, "lr": t.lr, "lr_schedule": t.lr_schedule,
            "weight_decay": t.weight_decay,
            "mixed_precision": t.mixed_precision, "checkpoint_every": t.checkpoint_every,
            "batch_size": cfg.clips.batch_size, "seed": cfg.seed + cycle}


def _epoch_log(path: Path):
    """A Ray Train callback (it runs in the Train controller) appending rank 0's metrics per epoch to
    `path` as JSON lines, and logging them: the cycle's progress, and its history afterwards."""
    import ray.train

    class EpochLog(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            _append_history(path, metrics[0])

    return EpochLog()


def _check_cpus_left_for_decoding(train_cpus: float, decode_cpus: float, autoscaling: bool) -> None:
    """Training workers hold their CPUs for the whole cycle; the data stream that feeds them needs CPUs
    of its own, or both wait on each other forever. On a local Ray that is an error; on a cluster
    (`autoscaling`: ray.address is set) only a warning, since the autoscaler may still add nodes."""
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    if total - train_cpus < decode_cpus:
        message = (
            f"train.num_workers x train.cpus_per_worker = {train_cpus:g} CPUs leaves "
            f"{total - train_cpus:g} of the cluster's {total:g} for decoding clips, which needs "
            f"ray.decode_num_cpus = {decode_cpus:g}"
        )
        if autoscaling:
            log.warning("%s now: training waits until the autoscaler adds CPUs", message)
            return
        raise ValueError(f"{message}: lower train.cpus_per_worker or ray.decode_num_cpus, or add CPUs")


def fit_cycle(cfg: Config, run_dir: Path, cycle: int, train_func: Callable, loop_config: dict,
              datasets: dict) -> CycleResult:
    """Run `train_func` (a `worker_loop` caller) on a TorchTrainer for `cycle`; keep its final weights.

    Args:
        cfg: train.* gives the workers, resources and failure policy; ray.decode_num_cpus the CPUs that
            must stay free for the data stream.
        run_dir: the run directory; the cycle's files go to checkpoints/cycle=K/ (model.pt and
            history.jsonl, one line of rank 0's metrics per epoch), Ray Train's to ray_train/.
        train_func, loop_config: the worker function and its config dict.
        datasets: Ray Data datasets by name ("train" is the one `worker_loop` reads).

    Returns:
        CycleResult: checkpoints/cycle=K/model.pt, the epoch history, the wall time.
    """
    t = cfg.train
    out = run_dir / "checkpoints" / f"cycle={cycle}"
    out.mkdir(parents=True, exist_ok=True)
    history_path = out / "history.jsonl"
    history_path.unlink(missing_ok=True)
    start = time.perf_counter()
    if cfg.ray.in_process:
        device = torch.device("cuda" if t.use_gpu and torch.cuda.is_available() else "cpu")
        train_func({**loop_config, "session": InProcessSession(datasets["train"], out, history_path, device)})
    else:
        _fit_on_ray_train(cfg, run_dir, cycle, train_func, loop_config, datasets, history_path)
    history = [json.loads(line) for line in history_path.read_text().splitlines()]
    return CycleResult(out / MODEL_FILE, history, time.perf_counter() - start)


def _in_order():
    """Ray Train's ingest options with the decoded blocks kept in clip order: Ray Train replaces a
    dataset's own execution options with its defaults, which hand blocks over as their decode tasks
    finish, so a cycle redone after a crash (or a worker restart) would see other batches."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def _fit_on_ray_train(cfg: Config, run_dir: Path, cycle: int, train_func: Callable, loop_config: dict,
                      datasets: dict, history_path: Path) -> None:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    t = cfg.train
    resources = {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}
    _check_cpus_left_for_decoding(t.num_workers * t.cpus_per_worker, cfg.ray.decode_num_cpus,
                                  autoscaling=bool(cfg.ray.address))
    trainer = TorchTrainer(
        train_func,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            # a unique name: Ray Train resumes a run whose name it has seen before
            name=f"cycle={cycle}-{uuid.uuid4().hex[:8]}",
            storage_path=str((run_dir / "ray_train").resolve()),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[_epoch_log(history_path)],
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(execution_options=_in_order()),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as d:
        _copy_atomic(Path(d) / MODEL_FILE, history_path.parent / MODEL_FILE)


# ---------------------------------------------------------------- the ASL detector


def train_epoch(model, batches: Iterable[dict], optimizer, device, amp: bool, cls_weight: float,
                loc_weight: float, flip: bool = False, crop_scale: float = 1.0) -> dict[str, float]:
    """One pass over `batches` (decoded clip batches), mirroring half of the clips when `flip` and
    cropping them at random scales down to `crop_scale` (`random_crop`); returns mean loss terms and the
    clip count."""
    model.train()
    sums: dict[str, float] = {}
    clips = 0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext()
    for batch in batches:
        tensors = batch_tensors(batch, device)
        if flip:
            tensors = random_flip(tensors)
        tensors = random_crop(tensors, crop_scale)
        with autocast:
            outputs = model(tensors["clip"], tensors["label"])  # conditioned on the true class
        terms = detector_loss(outputs, tensors, cls_weight=cls_weight, loc_weight=loc_weight)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        n = len(tensors["label"])
        clips += n
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach()) * n
    return {**{k: v / max(clips, 1) for k, v in sums.items()}, "clips": clips}


def save_detector(path: Path, model, **extra) -> None:
    """Save a detector (DDP-wrapped or not) with what `load_detector` needs, plus `extra` entries."""
    module = getattr(model, "module", model)  # unwrap DDP
    torch.save({"model": module.state_dict(), "num_classes": module.num_classes,
                "detector": dataclasses.asdict(module.cfg), **extra}, path)


def train_func(config: dict) -> None:
    """Ray Train worker loop of the detector (runs on every worker)."""
    torch.manual_seed(config["seed"])  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = Detector(DetectorConfig(**config["detector"]), config["num_classes"])

    def run_epoch(model, batches, optimizer, device, amp):
        return train_epoch(model, batches, optimizer, device, amp, config["cls_weight"], config["loc_weight"],
                           config["flip"], config["crop_scale"])

    worker_loop(config, model, run_epoch, save_detector, load_weights)


def train_cycle(cfg: Config, run_dir: Path, cycle: int, dataset, num_classes: int) -> CycleResult:
    """Train the detector of `cycle` on a Ray Data clip dataset (`stream.clip_dataset`).

    Warm-starts from checkpoints/cycle=K-1/model.pt when `train.warm_start` is set and it exists, else
    from `detector.weights` when given.
    """
    user_weights = str(Path(cfg.detector.weights).resolve()) if cfg.detector.weights else ""
    loop_config = {
        **base_loop_config(cfg, run_dir, cycle, user_weights),
        "detector": dataclasses.asdict(dataclasses.replace(cfg.detector, weights="")),
        "num_classes": num_classes, "cls_weight": cfg.train.cls_weight, "loc_weight": cfg.train.loc_weight,
        "flip": cfg.train.flip, "crop_scale": cfg.train.crop_scale,
    }
    return fit_cycle(cfg, run_dir, cycle, train_func, loop_config, {"train": dataset})


def load_detector(path: Path, device: str | torch.device = "cpu") -> Detector:
    """The detector saved by `train_cycle`, in eval mode."""
    state = torch.load(path, map_location=device, weights_only=False)
    model = Detector(DetectorConfig(**state["detector"]), state["num_classes"])
    model.load_state_dict(state["model"])
    return model.to(device).eval()
