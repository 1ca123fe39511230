"""GPU check of raylab's model-level code, without Ray, decord or PyAV: training steps, MC-dropout scoring
(shared encoder vs full passes) of the detector and of the localizer, acquisition scores, peak memory.

Two halves, run through benchmarks/gpu_check.sh:

    prepare  (here, with the project's venv)  decode clips of the small SynthActions set with their
             MGW targets into .gpu_check/clips.npz (the real clip stream's `decode_clips`) and copy
             PyYAML's pure-Python package to .gpu_check/vendor (raylab.config needs it).
    run      (on the GPU machine: Python + CUDA torch only)  from the carried file:
             1. detector training steps (`raylab.train.train_epoch`, `raylab.losses.detector_loss`) in
                fp32 and in bf16 autocast: the loss must fall on a repeated batch and stay finite; clips/s.
             2. MC-dropout scoring of the detector (`raylab.models.mc`: T = 10, per-clip seeds), shared
                encoder vs T full passes: frames/s of each, the ratio, their largest difference, and peak
                GPU memory per batch size; ASL frame scores (`raylab.acquisition.frame`) of the result.
             3. the AL-STAL localizer likewise, on seeded random snippet features.
             4. that none of this imported Ray.

Last line of output: JSON. On a machine without CUDA, `run --device cpu` runs the same code at small
sizes (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.synth import DEMO_PIPELINE, VIDEOS_HELP, synth_overrides

MODEL_MODULES = ("raylab.models.detector", "raylab.models.localizer", "raylab.models.mc", "raylab.losses",
                 "raylab.train", "raylab.acquisition.frame")


# ---- prepare (here) -------------------------------------------------------------------------------------


def prepare(out: Path, preset: str, videos: int | None, clips: int, size: int, synth_dir: Path) -> dict:
    """Decode `clips` training clips (around labelled frames, with targets) into out/clips.npz."""
    import yaml

    from raylab.asl import training_clips
    from raylab.config import load_config
    from raylab.data.stream import clip_table, decode_clips
    from raylab.data.targets import group_labels
    from raylab.loop import open_run

    cfg = load_config(DEMO_PIPELINE, [
        *synth_overrides(preset, videos, str(synth_dir)), "labels.init_fraction=0.1",
        f"clips.height={size}", f"clips.width={size}"])
    with tempfile.TemporaryDirectory() as run:
        data, store = open_run(cfg, Path(run))
        chosen = training_clips(cfg, data.train, store.labelled_frames(), 0).head(clips)
        table = clip_table(chosen, data.index, data.root, group_labels(store.table()))
        batch = decode_clips(table, (size, size), cfg.labels.sigma, cfg.labels.loss_weighting,
                             cfg.labels.changed_gaps, cfg.labels.pseudo_masks)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "clips.npz", clip=batch["clip"], fg=batch["fg"], weight=batch["weight"],
                        label=batch["label"], num_classes=len(data.classes))
    vendor = out / "vendor" / "yaml"
    shutil.rmtree(vendor, ignore_errors=True)
    shutil.copytree(Path(yaml.__file__).parent, vendor, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return {"clips": int(batch["clip"].shape[0]), "shape": list(batch["clip"].shape),
            "mb": round((out / "clips.npz").stat().st_size / 2**20, 2)}


# ---- run (there) ----------------------------------------------------------------------------------------


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(data: dict, n: int, start: int = 0) -> dict:
    idx = (np.arange(n) + start) % len(data["label"])
    return {k: data[k][idx] for k in ("clip", "fg", "weight", "label")}


def train_check(data: dict, preset: str, device, amp: bool, steps: int, batch: int) -> dict:
    """`steps` training steps on one repeated batch: first and last loss, finite, clips/s after step 1."""
    import torch

    from raylab.config import DetectorConfig
    from raylab.models.detector import Detector
    from raylab.train import train_epoch

    torch.manual_seed(0)
    model = Detector(DetectorConfig(preset=preset), int(data["num_classes"])).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    fixed = _batch(data, batch)
    losses, start = [], None
    for step in range(steps):
        if step == 1:
            _sync(device)
            start = time.perf_counter()
        losses.append(train_epoch(model, [fixed], optimizer, device, amp, 1.0, 1.0)["total"])
    _sync(device)
    seconds = time.perf_counter() - start
    return {"first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4),
            "loss_falls": bool(losses[-1] < losses[0]), "finite": bool(all(map(math.isfinite, losses))),
            "clips_per_s": round(batch * (steps - 1) / seconds, 1), "steps": steps, "batch": batch}


def _timed(fn, device, repeats: int) -> tuple[float, object]:
    fn()  # warm-up (kernels, allocator)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats, out


def _peak_mb(device, fn) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def detector_mc_check(data: dict, preset: str, device, batch_sizes: list[int], trials: int,
                      repeats: int) -> dict:
    """Shared encoder vs full passes of the detector's MC dropout, per batch size."""
    import torch

    from raylab.config import DetectorConfig
    from raylab.models.detector import Detector, clips_to_tensor

    torch.manual_seed(0)
    model = Detector(DetectorConfig(preset=preset), int(data["num_classes"])).to(device).eval()
    return {str(b): _mc_row(model, clips_to_tensor(_batch(data, b)["clip"], device), trials, device, repeats)
            for b in batch_sizes}


def _mc_row(model, x, trials: int, device, repeats: int) -> dict:
    """One batch size: frames/s of both MC paths, their ratio and difference, Eq.1 range, peak memory."""
    from raylab.acquisition.frame import frame_scores
    from raylab.models.mc import mc_forward, mc_forward_full

    seeds = list(range(x.shape[0]))  # per-clip seeds: both paths draw the same masks

    def shared():
        return mc_forward(model, x, trials, seed=seeds)

    def full():
        return mc_forward_full(model, x, trials, seed=seeds)

    frames = x.shape[0] * x.shape[2]
    shared_s, (fg, _) = _timed(shared, device, repeats)
    full_s, (fg_full, _) = _timed(full, device, repeats)
    u = frame_scores(fg.float().cpu().numpy()[:, 0], 0.9)["uncertainty"]  # ASL Eq.1 of clip 0's frames
    return {"shared_frames_per_s": round(frames / shared_s, 1),
            "full_frames_per_s": round(frames / full_s, 1),
            "ratio": round(full_s / shared_s, 3), "max_abs_diff": float((fg - fg_full).abs().max()),
            "uncertainty_in_0_1": bool(((u >= 0) & (u <= 1)).all()),
            "peak_mb_shared": _peak_mb(device, shared), "peak_mb_full": _peak_mb(device, full)}


def localizer_mc_check(device, batch: int, snippets: int, dim: int, trials: int, repeats: int) -> dict:
    """The localizer's MC dropout: encoder once + decoder T times vs T full passes (per-sample seeds)."""
    import torch

    from raylab.config import LocalizerConfig
    from raylab.models.localizer import Localizer
    from raylab.models.mc import enable_mc_dropout, per_sample_seeds

    torch.manual_seed(0)
    model = enable_mc_dropout(Localizer(LocalizerConfig(feature_dim=dim), 20).to(device))
    x = torch.randn(batch, dim, snippets, generator=torch.Generator().manual_seed(1)).to(device)  # [B, D, T]
    seeds = list(range(batch))

    @torch.no_grad()
    def shared():
        feats = model.encode(x)
        probs = []
        for i in range(trials):
            with per_sample_seeds(model, seeds, i):
                probs.append(model.decode(feats)["class_probs"])
        return torch.stack(probs)

    @torch.no_grad()
    def full():
        probs = []
        for i in range(trials):
            with per_sample_seeds(model, seeds, i):
                probs.append(model(x)["class_probs"])
        return torch.stack(probs)

    shared_s, a = _timed(shared, device, repeats)
    full_s, b = _timed(full, device, repeats)
    return {"shared_snippets_per_s": round(batch * snippets / shared_s, 1),
            "full_snippets_per_s": round(batch * snippets / full_s, 1), "ratio": round(full_s / shared_s, 3),
            "max_abs_diff": float((a - b).abs().max()), "peak_mb_shared": _peak_mb(device, shared),
            "batch": batch, "snippets": snippets, "dim": dim}


def run(args) -> dict:
    import importlib

    import torch

    before = "ray" in sys.modules
    for name in MODEL_MODULES:
        importlib.import_module(name)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loaded = np.load(args.clips)
    data = {k: loaded[k] for k in loaded.files}
    cuda = device.type == "cuda"
    result = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
              "python": sys.version.split()[0], "clip_shape": list(data["clip"].shape[1:])}
    result["train"] = {}
    for preset in args.presets:
        fp32 = train_check(data, preset, device, False, args.steps, args.train_batch)
        bf16 = (train_check(data, preset, device, True, args.steps, args.train_batch) if cuda
                else "skipped: bf16 autocast runs on CUDA only")
        result["train"][preset] = {"fp32": fp32, "bf16": bf16}
    result["mc_detector"] = {p: detector_mc_check(data, p, device, args.batch_sizes, args.trials,
                                                  args.repeats) for p in args.presets}
    result["mc_localizer"] = localizer_mc_check(device, args.loc_batch, args.loc_snippets, args.loc_dim,
                                                args.trials, args.repeats)
    result["ray_imported"] = before or "ray" in sys.modules
    result["ok"] = bool(
        not result["ray_imported"]
        and all(r["finite"] and r["loss_falls"] for p in result["train"].values() for r in p.values()
                if isinstance(r, dict))
        and all(r["max_abs_diff"] < 1e-3 and r["uncertainty_in_0_1"]
                for p in result["mc_detector"].values() for r in p.values())
        and result["mc_localizer"]["max_abs_diff"] < 1e-3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", type=Path, default=Path(".gpu_check"))
    p.add_argument("--preset", default="small", help="SynthActions preset the clips come from")
    p.add_argument("--videos", type=int, default=None, help=VIDEOS_HELP)
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--synth-dir", type=Path, default=Path("data/synthactions"), help="where SynthActions is")
    r = sub.add_parser("run")
    r.add_argument("--clips", default=".gpu_check/clips.npz")
    r.add_argument("--device", default="", help="cuda | cpu (default: cuda when available)")
    r.add_argument("--presets", nargs="+", default=["small", "i3d_like"], help="detector presets")
    r.add_argument("--steps", type=int, default=30, help="training steps per precision")
    r.add_argument("--train-batch", type=int, default=16)
    r.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 64], help="scoring batch sizes")
    r.add_argument("--trials", type=int, default=10)
    r.add_argument("--repeats", type=int, default=5, help="timed repeats of each scoring call")
    r.add_argument("--loc-batch", type=int, default=8)
    r.add_argument("--loc-snippets", type=int, default=256)
    r.add_argument("--loc-dim", type=int, default=2048)
    args = parser.parse_args()
    start = time.perf_counter()
    if args.cmd == "prepare":
        out = prepare(args.out, args.preset, args.videos, args.clips, args.size, args.synth_dir.resolve())
    else:
        out = run(args)
    out["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
