"""One row of the ECA paper's Table 2 / Figure 4 on ImageNet-1k, the release's ResNet-50 recipe.

    python -m eca_jax.train --config experiments/configs/imagenet_table2.py:se_gc2 \
        --workdir gs://BUCKET/table2/SE-GC2/seed0 --config.seed=0 --config.manual_dir=/path/to/imagenet_tars

The argument is a row name of eca_jax.nn.rows, case-insensitive (vanilla, se, se_var1, se_var2,
se_var3, se_gc1, se_gc2, se_gc3, eca_ns, eca, eca_k3, eca_k5, eca_k7, eca_k9, eca_adaptive);
default: eca. The backbone is torchvision's ResNet-50 with the row's attention in every block
(after bn3, before the residual add); --config.model=resnet101 gives Figure 4's ResNet-101.
Recipe (ECA.md, as imagenet_eca_resnet50.py): SGD momentum 0.9, lr 0.1 at batch 256 (scaled
linearly with the batch), x0.1 every 30 epochs, 100 epochs, weight decay 1e-4 on every parameter,
RandomResizedCrop(224) + flip, eval resize 256 + center crop 224, float32.
The paper's top-1 for each row: eca_jax/studies/paper.py. Every row x seed of a study:
    python -m eca_jax.studies.run --study table2 --config experiments/configs/imagenet_table2.py \
        --seeds 0 --workdir gs://BUCKET/table2 --print_commands      # one trainer command per run
    python -m eca_jax.studies.run --study table2 --config experiments/configs/imagenet_table2.py \
        --seeds 0 --workdir gs://BUCKET/table2 --collect             # the table, once they finished
"""
from eca_jax.nn.rows import get_row
from eca_jax.train.config import make_config


def get_config(arg=None):
    row = get_row(arg or "eca").name
    batch_size = 256
    return make_config(
        model="resnet50",
        model_kwargs=dict(attn=row),
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
