"""``python -m eca_jax.studies.run``'s flags (absl; ``--config.key=value`` overrides as the trainer)."""
from __future__ import annotations

import sys
from typing import Optional

from absl import app, flags, logging
from ml_collections import config_flags

from eca_jax.train.config import check_config_file, check_override_flags, config_file_arg

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Base training config, e.g. experiments/configs/digits.py (its model: a ResNet).",
    lock_config=True)
_STUDY = flags.DEFINE_string("study", "table2", "table2 | ksweep | table3 | mobilenetv2 | rows=NAME,NAME,... (eca_jax.nn.rows)")
_SEEDS = flags.DEFINE_string("seeds", "0", "Seeds, comma-separated: one run per row x seed.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The study's directory: <workdir>/<row>/seed<seed>, results.*")
_COLLECT = flags.DEFINE_bool("collect", False, "Only read the runs' workdirs (no training) into the table.")
_COMMANDS = flags.DEFINE_bool("print_commands", False, "Print one trainer command per run and exit.")
_CACHE = flags.DEFINE_string("compilation_cache", "<workdir>/.jax_cache",
                             "JAX's persistent compilation cache for the study's runs ('' = off): the seeds "
                             "of one row compile the same programs, so only the first seed compiles.")
flags.mark_flags_as_required(["config", "workdir"])


def _config_value(argv: list[str]) -> str:
    """The ``--config`` value as given (``FILE`` or ``FILE:ARG``)."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return str(config_file_arg(argv))


def _main(argv: list[str]) -> None:
    from eca_jax.studies import plan, run  # noqa: PLC0415
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    _use_compilation_cache(_CACHE.value.replace("<workdir>", _WORKDIR.value))
    try:
        rows, seeds = plan.study_rows(_STUDY.value), plan.parse_seeds(_SEEDS.value)
        if _COMMANDS.value:
            extra = [a for a in sys.argv[1:] if a.startswith("--config.")]
            print("\n".join(run.trainer_commands(_config_value(sys.argv[1:]), rows, seeds, _WORKDIR.value, extra)))
            return
        run.run_study(_CONFIG.value, rows, seeds, _WORKDIR.value, collect=_COLLECT.value,
                      study=_STUDY.value)
    except (KeyError, ValueError) as e:
        sys.exit(f"error: {e.args[0] if e.args else e}")


def _use_compilation_cache(path: str) -> None:
    """JAX's own persistent cache (``jax_compilation_cache_dir``) at ``path``, unless the user set
    one (``JAX_COMPILATION_CACHE_DIR``) or ``path`` is empty."""
    import jax  # noqa: PLC0415 (the flags above load without jax)
    if not path or jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def run(argv: Optional[list[str]] = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    try:
        check_config_file(argv[1:])
        check_override_flags(argv[1:])
    except (FileNotFoundError, KeyError) as e:
        sys.exit(f"error: {e.args[0]}")
    app.run(_main, argv)
