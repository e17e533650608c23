"""The shape of the code: imports run one way, modules and functions stay small.

Layers (a module may import from lower layers and from its own package, nothing else)::

    0  _paths, _lock, constants, perf     (no eca_jax imports)
    1  kernels                            CPU kernels
    2  nn                                 attention layers, fused BatchNorm
    3  models, data                       the zoo; input pipelines (independent of each other)
    4  checkpoints                        every checkpoint read; signatures; the shape check
    5  evaluation, pretrained             eval step and the pass over a dataset; published weights
                                          (manifest, download, cache, convert once)
    6  nnx, train, convert                native flax.nnx layers/models (``create_model(pretrained=)``
                                          needs pretrained); the trainer; PyTorch export and its command line
    7  evaluate, predict                  command lines
    7  studies                            the paper's experiments: rows' cost, the study runner

The static test reads every ``import`` statement, including those inside functions, so a deferred
import cannot hide a cycle. The fresh-interpreter test shows what importing each layer loads.
A package's ``__main__`` (``python -m eca_jax.models``) is a command line, at the top like the
others: nothing imports it, so it may use any layer (``--pretrained`` lists the published weights).
"""
from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys


ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "eca_jax"
LAYERS = {"_paths": 0, "_lock": 0, "constants": 0, "perf": 0, "kernels": 1, "nn": 2, "models": 3, "data": 3,
          "checkpoints": 4, "evaluation": 5, "pretrained": 5, "nnx": 6, "train": 6, "convert": 6, "evaluate": 7,
          "predict": 7, "studies": 7}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
LONG_FUNCTION_MARK = "# Over 60 lines:"


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _part(module: str) -> str | None:
    """The top-level part of eca_jax a module belongs to (None: the root package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imported(tree: ast.AST) -> set[str]:
    """Every eca_jax module named by an import statement anywhere in ``tree``."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "eca_jax"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "eca_jax":
            if node.module == "eca_jax":  # from eca_jax import data / __version__
                found |= {f"eca_jax.{a.name}" for a in node.names if a.name != "__version__"}
            else:
                found.add(node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    """{part: the other parts it imports} over the whole package."""
    graph: dict[str, set[str]] = {}
    for module, path in _modules().items():
        source = _part(module)
        if source is None or module.endswith(".__main__"):   # entry points: see the module docstring
            continue
        for target in map(_part, _imported(ast.parse(path.read_text()))):
            if target is not None and target != source:
                graph.setdefault(source, set()).add(target)
    return graph


def test_every_part_has_a_layer():
    parts = {_part(m) for m in _modules()} - {None}
    assert parts == set(LAYERS), f"give new parts a layer: {sorted(parts ^ set(LAYERS))}"


def test_nothing_imports_an_entry_point():
    importers = [m for m, path in _modules().items()
                 if any(t.endswith(".__main__") for t in _imported(ast.parse(path.read_text())))]
    assert not importers, f"modules importing a __main__: {importers}"


def test_imports_run_one_way():
    upward = [(source, target) for source, targets in import_graph().items() for target in targets
              if LAYERS[target] >= LAYERS[source]]
    assert not upward, f"imports against the layering (part -> part at the same or a higher layer): {upward}"


def test_importing_a_layer_loads_nothing_above_it():
    script = """
import json, sys
name = sys.argv[1]
__import__(name)
print(json.dumps(sorted({m.split(".")[1] for m in sys.modules if m.startswith("eca_jax.")})))
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    for part in ("nn", "models", "data", "checkpoints", "evaluation", "nnx", "pretrained", "convert", "train",
                 "studies"):
        proc = subprocess.run([sys.executable, "-c", script, f"eca_jax.{part}"], capture_output=True, text=True,
                              env=env, timeout=180, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-2000:]
        loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
        above = sorted(p for p in loaded if LAYERS.get(p, -1) >= LAYERS[part] and p != part)
        assert not above, f"import eca_jax.{part} loaded {above}"


def test_modules_and_functions_stay_small():
    too_long_modules, too_long_functions = [], []
    for module, path in _modules().items():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_MODULE_LINES:
            too_long_modules.append((module, len(lines)))
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if length > MAX_FUNCTION_LINES and not lines[first - 2].strip().startswith(LONG_FUNCTION_MARK):
                    too_long_functions.append((module, node.name, length))
    assert not too_long_modules, f"modules over {MAX_MODULE_LINES} lines: {too_long_modules}"
    assert not too_long_functions, (f"functions over {MAX_FUNCTION_LINES} lines without a "
                                    f"'{LONG_FUNCTION_MARK} <why>' comment above them: {too_long_functions}")


def test_the_graph_is_what_the_docs_say():
    """The import graph the closing note and the checkpoints docstring show (printed with -s)."""
    graph = import_graph()
    print(json.dumps({k: sorted(v) for k, v in sorted(graph.items())}, indent=1))
    assert "train" not in graph.get("convert", set()) and "convert" not in graph.get("train", set())
    assert graph["checkpoints"] <= {"_paths", "models"}
