"""The fashion_mnist preset: the IDX reader, where the data is looked for, and the real files.

Every test but the last runs on small hand-made IDX files written in tmp_path, with the
expected split sizes shrunk (input_pipeline.FASHION_MNIST_SIZES), so none needs the real data
or costs more than a second or so. The last one reads Debian's real files: skipped when
/usr/share/datasets/fashion-mnist is absent, except with CI=true, where it fails.
"""

import glob
import gzip
import os
import struct
import sys
import time

import numpy as np
import pytest

from mi_contrast import config as config_lib
from mi_contrast import input_pipeline
from mi_contrast import views

REAL_DIR = "/usr/share/datasets/fashion-mnist"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"train": 12, "test": 6}


def idx_bytes(array, magic=None):
  """The IDX encoding of a uint8 array (magic 0x0000080D, D = array.ndim, unless given)."""
  array = np.asarray(array, np.uint8)
  magic = 0x00000800 | array.ndim if magic is None else magic
  return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write(path, data, compress):
  with (gzip.open(path, "wb", compresslevel=1) if compress else open(path, "wb")) as f:
    f.write(data)
  return str(path)


def write_split_files(directory, value, sizes=SMALL, compress=True):
  """The four Fashion-MNIST files in `directory`; every pixel is `value`, labels 0, 1, 2, ..."""
  directory.mkdir(parents=True, exist_ok=True)
  for (split, kind), name in input_pipeline.FASHION_MNIST_FILES.items():
    n = sizes[split]
    array = (np.full((n, 28, 28), value, np.uint8) if kind == "images"
             else np.arange(n, dtype=np.uint8) % 10)
    write(directory / (name if compress else name[:-3]), idx_bytes(array), compress)
  return directory


@pytest.fixture
def small_sizes(monkeypatch):
  monkeypatch.setattr(input_pipeline, "FASHION_MNIST_SIZES", dict(SMALL))


@pytest.fixture
def nowhere(monkeypatch, tmp_path):
  """No Debian files and an empty tfds data_dir (cheap: no TensorFlow import)."""
  monkeypatch.setattr(input_pipeline, "FASHION_MNIST_DEBIAN_DIR", str(tmp_path / "no_debian"))
  monkeypatch.setattr(input_pipeline, "FASHION_MNIST_TFDS_DIR", str(tmp_path / "no_tfds"))
  return tmp_path


def config_for(data_dir=None):
  c = config_lib.default_config("fashion_mnist")
  c.data_dir = None if data_dir is None else str(data_dir)
  return c


# ---------------------------------------------------------------------------------------
# read_idx
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
def test_read_idx_reads_images_and_labels(tmp_path, compress):
  images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  labels = np.array([9, 0, 3], np.uint8)
  got = input_pipeline.read_idx(write(tmp_path / "images", idx_bytes(images), compress))
  assert got.dtype == np.uint8 and got.shape == (2, 3, 4) and got.flags.writeable
  np.testing.assert_array_equal(got, images)
  got = input_pipeline.read_idx(write(tmp_path / "labels", idx_bytes(labels), compress))
  np.testing.assert_array_equal(got, labels)


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
@pytest.mark.parametrize("cut, what", [(-1, "truncated"), (+1, "longer than its header")])
def test_read_idx_rejects_a_wrong_payload_length(tmp_path, compress, cut, what):
  data = idx_bytes(np.zeros((5, 28, 28), np.uint8))
  data = data[:cut] if cut < 0 else data + b"\0" * cut
  path = write(tmp_path / "images", data, compress)
  with pytest.raises(ValueError, match=what) as info:
    input_pipeline.read_idx(path)
  assert path in str(info.value) and "[5, 28, 28]" in str(info.value)
  assert str(5 * 28 * 28) in str(info.value)


def test_read_idx_rejects_a_truncated_header(tmp_path):
  path = write(tmp_path / "labels", idx_bytes(np.zeros(3, np.uint8))[:6], compress=False)
  with pytest.raises(ValueError, match="truncated") as info:
    input_pipeline.read_idx(path)
  assert path in str(info.value)


def test_read_idx_rejects_a_truncated_gzip_stream(tmp_path):
  path = write(tmp_path / "full.gz", idx_bytes(np.arange(4000, dtype=np.uint8) % 7), True)
  with open(path, "rb") as f:
    data = f.read()
  cut = write(tmp_path / "cut.gz", data[:len(data) // 2], compress=False)
  with pytest.raises(ValueError, match="gzip.*truncated or corrupt") as info:
    input_pipeline.read_idx(cut)
  assert cut in str(info.value)
  corrupt = bytearray(data)
  corrupt[len(data) // 2] ^= 0xFF
  bad = write(tmp_path / "bad.gz", bytes(corrupt), compress=False)
  with pytest.raises(ValueError, match="gzip") as info:
    input_pipeline.read_idx(bad)
  assert bad in str(info.value)


@pytest.mark.parametrize("magic", [0x00000802, 0x08030000, 0x12345678, 0x00000804])
def test_read_idx_rejects_a_wrong_magic_number(tmp_path, magic):
  path = write(tmp_path / "x", idx_bytes(np.zeros((2, 2, 2), np.uint8), magic), compress=True)
  with pytest.raises(ValueError, match=f"magic number 0x{magic:08x}.*0x00000803") as info:
    input_pipeline.read_idx(path)
  assert path in str(info.value)


def test_read_idx_rejects_a_wrong_dtype(tmp_path):
  data = idx_bytes(np.zeros((2, 2, 2), np.uint8), 0x00000D03)  # float32 type byte
  path = write(tmp_path / "x", data, compress=True)
  with pytest.raises(ValueError, match=r"type 0x0d \(float32\).*0x08") as info:
    input_pipeline.read_idx(path)
  assert path in str(info.value)


# ---------------------------------------------------------------------------------------
# Where the data is looked for.
# ---------------------------------------------------------------------------------------


def test_data_dir_with_the_four_files_wins_over_debian(small_sizes, nowhere, monkeypatch):
  debian = write_split_files(nowhere / "debian", value=1)
  monkeypatch.setattr(input_pipeline, "FASHION_MNIST_DEBIAN_DIR", str(debian))
  data_dir = write_split_files(nowhere / "mine", value=2)
  data = input_pipeline.load_dataset(config_for(data_dir))
  assert data.name == "fashion_mnist" and data.num_classes == 10
  assert np.all(data.train_images == 2) and np.all(data.test_images == 2)


def test_debian_directory_is_read_when_data_dir_is_unset(small_sizes, nowhere, monkeypatch):
  debian = write_split_files(nowhere / "debian", value=7)
  monkeypatch.setattr(input_pipeline, "FASHION_MNIST_DEBIAN_DIR", str(debian))
  data = input_pipeline.load_dataset(config_for())
  for images, labels, n in ((data.train_images, data.train_labels, SMALL["train"]),
                            (data.test_images, data.test_labels, SMALL["test"])):
    assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, np.arange(n) % 10)
    assert np.all(images == 7)
  assert data.num_train == data.num_pretrain == SMALL["train"]
  mean, std = data.channel_stats()
  assert mean == pytest.approx((7 / 255,)) and len(std) == 1


def test_uncompressed_files_are_read_too(small_sizes, nowhere):
  data_dir = write_split_files(nowhere / "plain", value=3, compress=False)
  data = input_pipeline.load_fashion_mnist(str(data_dir))
  assert data.train_images.shape == (SMALL["train"], 28, 28, 1) and np.all(data.test_images == 3)


def test_nothing_anywhere_fails_at_once_naming_every_place_and_the_fixes(nowhere):
  start = time.perf_counter()
  with pytest.raises(FileNotFoundError) as info:
    input_pipeline.load_dataset(config_for())
  elapsed = time.perf_counter() - start
  message = str(info.value)
  assert str(nowhere / "no_debian") in message
  tfds_place = str(nowhere / "no_tfds") if "tensorflow_datasets" in sys.modules else "tfds"
  assert tfds_place in message
  assert "apt-get install dataset-fashion-mnist" in message
  assert "tfds build fashion_mnist" in message
  assert "--config.data_dir=" in message
  for name in input_pipeline.FASHION_MNIST_FILES.values():
    assert name in message
  assert "checksums" in message and "recompressed" in message
  assert elapsed < 3.0, elapsed


def test_an_empty_data_dir_falls_through_to_the_later_sources(small_sizes, nowhere, monkeypatch,
                                                             tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError) as info:   # nothing anywhere: every place is named
    input_pipeline.load_dataset(config_for(empty))
  message = str(info.value)
  assert f"config.data_dir = {str(empty)!r} holds neither" in message
  assert f"{empty} (config.data_dir): none of the four IDX files" in message
  assert str(nowhere / "no_debian") in message
  assert f"tfds build fashion_mnist --data_dir={empty}" in message
  assert f"--config.data_dir={empty}" in message
  # Debian's files, next in the order, are read when data_dir holds nothing.
  debian = write_split_files(tmp_path / "debian", value=1)
  monkeypatch.setattr(input_pipeline, "FASHION_MNIST_DEBIAN_DIR", str(debian))
  data = input_pipeline.load_dataset(config_for(empty))
  assert np.all(data.train_images == 1)


def test_tfds_default_is_skipped_silently_without_tfds(nowhere, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import raises ImportError
  with pytest.raises(FileNotFoundError) as info:
    input_pipeline.load_fashion_mnist()
  assert "not searched (tensorflow-datasets is not installed)" in str(info.value)


def test_some_of_the_four_files_is_an_error_not_a_partial_dataset(small_sizes, nowhere):
  data_dir = write_split_files(nowhere / "partial", value=1)
  os.remove(data_dir / "t10k-labels-idx1-ubyte.gz")
  with pytest.raises(FileNotFoundError, match="missing: t10k-labels-idx1-ubyte.gz") as info:
    input_pipeline.load_fashion_mnist(str(data_dir))
  assert str(data_dir) in str(info.value)


def test_counts_shapes_and_labels_are_checked(nowhere, monkeypatch):
  # Real sizes expected: 12 training images are not Fashion-MNIST's 60,000.
  data_dir = write_split_files(nowhere / "small", value=1)
  with pytest.raises(ValueError, match="train split from .*12 examples, expected 60,000"):
    input_pipeline.load_fashion_mnist(str(data_dir))
  monkeypatch.setattr(input_pipeline, "FASHION_MNIST_SIZES", dict(SMALL))
  train_labels = data_dir / "train-labels-idx1-ubyte.gz"
  write(train_labels, idx_bytes(np.full(SMALL["train"], 10, np.uint8)), True)
  with pytest.raises(ValueError, match=r"values in \[10, 10\], expected class indices in "
                     r"\[0, 9\]"):
    input_pipeline.load_fashion_mnist(str(data_dir))
  write(train_labels, idx_bytes(np.zeros(SMALL["train"] - 1, np.uint8)), True)
  with pytest.raises(ValueError, match="12 images but 11 labels"):
    input_pipeline.load_fashion_mnist(str(data_dir))
  write(train_labels, idx_bytes(np.zeros(SMALL["train"], np.uint8)), True)
  test_images = data_dir / "t10k-images-idx3-ubyte.gz"
  write(test_images, idx_bytes(np.zeros((SMALL["test"], 32, 32), np.uint8)), True)
  with pytest.raises(ValueError, match=r"shape \[6, 32, 32\], expected \[N, 28, 28\]"):
    input_pipeline.load_fashion_mnist(str(data_dir))
  write(test_images, idx_bytes(np.zeros(SMALL["test"], np.uint8)), True)  # a labels file
  with pytest.raises(ValueError, match="swapped"):
    input_pipeline.load_fashion_mnist(str(data_dir))


@pytest.mark.slow   # imports TensorFlow
def test_a_prepared_tfds_data_dir_is_read_through_tfds(nowhere, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("tensorflow")
  data_dir = nowhere / "tfds"
  data_dir.mkdir()
  monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)

  def no_network(self, *args, **kwargs):
    raise AssertionError("download_and_prepare was called")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
  with tfds.testing.mock_data(num_examples=8):
    with pytest.raises(ValueError, match="train split from the tfds dataset in .*8 examples, "
                       "expected 60,000"):
      input_pipeline.load_fashion_mnist(str(data_dir))
    monkeypatch.setattr(input_pipeline, "FASHION_MNIST_SIZES", {"train": 8, "test": 8})
    data = input_pipeline.load_fashion_mnist(str(data_dir))
  assert data.train_images.shape == (8, 28, 28, 1) and data.train_images.dtype == np.uint8
  assert data.test_labels.dtype == np.int32 and data.test_labels.max() <= 9


def test_missing_data_fails_before_the_step_is_built(nowhere, monkeypatch):
  from mi_contrast import step as step_lib
  from mi_contrast import train

  def no_compile(*args, **kwargs):
    raise AssertionError("the train step was built without data")

  monkeypatch.setattr(step_lib, "make_train_step", no_compile)
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
    train.train_and_evaluate(config_for(), str(nowhere / "run"))
  assert not (nowhere / "run").exists()


# ---------------------------------------------------------------------------------------
# The preset and its views.
# ---------------------------------------------------------------------------------------


def test_preset_settings():
  c = config_lib.default_config("fashion_mnist")
  assert (c.dataset, c.model, c.image_size, c.views) == (
      "fashion_mnist", "resnet_digits", 28, "fashion_mnist_20")
  assert (c.global_batch_size, c.num_negatives, c.knn_k) == (256, 4095, 200)
  assert c.bank.candidates == 0  # bankless methods refuse it; configs/ring.py sets it
  config_lib.validate(c, num_devices=1, num_train=60_000)


def test_every_method_config_takes_the_preset():
  """`configs/<method>.py:fashion_mnist` is a valid config for every method, with the preset's
  grey views; IR Ring and Ball cut their band over sampled bank rows."""
  import importlib.util
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
    spec = importlib.util.spec_from_file_location("config_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("fashion_mnist")
    config_lib.validate(c, num_devices=1, num_train=60_000)
    name = os.path.basename(path)
    if c.method != "cmc":  # CMC's views split Lab colour
      assert c.views == "fashion_mnist_20", name
    assert c.bank.candidates == (8192 if name in ("ring.py", "ball.py") else 0), name


@pytest.mark.slow
def test_view_recipe_keeps_grey_28px_images_in_range():
  import jax
  image = jax.random.uniform(jax.random.key(0), (28, 28, 1))
  keys = jax.random.split(jax.random.key(1), 2)
  # One image, two views, one compilation (make_views over a batch compiles for seconds more).
  out = jax.jit(jax.vmap(lambda k: views.apply_recipe(k, image, "fashion_mnist")))(keys)
  assert out.shape == (2, 28, 28, 1)
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  assert not np.allclose(out[0], out[1])
  # The 20x20 training views: the same ops, the crop resized to 20 (the probes see 28x28).
  small = jax.jit(jax.vmap(lambda k: views.apply_recipe(k, image, "fashion_mnist_20")))(keys)
  assert small.shape == (2, 20, 20, 1)
  assert float(small.min()) >= 0.0 and float(small.max()) <= 1.0


# ---------------------------------------------------------------------------------------
# The real files.
# ---------------------------------------------------------------------------------------


def test_real_debian_files():
  if not os.path.isdir(REAL_DIR):
    if os.environ.get("CI") == "true":
      pytest.fail(f"CI=true but {REAL_DIR} is absent: install Debian's package with "
                  "apt-get install dataset-fashion-mnist (.ci/run does so).")
    pytest.skip(f"{REAL_DIR} is absent (apt-get install dataset-fashion-mnist)")
  data = input_pipeline.load_fashion_mnist()  # no data_dir: Debian's directory comes first
  assert data.name == "fashion_mnist" and data.num_classes == 10
  assert data.train_images.shape == (60_000, 28, 28, 1) and data.num_pretrain == 60_000
  assert data.test_images.shape == (10_000, 28, 28, 1)
  assert data.train_images.dtype == data.test_images.dtype == np.uint8
  assert data.train_labels.dtype == data.test_labels.dtype == np.int32
  for labels, per_class in ((data.train_labels, 6_000), (data.test_labels, 1_000)):
    assert labels.min() == 0 and labels.max() == 9
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [per_class] * 10)
  assert 0 < data.train_images.mean() < 255 and data.train_images.max() == 255
