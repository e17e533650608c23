"""Test setup: CPU only, 8 fake devices (set before jax is imported), TF kept off accelerators."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Tests check numbers and shapes, not speed: skip XLA's heavy optimizations (30-40% faster compiles).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# One compute thread per test process when the xdist workers fill the cores (`-n 2` on 2 cores):
# otherwise XLA's, PyTorch's (OpenMP) and TensorFlow's pools each run a thread per core in every
# worker and oversubscribe them (PyTorch-parity tests: 140 s -> 122 s on 2 cores, AMD EPYC,
# 2026-11-30). Child processes (CLI tests, multi-process runs) inherit the settings.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) >= (os.cpu_count() or 1):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    if "intra_op_parallelism_threads" not in os.environ["XLA_FLAGS"]:
        os.environ["XLA_FLAGS"] += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

# One persistent XLA compilation cache for the whole run (both xdist workers and every child
# process inherit it; tests/train_helpers.CACHE_EVERY_COMPILE makes the children keep every compile): many tests compile the same programs (the smoke config's train and eval
# steps in each CLI run, the same model at the same shape in several files). JAX caches only
# compiles over 1 s, keyed by the program, flags and versions; a hit loads the same executable,
# so results do not change. Made by the first process that loads this file (the xdist
# controller), removed when it exits; a JAX_COMPILATION_CACHE_DIR of the caller's is kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit  # noqa: E402
    import shutil  # noqa: E402
    import tempfile  # noqa: E402
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="eca_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)

import sys  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)


# The fast tier (`python -m pytest tests -m "not slow"`, budget 5 minutes on 2 cores, aiming at 4
# to leave room for new tests) leaves out every test that took more than about 6-8 s on 2 cores
# (AMD EPYC, 2026-11-30, `--durations`), besides those marked @pytest.mark.slow in their files,
# and keeps at least one case of each behaviour. A name without brackets marks every
# parametrisation of that test.
SLOW_TESTS = {
    "test_every_model_jits_at_224_and_193_in_fp32_and_bf16",   # 10-86 s per model
    "test_release_init_is_fan_out_normal", "test_summary_cli",
    "test_bfloat16_eval_logits_close_to_float32",
    "test_model_gradients_equal_the_autodiff_composition",       # 12-82 s (float64 whole models)
    "test_sigterm_saves_and_resume_is_exact", "test_digits_learns_and_evaluate_cli",
    "test_sigkill_during_async_save_never_leaves_a_usable_partial",
    "test_out_of_disk_keeps_previous_checkpoint_and_resumes_on_another_mesh",
    "test_eight_devices_and_fsdp_equal_one_device", "test_processes_form_one_mesh",
    "test_fake_imagenet_prepared_by_tfds_builder",
    "test_train_mode_and_input_gradient_match_pytorch", "test_python_dash_m_entry_point",
    "test_new_head_keeps_the_backbone", "test_run_group_report_and_files",
    "test_train_steps_update_the_weights",
    "test_eval_logits_match_pytorch[ecaresnet269d]", "test_eval_logits_match_pytorch[eca_resnet152]",
    "test_eval_logits_match_pytorch[resnet152]", "test_eval_logits_match_pytorch[eca_resnet101]",
    "test_eval_logits_match_pytorch[ecaresnet101d]", "test_eval_logits_match_pytorch[resnet101]",
    "test_eval_logits_match_pytorch[eca_mobilenet_v2]",
    # 6-9 s each; the fast tier keeps one parity case per family (eca_resnet18, ecaresnet26t,
    # mobilenet_v2, ...) and the small kernel cases.
    "test_eval_logits_match_pytorch[eca_resnet50]", "test_eval_logits_match_pytorch[ecaresnet50d]",
    "test_eval_logits_match_pytorch[resnet50]", "test_eval_logits_match_pytorch[ecaresnetlight]",
    "test_cli_converts_stores_and_exports", "test_mobilenet_width_multiplier_is_inferred",
    "test_reexec_restarts_once_with_the_tunables",
    "test_flax_to_pytorch_to_flax_is_bit_exact_and_loads_strictly[eca_mobilenet_v2-pth]",
    "test_flax_to_pytorch_to_flax_is_bit_exact_and_loads_strictly[se_resnet50-safetensors]",
    "test_k_comes_from_the_weights_not_the_name", "test_grad_accumulation_equals_the_full_batch",
    "test_circular_padding_gate_gradients", "test_depthwise_kernel_grad_formulations_agree",
    "test_small_input_conv_matches_xla[5-1-hw4]", "test_depthwise_matches_xla[5-1-hw3]",
    "test_depthwise_matches_xla[5-2-hw4]", "test_bn_groups_normalise_each_group_separately",
    "test_init_from_mismatch_and_head_reset", "test_cli_rejects_typos",
    # 14-36 s each in the fast tier of 2026-11-30 (5:50 with them; the tier's budget is 5 min).
    "test_importing_a_layer_loads_nothing_above_it", "test_cli_new_head",
    "test_fused_and_plain_tail_agree", "test_two_processes_count_every_eval_example_once",
    "test_two_processes_train_in_lockstep",
    # eca_jax.nnx: the per-layer twins (28 cases, 1-4 s each); the fast tier keeps the model parity.
    "test_layer_values_and_gradients_equal_linen", "test_batch_norm_act_equals_linen",
    # 17-92 s each in the fast tier of 2026-11-30 (load average ~9, 1719 s; about 3.6x the quiet
    # machine's times, so ~6 s and more when quiet). The fast tier keeps one case of each: PyTorch
    # parity eca_resnet18 / ecaresnet26t / mobilenet_v2 / se_resnet50 / resnet18, the round trip
    # eca_resnet18-pth / resnet18-safetensors, the stream [digits_in_memory], the fake ImageNet eval
    # pipeline and uint8 step, the other feature-map and parameter-count cases,
    # test_fast_models_equal_linen[eca_resnet8_cifar].
    "test_eval_logits_match_pytorch[ecaresnet50t]", "test_eval_logits_match_pytorch[eca_resnet34]",
    "test_eval_logits_match_pytorch[resnet34]",
    "test_flax_to_pytorch_to_flax_is_bit_exact_and_loads_strictly[ecaresnet26t-safetensors]",
    "test_fake_imagenet_train_pipeline",
    "test_train_stream_same_seed_same_batches_and_exact_resume[imagenet_streamed]",
    "test_train_stream_same_seed_same_batches_and_exact_resume[digits_in_memory_crop_flip]",
    "test_feature_maps[eca_mobilenet_v2-channels3]", "test_exact_parameter_counts[ecaresnet269d]",
    "test_fast_models_equal_linen[resnet8_cifar]",
    # 46 s: builds the module's reference run (test_train.py), which every other user of it (slow) shares.
    "test_workdir_of_another_model_is_refused",
    # 7-61 s each in the fast tier of a quiet fresh clone (2026-11-30: 694 tests in 5 min 47 s).
    # Still fast: the ecaresnet26t drop-path rates, the EMA closed form, the CBAM train switch,
    # the extras after the plain resize; the slow tier has the NNX drop path, the explicit-mesh
    # user steps and the uint8/float32 stream comparison with erasing.
    "test_resnet_blocks_follow_the_linear_rule[resnet50-16]",
    "test_ema_in_the_train_step_moves_once_per_update",
    "test_kernels_values_and_gradients_under_explicit_axes",
    "test_uint8_and_float32_streams_agree_outside_erased_boxes",
    "test_nnx_twin_agrees_at_eval_and_drops_in_training",
}


# Seconds per test file (full run, fast tier) on 2 cores (AMD EPYC, 2026-11-30), only their order
# matters: the fast column is the sum of `--durations=0` in the fast tier under a load average of
# ~9 (after the re-marking above), the full column adds the slow tests' times of the CI run.
# `--dist loadfile` gives each file whole to one worker, and pytest-xdist by default hands out the
# files with the most tests first: test_multihost.py (4 tests, ~9 min) then started last while the
# other worker idled. Heaviest first (longest-processing-time-first scheduling) ends both workers at
# about the same time; files not listed go last, in their collection order.
FILE_SECONDS = {
    "test_convert.py": (600, 325), "test_models.py": (500, 314), "test_multihost.py": (520, 0),
    "test_fused.py": (450, 203), "test_explicit_mesh.py": (450, 31), "test_data.py": (400, 178),
    "test_studies.py": (380, 204), "test_train.py": (350, 2), "test_nn.py": (300, 243),
    "test_torch_reference.py": (300, 136), "test_cli_paths.py": (200, 11), "test_nnx.py": (200, 57),
    "test_optim.py": (200, 98), "test_recipes.py": (140, 138), "test_drop_path.py": (125, 124),
    "test_readme.py": (110, 1), "test_export.py": (100, 8), "test_context.py": (100, 93),
    "test_input_settings.py": (100, 86), "test_block_tail.py": (100, 12), "test_kernels_conv.py": (80, 64),
    "test_mixing.py": (77, 77), "test_parity_optimized.py": (70, 0), "test_layering.py": (65, 5),
    "test_pretrained.py": (60, 11), "test_predict.py": (50, 27), "test_kernels_pool.py": (40, 33),
    "test_dry_run.py": (40, 20), "test_configs.py": (35, 30), "test_data_multiprocess.py": (30, 0),
    "test_benchmark.py": (25, 13), "test_augment.py": (17, 17), "test_perf.py": (10, 2),
    "test_losses.py": (7, 7),
}


def pytest_configure(config):
    """Files go to the xdist workers in the order of the collection (see FILE_SECONDS)."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def _heaviest_files_first(config, items):
    fast = "not slow" in (config.option.markexpr or "")
    files = {}
    for item in items:
        files.setdefault(item.path.name, len(files))
    seconds = {name: FILE_SECONDS.get(name, (0, 0))[fast] for name in files}
    items.sort(key=lambda item: (-seconds[item.path.name], files[item.path.name]))


def pytest_collection_modifyitems(config, items):
    import pytest
    for item in items:
        if item.name in SLOW_TESTS or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
    _heaviest_files_first(config, items)
