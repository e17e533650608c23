"""The main job: ECA-ResNet-8 (3x3 stem, widths 16/32/64) on the embedded digits at 32x32.

    python -m eca_jax.train --config experiments/configs/digits.py --workdir workdirs/digits

Expected: about 98% top-1 on the 360 held-out digits (measured 98.06%) in about 2.5 minutes on
2 CPU cores, progress lines with loss, images/s and ETA on the way (the first run also writes
the digits tfds dataset, a few seconds). Curves: workdirs/digits/curves.png.
Evaluate afterwards: python -m eca_jax.evaluate --workdir workdirs/digits --best
"""
from eca_jax.train.config import make_config


def get_config(arg=None):
    del arg
    return make_config(
        model="eca_resnet8_cifar",
        dataset="digits",
        image_size=32,
        batch_size=128,
        total_epochs=15.0,               # 1437 train images: 11 steps/epoch, 165 steps
        learning_rate=0.1,
        schedule="cosine",
        warmup_epochs=1.0,
        weight_decay=5e-4,
        eval_every_epochs=3.0,
        checkpoint_every_epochs=3.0,
        log_every_steps=11,
        seed=0,
    )
