"""Plots for the self-contained HTML reports (runs, evaluations): PNGs embedded as base64.

One home for the matplotlib setup, so every report renders headless (Agg) the same way,
carries no script or external asset, and keeps its numbers in tables when matplotlib is
absent (an appliance installed without the train extra).
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any


def pyplot() -> Any | None:
    """matplotlib.pyplot on the headless backend, or None where matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any) -> bytes:
    """The figure as PNG bytes; the figure is closed (reports draw many in one process)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def img_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
