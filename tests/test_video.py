import numpy as np
import pytest

from raylab.data.video import VideoError, clip_frames, probe_video, read_clip, read_frames, write_video


def test_probe_reads_metadata(blob_video):
    path, frames = blob_video
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width) == (16, 32, 64)
    assert info.fps == pytest.approx(25.0)


def test_read_frames_matches_written_frames(blob_video):
    path, frames = blob_video
    got = read_frames(path, [0, 5, 15, 5])
    assert got.shape == (4, 32, 64, 3) and got.dtype == np.uint8
    # H.264 at crf 18 is lossy; a flat white square on black comes back within a few levels
    assert np.abs(got.astype(int) - frames[[0, 5, 15, 5]].astype(int)).mean() < 3
    assert np.array_equal(got[1], got[3])


def test_read_clip_with_stride_and_resize(blob_video):
    path, frames = blob_video
    clip = read_clip(path, start=10, length=4, stride=2, size=(16, 32))
    assert clip.shape == (4, 16, 32, 3)
    # frames 10, 12, 14, 15 (the last index is clamped): the square's column moves right
    cols = [np.argmax(c[:, :, 0].max(axis=0) > 128) for c in clip]
    assert cols == sorted(cols) and cols[0] < cols[-1]


@pytest.mark.parametrize("width", [48, 72])
def test_widths_that_trip_decord_are_still_read(tmp_path, width):
    frames = np.zeros((4, 32, width, 3), np.uint8)
    frames[:, :, : width // 2] = 200
    write_video(tmp_path / "w.mp4", frames, fps=10)
    assert probe_video(tmp_path / "w.mp4").width == width
    got = read_frames(tmp_path / "w.mp4", [0, 3])
    assert got.shape == (2, 32, width, 3)
    assert abs(int(got[0, 16, 2, 0]) - 200) < 8 and got[0, 16, width - 3, 0] < 8


def test_clip_frames_clamps_at_the_end():
    assert clip_frames(3, 4, 2, 8).tolist() == [3, 5, 7, 7]
    with pytest.raises(ValueError, match="outside"):
        clip_frames(8, 4, 1, 8)


def test_broken_files_raise_video_error_with_reason(tmp_path, blob_video):
    path, _ = blob_video
    data = path.read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases = {"truncated.mp4": "truncated|cannot open", "garbage.mp4": "cannot open",
             "empty.mp4": "empty file", "none.mp4": "not found"}
    for name, reason in cases.items():
        with pytest.raises(VideoError, match=reason) as e:
            probe_video(tmp_path / name)
        assert e.value.path.endswith(name)


def test_reasons_are_short_stable_sentences_and_the_decoder_stays_quiet(tmp_path, blob_video, capfd):
    path, _ = blob_video
    data = path.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 3 // 4])
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(1).bytes(4000))
    (tmp_path / "text.mp4").write_text("hello\n" * 100)
    reasons = set()
    for name in ("cut.mp4", "garbage.mp4", "text.mp4"):
        with pytest.raises(VideoError) as e:
            probe_video(tmp_path / name)
        reasons.add(e.value.reason)
    assert reasons <= {"not a video (the decoder cannot open it)", "cannot read the stream header",
                       "truncated: the last frame (15) of 16 cannot be decoded"}, reasons
    assert capfd.readouterr().err == ""  # ffmpeg's own lines are not printed


def test_frame_out_of_range_names_the_frame(blob_video):
    path, _ = blob_video
    with pytest.raises(VideoError, match="frame 16 out of range"):
        read_frames(path, [2, 16])


def test_write_video_refuses_odd_sizes(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 31, 64, 3), np.uint8), fps=10)
    assert not (tmp_path / "odd.mp4").exists()
