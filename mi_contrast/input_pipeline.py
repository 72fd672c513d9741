"""Input: datasets held in device memory, and ImageNet streamed from tfds.

In-memory datasets (embedded digits, CIFAR, STL-10): a step moves no pixels from the host. The
training images are placed on every device once and each step gathers its examples by index
(see `train.py`). Images are HWC, float32 in [0, 1] (digits) or uint8 (tfds); `as_float`
converts either on the device.

Streaming (imagenet2012): tf.data decodes on the host and takes one fixed-size crop; every
other augmentation runs on the device. Each process keeps its own shard of every epoch's
order, and the order is a function of (seed, epoch), so a resumed run sees the same batches.
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
STREAMING = ("imagenet2012",)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
  def num_test(self) -> int:
    return int(self.test_images.shape[0])

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


def imagenet_missing_message(data_dir: Optional[str]) -> str:
  root = data_dir or "~/tensorflow_datasets"
  flag = f" --data_dir={data_dir}" if data_dir else ""
  return (f"dataset 'imagenet2012' is not prepared in {root}. ImageNet cannot be downloaded "
          f"automatically: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from "
          f"image-net.org) in the manual directory {root}/downloads/manual/, then run once\n"
          f"    tfds build imagenet2012{flag} --manual_dir={root}/downloads/manual\n"
          f"or point --config.data_dir at a directory that holds the prepared dataset.")


@dataclasses.dataclass
class StreamingData:
  """A tfds dataset read in batches from disk (ImageNet); images never all in memory.

  Attributes:
    builder: the tfds builder (prepared).
    num_train / num_test: examples in the train / validation splits.
    image_size: side of the fixed-size crop the host takes (after resizing the shorter side
      to `resize`).
  """
  name: str
  builder: object
  num_train: int
  num_test: int
  num_classes: int
  image_size: int
  resize: int
  process_index: int = 0
  process_count: int = 1

  @property
  def num_pretrain(self) -> int:
    return self.num_train

  def channel_stats(self):
    return IMAGENET_MEAN, IMAGENET_STD

  def _examples(self, split):
    """(encoded image, label, index in the split) of this process's share, in file order."""
    import tensorflow_datasets as tfds
    ds = self.builder.as_dataset(split=split, shuffle_files=False,
                                 decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.enumerate().shard(self.process_count, self.process_index)
    return ds.map(lambda i, ex: (ex["image"], ex["label"], i))

  def _decode(self, encoded, crop_seed=None):
    import tensorflow as tf
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = self.resize / tf.reduce_min(shape)
    size = tf.cast(tf.math.ceil(shape * scale), tf.int32)
    image = tf.image.resize(image, size, antialias=True)
    crop = [self.image_size, self.image_size, 3]
    if crop_seed is None:  # evaluation: centre crop
      top = (size[0] - self.image_size) // 2
      left = (size[1] - self.image_size) // 2
      image = image[top:top + self.image_size, left:left + self.image_size]
    else:
      image = tf.image.stateless_random_crop(image, crop, seed=crop_seed)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)

  def train_batches(self, seed, first_step, global_batch, steps_per_epoch):
    """Yields (images uint8 [b, S, S, 3], indices int32 [b]) of this process, from
    `first_step` on; b = global_batch / process_count. Order and crops depend only on
    (seed, epoch, example index)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds
    local = global_batch // self.process_count
    step = first_step
    options = tf.data.Options()
    options.deterministic = True
    while True:
      epoch, offset = divmod(step, steps_per_epoch)
      ds = self._examples("train").shuffle(16 * local, seed=seed * 100003 + epoch,
                                           reshuffle_each_iteration=False)
      ds = ds.map(lambda enc, label, i: (
          self._decode(enc, tf.stack([tf.cast(seed * 100003 + epoch, tf.int64), i])),
          tf.cast(i, tf.int32)), num_parallel_calls=tf.data.AUTOTUNE)
      ds = ds.batch(local, drop_remainder=True).skip(offset).take(steps_per_epoch - offset)
      for images, indices in tfds.as_numpy(ds.with_options(options).prefetch(2)):
        yield images, indices
      step = (epoch + 1) * steps_per_epoch

  def eval_batches(self, split, local_batch):
    """Yields (images [b, S, S, 3] uint8 centre crops, labels [b], valid [b] bool), the last
    batch padded to `local_batch` with valid = False."""
    import tensorflow as tf
    import tensorflow_datasets as tfds
    ds = self._examples(split).map(lambda enc, label, i: (self._decode(enc), label),
                                   num_parallel_calls=tf.data.AUTOTUNE)
    for images, labels in tfds.as_numpy(ds.batch(local_batch).prefetch(2)):
      pad = local_batch - len(labels)
      valid = np.arange(local_batch) < len(labels)
      if pad:
        images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
        labels = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
      yield images, labels.astype(np.int32), valid


def load_streaming(config) -> StreamingData:
  """ImageNet through tfds (manual download); raises at once if it is not prepared."""
  try:
    import tensorflow_datasets as tfds
    import tensorflow  # noqa: F401
  except ImportError as e:
    raise ImportError("dataset 'imagenet2012' is read through tensorflow-datasets and "
                      "TensorFlow; install them with: pip install -e '.[tf]'") from e
  builder = tfds.builder(config.dataset, data_dir=config.data_dir)
  if not builder.is_prepared():
    if not config.download:
      raise FileNotFoundError(imagenet_missing_message(config.data_dir))
    builder.download_and_prepare()
  splits = builder.info.splits
  return StreamingData(config.dataset, builder, splits["train"].num_examples,
                       splits["validation"].num_examples,
                       builder.info.features["label"].num_classes, config.image_size,
                       config.stream_resize, jax.process_index(), jax.process_count())


def load_dataset(config):
  """The dataset a config names (raises early and clearly if missing): InMemoryData, or
  StreamingData for imagenet2012."""
  if config.dataset == "digits":
    return load_digits(config.split_seed, config.test_fraction)
  if config.dataset in STREAMING:
    return load_streaming(config)
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
