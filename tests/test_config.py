import pytest

from raylab.config import Config, ConfigError, load_config, to_yaml


def test_defaults_load_and_are_frozen():
    cfg = load_config()
    assert cfg == Config()
    with pytest.raises(AttributeError):
        cfg.seed = 3


def test_yaml_overrides_and_set(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nclips:\n  length: 16\nlabels:\n  sigma: 2\n")
    cfg = load_config(path, ["clips.stride=2", "data.synth_preset=tiny"])
    assert (cfg.name, cfg.clips.length, cfg.clips.stride, cfg.labels.sigma) == ("x", 16, 2, 2.0)
    assert cfg.data.synth_preset == "tiny" and cfg.clips.height == Config().clips.height
    assert load_config(path, []).clips.length == 16
    assert "length: 16" in to_yaml(cfg)


@pytest.mark.parametrize(
    "text,match",
    [
        ("clips:\n  lenght: 4\n", "unknown key.*lenght"),
        ("bogus: 1\n", "unknown key.*bogus"),
        ("clips:\n  length: four\n", "clips.length: expected int"),
        ("clips:\n  length: 0\n", "clips.length must be >= 1"),
        ("labels:\n  loss_weighting: maybe\n", "loss_weighting"),
        ("labels:\n  changed_gaps: drop\n", "labels.changed_gaps must be nearest or skip"),
        ("labels:\n  pseudo_masks: warped\n", "labels.pseudo_masks must be copied or moved"),
        ("evaluation:\n  actionness_window: 2\n", "evaluation.actionness_window must be an odd number"),
        ("evaluation:\n  frame_actionness: youden\n",
         "evaluation.frame_actionness must be one of frame_map, tube"),
        ("evaluation:\n  class_pooling: vote\n",
         "evaluation.class_pooling must be one of mean, max"),
        ("train:\n  lr_schedule: step\n", "train.lr_schedule must be one of constant, cosine"),
        ("train:\n  crop_scale: 0\n", "train.crop_scale must be in \\(0, 1\\]"),
        ("data:\n  synth_videos: -1\n", "data.synth_videos must be >= 0"),
        ("clips: 3\n", "expected a mapping"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_cycle_epochs_reach_min_clips():
    train = load_config(overrides=["train.epochs=8", "train.min_clips=8000"]).train
    assert train.cycle_epochs(240) == 34  # few clips: more epochs
    assert train.cycle_epochs(632) == 13
    assert train.cycle_epochs(5000) == 8  # many clips: the epochs asked for
    assert load_config(overrides=["train.min_clips=0"]).train.cycle_epochs(10) == 8
    with pytest.raises(ConfigError, match="train.min_clips must be >= 0"):
        load_config(overrides=["train.min_clips=-1"])
