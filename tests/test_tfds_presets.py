"""The tfds presets (cifar10, cifar100, stl10) on mocked data, and a dataset that is not on disk.

tfds.testing.mock_data replaces what a builder reads with random examples of the dataset's
features (32x32x3 or 96x96x3 uint8 images, integer labels). It leaves `is_prepared()` as it is,
and that is False without the real files, so the tests below also declare the mocked dataset
prepared: `load_tfds` then takes the same path as for a dataset on disk, with downloads off.
"""

import json

import numpy as np
import pytest

from mi_contrast import config as config_lib
from mi_contrast import input_pipeline
from mi_contrast import step as step_lib
from mi_contrast import train
from helpers import mocked_tfds, no_network


pytestmark = pytest.mark.slow   # every test imports TensorFlow


@pytest.fixture(autouse=True)
def _tensorflow_datasets():
  """Every test here needs tensorflow_datasets (and TensorFlow): imported when one runs, not when
  pytest collects the module, so that a worker that runs none of them never imports them."""
  pytest.importorskip("tensorflow")
  pytest.importorskip("tensorflow_datasets")


IMAGE_SHAPES = {"cifar10": (32, 32, 3), "cifar100": (32, 32, 3), "stl10": (96, 96, 3)}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "stl10": 10}


def tiny_preset(preset, data_dir):
  """The preset's configuration, shrunk to a few seconds of work."""
  c = config_lib.default_config(preset)
  assert c.image_size == IMAGE_SHAPES[preset][0]
  c.data_dir = str(data_dir)
  c.model = "resnet_digits"
  c.width = 8
  c.head_hidden = 32
  c.embedding_dim = 16
  c.num_negatives = 32
  c.global_batch_size = 32
  c.num_epochs = 1
  c.probe_epochs = 2
  c.knn_k = 5
  return c


@pytest.mark.parametrize("preset", ["cifar10", "cifar100", "stl10"])
def test_load_dataset_reads_a_mocked_split(preset, monkeypatch, tmp_path):
  config = tiny_preset(preset, tmp_path)
  with mocked_tfds(monkeypatch, num_examples=10):
    data = input_pipeline.load_dataset(config)
  assert data.name == preset and data.num_classes == NUM_CLASSES[preset]
  for images, labels in ((data.train_images, data.train_labels),
                         (data.test_images, data.test_labels)):
    assert images.shape == (10,) + IMAGE_SHAPES[preset] and images.dtype == np.uint8
    assert labels.shape == (10,) and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < NUM_CLASSES[preset]
  assert data.num_train == 10
  mean, std = data.channel_stats()
  assert len(mean) == len(std) == 3 and all(0.0 < m < 1.0 for m in mean)


@pytest.mark.parametrize("preset", ["cifar10", "cifar100", "stl10"])
def test_preset_trains_a_few_steps(preset, monkeypatch, tmp_path):
  config = tiny_preset(preset, tmp_path / "tfds")
  workdir = tmp_path / "run"
  with mocked_tfds(monkeypatch, num_examples=96):  # 3 steps per epoch, stopped after 2
    outcome = train.train_and_evaluate(config, str(workdir), stop_after_steps=2)
  assert outcome.results == {"steps": 2, "resumed_from_step": 0} and not outcome.preempted
  assert (workdir / "checkpoints" / "2").is_dir()
  with open(workdir / "config.json") as f:
    assert json.load(f)["dataset"] == preset
  losses = [json.loads(line)["loss"] for line in open(workdir / "metrics.jsonl")
            if "loss" in line]
  assert losses and np.all(np.isfinite(losses))


def test_missing_dataset_fails_at_once_with_the_command_that_prepares_it(monkeypatch, tmp_path):
  config = config_lib.default_config("cifar100")
  config.data_dir = str(tmp_path / "empty")
  (tmp_path / "empty").mkdir()
  assert config.download is False
  import tensorflow_datasets as tfds
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)

  def no_compile(*args, **kwargs):
    raise AssertionError("the train step was built without data")

  monkeypatch.setattr(step_lib, "make_train_step", no_compile)
  with pytest.raises(FileNotFoundError) as info:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  message = str(info.value)
  assert f"tfds build cifar100 --data_dir={config.data_dir}" in message
  assert "--config.download=True" in message


@pytest.mark.parametrize("split,factor", [("unlabelled", 1), ("train+unlabelled", 2)])
def test_stl10_pretrains_on_the_unlabelled_split(split, factor, monkeypatch, tmp_path):
  config = tiny_preset("stl10", tmp_path / "tfds")
  config.pretrain_split = split
  with mocked_tfds(monkeypatch, num_examples=64):
    data = input_pipeline.load_dataset(config)
    assert data.num_train == 64 and data.num_pretrain == 64 * factor
    workdir = tmp_path / "run"
    outcome = train.train_and_evaluate(config, str(workdir), stop_after_steps=1)
  assert outcome.results["steps"] == 1
  with open(workdir / "run.json") as f:
    assert json.load(f)["memory_bank_rows"] == 64 * factor


def test_unlabelled_pretraining_is_stl10_only():
  config = config_lib.default_config("cifar10")
  config.pretrain_split = "unlabelled"
  with pytest.raises(ValueError, match="pretrain_split.*allowed values: train"):
    config_lib.validate(config, num_devices=1)
