"""The pure train step (no jit here; the loop compiles it over the mesh).

Steps: ``state.step`` counts optimizer updates, as the loop's step, the checkpoint numbers, the
logs and the learning-rate schedule do. Under gradient accumulation (``grad_accum_steps = n``,
``optax.MultiSteps``) ``train_step`` is called n times per update (one micro-batch each); it
reads its position in the update from the optimizer state (``MultiStepsState.mini_step``) and
advances ``state.step`` only on the call whose update the optimizer applied (when MultiSteps'
``gradient_step`` advances). Each call's dropout key is ``fold_in(fold_in(rng, step),
micro_index)`` (micro_index 0 without accumulation), so every micro-batch gets its own key and a
resumed run draws the same keys as an uninterrupted one.

BatchNorm statistics: under ``jax.jit`` the batch is one global array, so with
``bn_groups=1`` BatchNorm normalises with the mean/variance of the *global* batch (all devices,
all processes), like SyncBatchNorm. The release trained with ``nn.DataParallel`` on several
GPUs, where each GPU normalised with the statistics of its own slice; ``bn_groups=G`` splits
the batch into G groups normalised separately (vmap), and the running averages are the mean
over groups of each group's update.

The eval step and the loss live in :mod:`eca_jax.evaluation` (shared with ``eca_jax.evaluate``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from eca_jax.evaluation import cross_entropy  # also re-exported: it used to live here
from eca_jax.kernels.sharding import explicit_sharding, explicit_sharding_from
from eca_jax.train.ema import ema_decay_at, ema_update
from eca_jax.train.losses import make_loss
from eca_jax.train.mixing import mix_batch, smooth_one_hot
from eca_jax.train.recipe import Recipe
from eca_jax.train.sharding import gather_params
from eca_jax.train.state import TrainState

Batch = dict[str, jax.Array]


def _forward_train(apply_fn: Callable, params: Any, batch_stats: Any, images: jax.Array,
                   rng: jax.Array, bn_groups: int) -> tuple[jax.Array, Any]:
    """logits (B, K) float32 and the new batch_stats, in train mode."""

    def one(params, batch_stats, x, key):
        logits, updates = apply_fn({"params": params, "batch_stats": batch_stats}, x, train=True,
                                   mutable=["batch_stats"], rngs={"dropout": key})
        return logits.astype(jnp.float32), updates.get("batch_stats", batch_stats)

    if bn_groups == 1:
        return one(params, batch_stats, images, rng)

    def grouped(params, batch_stats, images, rng):
        groups = images.reshape((bn_groups, -1) + images.shape[1:])
        logits, stats = jax.vmap(one, in_axes=(None, None, 0, 0))(
            params, batch_stats, groups, jax.random.split(rng, bn_groups))
        return logits.reshape((-1,) + logits.shape[2:]), jax.tree.map(lambda s: s.mean(0), stats)

    if explicit_sharding(images) is not None:
        # Under Explicit axes the vmapped convolutions would reshape the sharded batch axis, which
        # needs a sharding JAX's batching rules do not give: the grouped forward runs with Auto
        # axes (XLA places it) and returns logits sharded as the batch, statistics as they were.
        stats_sharding = jax.tree.map(explicit_sharding, batch_stats)
        logits_sharding = explicit_sharding_from(images, (0, None))
        grouped = jax.sharding.auto_axes(grouped, out_sharding=(logits_sharding, stats_sharding))
    return grouped(params, batch_stats, images, rng)


def micro_index(opt_state: Any) -> jax.Array:
    """This call's position within the optimizer update: ``optax.MultiSteps``' ``mini_step``
    (0 .. grad_accum_steps - 1), else 0 (every call is an update)."""
    if isinstance(opt_state, optax.MultiStepsState):
        return jnp.asarray(opt_state.mini_step, jnp.int32)
    return jnp.zeros((), jnp.int32)


def update_applied(old_opt_state: Any, new_opt_state: Any) -> jax.Array:
    """bool (): whether the optimizer applied an update between the two states (MultiSteps: its
    ``gradient_step`` advanced; any other optimizer: always)."""
    if isinstance(new_opt_state, optax.MultiStepsState):
        return new_opt_state.gradient_step != old_opt_state.gradient_step
    return jnp.ones((), jnp.bool_)


_MIX_STREAM = 0x6D6978  # "mix": the batch-mixing key is fold_in(step key, this)


def _mixed_inputs(images: jax.Array, labels: jax.Array, rng: jax.Array, recipe: Recipe,
                  normalize: Optional[Callable]) -> tuple[jax.Array, Optional[jax.Array]]:
    """(images, soft targets (B, K) float32 or None). Mixing needs normalized float images:
    uint8 ones are normalized first (``normalize``); mixup and CutMix commute with the affine
    normalization, so this equals mixing the grey levels and normalizing after."""
    if recipe.mix is None:
        return images, None
    if normalize is not None:
        images = normalize(images)
    return mix_batch(jax.random.fold_in(rng, _MIX_STREAM), images, labels, recipe.mix)


def _loss(logits: jax.Array, labels: jax.Array, targets: Optional[jax.Array], recipe: Recipe
          ) -> jax.Array:
    """Per-example loss (B,) float32 of the recipe: the release's cross-entropy of integer labels
    (bit for bit as before), else soft-target cross-entropy or BCE."""
    if recipe.plain:
        return cross_entropy(logits, labels, recipe.label_smoothing)
    if targets is None:
        targets = smooth_one_hot(labels, logits.shape[-1], recipe.label_smoothing)
    return make_loss(recipe.loss, target_threshold=recipe.bce_target_threshold)(logits, targets)


def _updated_ema(state: TrainState, params: Any, batch_stats: Any, applied: jax.Array,
                 recipe: Recipe) -> Any:
    """The EMA after this call: averaged when the optimizer applied its update, else unchanged."""
    if recipe.ema_decay is None:
        return state.ema
    decay = jnp.where(applied, ema_decay_at(recipe.ema_decay, state.step, recipe.ema_warmup), 1.0)
    return ema_update(state.ema, {"params": params, "batch_stats": batch_stats}, decay)


def train_step(state: TrainState, batch: Batch, *, apply_fn: Callable,
               tx: optax.GradientTransformation, label_smoothing: float = 0.0,
               bn_groups: int = 1, recipe: Optional[Recipe] = None,
               normalize: Optional[Callable] = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """One micro-batch through the optimizer. batch: image (B, H, W, 3) float32 normalized (or
    uint8 when ``apply_fn`` normalizes; give ``normalize`` too when the recipe mixes batches),
    label (B,) int32.

    ``recipe`` (:class:`eca_jax.train.recipe.Recipe`; default: the release's cross-entropy with
    ``label_smoothing``): batch mixing on device, the loss, the EMA. ``state.step`` advances by
    one when the optimizer applies its update (every call without accumulation; the last
    micro-batch of each update with ``optax.MultiSteps``). Returns the new state and metrics
    {loss, accuracy} averaged over the global batch (accuracy against the unmixed labels).
    """
    recipe = recipe if recipe is not None else Recipe(label_smoothing=label_smoothing)
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                             micro_index(state.opt_state))
    images, targets = _mixed_inputs(batch["image"], batch["label"], rng, recipe, normalize)

    def loss_fn(params):
        params = gather_params(params)  # FSDP's all-gather under Explicit mesh axes (else as is)
        logits, new_stats = _forward_train(apply_fn, params, state.batch_stats, images, rng,
                                           bn_groups)
        loss = _loss(logits, batch["label"], targets, recipe).mean()
        return loss, (logits, new_stats)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    accuracy = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32).mean()
    applied = update_applied(state.opt_state, opt_state)
    new_state = state.replace(step=state.step + applied.astype(state.step.dtype), params=params,
                              batch_stats=new_stats, opt_state=opt_state,
                              ema=_updated_ema(state, params, new_stats, applied, recipe))
    return new_state, {"loss": loss, "accuracy": accuracy}


def make_train_step(apply_fn: Callable, tx: optax.GradientTransformation,
                    label_smoothing: float, bn_groups: int, recipe: Optional[Recipe] = None,
                    normalize: Optional[Callable] = None) -> Callable:
    """``train_step`` with everything but (state, batch) bound (see :func:`train_step`)."""
    return functools.partial(train_step, apply_fn=apply_fn, tx=tx,
                             label_smoothing=label_smoothing, bn_groups=bn_groups, recipe=recipe,
                             normalize=normalize)
