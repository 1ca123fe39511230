"""benchmarks/gpu_check.sh on the CPU: clips prepared here, then the model-level check (training steps,
MC-dropout shared vs full for the detector and the localizer, acquisition scores) without Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_path(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_DIR": str(tmp_path / "check")}
    prepared = subprocess.run(
        [str(REPO / "benchmarks" / "gpu_check.sh"), "prepare", "--preset", "tiny", "--clips", "6",
         "--size", "32", "--synth-dir", str(tmp_path / "synth")],
        env=env, capture_output=True, text=True, cwd=REPO)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert json.loads(prepared.stdout.splitlines()[-1])["shape"] == [6, 8, 32, 32, 3]
    assert (tmp_path / "check" / "vendor" / "yaml" / "__init__.py").is_file()

    checked = subprocess.run(
        [str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--presets", "small", "--steps", "5",
         "--train-batch", "4", "--batch-sizes", "2", "3", "--trials", "3", "--repeats", "1", "--loc-batch",
         "2", "--loc-snippets", "64", "--loc-dim", "32"],
        env=env, capture_output=True, text=True, cwd=REPO)
    assert checked.returncode == 0, (checked.stdout[-3000:], checked.stderr[-3000:])
    result = json.loads(checked.stdout.splitlines()[-1])
    assert result["ok"] and result["ray_imported"] is False and result["device"] == "cpu"
    fp32 = result["train"]["small"]["fp32"]
    assert fp32["finite"] and fp32["last_loss"] < fp32["first_loss"]
    assert set(result["mc_detector"]["small"]) == {"2", "3"}
    for row in result["mc_detector"]["small"].values():
        assert row["max_abs_diff"] < 1e-4 and row["uncertainty_in_0_1"] and row["shared_frames_per_s"] > 0
    assert result["mc_localizer"]["max_abs_diff"] < 1e-4
