"""The paper's experiments with one command: rows by name, their exact cost, the study runner.

Fast tier: names, the cost of every row on ResNet-50 against its per-block rule (jax.eval_shape),
the tables and the verdict on the seed spread from made-up records. Slow: ResNet-101's counts and
the runner training the smoke config (2 rows x 2 seeds), skipping finished runs and resuming an
interrupted one to the same final metrics as an uninterrupted run.
"""
import csv
import json
import os

import jax
import jax.numpy as jnp
import pytest

import eca_jax.nn as enn
from eca_jax.models import create_model
from eca_jax.models.summary import summarize
from eca_jax.studies import cost, plan, plot, results, run, throughput
from eca_jax.studies.paper import PAPER_TOP1, paper_top1
from eca_jax.train.config import make_config
from eca_jax.train.loop import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "experiments", "configs", "smoke.py")
ALL_ROWS = enn.row_names()
# Sum of C over the attention blocks: 3 x 256 + 4 x 512 + 6 x 1024 + 3 x 2048 (ResNet-50).
SUM_C_R50 = 15_104


# ---------------------------------------------------------------- names
def test_every_paper_name_is_a_row():
    assert ALL_ROWS == ["vanilla", "SE", "SE-Var1", "SE-Var2", "SE-Var3", "SE-GC1", "SE-GC2", "SE-GC3",
                        "ECA-NS", "ECA", "ECA-k3", "ECA-k5", "ECA-k7", "ECA-k9", "ECA-adaptive",
                        "CBAM", "GC", "SE-r8"]
    assert plan.study_rows("table2") == ALL_ROWS[:10]
    assert plan.study_rows("ksweep") == ALL_ROWS[10:15] + ["SE"]
    assert plan.study_rows("table3") == ["vanilla", "SE", "CBAM", "GC", "ECA"]
    assert plan.study_rows("mobilenetv2") == ["vanilla", "SE-r8", "ECA"]
    assert plan.study_rows("rows=se,Eca-K5,SE") == ["SE", "ECA-k5"]


@pytest.mark.parametrize("spelling", ["SE-GC2", "se_gc2", "Se-Gc2", "SE_GC2"])
def test_names_are_case_insensitive(spelling):
    layer = enn.make_attention(spelling)
    assert isinstance(layer, enn.SEGC) and layer.channels_per_group == 16 and layer.groups is None
    assert enn.get_row(spelling).name == "SE-GC2"
    model = create_model("resnet18", attn=spelling)
    assert summarize(model, 64).attention_params == 16 * 2 * (64 + 128 + 256 + 512)


def test_rows_carry_the_papers_settings():
    assert enn.make_attention("SE").reduction == 16
    assert enn.make_attention("se-gc1").groups == 16
    assert enn.make_attention("SE-GC3").channels_per_group == 8
    assert enn.make_attention("eca-ns").k_size == 3 and enn.make_attention("ECA").k_size == 3
    assert enn.make_attention("ECA-k7").k_size == 7 and enn.make_attention("ECA-adaptive").k_size is None
    assert enn.make_attention("vanilla") is None
    assert enn.make_attention("ECA", k_size=5).k_size == 5          # keywords win over the row


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"SE-GC2.*ECA-adaptive"):
        enn.make_attention("SE-GC4")
    with pytest.raises(ValueError, match=r"Rows: vanilla, SE, .*ECA-adaptive"):
        plan.study_rows("rows=ECA-k4")
    with pytest.raises(ValueError, match="table2, ksweep, table3, mobilenetv2 or rows="):
        plan.study_rows("table4")


def test_row_from_the_training_config():
    """--config.model_kwargs.attn=SE-GC2 builds the row (any spelling)."""
    config = make_config(model="resnet8_cifar", total_steps=1, model_kwargs=dict(attn="se-gc2"))
    assert summarize(build_model(config, 10), 32).attention_params == 16 * (16 + 32 + 64)
    with_k = plan.run_config(make_config(model="eca_resnet8_cifar", total_steps=1), "ECA-k5", 3)
    assert with_k.seed == 3 and with_k.model_kwargs.attn == "ECA-k5" and with_k.is_locked
    # the sweep row's k wins over the model's own k_size = 3
    assert summarize(build_model(with_k, 10), 32).attention_params == 3 * 5


def test_groups_not_dividing_c_name_the_layer_and_c():
    model = create_model("resnet8_cifar", attn="SE-GC2", widths=(16, 24, 32))
    with pytest.raises(ValueError, match=r"SEGC at layer2\.0\.eca: channels_per_group=16 .*C=24"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    with pytest.raises(ValueError, match="not both"):
        enn.SEGC(groups=2, channels_per_group=4).init(jax.random.key(0), jnp.zeros((1, 2, 2, 8)))


# MobileNetV2's 17 blocks (torchvision widths): sum of C and of C * (C // 8) + C // 8 over them.
MBV2_C = (16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320)


@pytest.mark.parametrize("row,expected", [
    ("SE-r8", sum(2 * c * (c // 8) + c // 8 + c for c in MBV2_C)),   # 58,620 (paper: 3.40M - 3.34M)
    ("ECA", 10 * 1 + 7 * 3),                                          # the release's rule, any spelling
    ("ECA-k5", 17 * 5), ("CBAM", None), ("vanilla", 0)])
def test_mobilenet_v2_takes_every_row_in_the_release_eca_slot(row, expected):
    """Table 3's MobileNetV2 study: SE (r = 8) sits where the release puts ECA, before the residual."""
    model = cost.build("mobilenet_v2", row)
    measured = summarize(model, 224).attention_params
    assert measured == cost.formula_params(model)
    if expected is not None:
        assert measured == expected
    if row == "SE-r8":
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))["params"]
        assert shapes["features.2"]["conv.4"]["fc.0"]["kernel"].shape == (24, 3)


def test_an_unknown_row_in_a_model_names_the_rows():
    model = create_model("mobilenet_v2", attn="SE-r4")
    with pytest.raises(ValueError, match="Unknown attention 'SE-r4'"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))


# ---------------------------------------------------------------- cost
def _check_row_cost(model_name, row):
    model = create_model(model_name, attn=row)
    measured = summarize(model, 224).attention_params
    assert measured == cost.formula_params(model), (model_name, row)
    return measured


@pytest.mark.parametrize("row", ALL_ROWS)
def test_resnet50_attention_params_equal_the_rule_summed_over_blocks(row):
    measured = _check_row_cost("resnet50", row)
    expected = {"vanilla": 0, "SE-Var1": 0, "SE-Var2": SUM_C_R50, "SE-GC2": 16 * SUM_C_R50,
                "SE-GC3": 8 * SUM_C_R50, "ECA-NS": 3 * SUM_C_R50, "ECA": 3 * 16, "ECA-k9": 9 * 16,
                "ECA-adaptive": 5 * 13 + 7 * 3}
    if row in expected:
        assert measured == expected[row]


@pytest.mark.slow
@pytest.mark.parametrize("row", ALL_ROWS)
def test_resnet101_attention_params_equal_the_rule_summed_over_blocks(row):
    _check_row_cost("resnet101", row)


def test_cost_table_without_timing_and_throughput():
    costs = cost.row_costs("resnet8_cifar", ["vanilla", "SE-Var3", "ECA"], size=32, timing=False)
    assert [c.row for c in costs] == ["vanilla", "SE-Var3", "ECA"]
    assert all(c.attention_params == c.formula_params for c in costs)
    assert costs[1].extra_macs == 16 ** 2 + 32 ** 2 + 64 ** 2 and costs[2].extra_macs == 3 * (16 + 32 + 64)
    md, table = cost.to_markdown(costs, "resnet8_cifar", 32), list(csv.DictReader(cost.to_csv(costs).splitlines()))
    assert "| SE-Var3 | sigmoid(W y), one C x C FC | C^2 | 5,376 | 5,376 |" in md
    assert table[2]["attention_params"] == "9" and table[2]["images_per_sec"] == ""
    speed = throughput.images_per_sec(create_model("resnet8_cifar", attn="ECA"), batch=2, size=16, repeats=1)
    assert speed > 0


# ---------------------------------------------------------------- tables
def _summary(row, top1, params=10):
    records = [results.RunRecord(row, s, 8, t, 100.0, True) for s, t in enumerate(top1)]
    return results.summarize_row(row, params, 1000, records, "resnet50")


def test_table_states_when_rows_are_within_the_seed_spread(tmp_path):
    close = [_summary("SE", [70.0, 72.0, 71.0]), _summary("ECA", [71.5, 70.5, 71.0], 3)]
    text = results.to_markdown(close, "t", "resnet50")
    assert "within the seed-to-seed spread" in text and "do not tell the rows apart" in text
    assert "76.71 (paper, resnet50 Table 2)" in text and "s0: 70.00, s1: 72.00, s2: 71.00" in text
    apart = [_summary("SE", [70.0, 70.2]), _summary("ECA", [80.0, 80.2])]
    assert "exceeds" in results.verdict(apart)
    rows = list(csv.DictReader(results.to_csv(apart).splitlines()))
    assert [r["within_spread_of_best"] for r in rows] == ["no", "best"] and rows[1]["top1_mean"] == "80.10"
    assert "single seed" in results.verdict([_summary("SE", [70.0]), _summary("ECA", [71.0])])
    assert plot.plot_table2(close, str(tmp_path / "t.png"), "t") and (tmp_path / "t.png").stat().st_size > 1000
    sweep = [_summary(r, [70.0 + i, 70.5 + i]) for i, r in enumerate(plan.study_rows("ksweep"))]
    assert plot.plot_ksweep(sweep, str(tmp_path / "k.png"), "k") and (tmp_path / "k.png").stat().st_size > 1000


def test_paper_figures_are_the_papers():
    assert paper_top1("vanilla") == 75.20 and paper_top1("ECA") == 77.43 and paper_top1("SE-GC2") == 76.98
    assert paper_top1("ECA-k5") is None and paper_top1("ECA-adaptive", "resnet101") == 78.65
    assert set(PAPER_TOP1["resnet50"]) <= set(ALL_ROWS)


def test_pod_config_takes_the_row_as_its_argument():
    import importlib.util
    spec = importlib.util.spec_from_file_location("_table2", os.path.join(ROOT, "experiments", "configs",
                                                                         "imagenet_table2.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.get_config("se_gc2").model_kwargs.attn == "SE-GC2"
    assert module.get_config().model_kwargs.attn == "ECA" and module.get_config().model == "resnet50"
    assert plan.total_steps(module.get_config()) == 100 * (1_281_167 // 256)
    cmds = run.trainer_commands("experiments/configs/imagenet_table2.py", ["SE-GC2"], [0, 1], "gs://b/t2")
    assert cmds[1].endswith("--workdir gs://b/t2/SE-GC2/seed1 --config.model_kwargs.attn=SE-GC2 --config.seed=1")


# ---------------------------------------------------------------- the runner (trains)
def _smoke(tmp_path, **overrides):
    import importlib.util
    spec = importlib.util.spec_from_file_location("_smoke", SMOKE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    with config.unlocked():
        config.data_dir = str(tmp_path / "data")
        config.progress = "none"
        config.update(overrides)
    config.lock()
    return config


@pytest.mark.slow
def test_runner_writes_tables_skips_finished_runs_and_resumes(tmp_path):
    from eca_jax.train.loop import train_and_evaluate
    base, workdir, lines = _smoke(tmp_path), str(tmp_path / "study"), []
    # An interrupted run: ECA seed 1 stopped at step 4 of 8 (its checkpoint at 4, no result file).
    partial = plan.run_config(_smoke(tmp_path, total_steps=4), "ECA", 1)
    assert train_and_evaluate(partial, plan.run_dir(workdir, "ECA", 1))["step"] == 4
    out = run.run_study(base, ["vanilla", "ECA"], [0, 1], workdir, study="smoke", log=lines.append)
    status = [line.split("seed")[1] for line in lines[:4]]
    assert [s.split()[1] for s in status] == ["trained", "trained", "trained", "resumed"], lines
    assert all(os.path.getsize(p) > 100 for p in (out.csv, out.markdown, out.png))
    table = list(csv.DictReader(open(out.csv)))
    assert [r["row"] for r in table] == ["vanilla", "ECA"] and [r["n_seeds"] for r in table] == ["2", "2"]
    assert table[1]["attention_params"] == "9" and table[1]["paper_top1"] == "77.43"
    assert "paper's ImageNet top-1" in open(out.markdown).read()
    # The resumed run ends where an uninterrupted one ends.
    reference = train_and_evaluate(plan.run_config(base, "ECA", 1), str(tmp_path / "reference"))
    resumed = json.load(open(os.path.join(plan.run_dir(workdir, "ECA", 1), plan.RESULT_NAME)))
    assert resumed["step"] == reference["step"] == 8
    for key in ("eval_top1", "eval_loss"):
        assert resumed[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-6), key
    # Rerun: nothing is trained again; --collect reads the same table.
    again = []
    run.run_study(base, ["vanilla", "ECA"], [0, 1], workdir, study="smoke", log=again.append)
    assert all("finished earlier, skipped" in line for line in again[:4]), again
    collected = []
    run.run_study(base, ["vanilla", "ECA"], [0, 1], workdir, collect=True, log=collected.append)
    assert all(" finished " in line for line in collected[:4]) and list(csv.DictReader(open(out.csv))) == table
