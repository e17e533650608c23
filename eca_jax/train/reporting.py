"""What a person watches: progress lines or a tqdm bar, metrics.csv, TensorBoard, a PNG.

Only process 0 writes (the loop passes ``enabled=jax.process_index() == 0``).
"""

from __future__ import annotations

import csv
import datetime
import os
import sys
import time
from typing import Any, Mapping

COLUMNS = ("step", "epoch", "train_loss", "train_accuracy", "learning_rate", "images_per_sec",
           "eval_loss", "eval_top1", "eval_top5", "elapsed_s",
           "eval_ema_loss", "eval_ema_top1", "eval_ema_top5")  # EMA: with config.ema_decay
CSV_NAME = "metrics.csv"
PNG_NAME = "curves.png"
TB_DIRNAME = "tensorboard"


class MetricsWriter:
    """Appends rows to ``<workdir>/metrics.csv`` and scalars to TensorBoard event files.

    On resume (``resume_step`` given) rows after ``resume_step`` are dropped first: they belong
    to steps that the resumed run repeats, so the CSV reads like one uninterrupted run.
    """

    def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None,
                 tensorboard: bool = True):
        self.enabled = enabled
        self.csv_path = os.path.join(workdir, CSV_NAME)
        self._tb = None
        if not enabled:
            return
        rows = read_csv(self.csv_path) if resume_step is not None else []
        rows = [r for r in rows if int(float(r["step"])) <= resume_step] if rows else []
        with open(self.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        if tensorboard:
            try:  # imports TensorFlow + the tensorboard package: only on process 0
                from flax.metrics import tensorboard as flax_tb  # noqa: PLC0415
            except ImportError as e:
                print(f"TensorBoard event files disabled ({e}); pip install tensorboard.",
                      file=sys.stderr)
            else:
                self._tb = flax_tb.SummaryWriter(os.path.join(workdir, TB_DIRNAME))

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        row = {k: "" for k in COLUMNS}
        row.update({k: v for k, v in metrics.items() if k in COLUMNS})
        row["step"] = step
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow(row)
        if self._tb is not None:
            for k, v in metrics.items():
                if k not in ("step", "epoch", "elapsed_s") and v is not None and v != "":
                    self._tb.scalar(k, float(v), step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_csv(path: str) -> list[dict[str, str]]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_curves(csv_path: str, png_path: str, title: str = "") -> str:
    """Writes a PNG with loss (train, eval) and accuracy (train, eval top-1) against step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_csv(csv_path)

    def series(key):
        pts = [(float(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label, ax in (("train_loss", "train", ax_loss), ("eval_loss", "eval", ax_loss),
                           ("train_accuracy", "train", ax_acc), ("eval_top1", "eval top-1", ax_acc),
                           ("eval_ema_top1", "eval top-1 (EMA)", ax_acc)):
        x, y = series(key)
        if x:
            ax.plot(x, y, marker="o" if key.startswith("eval") else None, markersize=3, label=label)
    ax_loss.set(xlabel="step", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(0, 1.0))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def _fmt_time(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


class Progress:
    """Step, loss, images/s and ETA: a tqdm bar on a terminal, else one line per log step.

    mode: "auto" | "tqdm" | "lines" | "none". Rates exclude the first step (compilation).
    """

    def __init__(self, total_steps: int, start_step: int, mode: str = "auto",
                 enabled: bool = True, stream=None):
        self.total, self.start = total_steps, start_step
        self.stream = stream or sys.stderr
        if not enabled or mode == "none":
            mode = "none"
        elif mode == "auto":
            mode = "tqdm" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode = mode
        self._bar = None
        self._t0 = None  # time when the first step finished (after compilation)
        self._s0 = start_step
        if mode == "tqdm":
            from tqdm import tqdm
            self._bar = tqdm(total=total_steps, initial=start_step, file=self.stream,
                             unit="step", dynamic_ncols=True)

    def steps_per_sec(self, step: int) -> float | None:
        if self._t0 is None or step <= self._s0:
            return None
        return (step - self._s0) / max(1e-9, time.perf_counter() - self._t0)

    def update(self, step: int, metrics: Mapping[str, Any] | None = None) -> None:
        """Call after every step; ``metrics`` (loss, images_per_sec, ...) at log steps."""
        if self._t0 is None:
            self._t0, self._s0 = time.perf_counter(), step
        if self._bar is not None:
            self._bar.n = step
            if metrics:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()
                                       if isinstance(v, float)}, refresh=False)
            self._bar.refresh()
        elif self.mode == "lines" and metrics:
            rate = self.steps_per_sec(step)
            eta = _fmt_time((self.total - step) / rate) if rate else "?"
            parts = [f"step {step}/{self.total} ({100.0 * step / self.total:.0f}%)"]
            parts += [f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (float, int))]
            parts.append(f"ETA {eta}")
            print(" | ".join(parts), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self.mode == "none":
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
