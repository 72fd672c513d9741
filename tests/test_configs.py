"""Every config file: loads, validates for every preset, and runs a short training per method."""

import glob
import importlib.util
import json
import os

import numpy as np
import pytest

from mi_contrast import config as config_lib
from mi_contrast import methods
from mi_contrast import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


def load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_method_has_plain_and_ring_configs():
  names = {os.path.basename(p)[:-3] for p in CONFIGS}
  assert {"ir", "ir_nce", "ball", "ring", "ring_neighbours", "la", "cmc", "cmc_ring", "moco",
          "moco_ring", "simclr", "simclr_ring"} <= names
  used = {load(p).get_config().method for p in CONFIGS}
  assert used == set(methods.REGISTRY)


def test_every_method_module_owns_its_facts():
  """The registry is the list of methods: config.METHODS follows it, and every module gives its
  encoder kind and its results.json description, which the package's wrappers repeat."""
  assert config_lib.METHODS == tuple(methods.REGISTRY)
  for name, module in methods.REGISTRY.items():
    missing = [attr for attr in methods.REQUIRED if not hasattr(module, attr)]
    assert not missing, (name, missing)
    c = config_lib.default_config()
    c.method = name
    c.num_negatives = 8 * c.global_batch_size    # MoCo's queue: whole global batches
    config_lib.validate(c, num_devices=8)
    assert methods.encoder_kind(c) == ("lab" if name == "cmc" else "single")
    description = module.describe(c)
    assert sorted(description) == ["negatives", "objective", "pool"], name
    assert methods.describe_negatives(c) == (description["negatives"], description["pool"])
    assert methods.describe_objective(c) == description["objective"]
  bogus = config_lib.default_config()
  bogus.method = "bogus"
  with pytest.raises(ValueError, match="config.method = 'bogus' is not allowed"):
    config_lib.validate(bogus, num_devices=1)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
@pytest.mark.parametrize("preset", config_lib.PRESETS)
def test_config_validates_for_every_preset(path, preset):
  c = load(path).get_config(preset)
  assert c.dataset == preset
  config_lib.validate(c, num_devices=8)


# The other methods' steps are covered by their 1-vs-8-device tests and the README table.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["la", "moco_ring"])
def test_short_run_learns_and_reports_truthfully(name, tmp_path):
  c = load(os.path.join(REPO, "configs", f"{name}.py")).get_config()
  c.num_epochs = 4
  c.warmup_epochs = 0
  c.probe_epochs = 30
  c.eval_every_steps = 1000
  c.log_every_steps = 4
  c.ring.schedule = "constant"   # a fixed band, so that the loss curve is comparable over time
  c.ring.outer_start = c.ring.outer = 0.5
  if name == "la":
    # One IR warm-up epoch, then one of LA (a k-means refit and its objective): what this
    # test checks of LA is its report, not learning (tests/test_la.py checks that).
    c.num_epochs = 2
    c.log_every_steps = 2
    c.la.warmup_epochs = 1
  results = train.train_and_evaluate(c, str(tmp_path)).results
  on_disk = json.load(open(tmp_path / "results.json"))
  assert on_disk["method"] == c.method
  assert on_disk["objective"] == methods.describe_objective(c)
  assert (on_disk["negatives"], on_disk["negative_pool"]) == methods.describe_negatives(c)
  assert results["bound_nats"] <= results["log_k_plus_1"] + 1e-5
  assert np.isfinite(results["loss"])
  losses = [json.loads(line)["loss"] for line in open(tmp_path / "metrics.jsonl")
            if '"loss"' in line]
  assert len(losses) >= 8
  if name == "la":
    # LA's objective changes with every k-means refit (once per epoch), so its loss over its
    # epochs is no learning signal; tests/test_la.py checks that it decreases on fixed
    # clusterings. Here: after the IR warm-up, LA reports with its own cap log(K + 1).
    assert results["log_k_plus_1"] == pytest.approx(np.log(c.la.background + 1), rel=1e-5)
  else:
    assert np.mean(losses[-2:]) < np.mean(losses[:2]) - 0.05, losses


@pytest.mark.parametrize("method, negatives, field, value", [
    ("ir", "ring", "num_views", 9),
    ("ir", "uniform", "ir.nce_partition", "sometimes"),
    ("cmc", "uniform", "ir.nce_partition", "first_batch"),
    ("simclr", "ring", "ir.neighbour_views", True),
    ("ir", "ring", "ir.neighbour_views_warmup_epochs", -1),
    ("moco", "uniform", "moco.momentum", 1.0),
    ("moco", "uniform", "moco.bn_groups", 3),
    ("la", "uniform", "la.background", 2000),
    ("la", "uniform", "la.num_clusters", 0),
    ("la", "uniform", "la.num_clusterings", 0),
    ("la", "uniform", "la.kmeans_iterations", 0),
    ("la", "uniform", "la.warmup_epochs", 40),
    ("la", "ring", "negatives", "ring"),
    ("cmc", "uniform", "cmc.width", "quarter"),
    # Each method's own validate: what it requires of the fields it does not use.
    ("moco", "uniform", "bound", "nce"),
    ("simclr", "uniform", "bank.candidates", 100),
    ("la", "uniform", "bank.sharded", True),
    ("moco", "uniform", "ir.nce_partition", "first_batch"),
    ("cmc", "ring", "ir.neighbour_views", True),
    ("cmc", "ring", "bank.sharded", True),
    ("ir", "uniform", "ir.neighbour_views", True),
    ("moco", "uniform", "num_negatives", 1000),
])
def test_bad_method_options_name_the_field(method, negatives, field, value):
  c = config_lib.default_config()
  c.method, c.negatives = method, negatives
  target = c
  *parents, leaf = field.split(".")
  for part in parents:
    target = target[part]
  target[leaf] = value
  with pytest.raises(ValueError, match=field.replace(".", r"\.")) as info:
    config_lib.validate(c, num_devices=1, num_train=1437)
  assert "allowed" in str(info.value)


# ----------------------------------------------------------------------------------------------
# config.json of the versions before config.ir and config.bank: loads and resumes.
# ----------------------------------------------------------------------------------------------

# Where the older versions kept the fields of the two sections (top-level, flat).
FLAT_NAMES = {("ir", "nce_partition"): "nce_partition",
              ("ir", "neighbour_views"): "neighbour_views",
              ("ir", "neighbour_views_warmup_epochs"): "neighbour_views_warmup_epochs",
              ("bank", "dtype"): "bank_dtype", ("bank", "sharded"): "bank_sharded",
              ("bank", "momentum"): "bank_momentum", ("bank", "candidates"): "candidates"}


def _sectioned_config():
  """A valid IR Ring config with non-default ir and bank fields (all but ir.neighbour_views
  and bank.sharded, which rule out some of the others)."""
  c = config_lib.default_config()
  c.negatives = "ring"
  c.ir.nce_partition = "first_batch"
  c.ir.neighbour_views_warmup_epochs = 3
  c.bank.dtype = "bfloat16"
  c.bank.momentum = 0.5
  c.bank.candidates = 512
  return config_lib.validate(c, num_devices=1, num_train=1437)


def _old_layout(config):
  """config.json as the older versions wrote it: the section fields flat, no ir or bank."""
  tree = json.loads(config.to_json())
  for (section, field), flat in FLAT_NAMES.items():
    tree[flat] = tree[section].pop(field)
  assert tree.pop("ir") == {} and tree.pop("bank") == {}
  return tree


def test_an_old_flat_config_json_loads_and_resumes(tmp_path):
  from mi_contrast import checkpoints
  config = _sectioned_config()
  old = _old_layout(config)
  assert set(FLAT_NAMES.values()) <= set(old) and "bank" not in old and "ir" not in old
  assert config_lib.upgrade_saved(old) == json.loads(config.to_json())
  with open(tmp_path / "config.json", "w") as f:
    json.dump(old, f)

  loaded = checkpoints.load_run_config(str(tmp_path))
  assert loaded.to_dict() == config.to_dict()
  assert (loaded.bank.dtype, loaded.bank.momentum, loaded.bank.candidates) == (
      "bfloat16", 0.5, 512)
  assert loaded.ir.nce_partition == "first_batch" and loaded.ir.neighbour_views_warmup_epochs == 3

  # The same run in the new layout continues the old run's checkpoints ...
  checkpoints.check_resume_config(str(tmp_path), config, bank_rows=1437)
  # A real difference is still refused, named by its new field.
  for section, field, value in (("bank", "dtype", "float32"),
                                ("ir", "nce_partition", "per_batch")):
    other = _sectioned_config()
    other[section][field] = value
    needle = rf"{section}\.{field}: checkpoint '.*' vs config '{value}'"
    with pytest.raises(ValueError, match=needle):
      checkpoints.check_resume_config(str(tmp_path), other, bank_rows=1437)


def test_old_flat_fields_are_refused_with_their_new_place():
  c = config_lib.default_config()
  c.bank_sharded = True
  with pytest.raises(ValueError, match=r"config\.bank_sharded .*moved to config\.bank\.sharded"):
    config_lib.validate(c, num_devices=1)
  both = dict(_old_layout(_sectioned_config()), bank={"dtype": "float32"})
  with pytest.raises(ValueError, match=r"bank_dtype = 'bfloat16' .*bank\.dtype = 'float32'"):
    config_lib.upgrade_saved(both)


@pytest.mark.slow   # starts the main job
def test_data_dir_can_be_set_from_the_command_line(tmp_path):
  """config.data_dir starts as None but is a placeholder, so `--config.data_dir=<dir>` sets it
  (ml_collections refuses a flag override of a field that holds a plain None): main reads the
  directory given, here one whose train images file is not an IDX file, and fails naming it."""
  import gzip
  import subprocess
  import sys
  import helpers
  from mi_contrast import input_pipeline
  for name in input_pipeline.FASHION_MNIST_FILES.values():
    with gzip.open(tmp_path / name, "wb") as f:
      f.write(b"not an IDX file")
  env = dict(os.environ, XLA_FLAGS=helpers.child_xla_flags(1), JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "mi_contrast.main", "--config=configs/ring.py:fashion_mnist",
       f"--workdir={tmp_path / 'run'}", f"--config.data_dir={tmp_path}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "Unknown command line flag" not in proc.stderr
  assert str(tmp_path) in proc.stderr and "train-images-idx3-ubyte.gz" in proc.stderr
  assert config_lib.default_config("fashion_mnist").data_dir is None
