"""MC-dropout scoring of the unlabelled frames with a Ray Data actor pool.

The training videos are tiled densely (every frame owned by exactly one clip); the clip stream decodes
them in tasks, and a pool of `MCScorer` actors (`map_batches` with a callable class, one detector per
actor loaded once from the cycle's checkpoint) runs MC dropout — the encoder once, the decoder T times,
only the dropout layers in train mode — and turns the foreground probabilities of every owned,
unlabelled frame into ASL's frame uncertainty (Eq.1 with τ), pixel entropy and foreground fraction.
The score table is written in shards to scores/cycle=K/.

Each batch draws its dropout masks from a seed derived from its clips (video and first frame), not
from the actor's RNG state, and the pool receives the decoded blocks in clip order, so that it cuts
the same batches every time: a batch retried on another actor or node, or scored by a pool of another
size, gives the same scores.
"""

from __future__ import annotations

import logging
import shutil
import zlib
from pathlib import Path

import numpy as np

from raylab.acquisition.frame import frame_scores
from raylab.config import Config

log = logging.getLogger(__name__)

SCORE_COLUMNS = ("video_id", "frame", "uncertainty", "entropy", "fg_fraction")


def batch_seed(video_ids, frames) -> int:
    """A seed that depends only on which clips a batch holds."""
    key = "|".join(f"{v}:{int(f[0])}" for v, f in zip(video_ids, frames))
    return zlib.crc32(key.encode())


def frame_rows(batch: dict, fg_probs: np.ndarray, tau: float) -> dict[str, np.ndarray]:
    """Score rows of the owned, unlabelled frames of a batch.

    Args:
        batch: a decoded clip batch (data/stream.py): video_id [B], frames [B, T], owned [B, T],
            annotated [B, T].
        fg_probs: [trials, B, T, H, W] MC-dropout foreground probabilities.
    """
    b_idx, t_idx = np.nonzero(batch["owned"] & ~batch["annotated"])  # [N] each
    scores = frame_scores(fg_probs[:, b_idx, t_idx], tau)  # fg_probs[...]: [trials, N, H, W]
    return {"video_id": np.asarray(batch["video_id"])[b_idx].astype(object),
            "frame": batch["frames"][b_idx, t_idx].astype(np.int32),
            **{k: scores[k].astype(np.float32) for k in SCORE_COLUMNS[2:]}}


class MCScorer:
    """`map_batches` callable: one detector per actor, MC dropout over each batch of decoded clips."""

    def __init__(self, checkpoint: str, trials: int, tau: float, use_gpu: bool = False):
        import torch

        from raylab.models.mc import enable_mc_dropout
        from raylab.train import load_detector

        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = enable_mc_dropout(load_detector(Path(checkpoint), self.device))
        self.trials, self.tau = trials, tau

    def __call__(self, batch: dict) -> dict:
        import torch

        from raylab.models.detector import clips_to_tensor
        from raylab.models.mc import mc_forward

        with torch.no_grad():
            fg_probs, _ = mc_forward(self.model, clips_to_tensor(batch["clip"], self.device), self.trials,
                                     seed=batch_seed(batch["video_id"], batch["frames"]))
        return frame_rows(batch, fg_probs.float().cpu().numpy(), self.tau)


def score_dataset(clips, checkpoint: Path, cfg: Config):
    """The scoring stage on top of a clip dataset (`stream.clip_dataset` of a dense tiling)."""
    import ray.data

    s = cfg.score
    if s.retry_on_errors and not cfg.ray.in_process:
        ray.data.DataContext.get_current().actor_task_retry_on_errors = True
    scored = clips.map_batches(
        MCScorer,
        fn_constructor_kwargs={"checkpoint": str(checkpoint), "trials": s.trials, "tau": s.tau,
                               "use_gpu": s.gpus_per_actor > 0},
        batch_size=cfg.clips.batch_size,  # an integer batch size: required with GPUs per actor
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=s.actors),
        num_cpus=s.cpus_per_actor,
        num_gpus=s.gpus_per_actor or None,
    )
    # The pool cuts its batches from decoded blocks in the order they reach it, and a batch's seed covers
    # all of its clips. Decode tasks finish in any order (more than one at a time, on several nodes, or
    # again after a fault), so without this a block shorter than a batch joins whichever block comes
    # next and the same clips are scored with other dropout masks. In order, every run, pool and retry
    # cuts the same batches. (A LocalDataset, `ray.in_process`, is always in order.)
    if not cfg.ray.in_process:
        scored.context.execution_options.preserve_order = True
    return scored


def score_cycle(cfg: Config, data, store, cycle: int) -> Path:
    """Score every unlabelled training frame with cycle K's detector into scores/cycle=K/ (shards).

    Args:
        data, store: the run (`rundir.RunData`) and its label store (`loop.open_run`).

    The shards are written to a temporary folder that replaces scores/cycle=K only when complete, so
    an interrupted scoring leaves either nothing or the whole table.
    """
    from raylab.asl import clip_stream
    from raylab.data.clips import tile_clips
    from raylab.data.stream import init_ray
    from raylab.train import MODEL_FILE

    checkpoint = data.paths.checkpoint_dir(cycle) / MODEL_FILE
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint} not found: cycle {cycle} of {data.paths.path} is not trained")
    init_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.in_process)
    tiles = tile_clips(data.train, cfg.clips.length, cfg.clips.stride)
    clips = clip_stream(cfg, tiles, data.root, data.index, store)
    out = data.paths.scores(cycle)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # The shards are small: a write task needs no more CPU than a decode task. A whole CPU (Ray Data's
    # default) is not free on any node while actors fill them, and the pool's outputs wait for the writes.
    writes = {} if cfg.ray.in_process else {"ray_remote_args": {"num_cpus": cfg.ray.decode_num_cpus}}
    score_dataset(clips, checkpoint, cfg).write_parquet(str(tmp.resolve()), **writes)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
