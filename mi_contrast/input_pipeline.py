"""Datasets held in device memory: the embedded digits and tfds in-memory datasets.

A step moves no pixels from the host: the training images are placed on every device once and
each step gathers its examples by index (see `train.py`). Images are HWC, float32 in [0, 1]
(digits) or uint8 (tfds); `as_float` converts either on the device.
"""

import dataclasses
import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

TFDS_NAMES = {"cifar10": "cifar10", "cifar100": "cifar100", "stl10": "stl10"}
TFDS_SPLITS = {"cifar10": ("train", "test"), "cifar100": ("train", "test"),
               "stl10": ("train", "test")}
_READ_BATCH = 10_000  # examples per tf.data batch when reading a split into memory


@dataclasses.dataclass
class InMemoryData:
  """A labelled dataset with train and test splits, as host numpy arrays."""
  name: str
  train_images: np.ndarray   # [N, H, W, C], float32 in [0, 1] or uint8
  train_labels: np.ndarray   # [N] int32
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  pretrain_images: Optional[np.ndarray] = None  # unlabelled pretraining images, if separate

  @property
  def num_train(self) -> int:
    return int(self.train_images.shape[0])

  @property
  def pretrain(self) -> np.ndarray:
    """The images contrastive pretraining runs on (one memory-bank row each)."""
    return self.train_images if self.pretrain_images is None else self.pretrain_images

  @property
  def num_pretrain(self) -> int:
    return int(self.pretrain.shape[0])

  def channel_stats(self) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and std of the training images, in [0, 1] units."""
    x = self.train_images.astype(np.float32)
    if self.train_images.dtype == np.uint8:
      x = x / 255.0
    mean = x.mean(axis=(0, 1, 2))
    std = x.std(axis=(0, 1, 2)) + 1e-6
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def as_float(images):
  """uint8 or float images -> float32 in [0, 1]."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def load_digits(split_seed: int, test_fraction: float) -> InMemoryData:
  """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes; no network).

  Pixels 0..16 are scaled to [0, 1]; the train/test split is a permutation fixed by
  `split_seed`, stratified by nothing (digits classes are balanced).
  """
  from sklearn.datasets import load_digits as sk_load_digits
  bunch = sk_load_digits()
  images = (bunch.images.astype(np.float32) / 16.0)[..., None]
  labels = bunch.target.astype(np.int32)
  order = np.random.RandomState(split_seed).permutation(len(labels))
  num_test = int(round(test_fraction * len(labels)))
  test, train = order[:num_test], order[num_test:]
  return InMemoryData("digits", images[train], labels[train], images[test], labels[test], 10)


def tfds_missing_message(name: str, data_dir: Optional[str]) -> str:
  where = data_dir or "tfds's default data_dir (TFDS_DATA_DIR, else ~/tensorflow_datasets)"
  flag = f" --data_dir={data_dir}" if data_dir else ""
  return (f"dataset {name!r} is not prepared in {where}. Prepare it once with\n"
          f"    tfds build {name}{flag}\n"
          f"(or run with --config.download=True to let tfds download it), or point "
          f"--config.data_dir at a directory that holds it.")


def load_tfds(name: str, data_dir: Optional[str], download: bool,
              pretrain_split: str = "train") -> InMemoryData:
  """A tfds dataset (cifar10, cifar100, stl10) as uint8 numpy arrays.

  Never touches the network unless `download` is True: a dataset that is not on disk raises
  FileNotFoundError at once with the command that prepares it. `pretrain_split` (stl10 only):
  'unlabelled' pretrains on the 100,000 unlabelled images, 'train+unlabelled' on those and
  the 5,000 labelled training images; evaluation always uses the labelled train/test splits.
  """
  try:
    import tensorflow_datasets as tfds
    import tensorflow  # noqa: F401  (tfds needs TensorFlow to read its files)
  except ImportError as e:
    raise ImportError(f"dataset {name!r} is read through tensorflow-datasets and TensorFlow; "
                      "install them with: pip install -e '.[tf]'") from e
  builder = tfds.builder(TFDS_NAMES[name], data_dir=data_dir)
  if not builder.is_prepared():
    if not download:
      raise FileNotFoundError(tfds_missing_message(TFDS_NAMES[name], data_dir))
    builder.download_and_prepare()
  train_split, test_split = TFDS_SPLITS[name]
  splits = [train_split, test_split] + (["unlabelled"] if pretrain_split != "train" else [])
  arrays = {}
  for split in splits:
    # Fixed-size batches, concatenated. One batch of the whole split would be sized from the
    # split sizes in the dataset's metadata; where those are unknown (tfds.testing.mock_data),
    # TensorFlow aborts the process reserving a batch of sys.maxsize examples.
    batches = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=_READ_BATCH,
                                                    as_supervised=True)))
    arrays[split] = (np.concatenate([b[0] for b in batches]).astype(np.uint8, copy=False),
                     np.concatenate([b[1] for b in batches]).astype(np.int32))
  num_classes = builder.info.features["label"].num_classes
  pretrain = None
  if pretrain_split == "unlabelled":
    pretrain = arrays["unlabelled"][0]
  elif pretrain_split == "train+unlabelled":
    pretrain = np.concatenate([arrays[train_split][0], arrays["unlabelled"][0]])
  return InMemoryData(name, *arrays[train_split], *arrays[test_split], num_classes, pretrain)


def load_dataset(config) -> InMemoryData:
  """The dataset a config names, as host arrays (raises early and clearly if missing)."""
  if config.dataset == "digits":
    return load_digits(config.split_seed, config.test_fraction)
  return load_tfds(config.dataset, config.data_dir, config.download, config.pretrain_split)


@functools.partial(jax.jit, static_argnames=("size",))
def _resize(images, size):
  images = as_float(images)
  return jax.image.resize(images, (images.shape[0], size, size, images.shape[-1]), "bilinear")


def to_device(images: np.ndarray, size: int, sharding) -> jax.Array:
  """Places images on every device of `sharding` once, resized there to `size` if needed.

  uint8 images that already have the right size stay uint8 (4x less device memory).
  """
  on_device = jax.device_put(images, sharding)
  if images.shape[1] == size and images.shape[2] == size:
    return on_device
  return jax.jit(lambda x: _resize(x, size), out_shardings=sharding)(on_device)
