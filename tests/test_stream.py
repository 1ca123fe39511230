"""The Ray Data clip stream against the same clips decoded directly."""

import numpy as np
import pandas as pd
import pytest

from raylab.data.clips import annotated_clips, tile_clips
from raylab.data.stream import clip_table, decode_clips
from raylab.data.targets import FrameLabel, clip_targets
from raylab.data.video import read_frames, write_video
from tests.conftest import blob_frames


@pytest.fixture(scope="module")
def blob_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("blobs")
    rows = []
    for i, n in enumerate([12, 20, 9]):
        write_video(root / f"v{i}.mp4", blob_frames(n), fps=25)
        rows.append((f"v{i}", f"v{i}.mp4", n, 25.0, 32, 64, i % 2, "train"))
    index = pd.DataFrame(rows, columns=["video_id", "path", "num_frames", "fps", "height", "width",
                                        "label", "split"])
    labels = {"v0": {2: FrameLabel(np.array([[0, 12, 8, 20]], np.float32)),
                     9: FrameLabel(np.zeros((0, 4), np.float32))},
              "v1": {10: FrameLabel(np.array([[10, 12, 18, 20]], np.float32))}}
    return root, index, labels


def test_clip_table_and_decode_agree_with_direct_decoding(blob_dataset):
    root, index, labels = blob_dataset
    clips = tile_clips(index, length=4, stride=2)
    table = clip_table(clips, index, root, labels)
    batch = decode_clips(table.slice(0, 3), size=(16, 32), sigma=1.3)
    assert batch["clip"].shape == (3, 4, 16, 32, 3) and batch["fg"].shape == (3, 4, 16, 32)
    for b in range(3):
        frames = clips["frames"][b]
        direct = read_frames(root / "v0.mp4", frames, (16, 32))
        assert np.array_equal(batch["clip"][b], direct)
        expected = clip_targets(labels["v0"], frames, (32, 64), (16, 32), 1.3)
        assert np.array_equal(batch["fg"][b], expected["fg"])
        assert np.array_equal(batch["weight"][b], expected["weight"])
    assert batch["video_id"].tolist() == ["v0"] * 3


@pytest.mark.ray
def test_ray_stream_yields_every_clip_once(ray_local, blob_dataset):
    from raylab.data.stream import clip_dataset

    root, index, labels = blob_dataset
    clips = tile_clips(index, length=4, stride=1)
    ds = clip_dataset(clip_table(clips, index, root, labels), size=(16, 32), sigma=1.3, clips_per_task=2)
    seen = []
    for batch in ds.iter_batches(batch_size=3, batch_format="numpy"):
        assert batch["clip"].dtype == np.uint8 and batch["clip"].shape[1:] == (4, 16, 32, 3)
        for video, frames, owned in zip(batch["video_id"], batch["frames"], batch["owned"]):
            seen += [(video, int(f)) for f in frames[owned]]
    expected = [(v, f) for v, n in zip(index["video_id"], index["num_frames"]) for f in range(n)]
    assert sorted(seen) == sorted(expected)

    train = annotated_clips(index, {v: np.array(sorted(l)) for v, l in labels.items()}, 4, 1, seed=0)
    got = clip_dataset(clip_table(train, index, root, labels), (16, 32), 1.3, clips_per_task=2).take_all()
    assert len(got) == 3 and all(r["annotated"].any() for r in got)
    assert all(r["weight"][r["annotated"]].min() == 1.0 for r in got)


@pytest.mark.ray
def test_feature_windows_stream_every_snippet_once(ray_local, tmp_path):
    from raylab.data.stream import feature_dataset, feature_index

    rng = np.random.default_rng(0)
    arrays = {"a": rng.normal(size=(23, 5)), "sub/b": rng.normal(size=(7, 5))}
    for name, array in arrays.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / f"{name}.npy", array.astype(np.float32))
    index = feature_index(tmp_path)
    assert index[["video_id", "num_frames", "dim"]].values.tolist() == [["a", 23, 5], ["sub/b", 7, 5]]
    windows = tile_clips(index, length=8, stride=1)
    seen = {}
    for batch in feature_dataset(windows, index, windows_per_task=2).iter_batches(batch_size=4):
        assert batch["features"].shape[1:] == (8, 5)
        for video, frames, owned, feats in zip(batch["video_id"], batch["frames"], batch["owned"],
                                               batch["features"]):
            assert np.array_equal(feats, arrays[video][frames].astype(np.float32))  # padding repeats
            for f in frames[owned]:
                assert (video, int(f)) not in seen
                seen[(video, int(f))] = True
    assert len(seen) == 23 + 7


def test_feature_index_names_a_bad_file(tmp_path):
    from raylab.data.stream import feature_index

    np.save(tmp_path / "bad.npy", np.zeros(4))
    with pytest.raises(ValueError, match="bad.npy: expected features of shape"):
        feature_index(tmp_path)
