"""The ECA-Net release's MobileNetV2 recipe: ECA-MobileNetV2 (k 1 then 3) on ImageNet-1k.

    python -m eca_jax.train --config experiments/configs/imagenet_eca_mobilenet_v2.py \
        --workdir workdirs/eca_mobilenet_v2 --config.manual_dir=/path/to/imagenet_tars

Recipe (ECA.md): SGD momentum 0.9, batch 96, lr 0.045 x 0.98^epoch, weight decay 4e-5 on
every parameter, 400 epochs, RandomResizedCrop(224) + flip, eval 256 -> 224.
Expected: 72.56% top-1 / 90.81% top-5 (the release's figure; not re-run in this project).
The batch must divide over the devices: on 8 devices use --config.batch_size=96 (12 each);
on 64 devices scale the batch and lr together, e.g. --config.batch_size=768
--config.learning_rate=0.36.
"""
from eca_jax.train.config import make_config


def get_config(arg=None):
    del arg
    return make_config(
        model="eca_mobilenet_v2",
        dataset="imagenet2012",
        image_size=224,
        eval_resize_size=256,
        augment="inception_crop_flip",
        batch_size=96,
        total_epochs=400.0,
        learning_rate=0.045,
        momentum=0.9,
        schedule="step",                 # staircase exponential: 0.98 every epoch
        lr_decay_factor=0.98,
        lr_decay_epochs=1.0,
        weight_decay=4e-5,
        weight_decay_norm_and_bias=True,
        eval_every_epochs=5.0,
        checkpoint_every_epochs=1.0,
        log_every_steps=200,
    )
