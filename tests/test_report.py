"""The report: figures and a self-contained page from run directories built without training (no Ray)."""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raylab.config import load_config, to_yaml
from raylab.data.labels import LabelStore
from raylab.oracle import reveal_frames
from raylab.report import load_report_run, run_labels, thumbnail_frames, write_report
from raylab.rundir import RunPaths, RunStateError, new_state, write_atomic, write_parquet_atomic
from tests.conftest import tiny_synth_set

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
NO_CHROMIUM = "headless Chromium test needs Debian's chromium and chromium-driver (.ci/run installs them)"
HEADLESS_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage")
PNGS = {"curve_frame_map_0.5.png", "curve_video_map_0.2.png", "curve_video_map_0.5.png", "timelines.png",
        "selections_per_video.png", "thumbnails.png"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The tiny spatio-temporal SynthActions set: (root, index, gt)."""
    root, _, index, gt = tiny_synth_set(tmp_path_factory, "spatiotemporal")
    return root, index, gt


def make_run(run: Path, dataset, strategy: str = "random", cycles: int = 2,
             selections: dict[int, list[tuple[int, int, float]]] | None = None) -> Path:
    """A run directory as the loop leaves it: config, state, initial labels, `cycles` metrics lines and
    selections {cycle: [(train video position, frame, score), ...]}."""
    root, index, gt = dataset
    overrides = [f"data.root={root}", f"loop.strategy={strategy}"]
    write_atomic(run / "config.yaml", to_yaml(load_config(overrides=overrides)))
    new_state(run)
    train = index[index["split"] == "train"].reset_index(drop=True)
    first_and_middle = np.stack([np.zeros(len(train), int), train["num_frames"] // 2], axis=1)
    requests = pd.DataFrame({"video_id": np.repeat(train["video_id"].to_numpy(), 2),
                             "frame": first_and_middle.ravel()})
    LabelStore(run / "labels", index=index).append(reveal_frames(gt, requests), cycle=0, source="init")
    lines = [{"cycle": k, "labelled_fraction": 0.06 + 0.05 * k, "labelled_frames": 20 + 15 * k,
              "cost": 30.0 + 20 * k,
              "metrics": {"frame_map": {"0.5": 0.3 + 0.1 * k},
                          "video_map": {"0.2": 0.4 + 0.1 * k, "0.5": 0.2 + 0.1 * k, "0.75": 0.1,
                                        "0.5:0.95": 0.1}},
              "seconds": {"train": 1.0, "evaluate": 0.5}} for k in range(cycles)]
    write_atomic(run / "metrics.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    for cycle, picks in (selections or {}).items():
        sel = pd.DataFrame({"video_id": [train["video_id"][v] for v, _, _ in picks],
                            "frame": [f for _, f, _ in picks], "score": [s for _, _, s in picks],
                            "rank": np.arange(len(picks)), "strategy": strategy})
        write_parquet_atomic(RunPaths(run).selection(cycle), sel)
    return run


PICKS = {0: [(0, 5, 0.9), (0, 6, 0.8), (1, 3, 0.7), (2, 9, 0.2)]}


@pytest.fixture(scope="module")
def report(dataset, tmp_path_factory):
    """Two runs with the same strategy (one name to escape in HTML) and their report: (index.html, runs)."""
    base = tmp_path_factory.mktemp("runs")
    runs = [make_run(base / "run_a", dataset, selections=PICKS),
            make_run(base / "run_<b>", dataset, selections={0: [(1, 4, 0.5), (3, 7, 0.4)]})]
    return write_report(runs, base / "report"), runs


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.src: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.src.append(dict(attrs)["src"])


def test_report_writes_page_and_figures(report):
    page, _ = report
    assert page.name == "index.html" and page.is_file()
    assert {p.name for p in page.parent.glob("*.png")} == PNGS
    for png in page.parent.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text()
    assert "<table class=metrics>" in text and "no selection yet" not in text


def test_every_image_is_an_embedded_png(report):
    page, _ = report
    parser = _Images()
    parser.feed(page.read_text())
    assert len(parser.src) == len(PNGS)
    prefix = "data:image/png;base64,"
    assert all(src.startswith(prefix) for src in parser.src)
    embedded = {base64.b64decode(src[len(prefix):]) for src in parser.src}
    assert embedded == {p.read_bytes() for p in page.parent.glob("*.png")}


def test_runs_with_one_strategy_get_distinct_labels(report):
    page, _ = report
    text = page.read_text()
    assert "random (run_a)" in text and "random (run_&lt;b&gt;)" in text  # escaped
    assert "run_<b>" not in text
    paths = [Path("x/a"), Path("y/b"), Path("z/c")]
    assert run_labels(["random", "random", "apu-global"], paths) == ["random (a)", "random (b)", "apu-global"]
    same_name = [Path("x/a"), Path("y/a")]
    assert run_labels(["random", "random"], same_name) == ["random (a) [1]", "random (a) [2]"]


def test_run_without_metrics_or_not_a_run_is_refused(dataset, tmp_path):
    with pytest.raises(RunStateError, match="metrics.jsonl"):
        write_report([make_run(tmp_path / "fresh", dataset, cycles=0)], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunStateError, match="not a run directory"):
        write_report([tmp_path / "empty"], tmp_path / "out")


def test_run_without_selection_says_so(dataset, tmp_path):
    page = write_report([make_run(tmp_path / "cycle0", dataset, cycles=1)], tmp_path / "out")
    assert "no selection yet" in page.read_text()
    assert {p.name for p in page.parent.glob("*.png")} == {n for n in PNGS if n.startswith("curve_")}


def test_thumbnails_take_the_latest_selection_by_score_first(dataset, tmp_path):
    run = make_run(tmp_path / "two", dataset, selections={0: PICKS[0], 1: [(4, 2, 0.1), (5, 8, 0.6)]})
    picks = thumbnail_frames(load_report_run(run), 3)
    assert picks["cycle"].tolist() == [1, 1, 0]
    assert picks["score"].tolist() == [0.6, 0.1, 0.9]


def test_page_loads_in_headless_chromium(report, tmp_path):
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(NO_CHROMIUM)
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra (make venv)")
    from selenium.webdriver.chrome.service import Service

    page, _ = report
    alone = tmp_path / "copied" / "index.html"  # the page alone, without its PNG files
    alone.parent.mkdir()
    shutil.copy(page, alone)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in HEADLESS_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        driver.get(alone.as_uri())  # returns after the load event: every image has loaded or failed
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);")
        console = driver.get_log("browser")
    finally:
        driver.quit()
    assert len(images) == len(PNGS)
    assert all(complete and width > 0 for _, complete, width in images), images
    errors = [e for e in console if e["level"] == "SEVERE" or e.get("source") == "javascript"]
    assert not errors, errors
