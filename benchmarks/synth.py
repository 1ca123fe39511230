"""The SynthActions set of the throughput benchmarks: the demo pipeline's (pipelines/asl_synth.yaml: small,
a 72-video draw), so that their figures are for the data the demo runs on; another preset at its own
size; or another size with --videos."""

from __future__ import annotations

DEMO_PIPELINE = "pipelines/asl_synth.yaml"
VIDEOS_HELP = ("videos of the spatio-temporal SynthActions set (default: the demo pipeline's "
               "data.synth_videos for its preset, the preset's own number for another; 0: the preset's own)")


def synth_videos(preset: str, videos: int | None) -> int:
    """`videos` if given, else the demo pipeline's data.synth_videos for its own preset and 0 (the
    preset's own number) for any other preset."""
    from raylab.config import load_config

    if videos is not None:
        return videos
    data = load_config(DEMO_PIPELINE).data
    return data.synth_videos if preset == data.synth_preset else 0


def synth_overrides(preset: str, videos: int | None, synth_dir: str) -> list[str]:
    """Config overrides that generate `preset` in `synth_dir` with `synth_videos(preset, videos)` videos."""
    return [f"data.synth_preset={preset}", f"data.synth_dir={synth_dir}",
            f"data.synth_videos={synth_videos(preset, videos)}"]
