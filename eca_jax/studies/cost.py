"""Exact cost of every experiment row on a model: attention parameters, extra MACs, img/s.

    python -m eca_jax.studies.cost --model resnet50 [--rows table2|ksweep|all|SE,ECA]
        [--size 224] [--batch 8] [--repeats 5] [--no-timing] [--csv FILE] [--markdown FILE]

For each row: the attention (paper's notation), its per-block parameter rule, the count measured
on the built model (parameters under the attention scopes, :func:`eca_jax.models.summary.summarize`,
``jax.eval_shape``), the same rule summed over the network's blocks (the two must be equal), the
MACs it adds to the vanilla model at ``--size``, and the whole model's inference img/s on this
machine against the vanilla model (median of ``--repeats`` jitted passes at ``--batch``). The
vanilla row is timed again like every other row: its ratio to the first vanilla timing (ideally
1.000) shows the run-to-run noise of the machine.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
from typing import Optional, Sequence

from eca_jax.models import ResNet
from eca_jax.models.registry import create_model
from eca_jax.models.resnet import EXPANSION, attention_stage_k
from eca_jax.models.summary import summarize
from eca_jax.nn.eca import eca_kernel_size
from eca_jax.nn.rows import ROWS, get_row
from eca_jax.studies import throughput
from eca_jax.studies.plan import STUDIES


@dataclasses.dataclass(frozen=True)
class RowCost:
    """One row's cost on one model (img/s None when not timed)."""
    row: str
    formula: str
    params_rule: str
    attention_params: int        # measured on the built model
    formula_params: int          # the per-block rule summed over the blocks
    macs: int
    extra_macs: int              # macs - the vanilla model's macs
    images_per_sec: Optional[float] = None
    vs_vanilla: Optional[float] = None   # images_per_sec / the vanilla model's


def build(model_name: str, row: str, **kwargs) -> ResNet:
    """``create_model(model_name, attn=row)``; ValueError if the model has no attention slot."""
    model = create_model(model_name, attn=get_row(row).name, **kwargs)
    if not isinstance(model, ResNet):
        raise ValueError(f"{model_name!r} ({type(model).__name__}) has no attention slot for the "
                         "paper's rows; use a ResNet (resnet50, resnet101, eca_resnet50 ...).")
    return model


def block_channels_and_k(model: ResNet) -> list[tuple[int, Optional[int]]]:
    """(C, k) of every block's attention, in order; k None for rows without a kernel size.

    C = the stage's planes times the block expansion; k = the stage's k of the model (adaptive:
    Eq. 12 of C, with the model's ``min_size`` if it sets one).
    """
    stage_k = attention_stage_k(model.attn, model.k_size, len(model.layers))
    min_size = dict(model.attn_kwargs or {}).get("min_size", 1)
    row = get_row(model.attn)
    out = []
    for blocks, planes, k in zip(model.layers, model.widths, stage_k):
        channels = planes * EXPANSION[model.block]
        if row.k is not None and k is None:
            k = eca_kernel_size(channels, min_size=min_size)
        out.extend([(channels, k if row.k is not None else None)] * blocks)
    return out


def formula_params(model: ResNet) -> int:
    """The row's per-block parameter rule summed over the model's blocks (no model is built)."""
    row = get_row(model.attn)
    return sum(row.block_params(c, k) for c, k in block_channels_and_k(model))


def row_costs(model_name: str = "resnet50", rows: Sequence[str] = STUDIES["table2"], size: int = 224,
              timing: bool = True, batch: int = 8, repeats: int = 5) -> list[RowCost]:
    """The cost of every row in ``rows`` on ``model_name`` (see the module docstring)."""
    vanilla = build(model_name, "vanilla")
    base = summarize(vanilla, size)
    base_speed = throughput.images_per_sec(vanilla, batch, size, repeats) if timing else None
    out = []
    for name in rows:
        row = get_row(name)
        model = build(model_name, row.name)
        s = summarize(model, size, model_name)
        speed = throughput.images_per_sec(model, batch, size, repeats) if timing else None
        out.append(RowCost(row.name, row.formula, row.params_rule, s.attention_params,
                           formula_params(model), s.macs, s.macs - base.macs, speed,
                           speed / base_speed if timing else None))
    return out


FIELDS = ("row", "formula", "params_rule", "attention_params", "formula_params", "macs", "extra_macs",
          "images_per_sec", "vs_vanilla")


def to_csv(costs: Sequence[RowCost]) -> str:
    """CSV text, one line per row, columns :data:`FIELDS`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    for c in costs:
        writer.writerow({k: ("" if v is None else v) for k, v in dataclasses.asdict(c).items()})
    return buf.getvalue()


def to_markdown(costs: Sequence[RowCost], model_name: str, size: int, timing_note: str = "") -> str:
    """A markdown table (and a heading line naming the model and the input size)."""
    lines = [f"Attention cost on {model_name} at {size}x{size}{timing_note}:", "",
             "| row | attention | params per block | attention params (model) | rule summed over blocks "
             "| extra MACs | img/s | vs vanilla |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for c in costs:
        speed = "-" if c.images_per_sec is None else f"{c.images_per_sec:.1f}"
        ratio = "-" if c.vs_vanilla is None else f"{c.vs_vanilla:.3f}"
        lines.append(f"| {c.row} | {c.formula} | {c.params_rule} | {c.attention_params:,} | "
                     f"{c.formula_params:,} | {c.extra_macs:,} | {speed} | {ratio} |")
    return "\n".join(lines) + "\n"


def _rows_arg(text: str) -> list[str]:
    if text == "all":
        return list(ROWS)
    if text in STUDIES:
        return list(STUDIES[text])
    return [get_row(name.strip()).name for name in text.split(",") if name.strip()]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eca_jax.studies.cost", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet50", help="a registered ResNet (default resnet50)")
    parser.add_argument("--rows", default="table2", help="table2 | ksweep | all | NAME,NAME,...")
    parser.add_argument("--size", type=int, default=224, help="input size for MACs and timing")
    parser.add_argument("--batch", type=int, default=8, help="timing batch size")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per model (median)")
    parser.add_argument("--no-timing", action="store_true", help="skip the img/s measurement")
    parser.add_argument("--csv", help="also write the table as CSV to this file")
    parser.add_argument("--markdown", help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    costs = row_costs(args.model, _rows_arg(args.rows), args.size, not args.no_timing, args.batch, args.repeats)
    note = "" if args.no_timing else f" (inference img/s: batch {args.batch}, median of {args.repeats})"
    text = to_markdown(costs, args.model, args.size, note)
    print(text)
    for path, content in ((args.csv, to_csv(costs)), (args.markdown, text)):
        if path:
            with open(path, "w") as f:
                f.write(content)


if __name__ == "__main__":
    main()
