""""ResNet strikes back" procedures A2 and A3 for ECA networks on ImageNet-1k (not re-run here).

    python -m eca_jax.train --config experiments/configs/imagenet_rsb.py:a2 \
        --workdir workdirs/ecaresnet50d_a2 --config.manual_dir=/path/to/imagenet_tars
    python -m eca_jax.train --config experiments/configs/imagenet_rsb.py:a3,eca_resnet50 \
        --workdir workdirs/eca_resnet50_a3 --config.manual_dir=/path/to/imagenet_tars

The argument is ``PROCEDURE[,MODEL]``: procedure ``a2`` or ``a3``, model ``ecaresnet50d``
(timm's ECA ResNet-D, the default) or ``eca_resnet50`` (the release's ECA-ResNet-50).

Source: R. Wightman, H. Touvron, H. Jegou, "ResNet strikes back: An improved training procedure
in timm" (arXiv:2110.00476, 2021), Table 1, and timm's hyper-parameters for it (``--opt lamb
--bce-loss --bce-target-thresh 0.2 --mixup 0.1 --cutmix 1.0 --aa rand-m7-mstd0.5-inc1
--drop-path 0.05 --crop-pct 0.95 --train-interpolation bicubic``, batch 2048):

    procedure  epochs  LR    weight decay  RandAugment           drop path  train / test size
    A2         300     5e-3  0.02          rand-m7-mstd0.5-inc1  0.05       224 / 224
    A3         100     8e-3  0.02          rand-m6-mstd0.5-inc1  none       160 / 224

All: LAMB (timm's, which clips the gradient norm to 1.0: ``grad_clip_norm=1.0``), cosine
schedule after 5 warmup epochs, binary cross-entropy with targets thresholded at 0.2, mixup 0.1
and CutMix 1.0 (switch probability 0.5), no label smoothing, no random erasing, no EMA, weight
decay on kernels only, bicubic train crops, eval crop fraction 0.95 (bicubic).
Published ResNet-50 (plain, not ECA) top-1 at 224: A2 79.8%, A3 78.1% (paper, Table 1).
Not re-run in this project: no ImageNet run here; the digits smoke run
(``experiments/configs/digits_modern.py``) exercises every piece.
Left out: A2's repeated augmentation (3 repeats per image, ``--aug-repeats 3``) is not built in
eca_jax's pipeline, so A2 here samples each image once per epoch.
"""
from eca_jax.train.config import make_config

BATCH = 2048
PROCEDURES = {
    "a2": dict(total_epochs=300.0, learning_rate=5e-3, randaugment="rand-m7-mstd0.5-inc1",
               drop_path_rate=0.05, image_size=224),
    "a3": dict(total_epochs=100.0, learning_rate=8e-3, randaugment="rand-m6-mstd0.5-inc1",
               drop_path_rate=0.0, image_size=160),
}
MODELS = ("ecaresnet50d", "eca_resnet50")


def _parse(arg):
    procedure, _, model = (arg or "a2").partition(",")
    procedure, model = procedure.strip().lower(), model.strip() or MODELS[0]
    if procedure not in PROCEDURES:
        raise ValueError(f"imagenet_rsb.py: unknown procedure {procedure!r}; use one of {sorted(PROCEDURES)} "
                         "(e.g. --config experiments/configs/imagenet_rsb.py:a3,eca_resnet50).")
    if model not in MODELS:
        raise ValueError(f"imagenet_rsb.py: model {model!r} is not one of {MODELS}.")
    return PROCEDURES[procedure], model


def get_config(arg=None):
    procedure, model = _parse(arg)
    return make_config(
        model=model,
        model_kwargs=dict(drop_path_rate=procedure["drop_path_rate"]) if procedure["drop_path_rate"] else {},
        dataset="imagenet2012",
        image_size=procedure["image_size"],   # train resolution (A3: below the test one)
        eval_image_size=224,
        eval_crop_pct=0.95,
        eval_interpolation="bicubic",
        augment="inception_crop_flip",
        train_interpolation="bicubic",
        randaugment=procedure["randaugment"],
        batch_size=BATCH,
        dtype="bfloat16",
        total_epochs=procedure["total_epochs"],
        warmup_epochs=5.0,
        schedule="cosine",
        optimizer="lamb",
        learning_rate=procedure["learning_rate"],
        weight_decay=0.02,
        weight_decay_norm_and_bias=False,
        grad_clip_norm=1.0,
        loss="bce",
        bce_target_threshold=0.2,
        mixup_alpha=0.1,
        cutmix_alpha=1.0,
        mix_switch_prob=0.5,
        eval_every_epochs=5.0,
        checkpoint_every_epochs=1.0,
        log_every_steps=100,
    )
