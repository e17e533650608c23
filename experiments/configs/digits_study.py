"""The paper's studies on the embedded digits: a small ResNet whose attention slot takes every row.

    python -m eca_jax.studies.run --study table2 --config experiments/configs/digits_study.py \
        --seeds 0,1,2 --workdir studies/table2
    python -m eca_jax.studies.run --study ksweep --config experiments/configs/digits_study.py \
        --seeds 0,1,2 --workdir studies/ksweep

ResNet-8 (3x3 stem, one basic block per stage, widths 32/64/128) at 16x16 (the digits are 8x8
images, so 16x16 loses nothing), 8 epochs, one eval at the end. Widths start at 32 so that SE's
r = 16 keeps two hidden units and SE-GC's groups exist in every stage (C/16 >= 2). Sized so that
a study of all rows x 3 seeds runs in well under 30 minutes on 2 CPU cores (README: measured).
"""
from eca_jax.train.config import make_config


def get_config(arg=None):
    del arg
    return make_config(
        model="resnet8_cifar",
        model_kwargs=dict(widths=(16, 32, 64), stem_width=16),
        dataset="digits",
        image_size=16,
        batch_size=128,
        total_epochs=6.0,                # 1437 train images: 11 steps/epoch, 66 steps
        learning_rate=0.1,
        schedule="cosine",
        warmup_epochs=1.0,
        weight_decay=5e-4,
        eval_every_epochs=6.0,
        checkpoint_every_epochs=3.0,
        log_every_steps=33,
        progress="lines",
        seed=0,
    )
