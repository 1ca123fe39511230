"""Annotation cost in clicks (ASL: a frame costs its actors x loop.clicks_per_actor), and cycle budgets
counted in clicks (`loop.budget_unit: clicks`). No Ray, no files.

With a budget in clicks, a cycle's selection is a ranked list that the (simulated) annotator labels in
rank order until the cycle's clicks are spent: the first frame whose clicks would pass the budget, and
every frame after it, is left for later (the first frame of a cycle is always labelled, so a cycle
never picks nothing). The budget of a cycle is `loop.step_fraction` of the clicks of labelling every
training frame, never past `loop.budget` of them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TOLERANCE = 1e-9  # clicks: sums of float costs are compared with this slack


def full_clicks(gt: pd.DataFrame, video_ids, clicks_per_actor: float) -> float:
    """The clicks of labelling every frame of `video_ids`: one box per ground-truth row (video, frame,
    actor), `clicks_per_actor` each; frames without an actor cost nothing."""
    return float(clicks_per_actor * int(gt["video_id"].isin(set(video_ids)).sum()))


def clicks_budget(step_fraction: float, budget: float, total: float, spent: float) -> float:
    """Clicks to spend this cycle: step_fraction x total, never past budget x total (0 when spent)."""
    left = budget * total - spent
    return max(0.0, min(step_fraction * total, left)) if left > TOLERANCE else 0.0


def spend_clicks(costs: np.ndarray, budget: float) -> int:
    """How many of the ranked picks with clicks `costs` [k] the budget pays for: the longest prefix whose
    clicks stay within `budget`, at least one pick when there is one."""
    inside = np.cumsum(np.asarray(costs, dtype=np.float64)) <= budget + TOLERANCE
    n = int(np.argmin(inside)) if not inside.all() else len(inside)
    return max(n, min(1, len(inside)))
