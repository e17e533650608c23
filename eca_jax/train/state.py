"""The train state: everything a resumed run needs besides the data-iterator position."""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from eca_jax.train.ema import init_ema


@flax.struct.dataclass
class TrainState:
    """step: int32 () optimizer updates applied, the same count as the loop's step, the
    checkpoint numbers, the logs and the learning-rate schedule (which reads the optimizer's own
    count in opt_state). Under gradient accumulation (optax.MultiSteps, grad_accum_steps = n)
    train_step is called n times per update and advances step on the last of them; the position
    within the update is MultiSteps' mini_step in opt_state. params / batch_stats: the model's
    variable collections (float32); opt_state: the optax state; rng: uint32 (2,) base key (each
    call's dropout key is fold_in(fold_in(rng, step), micro_index), so every micro-batch gets its
    own key). ema: None, or {"params", "batch_stats"} averaged over the updates
    (:mod:`eca_jax.train.ema`; ``config.ema_decay``), checkpointed with the rest."""
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    ema: Any = None

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}


def make_init_fn(model: flax.linen.Module, tx: optax.GradientTransformation,
                 input_shape: tuple[int, ...], ema: bool = False) -> Callable[[jax.Array], TrainState]:
    """Returns ``init(rng) -> TrainState`` (pure; jit it with out_shardings to create the state
    already sharded). ``input_shape`` is one NHWC batch, e.g. (2, 224, 224, 3). ``ema``: start an
    average of the variables (a copy of them)."""

    def init(rng: jax.Array) -> TrainState:
        init_rng, state_rng = jax.random.split(rng)
        variables = model.init(init_rng, jnp.zeros(input_shape, jnp.float32), train=False)
        params = variables["params"]
        batch_stats = variables.get("batch_stats", {})
        average = init_ema({"params": params, "batch_stats": batch_stats}) if ema else None
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                          opt_state=tx.init(params), rng=state_rng, ema=average)

    return init


# Init runs once: XLA's backend optimisations only cost compile time there (about 10 s for a
# small ResNet on CPU, mostly the random-number kernels), so they are switched off for it.
_RUN_ONCE_OPTIONS = {"xla_backend_optimization_level": 0,
                     "xla_llvm_disable_expensive_passes": True}


def init_state(init_fn: Callable[[jax.Array], TrainState], rng: jax.Array,
               shardings: Any) -> TrainState:
    """``init_fn(rng)`` compiled with ``out_shardings``: the state is created already sharded
    (each device only materialises its own shards)."""
    compiled = jax.jit(init_fn, out_shardings=shardings).lower(rng).compile(
        compiler_options=_RUN_ONCE_OPTIONS)
    return compiled(rng)
