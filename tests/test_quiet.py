"""Ray's output goes to the run's log file; raylab's lines and bars keep the terminal (no Ray needed:
Ray's output is whatever reaches descriptor 2 and Ray's loggers)."""

from __future__ import annotations

import logging
import os
import sys

import pytest

from raylab.quiet import ray_output_to, terminal

RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")


@pytest.fixture
def console():
    """A root StreamHandler on descriptor 2, as `raylab`'s logging.basicConfig makes, and Ray's loggers as
    they are before `ray.init` (which gives them handlers of their own and stops their propagation: an
    earlier test of the session may have started Ray)."""
    handler = logging.StreamHandler(os.fdopen(2, "w", buffering=1, closefd=False))
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)  # setLevel, not `.level =`: it clears the loggers' isEnabledFor caches,
    saved = {}                   # which an earlier test's log.info at the default WARNING filled
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers[:], logger.propagate, logger.level)
        logger.handlers, logger.propagate = [], True
        logger.setLevel(logging.NOTSET)
    yield handler
    for name, (handlers, propagate, lvl) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = handlers, propagate
        logger.setLevel(lvl)
    root.removeHandler(handler)
    root.setLevel(level)


def test_ray_output_goes_to_the_log_and_raylab_output_to_the_terminal(tmp_path, capfd, console):
    log_file = tmp_path / "run" / "logs" / "ray.log"
    with ray_output_to(log_file):
        os.write(2, b"core_worker.cc: constructor arguments in the object store\n")  # C++ / relayed lines
        print("(PlacementGroupCleaner pid=1) Failed to query", file=sys.__stderr__, flush=True)  # relayed
        logging.getLogger("ray.data").warning("cluster has no available CPUs")
        logging.getLogger("raylab.loop").info("resuming run")
        print("cycle 0 [=====]", file=terminal())
    shown, logged = capfd.readouterr().err, log_file.read_text()
    assert shown.splitlines() == ["resuming run", "cycle 0 [=====]"]
    for line in ("core_worker.cc", "PlacementGroupCleaner", "no available CPUs", "resuming run"):
        assert line in logged
    os.write(2, b"after\n")  # descriptor 2 is the terminal again
    assert capfd.readouterr().err == "after\n" and terminal() is sys.stderr


def test_verbose_leaves_everything_on_the_terminal(tmp_path, capfd, console):
    with ray_output_to(None):
        os.write(2, b"ray says\n")
        logging.getLogger("ray").info("ray logs")
    assert capfd.readouterr().err == "ray says\nray logs\n" and not (tmp_path / "logs").exists()
