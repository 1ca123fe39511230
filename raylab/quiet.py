"""Ray's own output off the terminal, into the run's log file (`raylab -v` keeps it on the terminal).

A local Ray relays every actor's and worker's log lines to the driver, and the driver's C++ core and
Ray's Python loggers write to file descriptor 2 directly: a 2-cycle smoke run printed 124 lines, 2 of
them raylab's. `ray_output_to(RUN/logs/ray.log)` points descriptor 2 at the log file while a command
runs; raylab's own log records (and warnings of other libraries) and its progress bars keep the
terminal through a duplicate of the original descriptor (`terminal()`). Nothing is dropped: the log
file has everything, raylab's records included.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

_terminal = None  # the terminal's stream while descriptor 2 goes to a log file


def terminal():
    """Where raylab's progress bars write: the terminal, also while Ray's output goes to a log file."""
    return _terminal if _terminal is not None else sys.stderr


def _on_terminal(record: logging.LogRecord) -> bool:
    """raylab's records, and warnings of libraries other than Ray, are for the terminal."""
    ours = record.name == "raylab" or record.name.startswith("raylab.")
    ray = record.name == "ray" or record.name.startswith("ray.")
    return ours or (not ray and record.levelno >= logging.WARNING)


@contextlib.contextmanager
def ray_output_to(log_file: Path | None) -> Iterator[None]:
    """While inside, descriptor 2 (Ray's log lines, relayed worker output, C++ logs, Python warnings)
    appends to `log_file`; raylab's log records and progress bars stay on the terminal. None: no change
    (`-v`). Nested use keeps the outer file."""
    global _terminal
    if log_file is None or _terminal is not None:
        yield
        return
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    term = os.fdopen(os.dup(saved), "w", buffering=1)
    log = open(log_file, "a", buffering=1)
    root = logging.getLogger()
    consoles = [h for h in root.handlers if type(h) is logging.StreamHandler]
    to_file = logging.StreamHandler(log)
    to_file.setFormatter(consoles[0].formatter if consoles else None)
    streams = [h.setStream(term) for h in consoles]  # setStream returns the stream it replaces
    for h in consoles:
        h.addFilter(_on_terminal)
    root.addHandler(to_file)
    os.dup2(log.fileno(), 2)
    _terminal = term
    try:
        yield
    except BaseException:
        if Path(log_file).stat().st_size:
            print(f"(Ray's output of this command is in {log_file})", file=term)
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        _terminal = None
        root.removeHandler(to_file)
        for h, stream in zip(consoles, streams):
            h.removeFilter(_on_terminal)
            h.setStream(stream)
        term.close()
        log.close()
