"""The digits job with today's recipe pieces switched on (issue 17's smoke run).

    python -m eca_jax.train --config experiments/configs/digits_modern.py --workdir workdirs/digits_modern

Same model and data as ``digits.py``; on top: LAMB, binary cross-entropy, mixup + CutMix on
device, RandAugment and random erasing in the pipeline, stochastic depth, an EMA of the weights
evaluated beside them.
"""
from eca_jax.train.config import make_config


def get_config(arg=None):
    del arg
    return make_config(
        model="eca_resnet8_cifar",
        model_kwargs=dict(drop_path_rate=0.05),
        dataset="digits",
        image_size=32,
        batch_size=128,
        total_epochs=45.0,               # 1437 train images: 11 steps/epoch, 495 steps
        optimizer="lamb",
        learning_rate=1e-2,
        schedule="cosine",
        warmup_epochs=2.0,
        weight_decay=0.02,
        weight_decay_norm_and_bias=False,
        grad_clip_norm=1.0,
        loss="bce",
        mixup_alpha=0.1,
        cutmix_alpha=1.0,
        mix_prob=0.5,
        randaugment="rand-m3-mstd0.5-inc1",  # after the plain resize (digits: no crop, no flip)
        random_erasing=0.1,
        ema_decay=0.99,
        ema_warmup=True,
        eval_every_epochs=9.0,
        checkpoint_every_epochs=9.0,
        log_every_steps=33,
        seed=0,
    )
