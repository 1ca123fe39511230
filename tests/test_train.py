"""Training of one cycle on Ray Train with 2 CPU workers (gloo DDP) on the tiny SynthActions set. (One
worker, the default, trains every `raylab run` of tests/test_loop.py and tests/test_faults.py.)"""

import json

import pytest

from raylab.asl import training_dataset
from raylab.config import load_config
from raylab.loop import open_run


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    synth = tmp_path_factory.mktemp("synth")
    return load_config("pipelines/smoke.yaml", [f"data.synth_dir={synth}", "labels.init_fraction=0.3",
                                                "train.epochs=4", "clips.batch_size=4"])


@pytest.mark.ray
@pytest.mark.slow
def test_loss_goes_down_with_2_ddp_workers(ray_local, tiny_cfg, tmp_path):
    from dataclasses import replace

    from raylab.train import load_detector, train_cycle

    workers = 2  # 2 CPUs in all: the workers share one, the decode tasks of the clip stream get the other
    cfg = replace(tiny_cfg, train=replace(tiny_cfg.train, num_workers=workers, cpus_per_worker=1 / workers))
    data, store = open_run(cfg, tmp_path)
    result = train_cycle(cfg, tmp_path, 0, training_dataset(cfg, data, store, 0), len(data.classes))
    losses = [h["total"] for h in result.history]
    assert len(losses) == cfg.train.epochs
    assert losses[-1] < 0.8 * losses[0], losses
    # every epoch saw each labelled frame's clip once, split across the workers
    assert all(h["clips"] * workers >= len(store) - workers for h in result.history)
    assert load_detector(result.checkpoint).num_classes == len(data.classes)
    lines = (tmp_path / "checkpoints" / "cycle=0" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(cfg.train.epochs))


@pytest.mark.ray
def test_a_cycle_that_would_leave_no_cpu_for_decoding_is_refused(ray_local, tiny_cfg, tmp_path):
    from dataclasses import replace

    from raylab.train import train_cycle

    cfg = replace(tiny_cfg, train=replace(tiny_cfg.train, num_workers=2, cpus_per_worker=1.0))
    with pytest.raises(ValueError, match="leaves 0 of the cluster's 2 for decoding"):
        train_cycle(cfg, tmp_path, 0, dataset=None, num_classes=3)


@pytest.mark.ray
def test_on_a_cluster_too_few_cpus_only_warn_since_the_autoscaler_may_add_some(ray_local, caplog):
    from raylab.train import _check_cpus_left_for_decoding

    with caplog.at_level("WARNING", logger="raylab.train"):
        _check_cpus_left_for_decoding(2.0, 1.0, autoscaling=True)
    assert "waits until the autoscaler adds CPUs" in caplog.text
    _check_cpus_left_for_decoding(1.0, 1.0, autoscaling=False)  # enough: nothing to say


def test_the_cosine_schedule_decays_the_rate_over_the_cycle_and_constant_keeps_it():
    from raylab.train import epoch_lr

    cosine = [epoch_lr(2e-3, "cosine", e, 8) for e in range(8)]
    assert cosine[0] == 2e-3 and cosine[4] == pytest.approx(1e-3)  # full rate, then half way at the middle
    assert all(a > b for a, b in zip(cosine, cosine[1:])) and 0 < cosine[-1] < 0.05 * 2e-3
    assert [epoch_lr(2e-3, "constant", e, 8) for e in range(8)] == [2e-3] * 8


def test_the_worker_loop_trains_each_epoch_at_its_scheduled_rate(tmp_path):
    """What the optimizer holds while an epoch runs, and what the epoch reports (in process)."""
    import torch

    from raylab.train import InProcessSession, epoch_lr, worker_loop

    seen = []

    def run_epoch(model, batches, optimizer, device, amp):
        seen.append(optimizer.param_groups[0]["lr"])
        return {"total": 0.0}

    config = {"epochs": 5, "lr": 1e-2, "lr_schedule": "cosine", "weight_decay": 0.0, "mixed_precision": False,
              "checkpoint_every": 0, "batch_size": 2, "seed": 0, "warm_start": ""}
    history = tmp_path / "history.jsonl"
    session = InProcessSession(_NoBatches(), tmp_path, history, torch.device("cpu"))
    worker_loop({**config, "session": session}, torch.nn.Linear(2, 1), run_epoch,
                lambda path, model, **extra: torch.save({}, path), lambda model, path: None)
    expected = [epoch_lr(1e-2, "cosine", e, 5) for e in range(5)]
    assert seen == pytest.approx(expected)
    assert [json.loads(line)["lr"] for line in history.read_text().splitlines()] == pytest.approx(expected)


class _NoBatches:
    def iter_batches(self, **kwargs):
        return iter(())
