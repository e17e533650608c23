"""Exact cost of every experiment row on a model: attention parameters, extra MACs, img/s.

    python -m eca_jax.studies.cost --model resnet50 [--rows table2|ksweep|table3|mobilenetv2|all|SE,ECA]
        [--size 224] [--batch 8] [--repeats 5] [--no-timing] [--train] [--csv FILE] [--markdown FILE]

For each row: the attention (paper's notation), its per-block parameter rule, the count measured
on the built model (parameters under the attention scopes, :func:`eca_jax.models.summary.summarize`,
``jax.eval_shape``), the same rule summed over the network's blocks (the two must be equal), the
whole model's parameters and MACs (the paper's "FLOPs" column counts multiply-adds) and the MACs
the row adds to the vanilla model at ``--size``, and the whole model's inference img/s on this
machine against the vanilla model (median of ``--repeats`` jitted passes at ``--batch``); with
``--train`` also training img/s (forward + backward + BatchNorm statistics), as Table 3 does.
The vanilla row is timed again like every other row: its ratio to the first vanilla timing
(ideally 1.000) shows the run-to-run noise of the machine. Models: the ResNets and MobileNetV2
(``--model mobilenet_v2 --rows mobilenetv2``: SE with r = 8 against ECA, Table 3).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
from typing import Optional, Sequence

import flax.linen as nn

from eca_jax.models import MobileNetV2, ResNet
from eca_jax.models.mobilenet_v2 import INVERTED_RESIDUAL_SETTINGS
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
    params: int = 0              # the whole model's parameters
    train_images_per_sec: Optional[float] = None
    train_vs_vanilla: Optional[float] = None


def build(model_name: str, row: str, **kwargs) -> ResNet | MobileNetV2:
    """``create_model(model_name, attn=row)``; ValueError if the model has no attention slot."""
    model = create_model(model_name, attn=get_row(row).name, **kwargs)
    if not isinstance(model, (ResNet, MobileNetV2)):
        raise ValueError(f"{model_name!r} ({type(model).__name__}) has no attention slot for the "
                         "paper's rows; use a ResNet (resnet50, resnet101, eca_resnet50 ...) or a MobileNetV2.")
    return model


def _mobilenet_channels_and_k(model: MobileNetV2) -> list[tuple[int, Optional[int]]]:
    """(C, k) of each of MobileNetV2's 17 blocks: its output channels and ECA k (None: no ECA)."""
    out = []
    for _t, c, n, _s in INVERTED_RESIDUAL_SETTINGS:
        channels = model._channels(c)
        out.extend([(channels, model._block_k(c, channels))] * n)
    return out


def block_channels_and_k(model: ResNet | MobileNetV2) -> list[tuple[int, Optional[int]]]:
    """(C, k) of every block's attention, in order; k None for rows without a kernel size.

    ResNet: C = the stage's planes times the block expansion; k = the stage's k of the model
    (adaptive: Eq. 12 of C, with the model's ``min_size`` if it sets one). MobileNetV2: each
    block's output channels and its ECA k.
    """
    if isinstance(model, MobileNetV2):
        return _mobilenet_channels_and_k(model)
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


def _speeds(model: nn.Module, timing: bool, train: bool, batch: int, size: int,
            repeats: int) -> tuple[Optional[float], Optional[float]]:
    """(inference img/s, training img/s); None where not measured."""
    infer = throughput.images_per_sec(model, batch, size, repeats) if timing else None
    trained = throughput.train_images_per_sec(model, batch, size, repeats) if timing and train else None
    return infer, trained


def _ratio(speed: Optional[float], base: Optional[float]) -> Optional[float]:
    return None if speed is None or not base else speed / base


def row_costs(model_name: str = "resnet50", rows: Sequence[str] = STUDIES["table2"], size: int = 224,
              timing: bool = True, batch: int = 8, repeats: int = 5, train: bool = False) -> list[RowCost]:
    """The cost of every row in ``rows`` on ``model_name`` (see the module docstring)."""
    vanilla = build(model_name, "vanilla")
    base = summarize(vanilla, size)
    base_infer, base_train = _speeds(vanilla, timing, train, batch, size, repeats)
    out = []
    for name in rows:
        row = get_row(name)
        model = build(model_name, row.name)
        s = summarize(model, size, model_name)
        infer, trained = _speeds(model, timing, train, batch, size, repeats)
        out.append(RowCost(row.name, row.formula, row.params_rule, s.attention_params,
                           formula_params(model), s.macs, s.macs - base.macs, infer,
                           _ratio(infer, base_infer), s.params, trained, _ratio(trained, base_train)))
    return out


FIELDS = ("row", "formula", "params_rule", "attention_params", "formula_params", "macs", "extra_macs",
          "images_per_sec", "vs_vanilla", "params", "train_images_per_sec", "train_vs_vanilla")


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
             "| params | GMACs | extra MACs | train img/s | vs vanilla | infer img/s | vs vanilla |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    num = lambda v, fmt: "-" if v is None else format(v, fmt)   # noqa: E731
    for c in costs:
        lines.append(f"| {c.row} | {c.formula} | {c.params_rule} | {c.attention_params:,} | "
                     f"{c.formula_params:,} | {c.params:,} | {c.macs / 1e9:.3f} | {c.extra_macs:,} | "
                     f"{num(c.train_images_per_sec, '.1f')} | {num(c.train_vs_vanilla, '.3f')} | "
                     f"{num(c.images_per_sec, '.1f')} | {num(c.vs_vanilla, '.3f')} |")
    return "\n".join(lines) + "\n"


def _rows_arg(text: str) -> list[str]:
    if text == "all":
        return list(ROWS)
    if text in STUDIES:
        return list(STUDIES[text])
    return [get_row(name.strip()).name for name in text.split(",") if name.strip()]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eca_jax.studies.cost", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet50", help="a registered ResNet or MobileNetV2 (default resnet50)")
    parser.add_argument("--rows", default="table2", help="table2 | ksweep | table3 | mobilenetv2 | all | NAME,...")
    parser.add_argument("--size", type=int, default=224, help="input size for MACs and timing")
    parser.add_argument("--batch", type=int, default=8, help="timing batch size")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per model (median)")
    parser.add_argument("--no-timing", action="store_true", help="skip the img/s measurement")
    parser.add_argument("--train", action="store_true", help="also time training steps (forward + backward)")
    parser.add_argument("--csv", help="also write the table as CSV to this file")
    parser.add_argument("--markdown", help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    costs = row_costs(args.model, _rows_arg(args.rows), args.size, not args.no_timing, args.batch, args.repeats,
                      args.train)
    note = "" if args.no_timing else f" (img/s: batch {args.batch}, median of {args.repeats} jitted passes)"
    text = to_markdown(costs, args.model, args.size, note)
    print(text)
    for path, content in ((args.csv, to_csv(costs)), (args.markdown, text)):
        if path:
            with open(path, "w") as f:
                f.write(content)


if __name__ == "__main__":
    main()
