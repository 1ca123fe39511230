"""raylab: active learning for video action detection (ASL, AL-STAL) on Ray."""

__version__ = "0.1.0"
