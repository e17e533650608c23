"""The README's Python snippets run as written, from a working directory holding only what they name.

Each ```python block of README.md is executed in a fresh namespace with the current directory set
to a temporary folder. The conversion snippet names ``eca_resnet50_k3557.pth.tar`` and
``ckpt/eca_resnet50`` by relative path: the test writes a randomised release-format file there
(tests/torch_reference.py) and converts it with the command line first, as the README does.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    """The README's ```python code blocks, in order."""
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


NETWORK_MARK = "# Downloads weights on first use"


def _needs_network(block: str) -> bool:
    """The pretrained snippet: it downloads (tests/test_pretrained.py runs the same calls offline)."""
    return block.startswith(NETWORK_MARK)


def _needs_files(block: str) -> bool:
    return not _needs_network(block) and (".pth" in block or "ckpt/" in block)


def test_readme_has_python_blocks():
    blocks = python_blocks()
    assert len(blocks) >= 4 and sum(map(_needs_files, blocks)) >= 1 and sum(map(_needs_network, blocks)) == 1


@pytest.mark.slow
@pytest.mark.parametrize("index", [i for i, b in enumerate(python_blocks())
                                   if not _needs_files(b) and not _needs_network(b)])
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(python_blocks()[index], f"README.md python block {index + 1}", "exec"), namespace)


@pytest.mark.slow
def test_readme_conversion_snippet_with_relative_paths(tmp_path, monkeypatch):
    from eca_jax.convert.__main__ import main as convert_cli
    from torch_reference import build

    monkeypatch.chdir(tmp_path)
    model = build("eca_resnet50", seed=0)   # random weights and random BatchNorm statistics
    torch.save({"epoch": 100, "arch": "se_resnet50",
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               "eca_resnet50_k3557.pth.tar")
    assert convert_cli(["eca_resnet50_k3557.pth.tar", "ckpt/eca_resnet50"]) == 0
    (block,) = [b for b in python_blocks() if _needs_files(b)]
    namespace: dict = {}
    exec(compile(block, "README.md conversion block", "exec"), namespace)
    assert namespace["logits"].shape == (2, 1000)
    x = torch.from_numpy(namespace["x_nhwc"]).permute(0, 3, 1, 2)
    with torch.no_grad():
        want = model.eval()(x).numpy()
    got = np.asarray(namespace["module"].apply(namespace["variables"], namespace["x_nhwc"], train=False))
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel < 1e-4, rel   # float32 logits; the converter's own tests measure ~9e-7
    assert Path("eca_resnet50.pth").is_file()
    assert namespace["loaded"].metadata["arch"] == namespace["loaded"].signature.model == "eca_resnet50"
