"""The study's PNG (matplotlib, Agg): top-1 against attention parameters (Table 2, log x) or
against k with error bars (Figure 4's sweep, the adaptive k marked apart, SE as a dashed line).

Points are the mean over seeds, bars the std over seeds (none with one seed).
"""
from __future__ import annotations

import io
from typing import Sequence

from etils import epath

from eca_jax.studies.results import RowSummary


def _pyplot():
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    return plt


def _save(plt, fig, path: str) -> str:
    """Writes the PNG through etils.epath (local or remote paths alike)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    epath.Path(path).write_bytes(buf.getvalue())
    return path


def plot_table2(summaries: Sequence[RowSummary], path: str, title: str) -> str:
    """top-1 vs attention parameters (log x; rows without parameters drawn at x = 1)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in (s for s in summaries if s.mean is not None):
        x = max(1, s.attention_params)
        ax.errorbar([x], [s.mean], yerr=[s.std or 0.0], fmt="o", capsize=3,
                    color="tab:red" if s.row.startswith("ECA") else "tab:blue")
        ax.annotate(s.row, (x, s.mean), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("attention parameters (log; 0 drawn at 1)")
    ax.set_ylabel("top-1 % (mean ± std over seeds)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(plt, fig, path)


def plot_ksweep(summaries: Sequence[RowSummary], path: str, title: str) -> str:
    """top-1 vs k (3, 5, 7, 9), the adaptive k as a star right of them, SE as a dashed line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    fixed = sorted((int(s.row.split("-k")[1]), s) for s in summaries
                   if s.mean is not None and s.row.startswith("ECA-k"))
    if fixed:
        ax.errorbar([k for k, _ in fixed], [s.mean for _, s in fixed], yerr=[s.std or 0.0 for _, s in fixed],
                    fmt="o-", capsize=3, label="ECA, fixed k")
    ticks = [k for k, _ in fixed]
    for s in summaries:
        if s.mean is None:
            continue
        if s.row == "ECA-adaptive":
            x = (max(ticks) if ticks else 9) + 2
            ax.errorbar([x], [s.mean], yerr=[s.std or 0.0], fmt="*", markersize=12, capsize=3,
                        color="tab:red", label="ECA, adaptive k (Eq. 12)")
            ticks.append(x)
        elif s.row == "SE":
            ax.axhline(s.mean, ls="--", color="gray", label="SE (r = 16)")
    ax.set_xticks(ticks, [str(t) if i < len(fixed) else "adaptive" for i, t in enumerate(ticks)])
    ax.set_xlabel("ECA kernel size k")
    ax.set_ylabel("top-1 % (mean ± std over seeds)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(plt, fig, path)
