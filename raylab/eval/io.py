"""Reading an evaluation document (ground truth and predictions) from a JSON file."""

from __future__ import annotations

import json
from pathlib import Path


def read_document(path, error: type[Exception]) -> dict:
    """The JSON document at `path`; `error` (the evaluation's format error) names the file when it is
    missing or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise error(f"{path}: no such file") from e
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from e
