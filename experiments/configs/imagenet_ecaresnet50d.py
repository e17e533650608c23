"""A modern recipe for timm's ECA ResNet-D family: ecaresnet50d on ImageNet-1k.

    python -m eca_jax.train --config experiments/configs/imagenet_ecaresnet50d.py \
        --workdir workdirs/ecaresnet50d --config.manual_dir=/path/to/imagenet_tars

Recipe: SGD Nesterov momentum 0.9, batch 1024, lr 0.4 (0.1 per 256), 5 warmup epochs then
cosine to 0 over 200 epochs, label smoothing 0.1, weight decay 5e-5 on kernels only (not on
BatchNorm and biases), bfloat16 compute with float32 parameters.
Expected: about 79-80% top-1 (an estimate, not re-run in this project; timm's published 80.63%
@224 used a stronger augmentation recipe).
Big family members: --config.model=ecaresnet269d --config.image_size=320 --config.mesh.fsdp=8
shards parameters and optimizer state over 8 devices (FSDP) and the batch over all of them.
"""
from eca_jax.train.config import make_config


def get_config(arg=None):
    del arg
    batch_size = 1024
    return make_config(
        model="ecaresnet50d",
        dataset="imagenet2012",
        image_size=224,
        eval_resize_size=256,
        augment="inception_crop_flip",
        batch_size=batch_size,
        dtype="bfloat16",
        total_epochs=200.0,
        warmup_epochs=5.0,
        learning_rate=0.1 * batch_size / 256,
        momentum=0.9,
        nesterov=True,
        schedule="cosine",
        label_smoothing=0.1,
        weight_decay=5e-5,
        weight_decay_norm_and_bias=False,
        eval_every_epochs=2.0,
        checkpoint_every_epochs=1.0,
        log_every_steps=100,
    )
