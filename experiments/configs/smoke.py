"""Smoke test of the whole pipeline: a tiny ECA-ResNet on digits at 16x16 for 8 steps.

    python -m eca_jax.train --config experiments/configs/smoke.py --workdir /tmp/eca_smoke

Expected: finishes in well under a minute on a CPU and writes checkpoints, metrics.csv,
TensorBoard events and curves.png; accuracy is meaningless (about 10-30%).
"""
from eca_jax.train.config import make_config


def get_config(arg=None):
    del arg
    return make_config(
        model="eca_resnet8_cifar",
        model_kwargs=dict(widths=(8, 8, 16), stem_width=8),
        dataset="digits",
        image_size=16,
        batch_size=32,
        total_steps=8,
        eval_every_steps=4,
        checkpoint_every_steps=4,
        log_every_steps=2,
        learning_rate=0.05,
        schedule="constant",
    )
