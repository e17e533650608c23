"""The ECA-Net release's ResNet recipe: ECA-ResNet-50 (k 3,5,5,7) on ImageNet-1k.

    python -m eca_jax.train --config experiments/configs/imagenet_eca_resnet50.py \
        --workdir workdirs/eca_resnet50 --config.manual_dir=/path/to/imagenet_tars

Recipe (ECA.md): SGD momentum 0.9, lr 0.1 at batch 256 (scaled linearly with the batch here),
x0.1 every 30 epochs, 100 epochs, weight decay 1e-4 on every parameter (PyTorch-style coupled),
RandomResizedCrop(224) + flip, eval resize 256 + center crop 224, float32.
Expected: 77.42% top-1 / 93.62% top-5 (the release's figure; not re-run in this project).
BatchNorm: statistics over the global batch; --config.bn_groups=G normalises per batch/G,
like the release's per-GPU nn.DataParallel statistics on G GPUs.
Other depths: --config.model=eca_resnet18|34|101|152.
"""
from eca_jax.train.config import make_config


def get_config(arg=None):
    del arg
    batch_size = 256
    return make_config(
        model="eca_resnet50",
        dataset="imagenet2012",
        image_size=224,
        eval_resize_size=256,
        augment="inception_crop_flip",
        batch_size=batch_size,
        total_epochs=100.0,
        learning_rate=0.1 * batch_size / 256,
        momentum=0.9,
        schedule="step",
        lr_decay_factor=0.1,
        lr_decay_epochs=30.0,
        weight_decay=1e-4,
        weight_decay_norm_and_bias=True,
        eval_every_epochs=1.0,
        checkpoint_every_epochs=1.0,
        log_every_steps=100,
    )
