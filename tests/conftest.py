"""Test setup: JAX on the CPU with 8 simulated devices (set before jax is imported), and the
session fixtures shared by several test modules."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  flags += " --xla_force_host_platform_device_count=8"
# The tests compile far more than they run: XLA's backend optimisation level 0 halves the
# compile time of a step (measured on the 2-core CPU: one CMC Ring step on 1 device 20.9 s ->
# 11.7 s, on 8 devices 9.3 s -> 5.9 s, with the same scores) and the suite's wall time (10:03
# -> 7:20 idle, child processes included). What the tests check (agreements, invariants, exact
# resumes, hashes of one run against another) holds at every level; runs outside the tests use
# XLA's default, and so do the README's numbers and the benchmarks. helpers.child_xla_flags
# passes it to child processes. A level set in XLA_FLAGS is kept.
if "xla_backend_optimization_level" not in flags:
  flags += " --xla_backend_optimization_level=0"
# For the same reason, XLA's older (LLVM IR) fusion emitters instead of its MLIR ones: they
# compile a step faster (one IR Ring step on 8 devices, idle 2-core CPU, three runs each:
# 7.7-9.3 s -> 5.5-5.8 s) with results equal to rounding. Two invariants are properties of the
# default emitters rather than of the package (make_views under vmap equal to jit, where a crop
# coordinate one rounding apart moves a pixel; training bit-identical with the false-negative
# diagnostic on and off): those tests compile their programs with the default emitters
# (xla_options.DEFAULT_EMITTERS, as jax.jit's compiler_options).
if "xla_cpu_use_fusion_emitters" not in flags:
  flags += " --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = flags.strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent XLA compilation cache for the whole session (both workers and every child
# process the tests start inherit it): the suite compiles the same tiny steps dozens of times,
# and a cached executable is the same binary (measured: a tiny main run 23 s cold, 8.6 s warm,
# the same params_sha256). A fresh folder per session, removed at its end.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mi_contrast_jax_cache_")
  os.environ["MI_CONTRAST_TEST_CACHE_OWNER"] = str(os.getpid())
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """A tiny digits run stopped at step 2 of 22, with checkpoints at steps 1 and 2: (workdir,
  config). Trained once per test process and shared by the export, torch-export and
  evaluation-CLI tests, which only read it (training is most of their time)."""
  from mi_contrast import train
  from helpers import tiny_config
  workdir = tmp_path_factory.mktemp("tiny_run")
  config = tiny_config("uniform", num_epochs=1, probe_epochs=2, checkpoint_every_steps=1)
  outcome = train.train_and_evaluate(config, str(workdir), stop_after_steps=2)
  assert outcome.results["steps"] == 2
  return workdir, config


# Whole files go to the two workers (--dist=loadfile) in this order, heaviest first, so that
# the run does not end with one worker on a long file while the other idles (xdist's own
# reorder, off in pytest.ini, sorts by the number of tests, which put the few-test files that
# start processes last). Seconds per file, summed over its tests (`pytest --durations=0`), idle
# 2-core CPU, older fusion emitters, 2026-12-07; files under 10 s follow in collection order.
# A file's seconds move by up to a third between runs, with what the other worker compiled
# first (the compilation cache).
FILE_ORDER = (
    "test_checkpoint_faults.py",     # 104
    "test_train.py",                 # 94
    "test_reliability.py",           # 81
    "test_negatives_study.py",       # 75
    "test_multiprocess.py",          # 69
    "test_scale.py",                 # 60
    "test_false_negatives.py",       # 51
    "test_configs.py",               # 49
    "test_tfds_presets.py",          # 40
    "test_la.py",                    # 38
    "test_negatives.py",             # 35
    "test_bench_tools.py",           # 34
    "test_simclr.py",                # 33
    "test_imagenet_stream.py",       # 32
    "test_debiased.py",              # 30
    "test_cmc.py",                   # 30
    "test_transformations.py",       # 30
    "test_bounds.py",                # 26
    "test_moco.py",                  # 25
    "test_public_api.py",            # 24
    # Before test_views_transformations (18): run alone, the public-API files then split
    # evenly over the two workers (each worker holds two files at a time).
    "test_library_doc.py",           # 10
    "test_torch_export.py",          # 21
    "test_export.py",                # 19
    "test_views_transformations.py", # 18
    "test_small_fixes.py",           # 17
    "test_in_place_update.py",       # 17
    "test_views.py",                 # 16
    "test_custom_method.py",         # 12
    "test_evaluation_cli.py",        # 11
)


def pytest_collection_modifyitems(config, items):
  del config
  rank = {name: i for i, name in enumerate(FILE_ORDER)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.path)), len(FILE_ORDER)))


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if os.environ.get("MI_CONTRAST_TEST_CACHE_OWNER") == str(os.getpid()):
    import shutil
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
