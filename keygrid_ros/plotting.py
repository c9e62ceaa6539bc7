"""Headless matplotlib, one way: every picture the package writes (viz, evaluate sweeps, cloud, TensorBoard)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed; robots and servers rarely have one)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, write ``figure`` to ``path`` (creating its folder), close it, and return the path."""
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(out, dpi=dpi)
    plt.close(figure)
    return out
