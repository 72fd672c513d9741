"""ImageNet streaming (imagenet2012) on mocked tfds data: host decode + crop, device views."""

import json

import numpy as np
import pytest

from mi_contrast import config as config_lib
from mi_contrast import input_pipeline
from mi_contrast import train
from helpers import mocked_tfds, no_network


pytestmark = pytest.mark.slow   # every test imports TensorFlow


@pytest.fixture(autouse=True)
def _tensorflow_datasets():
  """Every test here needs tensorflow_datasets (and TensorFlow): imported when one runs, not when
  pytest collects the module, so that a worker that runs none of them never imports them."""
  pytest.importorskip("tensorflow")
  pytest.importorskip("tensorflow_datasets")


NUM = 64  # mocked examples per split


def tiny_imagenet(data_dir):
  c = config_lib.default_config("imagenet2012")
  assert (c.image_size, c.stem, c.stream_resize) == (224, "imagenet", 256)
  c.data_dir = str(data_dir)
  c.model = "resnet_digits"
  c.width = 8
  c.head_hidden = 32
  c.embedding_dim = 16
  c.image_size = 32
  c.stream_resize = 36
  c.num_negatives = 16
  c.global_batch_size = 16
  c.num_epochs = 2
  c.probe_epochs = 2
  c.knn_k = 5
  c.log_every_steps = 1
  c.checkpoint_every_steps = 3
  return c


@pytest.fixture
def mocked(monkeypatch):
  with mocked_tfds(monkeypatch, num_examples=NUM):
    yield


def _split_sizes(monkeypatch):
  """Mocked builders record no split sizes: give load_streaming the mocked ones."""
  original = input_pipeline.load_streaming

  def load(config):
    try:
      return original(config)
    except KeyError:
      import tensorflow_datasets as tfds
      builder = tfds.builder(config.dataset, data_dir=config.data_dir)
      return input_pipeline.StreamingData(config.dataset, builder, NUM, NUM, 1000,
                                          config.image_size, config.stream_resize)
  monkeypatch.setattr(input_pipeline, "load_streaming", load)


def test_host_batches_are_fixed_size_crops_with_indices_and_deterministic(monkeypatch,
                                                                           tmp_path, mocked):
  _split_sizes(monkeypatch)
  data = input_pipeline.load_dataset(tiny_imagenet(tmp_path))
  assert isinstance(data, input_pipeline.StreamingData)
  first = data.train_batches(seed=1, first_step=0, global_batch=16, steps_per_epoch=4)
  batches = [next(first) for _ in range(5)]  # one epoch and the first batch of the next
  for images, indices in batches:
    assert images.shape == (16, 32, 32, 3) and images.dtype == np.uint8
    assert indices.shape == (16,) and indices.min() >= 0 and indices.max() < NUM
  epoch = np.concatenate([idx for _, idx in batches[:4]])
  assert len(set(epoch.tolist())) == 64  # every example once per epoch
  assert not np.array_equal(batches[4][1], batches[0][1])  # a new order in epoch 1
  resumed = data.train_batches(seed=1, first_step=3, global_batch=16, steps_per_epoch=4)
  images, indices = next(resumed)
  np.testing.assert_array_equal(indices, batches[3][1])
  np.testing.assert_array_equal(images, batches[3][0])
  evaluated = list(data.eval_batches("validation", 24))
  assert sum(int(v.sum()) for _, _, v in evaluated) == NUM
  assert all(x.shape == (24, 32, 32, 3) for x, _, _ in evaluated)


def test_imagenet_preset_trains_resumes_exactly_and_evaluates(monkeypatch, tmp_path, mocked):
  _split_sizes(monkeypatch)
  config = tiny_imagenet(tmp_path / "tfds")
  whole = train.train_and_evaluate(config, str(tmp_path / "whole")).results
  assert whole["steps"] == 8 and whole["raw_pixels_linear_top1"] is None
  assert 0.0 <= whole["knn_top1"] <= 1.0 and whole["num_test"] == NUM
  train.train_and_evaluate(config, str(tmp_path / "split"), stop_after_steps=3)
  rest = train.train_and_evaluate(config, str(tmp_path / "split")).results
  assert rest["resumed_from_step"] == 3
  assert rest["params_sha256"] == whole["params_sha256"]
  with open(tmp_path / "whole" / "run.json") as f:
    assert json.load(f)["memory_bank_rows"] == NUM


def test_missing_imagenet_names_the_manual_download(monkeypatch, tmp_path):
  config = config_lib.default_config("imagenet2012")
  config.data_dir = str(tmp_path / "empty")
  import tensorflow_datasets as tfds
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
  with pytest.raises(FileNotFoundError) as info:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  message = str(info.value)
  assert "ILSVRC2012_img_train.tar" in message and "downloads/manual" in message
  assert "tfds build imagenet2012" in message
