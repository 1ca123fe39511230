"""How much of a video's TPE "sum" (AL-STAL Eq.4 + Eq.9) comes from background locations.

p̃ is the softmax over the C action classes only (the localizer's background class is dropped), so at
a location the model calls background p̃ is close to uniform and its entropy close to ln C: the sum
over a video may mostly count background. For every unlabelled training video of a run's cycle K this
takes the eval-mode p̃ (alstal.passes deterministic, the default) at every location of every level,
calls a location foreground when its centre lies inside a ground-truth segment, and reports the share
of the TPE sum that background locations make, their mean entropy against the foreground's (both /
ln C), and the same share when each location's entropy is weighted by its actionness (1 - p(background)).

    python -m benchmarks.tpe_background --run runs/alstal_synth --cycle 0
    python -m benchmarks.tpe_background            # trains alstal_smoke's cycle 0 in a temporary folder

Last line of output: JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from raylab.acquisition.temporal import entropy
from raylab.alstal import features, model_config, unlabelled_videos
from raylab.config import load_config
from raylab.data.labels import LabelStore
from raylab.localize import _video_tensor, load_localizer
from raylab.models.localizer import location_grid
from raylab.rundir import load_run
from raylab.train import MODEL_FILE

REPO = Path(__file__).resolve().parents[1]


def smoke_run(tmp: Path) -> Path:
    from raylab.loop import run_loop

    cfg = load_config(REPO / "pipelines" / "alstal_smoke.yaml",
                      [f"data.synth_dir={tmp / 'synth'}", "ray.in_process=true", "loop.cycles=1"])
    run_loop(cfg, tmp / "run", progress=False)
    return tmp / "run"


@torch.no_grad()
def measure(run: Path, cycle: int) -> dict:
    data = load_run(run)
    cfg = data.cfg
    feats = features(cfg, data)
    model = load_localizer(data.paths.checkpoint_dir(cycle) / MODEL_FILE)
    model.eval()
    store = LabelStore(data.paths.labels, index=data.index)
    rows = feats.set_index("video_id")
    C = len(data.classes)
    total = {"h_bg": 0.0, "h_fg": 0.0, "n_bg": 0, "n_fg": 0, "w_bg": 0.0, "w_fg": 0.0}
    for vid in unlabelled_videos(data, store):
        row = rows.loc[vid]
        out = model.decode(model.encode(_video_tensor(row["path"], "cpu")))
        p = out["class_probs"][0].double().numpy()  # [N, C] over the action classes
        background = 0.5 * (out["coarse_logits"][0].softmax(-1) + out["refine_logits"][0].softmax(-1))[:, 0]
        h = entropy(p)  # [N] TPE per location
        grid = location_grid(int(row["snippets"]), model_config(cfg, feats).localizer.levels)
        seconds = grid["centers"].numpy() * float(row["snippet_stride"]) / float(row["fps"])  # [N]
        segs = data.gt[data.gt["video_id"] == vid][["t_start", "t_end"]].to_numpy()
        fg = ((seconds[:, None] >= segs[:, 0]) & (seconds[:, None] < segs[:, 1])).any(axis=1) if len(segs) \
            else np.zeros(len(h), bool)
        weight = 1.0 - background.double().numpy()  # actionness
        for name, mask in (("bg", ~fg), ("fg", fg)):
            total[f"h_{name}"] += float(h[mask].sum())
            total[f"n_{name}"] += int(mask.sum())
            total[f"w_{name}"] += float((weight * h)[mask].sum())
    n = total["n_bg"] + total["n_fg"]
    return {"run": str(run), "cycle": cycle, "classes": C, "locations": n,
            "background_locations": total["n_bg"] / n,
            "background_share_of_tpe_sum": total["h_bg"] / (total["h_bg"] + total["h_fg"]),
            "mean_tpe_background_over_lnC": total["h_bg"] / max(total["n_bg"], 1) / math.log(C),
            "mean_tpe_foreground_over_lnC": total["h_fg"] / max(total["n_fg"], 1) / math.log(C),
            "background_share_actionness_weighted": total["w_bg"] / (total["w_bg"] + total["w_fg"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="an AL-STAL run directory (default: train alstal_smoke)")
    parser.add_argument("--cycle", type=int, default=0, help="whose localizer scores")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.run:
        print(json.dumps(measure(Path(args.run), args.cycle)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure(smoke_run(Path(tmp)), 0)))


if __name__ == "__main__":
    main()
