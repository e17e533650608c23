"""One study's results: what each run left in its workdir, and the table over rows and seeds.

A run's record is ``study_result.json`` (written by the runner when a run finishes), else the
last evaluation in its ``metrics.csv`` (runs trained by ``python -m eca_jax.train`` elsewhere).
Top-1 is in percent; the spread over seeds is the sample standard deviation (ddof = 1).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import statistics
from typing import Any, Optional, Sequence

from etils import epath

from eca_jax.studies.paper import PAPER_TOP1
from eca_jax.studies.plan import RESULT_NAME
from eca_jax.train.reporting import CSV_NAME


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What one row x seed workdir holds: its last evaluated step, top-1 (%), train img/s."""
    row: str
    seed: int
    step: int
    top1: Optional[float]
    images_per_sec: Optional[float]
    finished: bool


def _metrics_rows(run_dir: str) -> list[dict[str, str]]:
    path = epath.Path(run_dir) / CSV_NAME
    return list(csv.DictReader(io.StringIO(path.read_text()))) if path.exists() else []


def train_images_per_sec(rows: Sequence[dict[str, str]]) -> Optional[float]:
    """Median of the logged train img/s, leaving out the first line (it includes compilation)."""
    values = [float(r["images_per_sec"]) for r in rows if r.get("images_per_sec")]
    values = values[1:] if len(values) > 1 else values
    return statistics.median(values) if values else None


def read_run(run_dir: str, row: str, seed: int, total_steps: int) -> Optional[RunRecord]:
    """The record of one run directory (None if it has neither a result nor an evaluation).

    ``finished``: the run's last evaluation is at ``total_steps``.
    """
    rows = _metrics_rows(run_dir)
    speed = train_images_per_sec(rows)
    result_path = epath.Path(run_dir) / RESULT_NAME
    if result_path.exists():
        result = json.loads(result_path.read_text())
        step = int(result["step"])
        return RunRecord(row, seed, step, 100.0 * result["eval_top1"], speed, step == total_steps)
    evals = [r for r in rows if r.get("eval_top1")]
    if not evals:
        return None
    step = int(float(evals[-1]["step"]))
    return RunRecord(row, seed, step, 100.0 * float(evals[-1]["eval_top1"]), speed, step == total_steps)


def write_result(run_dir: str, row: str, seed: int, result: dict[str, Any]) -> None:
    """Writes ``study_result.json`` (the trainer's result dict plus row and seed)."""
    record = {"row": row, "seed": seed, **{k: v for k, v in result.items() if k != "plot"}}
    (epath.Path(run_dir) / RESULT_NAME).write_text(json.dumps(record, indent=1, default=str))


@dataclasses.dataclass(frozen=True)
class RowSummary:
    """One row of the table: cost, top-1 over the finished seeds, the paper's figure."""
    row: str
    attention_params: int
    macs: int
    seeds: tuple[int, ...]
    top1: tuple[float, ...]
    images_per_sec: Optional[float]
    paper_top1: Optional[float]
    paper_source: str

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.top1) if self.top1 else None

    @property
    def std(self) -> Optional[float]:
        return statistics.stdev(self.top1) if len(self.top1) > 1 else None


def summarize_row(row: str, attention_params: int, macs: int, records: Sequence[RunRecord],
                  backbone: str) -> RowSummary:
    """A :class:`RowSummary` from the finished runs among ``records``."""
    done = sorted((r for r in records if r.finished and r.top1 is not None), key=lambda r: r.seed)
    speeds = [r.images_per_sec for r in done if r.images_per_sec]
    paper = PAPER_TOP1.get(backbone, {}).get(row)
    return RowSummary(row, attention_params, macs, tuple(r.seed for r in done), tuple(r.top1 for r in done),
                      statistics.median(speeds) if speeds else None, paper[0] if paper else None,
                      f"{backbone} {paper[1]}" if paper else "")


def within_spread(summary: RowSummary, best: RowSummary) -> Optional[bool]:
    """Whether ``summary``'s mean is within the seed spreads of ``best``'s (None: under 2 seeds)."""
    if summary.std is None or best.std is None:
        return None
    return abs(best.mean - summary.mean) <= summary.std + best.std


def verdict(summaries: Sequence[RowSummary]) -> str:
    """One plain sentence: are the differences between rows within the seed-to-seed spread?"""
    scored = [s for s in summaries if s.mean is not None]
    if len(scored) < 2:
        return "Fewer than two rows have finished runs: nothing to compare yet."
    stds = [s.std for s in scored if s.std is not None]
    gap = max(s.mean for s in scored) - min(s.mean for s in scored)
    if len(stds) < len(scored):
        return (f"The row means differ by up to {gap:.2f} points, but some rows have a single seed, "
                "so there is no seed-to-seed spread to judge that difference by.")
    spread = max(stds)
    if gap <= 2 * spread:
        return (f"The differences between rows (largest gap between row means {gap:.2f} points) are "
                f"within the seed-to-seed spread (largest std over seeds {spread:.2f} points, twice "
                f"that {2 * spread:.2f}): these runs do not tell the rows apart.")
    return (f"The largest gap between row means ({gap:.2f} points) exceeds twice the largest std over "
            f"seeds ({spread:.2f} points); see the last column for which rows the spread does not "
            "separate from the best one.")


FIELDS = ("row", "attention_params", "macs", "top1_mean", "top1_std", "n_seeds", "seeds", "top1_per_seed",
          "train_images_per_sec", "within_spread_of_best", "paper_top1", "paper_source")


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def table_rows(summaries: Sequence[RowSummary]) -> list[dict[str, str]]:
    """One dict per row with :data:`FIELDS` as strings (what the CSV and markdown show)."""
    scored = [s for s in summaries if s.mean is not None]
    best = max(scored, key=lambda s: s.mean) if scored else None
    out = []
    for s in summaries:
        close = within_spread(s, best) if best is not None and s.mean is not None else None
        out.append({
            "row": s.row, "attention_params": str(s.attention_params), "macs": str(s.macs),
            "top1_mean": _fmt(s.mean), "top1_std": _fmt(s.std), "n_seeds": str(len(s.top1)),
            "seeds": " ".join(map(str, s.seeds)), "top1_per_seed": " ".join(_fmt(t) for t in s.top1),
            "train_images_per_sec": _fmt(s.images_per_sec, 1),
            "within_spread_of_best": "" if close is None else ("best" if s is best else ("yes" if close else "no")),
            "paper_top1": _fmt(s.paper_top1), "paper_source": s.paper_source})
    return out


def to_csv(summaries: Sequence[RowSummary]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(table_rows(summaries))
    return buf.getvalue()


def to_markdown(summaries: Sequence[RowSummary], title: str, backbone: str) -> str:
    """The study's table, the verdict on the seed spread and where the paper's column comes from."""
    lines = [f"# {title}", "",
             "| row | attention params | MACs | top-1 % (mean ± std) | top-1 per seed | train img/s "
             f"| within seed spread of the best | paper's ImageNet top-1 ({backbone}) |",
             "|---|---:|---:|---:|---|---:|---|---:|"]
    for r in table_rows(summaries):
        mean = f"{r['top1_mean']} ± {r['top1_std'] or 'n/a'}" if r["top1_mean"] else "-"
        per_seed = ", ".join(f"s{s}: {t}" for s, t in zip(r["seeds"].split(), r["top1_per_seed"].split())) or "-"
        paper = f"{r['paper_top1']} (paper, {r['paper_source']})" if r["paper_top1"] else "-"
        lines.append(f"| {r['row']} | {int(r['attention_params']):,} | {int(r['macs']):,} | {mean} | {per_seed} | "
                     f"{r['train_images_per_sec'] or '-'} | {r['within_spread_of_best'] or '-'} | {paper} |")
    lines += ["", verdict(summaries), "",
              "The last column is the paper's own ImageNet figure for that row (Wang et al., CVPR 2020, "
              "Tables 2 and 3), copied for reference; it is not a result of these runs."]
    return "\n".join(lines) + "\n"
