"""Every experiment config loads, validates and builds: experiments/configs/*.py.

For each file: ``get_config()`` returns a valid config; its model, optimizer and schedule build
exactly as the training loop builds them, and the whole train state is traced abstractly
(``jax.eval_shape``: shapes only, no weights, no data). New config files are picked up
automatically.
"""
from __future__ import annotations

import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from eca_jax.train.config import to_steps, validate_config
from eca_jax.train.loop import build_model
from eca_jax.train.optim import decay_mask, make_optimizer
from eca_jax.train.state import make_init_fn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "experiments", "configs", "*.py")))

# (classes, train examples) of the datasets the configs name; known here so no data is needed.
DATASETS = {"digits": (10, 1437), "imagenet2012": (1000, 1_281_167)}

# Parameter counts of the release architectures: the torchvision / timm backbone plus one
# k-tap kernel per ECA layer, so a config building another architecture fails here.
EXPECTED_PARAMS = {
    # torchvision resnet50 25,557,032 + ECA k (3,5,5,7) x blocks (3,4,6,3) = 80
    "imagenet_eca_resnet50": 25_557_032 + 80,
    # timm resnet50d 25,576,264 + adaptive ECA k (5,5,5,7) x blocks (3,4,6,3) = 86
    "imagenet_ecaresnet50d": 25_576_264 + 86,
    # torchvision mobilenet_v2 3,504,872 + the release's ECA layers (k 1, then 3): 31
    "imagenet_eca_mobilenet_v2": 3_504_872 + 31,
}


def load_config(path: str):
    """``get_config()`` of a config file, imported by path (not as a package module)."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def abstract_build(config):
    """(abstract TrainState, abstract logits (2, K)) built as the loop builds them."""
    num_classes, num_train = DATASETS[config.dataset]
    num_classes = config.num_classes or num_classes
    steps_per_epoch = max(1, num_train // config.batch_size)
    model = build_model(config, num_classes)
    tx, schedule = make_optimizer(config, steps_per_epoch,
                                  to_steps(config, "total", steps_per_epoch))
    size = config.image_size
    state = jax.eval_shape(make_init_fn(model, tx, (1, size, size, 3)), jax.random.PRNGKey(0))
    images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), state.variables, images)
    assert np.isfinite(float(schedule(0))) and float(schedule(steps_per_epoch)) > 0
    return state, logits


def test_configs_are_found():
    names = {os.path.basename(p) for p in CONFIG_FILES}
    assert {"digits.py", "smoke.py", "imagenet_eca_resnet50.py"} <= names, names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.basename(p)[:-3])
def test_config_loads_validates_and_builds(path):
    """get_config() is locked and valid; model + optimizer + train state trace abstractly; the
    logits are (2, classes) float32 and every parameter is float32 (also under bf16 compute);
    the release configs build their architecture (parameter count). The kernels-only decay
    mask (weight_decay_norm_and_bias=False) selects exactly the kernels (conv, ECA conv,
    dense) of the architecture: never a BatchNorm scale/bias or a bias."""
    config = load_config(path)
    validate_config(config)
    assert config.is_locked
    assert config.dataset in DATASETS, config.dataset
    num_classes = config.num_classes or DATASETS[config.dataset][0]
    state, logits = abstract_build(config)
    assert logits.shape == (2, num_classes) and logits.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    assert jax.tree.leaves(state.batch_stats) and jax.tree.leaves(state.opt_state)
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(state.params))
    name = os.path.basename(path)[:-3]
    if name in EXPECTED_PARAMS:
        assert count == EXPECTED_PARAMS[name], count
    mask = traverse_util.flatten_dict(decay_mask(state.params, False), sep="/")
    kernels = {p for p in mask if p.endswith("kernel")}
    assert kernels and len(kernels) < len(mask)
    assert {p for p, decayed in mask.items() if decayed} == kernels


def test_impl_switches_from_the_config():
    """config.impl ("" = the defaults) reaches the model as ImplOptions.parse(config.impl); a bad
    switch name or value is a config error naming the key, as is model_kwargs.impl."""
    from eca_jax.kernels import ImplOptions
    from eca_jax.train.config import make_config

    config = make_config(total_steps=1, model="eca_resnet8_cifar", impl="pointwise_as_dot=false")
    validate_config(config)
    assert build_model(config, 10).impl == ImplOptions.parse("pointwise_as_dot=false")
    assert build_model(make_config(total_steps=1, model="eca_resnet8_cifar"), 10).impl == ImplOptions()
    for bad, match in [("pointwise_as_dott=false", r"config.impl=.*unknown implementation switch"),
                       ("pointwise_as_dot=maybe", r"config.impl=.*takes true or false")]:
        with pytest.raises(ValueError, match=match):
            validate_config(make_config(total_steps=1, impl=bad))
    with pytest.raises(ValueError, match="config.impl, not config.model_kwargs.impl"):
        validate_config(make_config(total_steps=1, model_kwargs=dict(impl="")))
