"""Writer processes for the label store kill test.

Usage: python tests/label_writer.py STORE_DIR. This process imports once, then for every line read on stdin
forks a writer and prints "pid N"; the writer opens the store, prints "ready", then appends batch(k) for
k = len(store.appends), ... forever, printing "committed K" (flushed) after append K returns. The test kills
the writer with SIGKILL at a random moment; this process then prints "reaped N". Forking a writer that has
everything imported makes a round cost milliseconds instead of an interpreter start.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, without installing

from raylab.data.labels import LabelStore  # noqa: E402

NUM_VIDEOS = 7
FRAME_STRIDE = 1_000  # > the largest batch, so frames of different appends never collide
MASK_COUNTS = 3_000  # long masks make the file write a large share of an append, so kills land in it


def batch_size(k: int) -> int:
    """Rows of append k: varies with k so that append times vary."""
    return 20 + (k * 7919) % 200


def batch(k: int) -> list[dict]:
    """The rows of append k: a pure function of k, mixing every payload kind."""
    video = f"v{k % NUM_VIDEOS}"
    base = (k // NUM_VIDEOS) * FRAME_STRIDE
    rows = []
    for j in range(batch_size(k)):
        x = float((k + j) % 50)
        row = {"video_id": video, "frame": base + j, "cost": float(1 + j % 3)}
        if j % 4:  # one frame in four is an annotated negative (no actor)
            row["boxes"] = [[x, 1.0, x + 10.0, 12.0]]
            row["box_labels"] = [k % 5]
            row["mask_rle"] = [((np.arange(MASK_COUNTS) * (k + 1) + j) % 997).tolist()] if j % 2 else []
        rows.append(row)
    return rows


def batch_cycle(k: int) -> int:
    return k // 5


def write_forever(path: str) -> None:
    """The writer: never returns; only SIGKILL ends it."""
    store = LabelStore(path)
    print("ready", flush=True)
    k = len(store.appends)
    while True:
        store.append(batch(k), cycle=batch_cycle(k), source="oracle")
        print(f"committed {k}", flush=True)
        k += 1


def main(path: str) -> None:
    for _ in sys.stdin:
        pid = os.fork()
        if pid == 0:
            try:
                write_forever(path)
            finally:
                os._exit(1)  # never fall back into the parent's loop
        print(f"pid {pid}", flush=True)
        os.waitpid(pid, 0)
        print(f"reaped {pid}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
