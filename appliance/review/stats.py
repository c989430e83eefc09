"""What a review round's ratings say: win rate with its interval, means, counts, agreement.

Every figure is of the new adapter against the incumbent, whatever side (A or B) a pair
showed it on; the caller maps sides back before calling. A preference is scored 1 for the
new adapter, 0 for the incumbent and 0.5 for a tie ("ties count half"), and the win rate is
the mean score. Its interval is Wilson's score interval on that mean with n = the number of
ratings: with ties as halves it is no longer a binomial count, but the interval stays inside
[0, 1] and is honest at the small n a round has (20 prompts, a handful of operators), where
the normal approximation is not. Agreement is Fleiss' kappa over the three preferences on
the items more than one operator rated (the generalisation to unequal raters per item).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

CRITERIA = ("accuracy", "helpfulness", "tone")
PREFS = ("new", "tie", "old")
SCORE = {"new": 1.0, "tie": 0.5, "old": 0.0}


@dataclass(frozen=True)
class Rating:
    """One operator's judgement of one item, sides already mapped to new/old."""

    operator: str
    item: int
    preference: str
    """new, tie or old."""
    new: dict[str, int]
    """criterion -> 1..5 for the new adapter's answer."""
    old: dict[str, int]


def wilson(p: float, n: int, confidence: float) -> tuple[float, float]:
    """Wilson's score interval for a proportion `p` of `n` trials."""
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def fleiss_kappa(items: dict[int, list[str]]) -> float | None:
    """Fleiss' kappa over categories PREFS, items with at least two ratings; None when
    there are none or every rating is the same category (agreement is then undefined)."""
    rated = {i: prefs for i, prefs in items.items() if len(prefs) >= 2}
    if not rated:
        return None
    total = sum(len(p) for p in rated.values())
    shares = Counter(p for prefs in rated.values() for p in prefs)
    pe = sum((c / total) ** 2 for c in shares.values())
    agree = []
    for prefs in rated.values():
        n = len(prefs)
        counts = Counter(prefs)
        agree.append((sum(c * c for c in counts.values()) - n) / (n * (n - 1)))
    po = sum(agree) / len(agree)
    if pe >= 1.0:
        return None
    return (po - pe) / (1 - pe)


def summarise(ratings: list[Rating], *, confidence: float, min_ratings: int) -> dict[str, Any]:
    """The round's figures, as `enclave review status|close --json` prints and the registry keeps."""
    n = len(ratings)
    counts = Counter(r.preference for r in ratings)
    rate = sum(SCORE[r.preference] for r in ratings) / n if n else None
    low, high = wilson(rate or 0.0, n, confidence) if n else (None, None)
    means: dict[str, dict[str, float | None]] = {}
    for c in CRITERIA:
        means[c] = {
            side: (sum(getattr(r, side)[c] for r in ratings) / n if n else None) for side in ("new", "old")
        }
    per_operator: dict[str, int] = dict(sorted(Counter(r.operator for r in ratings).items()))
    by_item: dict[int, list[str]] = defaultdict(list)
    for r in ratings:
        by_item[r.item].append(r.preference)
    overlap = sum(1 for p in by_item.values() if len(p) >= 2)
    kappa = fleiss_kappa(by_item)
    if n < min_ratings:
        outcome = "inconclusive"
    elif high is not None and high < 0.5:
        outcome = "lost"
    elif low is not None and low > 0.5:
        outcome = "won"
    else:
        outcome = "no difference"
    return {
        "ratings": n,
        "wins": counts["new"],
        "ties": counts["tie"],
        "losses": counts["old"],
        "win_rate": rate,
        "ci": {"low": low, "high": high, "confidence": confidence, "method": "wilson, ties count half"},
        "means": means,
        "per_operator": per_operator,
        "items_rated": len(by_item),
        "items_overlapping": overlap,
        "agreement": {"fleiss_kappa": kappa, "over": "preference", "items": overlap},
        "min_ratings": min_ratings,
        "outcome": outcome,
    }
