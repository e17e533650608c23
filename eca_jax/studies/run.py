"""The study runner: every row x seed as one ordinary run of the trainer, then one table.

    python -m eca_jax.studies.run --study table2|ksweep|table3|mobilenetv2|rows=SE,ECA \\
        --config experiments/configs/digits.py --seeds 0,1,2 --workdir studies/table2 [--config.k=v]
    ... --collect           # only read finished workdirs (e.g. trained on a pod) into the table
    ... --print_commands    # print one trainer command per row x seed (to run them elsewhere)

Runs go one after another, each in ``<workdir>/<row>/seed<seed>`` (:mod:`eca_jax.studies.plan`)
through :func:`eca_jax.train.loop.train_and_evaluate`: a finished run (its ``study_result.json``
or last evaluation at the final step) is not rerun; an interrupted one resumes from its latest
checkpoint. One progress line per run. Writes ``results.csv``, ``results.md`` and
``results.png`` in ``--workdir``.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Callable, Optional, Sequence

import ml_collections
from etils import epath

from eca_jax.models.summary import summarize
from eca_jax.studies import plan, plot, results
from eca_jax.studies.paper import paper_backbone

# Classes of the datasets the configs name (the MACs of the classifier depend on them).
NUM_CLASSES = {"digits": 10, "imagenet2012": 1000}


@dataclasses.dataclass(frozen=True)
class StudyOutputs:
    """Paths of what a study wrote and the per-row summaries."""
    csv: str
    markdown: str
    png: str
    summaries: tuple


def _checkpoint_steps(run_dir: str) -> list[int]:
    path = epath.Path(run_dir) / "checkpoints"
    return sorted(int(d.name) for d in path.iterdir() if d.name.isdigit()) if path.is_dir() else []


def _line(i: int, n: int, row: str, seed: int, status: str, record: Optional[results.RunRecord],
          elapsed: float) -> str:
    top1 = f"top-1 {record.top1:6.2f}%" if record is not None and record.top1 is not None else "top-1     -  "
    return f"[{i}/{n}] {row:<13} seed {seed:<3} {status:<30} {top1}  {elapsed:7.1f} s"


def train_run(config: ml_collections.ConfigDict, run_dir: str, row: str, seed: int, total: int,
              data_module: Any = None) -> tuple[str, Optional[results.RunRecord], bool]:
    """Trains (or resumes, or skips) one run: (status, its record, preempted)."""
    from eca_jax.train.loop import train_and_evaluate  # noqa: PLC0415
    before = results.read_run(run_dir, row, seed, total)
    if before is not None and before.finished:
        return "finished earlier, skipped", before, False
    steps = _checkpoint_steps(run_dir)
    status = f"resumed from step {steps[-1]}" if steps else "trained"
    result = train_and_evaluate(config, run_dir, data_module=data_module)
    if result.get("preempted"):
        return f"preempted at step {result['step']}", None, True
    results.write_result(run_dir, row, seed, result)
    return status, results.read_run(run_dir, row, seed, total), False


def collect_run(run_dir: str, row: str, seed: int, total: int) -> tuple[str, Optional[results.RunRecord]]:
    """Reads one run without training: (status, record or None)."""
    record = results.read_run(run_dir, row, seed, total)
    if record is None:
        return "missing", None
    return ("finished" if record.finished else f"unfinished: step {record.step} of {total}"), record


def _row_cost(base: ml_collections.ConfigDict, row: str) -> tuple[int, int]:
    """(attention params, MACs) of the row's model at the config's image size (no compute)."""
    from eca_jax.train.loop import build_model  # noqa: PLC0415
    config = plan.run_config(base, row, 0)
    num_classes = config.num_classes or NUM_CLASSES.get(config.dataset, 1000)
    s = summarize(build_model(config, num_classes), config.image_size)
    return s.attention_params, s.macs


def run_study(base: ml_collections.ConfigDict, rows: Sequence[str], seeds: Sequence[int], workdir: str, *,
              collect: bool = False, study: str = "study", data_module: Any = None,
              log: Callable[[str], None] = print) -> StudyOutputs:
    """Runs (``collect=False``) or reads every row x seed and writes the table, CSV and PNG.

    Raises ValueError before any training if ``base.model`` has no attention slot.
    """
    plan.check_attention_slot(base)
    rows = [plan.study_rows(f"rows={r}")[0] for r in rows]
    total = plan.total_steps(base)
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    records: dict[str, list[results.RunRecord]] = {r: [] for r in rows}
    runs = [(row, seed) for row in rows for seed in seeds]
    for i, (row, seed) in enumerate(runs, 1):
        run_dir, start, preempted = plan.run_dir(workdir, row, seed), time.perf_counter(), False
        if collect:
            status, record = collect_run(run_dir, row, seed, total)
        else:
            status, record, preempted = train_run(plan.run_config(base, row, seed), run_dir, row, seed,
                                                  total, data_module)
        log(_line(i, len(runs), row, seed, status, record, time.perf_counter() - start))
        if record is not None:
            records[row].append(record)
        if preempted:
            log("Stopped (SIGTERM): rerun the same command to resume.")
            break
    return write_outputs(base, rows, seeds, workdir, records, study, total, log)


def write_outputs(base: ml_collections.ConfigDict, rows: Sequence[str], seeds: Sequence[int], workdir: str,
                  records: dict, study: str, total: int, log: Callable[[str], None] = print) -> StudyOutputs:
    """Writes ``results.csv``, ``results.md`` and ``results.png`` of the runs' records."""
    backbone = paper_backbone(base.model)
    summaries = tuple(results.summarize_row(row, *_row_cost(base, row), records[row], backbone) for row in rows)
    title = (f"{study} on {base.model} / {base.dataset}: {total} steps, seeds {','.join(map(str, seeds))}")
    paths = {ext: os.path.join(workdir, f"results.{ext}") for ext in ("csv", "md", "png")}
    epath.Path(paths["csv"]).write_text(results.to_csv(summaries))
    epath.Path(paths["md"]).write_text(results.to_markdown(summaries, title, backbone))
    draw = plot.plot_ksweep if plan.study_kind(rows) == "ksweep" else plot.plot_table2
    draw(summaries, paths["png"], title)
    log(f"Wrote {paths['md']}, {paths['csv']}, {paths['png']}")
    return StudyOutputs(paths["csv"], paths["md"], paths["png"], summaries)


def trainer_commands(config_arg: str, rows: Sequence[str], seeds: Sequence[int], workdir: str,
                     extra: Sequence[str] = ()) -> list[str]:
    """One ``python -m eca_jax.train`` command per row x seed, into the study's workdir layout."""
    return [f"python -m eca_jax.train --config {config_arg} --workdir {plan.run_dir(workdir, row, seed)} "
            f"--config.model_kwargs.attn={row} --config.seed={seed}" + "".join(f" {a}" for a in extra)
            for row in rows for seed in seeds]


def main(argv: Optional[list[str]] = None) -> None:
    """The command line (absl flags, ``--config.key=value`` overrides as the trainer)."""
    from eca_jax.studies import cli  # noqa: PLC0415
    cli.run(argv)


if __name__ == "__main__":
    main(sys.argv)
