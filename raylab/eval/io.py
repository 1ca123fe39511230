"""Reading an evaluation document (ground truth and predictions) from a JSON file."""

from __future__ import annotations

from pathlib import Path

from raylab.data import bounds


def read_document(path, error: type[Exception]) -> dict:
    """The JSON document at `path`; `error` (the evaluation's format error) names the file when it is
    missing, too large, not JSON or nested too deeply."""
    path = Path(path)
    try:
        return bounds.loads_json(bounds.read_bytes(path))
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as e:
        raise error(f"{path}: cannot read it ({e.strerror})") from None
    except bounds.InputBoundError as e:
        raise error(f"{path}: {e}") from None
    except ValueError as e:  # json.JSONDecodeError, or bytes that are not UTF-8 text
        raise error(f"{path}: not valid JSON ({e})") from None
