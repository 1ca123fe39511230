"""One tree of config dataclasses with a default and a comment per field.

Pipeline YAML files hold overrides only; unknown keys are errors; the loaded config is frozen and its
resolved copy is saved in the run directory (`to_yaml`). Command-line overrides use dotted keys:
`--set clips.length=16`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message names the key and the file."""


SYNTH_PRESETS = ("tiny", "small", "small-long", "medium")  # the keys of raylab.data.synthetic.PRESETS


@dataclass(frozen=True)
class DataConfig:
    root: str = ""  # canonical dataset directory (raylab synth / convert); "" = generate SynthActions
    synth_preset: str = "small"  # SynthActions preset used when root is "" (SYNTH_PRESETS)
    synth_seed: int = 0  # seed of the generated SynthActions set
    synth_dir: str = "data/synthactions"  # where a generated SynthActions set is written
    synth_videos: int = 0  # videos of the generated set, all split by the preset's train fraction (0 = the
    #                        preset's: st_videos and its extra test videos / temporal_videos)

    def __post_init__(self):
        if self.synth_preset not in SYNTH_PRESETS:
            raise ConfigError(f"data.synth_preset must be one of {', '.join(SYNTH_PRESETS)}, "
                              f"got {self.synth_preset!r}")
        if self.synth_seed < 0:
            raise ConfigError(f"data.synth_seed must be >= 0, got {self.synth_seed}")
        if self.synth_videos < 0:
            raise ConfigError(f"data.synth_videos must be >= 0 (0 = the preset's number), "
                              f"got {self.synth_videos}")
        if not self.synth_dir:
            raise ConfigError("data.synth_dir must name a folder (where SynthActions is generated)")


@dataclass(frozen=True)
class ClipConfig:
    length: int = 8  # frames per clip (T)
    stride: int = 1  # step between the frames of a clip, in frames of the video
    height: int = 64  # decoded frame height (pixels); targets are rendered at this size
    width: int = 64  # decoded frame width (pixels)
    sampling: str = "annotated"  # "annotated": clips around labelled frames (training); "tile": dense tiling
    clips_per_annotation: int = 1  # training clips drawn around each annotated frame, once per cycle (every
    #                                epoch of the cycle passes over the same clips)
    cover: bool = True  # an annotated frame already inside that many clips of its video gets none of its own
    video_clips: int = 4  # training clips anywhere in every training video, for its (known) class label
    batch_size: int = 8  # clips per batch handed to the consumer (training step, scorer)
    clips_per_task: int = 64  # clips decoded by one Ray Data task (larger amortises per-task cost)

    def __post_init__(self):
        for name in ("length", "stride", "height", "width", "clips_per_annotation", "batch_size",
                     "clips_per_task"):
            if getattr(self, name) < 1:
                raise ConfigError(f"clips.{name} must be >= 1, got {getattr(self, name)}")
        if self.video_clips < 0:
            raise ConfigError(f"clips.video_clips must be >= 0, got {self.video_clips}")
        if self.sampling not in ("annotated", "tile"):
            raise ConfigError(f"clips.sampling must be 'annotated' or 'tile', got {self.sampling!r}")


@dataclass(frozen=True)
class LabelConfig:
    sigma: float = 1.3  # MGW / APU Gaussian width in frames (ASL Eq.2 and Eq.4)
    loss_weighting: str = "mgw"  # mgw | masking (sigma -> 0) | interpolation (sigma -> inf)
    changed_gaps: str = "skip"  # skip | nearest: frames between two annotated frames that show different
    #                             actors get loss weight 0 | their nearest annotation's label, MGW-weighted
    #                             (data/targets.py; docs/RESULTS.md step 18)
    pseudo_masks: str = "copied"  # copied | moved: an interpolated actor's mask (labels with masks) is the
    #                               nearest label's as it is | moved and scaled onto the interpolated box
    #                               (data/targets.py; docs/RESULTS.md step 23)
    init_fraction: float = 0.01  # fraction of each training video's frames (at least one) labelled at random
    #                              before the first cycle (ASL Sec. 4)

    def __post_init__(self):
        if self.sigma <= 0:
            raise ConfigError(f"labels.sigma must be > 0, got {self.sigma}")
        if self.loss_weighting not in ("mgw", "masking", "interpolation"):
            raise ConfigError(
                f"labels.loss_weighting must be mgw, masking or interpolation, got {self.loss_weighting!r}"
            )
        if self.changed_gaps not in ("nearest", "skip"):
            raise ConfigError(f"labels.changed_gaps must be nearest or skip, got {self.changed_gaps!r}")
        if self.pseudo_masks not in ("copied", "moved"):
            raise ConfigError(f"labels.pseudo_masks must be copied or moved, got {self.pseudo_masks!r}")
        if not 0 < self.init_fraction <= 1:
            raise ConfigError(f"labels.init_fraction must be in (0, 1], got {self.init_fraction}")


DETECTOR_PRESETS = {
    # name: (widths, depth, temporal_strides); spatial stride is 2 per stage
    "small": ((24, 48, 64), 2, (1, 1, 2)),  # ~0.34M params: trains on 2 CPU cores in minutes
    "i3d_like": ((64, 128, 256, 512), 2, (1, 1, 2, 2)),  # ~15M params, I3D-like widths, for GPUs
}
DETECTOR_HEADS = ("capsules", "linear")


@dataclass(frozen=True)
class DetectorConfig:
    preset: str = "small"  # small (CPU) | i3d_like (GPU); fills the three fields below when left empty
    widths: tuple[int, ...] = ()  # channels of each encoder stage; () = the preset's
    depth: int = 0  # 3D convs per encoder stage; 0 = the preset's
    temporal_strides: tuple[int, ...] = ()  # temporal stride of each stage (one per width); () = preset's
    head: str = "linear"  # linear (mean- and max-pooled features) | capsules (VideoCapsuleNet, 2D routing)
    primary_caps: int = 16  # primary capsule types per position of the 2D grid
    primary_dim: int = 8  # pose size of a primary capsule
    class_dim: int = 16  # pose size of a class capsule
    routing_iters: int = 3  # dynamic routing iterations (1 = uniform coupling, no routing)
    cond_channels: int = 16  # channels of the class-conditioning map the localization decoder receives
    dropout: float = 0.3  # dropout probability on the encoder features (the only stochastic layers)
    challenge: float = 0.0  # representation self-challenging (RSC, Huang et al. 2020), training only, linear
    #                         head: a third of each batch's labelled clips are classified with this share of
    #                         their pooled features muted, those adding most to the true class (0 = off)
    frame_diff: bool = False  # the encoder also sees each frame minus the previous one (RGB difference,
    #                          TSN, Wang et al. 2016): 6 input channels; motion is given, not left to be found
    weights: str = ""  # local path of a state_dict to load (strict); "" = random initialisation

    def __post_init__(self):
        if self.preset not in DETECTOR_PRESETS:
            raise ConfigError(f"detector.preset must be one of {sorted(DETECTOR_PRESETS)}, "
                              f"got {self.preset!r}")
        if self.head not in DETECTOR_HEADS:
            raise ConfigError(f"detector.head must be one of {DETECTOR_HEADS}, got {self.head!r}")
        widths, depth, strides = DETECTOR_PRESETS[self.preset]
        object.__setattr__(self, "widths", tuple(self.widths) or widths)
        object.__setattr__(self, "temporal_strides", tuple(self.temporal_strides) or strides)
        object.__setattr__(self, "depth", self.depth or depth)
        if len(self.temporal_strides) != len(self.widths):
            raise ConfigError(f"detector.temporal_strides needs one stride per width ({len(self.widths)}), "
                              f"got {self.temporal_strides}")
        if min(self.widths) < 1 or min(self.temporal_strides) < 1 or self.depth < 1:
            raise ConfigError("detector.widths, depth and temporal_strides must be >= 1")
        for name in ("primary_caps", "primary_dim", "class_dim", "routing_iters", "cond_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"detector.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"detector.dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.challenge < 1:
            raise ConfigError(f"detector.challenge must be in [0, 1), got {self.challenge}")
        if self.challenge and self.head != "linear":
            raise ConfigError("detector.challenge needs detector.head: linear (it mutes the pooled features "
                              "the linear head weighs)")

    @property
    def strides(self) -> tuple[int, int]:
        """(temporal, spatial) total stride of the encoder: clip sizes must be multiples of these."""
        return math.prod(self.temporal_strides), 2 ** len(self.widths)


LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8  # passes over the cycle's training clips (at least; see min_clips)
    min_clips: int = 8000  # a cycle trains on at least this many clips: epochs are added to a cycle with few
    #                        clips, so that few labels are trained as long as many (0 = exactly `epochs`)
    lr: float = 2e-3  # AdamW learning rate (of the first epoch of every cycle)
    lr_schedule: str = "cosine"  # constant | cosine: epoch e of a cycle of E epochs trains at
    #                              lr·(1 + cos(π·e/E))/2 (train.epoch_lr)
    weight_decay: float = 1e-4  # AdamW weight decay
    cls_weight: float = 1.0  # weight of the classification (margin) loss in the total
    loc_weight: float = 1.0  # weight of the localization (MGW-weighted BCE) loss in the total
    flip: bool = True  # mirror half of the training clips left-right (frames and targets together)
    crop_scale: float = 1.0  # scale jitter: crop each training clip to a window of side s × its own,
    #                          s uniform in [crop_scale, 1], resized back (detector.random_crop); 1 = none
    num_workers: int = 1  # Ray Train workers (DDP ranks)
    use_gpu: bool = False  # one GPU per worker and the nccl backend; gloo on CPU otherwise
    cpus_per_worker: float = 1.0  # CPUs reserved per training worker
    mixed_precision: bool = True  # bf16 autocast on GPU (ignored on CPU)
    checkpoint_every: int = 0  # epochs between periodic checkpoints (0 = only at the end of the cycle)
    warm_start: bool = True  # start a cycle from the previous cycle's weights
    max_failures: int = 1  # restarts from the last checkpoint when a training worker dies

    def __post_init__(self):
        for name in ("epochs", "num_workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.cpus_per_worker <= 0:
            raise ConfigError("train.lr and train.cpus_per_worker must be > 0")
        if not 0.0 < self.crop_scale <= 1.0:
            raise ConfigError(f"train.crop_scale must be in (0, 1], got {self.crop_scale}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"train.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                              f"got {self.lr_schedule!r}")
        for name in ("weight_decay", "cls_weight", "loc_weight", "checkpoint_every", "max_failures",
                     "min_clips"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")

    def cycle_epochs(self, clips: int) -> int:
        """Epochs of a cycle that has `clips` training clips: `epochs`, or more to reach `min_clips`."""
        return max(self.epochs, math.ceil(self.min_clips / max(clips, 1)))


@dataclass(frozen=True)
class ScoreConfig:
    trials: int = 10  # MC-dropout trials T (encoder once, decoder T times)
    tau: float = 0.9  # non-activity suppression: pixels called background with confidence > tau are ignored
    actors: int = 1  # scoring actors in the Ray Data actor pool (one detector each, loaded once)
    cpus_per_actor: float = 1.0  # CPUs reserved per scoring actor
    gpus_per_actor: float = 0.0  # GPUs per scoring actor (e.g. 1, or 0.5 to share a GPU between two)
    retry_on_errors: bool = True  # retry a batch whose actor task raised (Ray restarts dead actors itself)

    def __post_init__(self):
        if self.trials < 1 or self.actors < 1:
            raise ConfigError("score.trials and score.actors must be >= 1")
        if not 0 < self.tau <= 1:
            raise ConfigError(f"score.tau must be in (0, 1], got {self.tau}")
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise ConfigError("score.cpus_per_actor must be > 0 and score.gpus_per_actor >= 0")


FRAME_ACTIONNESS = ("frame_map", "tube")
CLASS_POOLING = ("mean", "max")  # how a video's class probabilities come from its clips' (eval.predict)


@dataclass(frozen=True)
class EvaluationConfig:
    """How ASL's evaluation (and the calibration on labelled training frames before it) turns a
    detector's clips into per-frame detections (raylab/eval/predict.py). `flip` and `actionness_window`
    are off by default: measured in docs/RESULTS.md step 19 (f-mAP@0.5 up at every fraction, the 1% :
    100% ratio above the benchmark's ceiling on one draw); `frame_actionness` in step 21."""

    flip: bool = False  # average each clip's probabilities with those of its mirror image, mirrored back
    actionness_window: int = 1  # a frame gets a detection when the median actionness of this many frames
    #                             centred on it reaches the threshold (odd; 1 = the frame alone)
    frame_actionness: str = "frame_map"  # the frame detections' actionness threshold: the best frame-mAP
    #   of the labelled training frames ("frame_map"), or the tubes' threshold ("tube", before 2026-12-04)
    class_pooling: str = "mean"  # a video's class probabilities: the mean of its clips' ("mean"), or each
    #   class's highest clip probability, normalised to sum 1 ("max")

    def __post_init__(self):
        if self.actionness_window < 1 or self.actionness_window % 2 == 0:
            raise ConfigError(f"evaluation.actionness_window must be an odd number >= 1, "
                              f"got {self.actionness_window}")
        if self.frame_actionness not in FRAME_ACTIONNESS:
            raise ConfigError(f"evaluation.frame_actionness must be one of {', '.join(FRAME_ACTIONNESS)}, "
                              f"got {self.frame_actionness!r}")
        if self.class_pooling not in CLASS_POOLING:
            raise ConfigError(f"evaluation.class_pooling must be one of {', '.join(CLASS_POOLING)}, "
                              f"got {self.class_pooling!r}")


@dataclass(frozen=True)
class LocalizerConfig:
    feature_dim: int = 0  # D of the snippet features; 0 = the features' own (set when a run opens them)
    width: int = 256  # channels of the pyramid, the heads and the refinement
    levels: int = 4  # pyramid levels; level l has stride 2**l snippets
    size_base: float = 8.0  # level l learns segments of length [base 2**(l-1), base 2**l) snippets
    dropout: float = 0.3  # dropout on the pyramid features before all heads: the only stochastic layers
    boundary_ratio: float = 0.1  # half-width of a boundary pooling window / coarse segment length
    boundary_samples: int = 5  # interpolated points per pooling window; the pooled feature is their max

    def __post_init__(self):
        if self.feature_dim < 0:
            raise ConfigError(f"localizer.feature_dim must be >= 0, got {self.feature_dim}")
        for name in ("width", "levels", "boundary_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"localizer.{name} must be >= 1, got {getattr(self, name)}")
        if self.size_base <= 0 or self.boundary_ratio < 0:
            raise ConfigError("localizer.size_base must be > 0 and localizer.boundary_ratio >= 0")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"localizer.dropout must be in [0, 1), got {self.dropout}")

    @property
    def strides(self) -> tuple[int, ...]:
        """Stride of each pyramid level, in snippets."""
        return tuple(2**level for level in range(self.levels))


@dataclass(frozen=True)
class FeatureConfig:
    dir: str = ""  # folder of <video_id>.npy [T, D] snippet features; "" = extract into <dataset>/features
    encoder: str = "default"  # default (small frozen 3D-conv net, seeded) | torchscript (encoder_weights)
    encoder_weights: str = ""  # torchscript: a local TorchScript file, [B, 3, T, H, W] in [0, 1] -> [B, D];
    #                            default: an optional state_dict of the default net ("" = seeded weights)
    snippet_frames: int = 8  # frames per snippet fed to the encoder
    snippet_stride: int = 4  # frames between the starts of consecutive snippets (i starts at i * stride)
    height: int = 64  # frames are resized to this before encoding
    width: int = 64
    fps: float = 0.0  # precomputed features without features.json: frame rate they were taken at (0 = index)

    def __post_init__(self):
        if self.encoder not in ("default", "torchscript"):
            raise ConfigError(f"features.encoder must be default or torchscript, got {self.encoder!r}")
        if self.encoder == "torchscript" and not self.encoder_weights:
            raise ConfigError("features.encoder torchscript needs features.encoder_weights (a local file)")
        for name in ("snippet_frames", "snippet_stride", "height", "width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"features.{name} must be >= 1, got {getattr(self, name)}")
        if self.fps < 0:
            raise ConfigError(f"features.fps must be >= 0 (0 = the index's), got {self.fps}")


ALSTAL_SCORES = ("tpe", "tci", "random")


@dataclass(frozen=True)
class ALSTALConfig:
    score: str = "tpe"  # video score: tpe (Eq.4) | tci (Eq.5-7) | random (baseline, no scores)
    aggregation: str = "sum"  # max | sum | mean-max over the temporal locations of a video
    radius: int = 1  # TCI window radius r (locations)
    regions: int = 4  # mean-max regions N_R
    init_fraction: float = 0.05  # training videos labelled at random before the first cycle
    step_fraction: float = 0.05  # training videos selected per cycle
    pseudo_threshold: float = 0.5  # score (after Soft-NMS) a prediction needs to be a pseudo-label
    window: int = 128  # snippets per training window (videos are tiled into windows, half overlapping)
    nms_sigma: float = 0.5  # Gaussian Soft-NMS: score * exp(-tIoU^2 / sigma)
    top_k: int = 100  # segments kept per video after Soft-NMS
    cost_per_video: float = 1.0  # annotation cost of one video (AL-STAL counts videos)
    preset: str = "thumos14"  # tIoU thresholds of the evaluation: thumos14 (0.3:0.1:0.7) | activitynet
    passes: str = "deterministic"  # p̃ for TPE / TCI: deterministic (the paper: one eval-mode pass) |
    #                                mc (raylab's own: the mean of score.trials MC-dropout passes)

    def __post_init__(self):
        if self.passes not in ("deterministic", "mc"):
            raise ConfigError(f"alstal.passes must be deterministic or mc, got {self.passes!r}")
        if self.score not in ALSTAL_SCORES:
            raise ConfigError(f"alstal.score must be one of {', '.join(ALSTAL_SCORES)}, got {self.score!r}")
        if self.aggregation not in ("max", "sum", "mean-max"):
            raise ConfigError(f"alstal.aggregation must be max, sum or mean-max, got {self.aggregation!r}")
        if self.preset not in ("thumos14", "activitynet"):
            raise ConfigError(f"alstal.preset must be thumos14 or activitynet, got {self.preset!r}")
        if self.radius < 0 or self.regions < 1 or self.window < 1 or self.top_k < 1:
            raise ConfigError("alstal.radius must be >= 0; regions, window and top_k >= 1")
        if not 0 < self.init_fraction <= 1 or not 0 < self.step_fraction <= 1:
            raise ConfigError("alstal.init_fraction and alstal.step_fraction must be in (0, 1]")
        if not 0 <= self.pseudo_threshold <= 1 or self.nms_sigma <= 0:
            raise ConfigError("alstal.pseudo_threshold must be in [0, 1] and alstal.nms_sigma > 0")
        if self.cost_per_video < 0:
            raise ConfigError(f"alstal.cost_per_video must be >= 0, got {self.cost_per_video}")


ORACLES = ("simulated", "human")
BUDGET_UNITS = ("frames", "clicks")


@dataclass(frozen=True)
class LoopConfig:
    strategy: str = "apu-global"  # frame selection (docs/selection.md): apu-global | apu-local | random |
    #                               equidistant | uncertainty | entropy | sample
    lam: float = 0.5  # APU: S = lam * U + (1 - lam) * D (ASL Eq.3); sigma of D is labels.sigma
    min_gap: int = 5  # entropy strategy: minimum frames between two picks in a video
    step_fraction: float = 0.01  # frames selected per cycle, as a fraction of all training frames
    cycles: int = 3  # training cycles at most (cycle 0 trains on the initial labels)
    budget: float = 1.0  # stop once this fraction of the training frames is labelled
    target_metric: str = ""  # stop once this metric reaches target_value, e.g. "frame_map@0.5"; "" = never
    target_value: float = 0.0  # the value of target_metric that ends the run
    oracle: str = "simulated"  # simulated (reveals ground truth) | human (raylab export / raylab import)
    clicks_per_actor: float = 2.0  # annotation cost of one box (two corners)
    budget_unit: str = "frames"  # what step_fraction and budget count: frames | clicks (a fraction of the
    #                              clicks of labelling every training frame; docs/studies.md)

    def __post_init__(self):
        from raylab.acquisition.select import STRATEGIES  # the registry, with strategies users added

        if self.strategy not in STRATEGIES:
            raise ConfigError(f"loop.strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.oracle not in ORACLES:
            raise ConfigError(f"loop.oracle must be one of {', '.join(ORACLES)}, got {self.oracle!r}")
        if self.budget_unit not in BUDGET_UNITS:
            raise ConfigError(f"loop.budget_unit must be frames or clicks, got {self.budget_unit!r}")
        if self.budget_unit == "clicks" and self.oracle != "simulated":
            raise ConfigError("loop.budget_unit clicks needs loop.oracle simulated (a frame's clicks are "
                              "known once it is labelled: the simulated oracle spends them in rank order)")
        if not 0 <= self.lam <= 1:
            raise ConfigError(f"loop.lam must be in [0, 1], got {self.lam}")
        if not 0 < self.step_fraction <= 1 or not 0 < self.budget <= 1:
            raise ConfigError("loop.step_fraction and loop.budget must be in (0, 1]")
        if self.cycles < 1 or self.min_gap < 0 or self.clicks_per_actor < 0:
            raise ConfigError("loop.cycles must be >= 1, loop.min_gap and loop.clicks_per_actor >= 0")
        if self.target_metric and "@" not in self.target_metric:
            raise ConfigError(f"loop.target_metric looks like frame_map@0.5 or video_map@0.2, "
                              f"got {self.target_metric!r}")
        if self.target_metric and not 0 < self.target_value <= 1:  # every metric a run reports is in [0, 1]
            raise ConfigError(f"loop.target_value must be in (0, 1] (the range of {self.target_metric}), "
                              f"got {self.target_value}")


@dataclass(frozen=True)
class RayConfig:
    address: str = ""  # "" starts a local Ray; "auto" joins the cluster this machine belongs to
    num_cpus: int = 0  # CPUs of a local Ray (0 = all of this machine's)
    decode_num_cpus: float = 1.0  # CPUs reserved per Ray Data decode task
    in_process: bool = False  # decode, train and score in this process, without Ray Data tasks, actors or
    #                           a Ray Train run (what a sweep trial does, sized to the trial's resources)

    def __post_init__(self):
        if self.num_cpus < 0:
            raise ConfigError(f"ray.num_cpus must be > 0, or 0 for all of this machine's, "
                              f"got {self.num_cpus}")
        if self.decode_num_cpus <= 0:
            raise ConfigError(f"ray.decode_num_cpus must be > 0, got {self.decode_num_cpus}")


METHODS = ("asl", "alstal")


@dataclass(frozen=True)
class Config:
    name: str = "asl_synth"  # run name; the run directory defaults to runs/<name>
    method: str = "asl"  # asl (frames, spatio-temporal detector) | alstal (videos, temporal localizer)
    seed: int = 0  # seed of every random choice of a run (initial labels, clip sampling)
    data: DataConfig = field(default_factory=DataConfig)
    clips: ClipConfig = field(default_factory=ClipConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    localizer: LocalizerConfig = field(default_factory=LocalizerConfig)
    alstal: ALSTALConfig = field(default_factory=ALSTALConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.method == "alstal" and self.loop.budget_unit != "frames":
            raise ConfigError("loop.budget_unit clicks is for ASL: an AL-STAL video costs "
                              "alstal.cost_per_video whatever it holds, so clicks count videos")
        if not self.name or self.name in (".", "..") or "/" in self.name or "\\" in self.name:
            raise ConfigError(f"name must be a plain folder name (the run directory is runs/<name>), "
                              f"got {self.name!r}")


def from_dict(cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from a (partial) dict of overrides; unknown keys raise ConfigError."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value, f"{where}.{key}")
        else:
            kwargs[key] = _coerce(value, hint, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e


def _coerce(value: Any, hint: Any, where: str) -> Any:
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        ok = isinstance(value, hint) and not (hint is not bool and isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
        if hint is float and not math.isfinite(value):  # NaN passes every range check unnoticed
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    elif typing.get_origin(hint) is tuple:  # tuple[int, ...]: a YAML list of ints
        item = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of {item.__name__}, got {value!r}")
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def set_dotted(tree: dict, key: str, value: Any, where: str) -> None:
    """tree["a"]["b"] = value for key "a.b" (sections created as needed)."""
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {key} does not name a config section")
    node[parts[-1]] = value


def flat_keys(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: the dotted keys of a nested mapping and their values."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def apply_override(tree: dict, dotted: str, where: str) -> None:
    """Apply one `key.sub=value` override (the value read as YAML) to a nested mapping."""
    if "=" not in dotted:
        raise ConfigError(f"{where}: override {dotted!r} must look like key.sub=value")
    key, raw = dotted.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except (yaml.YAMLError, RecursionError) as e:
        raise ConfigError(f"{where}: the value of {key.strip()} is not valid YAML: "
                          f"{_first_line(e)}") from None
    set_dotted(tree, key, value, where)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def read_yaml(path: str | Path, what: str = "pipeline") -> dict[str, Any]:
    try:
        tree = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read {what} {path}: {e}") from None
    except RecursionError:  # PyYAML composes nested nodes recursively
        raise ConfigError(f"cannot read {what} {path}: nested too deeply") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(tree).__name__}")
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] = (),
                values: dict[str, Any] | None = None) -> Config:
    """Load the defaults, apply a pipeline YAML (overrides only), `key=value` overrides and then
    `values` (dotted key -> Python value, e.g. a sweep trial's knobs), validate.

    Raises:
        ConfigError: unknown key, wrong type or invalid value, naming the file and the key.
    """
    tree: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        tree = read_yaml(path)
    for item in overrides:
        apply_override(tree, item, "--set")
    for key, value in (values or {}).items():
        set_dotted(tree, key, value, where)
    return from_dict(Config, tree, where)


# config keys holding paths: a run directory's config.yaml holds them absolute (or relative to the run
# directory), so that a run works from any directory; a sweep makes them absolute before trials start
PATH_KEYS = ("data.root", "data.synth_dir", "features.dir", "features.encoder_weights", "detector.weights")


def absolute_paths(cfg: Config, base: str | Path | None = None) -> Config:
    """`cfg` with every non-empty relative path (PATH_KEYS) joined to `base` (default: this directory)."""
    base = Path(base if base is not None else Path.cwd()).absolute()
    sections: dict[str, dict[str, str]] = {}
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value and not Path(value).is_absolute():
            sections.setdefault(section, {})[name] = os.path.normpath(base / value)
    if not sections:
        return cfg
    return dataclasses.replace(cfg, **{s: dataclasses.replace(getattr(cfg, s), **v)
                                       for s, v in sections.items()})


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (saved in the run directory)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
