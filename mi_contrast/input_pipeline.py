"""Input: datasets held in device memory, and ImageNet streamed from tfds.

In-memory datasets (embedded digits, Fashion-MNIST, CIFAR, STL-10): a step moves no pixels
from the host. The training images are placed on every device once and each step gathers its
examples by index (see `train.py`). Images are HWC, float32 in [0, 1] (digits) or uint8
(Fashion-MNIST, tfds); `as_float` converts either on the device.

Fashion-MNIST is read from its four original IDX files (`read_idx`; Debian's package
`dataset-fashion-mnist` installs them) or from a prepared tfds `fashion_mnist`; see
`load_fashion_mnist` for where it is looked for.

Streaming (imagenet2012): tf.data decodes on the host and takes one fixed-size crop; every
other augmentation runs on the device. Each process keeps its own shard of every epoch's
order, and the order is a function of (seed, epoch), so a resumed run sees the same batches.
"""

import dataclasses
import functools
import gzip
import importlib.util
import os
import zlib
from typing import Dict, List, Optional, Tuple

from absl import logging

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


# ---------------------------------------------------------------------------------------
# Fashion-MNIST: the four original IDX files, or a prepared tfds `fashion_mnist`.
# ---------------------------------------------------------------------------------------

# Where Debian's package `dataset-fashion-mnist` puts the four original files.
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
# tfds data_dir searched after Debian's directory when config.data_dir is None; None means
# tfds's own default (TFDS_DATA_DIR, else ~/tensorflow_datasets).
FASHION_MNIST_TFDS_DIR = None
# The original files (https://github.com/zalandoresearch/fashion-mnist), by split and kind.
FASHION_MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_SIZES = {"train": 60_000, "test": 10_000}  # examples per split
FASHION_MNIST_SHAPE = (28, 28)
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")

_IDX_UBYTE = 0x08
_IDX_TYPE_NAMES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32",
                   0x0D: "float32", 0x0E: "float64"}
_IDX_MAGICS = {0x00000801: 1, 0x00000803: 3}  # uint8 labels [N], uint8 images [N, rows, cols]


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (LeCun's MNIST format), gzip'd or plain, into a uint8 array.

  Format (big-endian): a 4-byte magic number 0x0000TTDD (TT the element type, DD the number of
  dimensions), then DD uint32 sizes, then the elements in C order. Accepted: type 0x08
  (unsigned byte) with 1 dimension (magic 0x00000801, labels [N]) or 3 dimensions (magic
  0x00000803, images [N, rows, cols]), which is what (Fashion-)MNIST files hold. Gzip is
  recognised by its first two bytes (1f 8b), not by the file name.

  Args:
    path: the file, e.g. .../train-images-idx3-ubyte.gz or an uncompressed copy.
  Returns:
    a writable uint8 array of the header's shape.
  Raises:
    ValueError naming the file: a truncated or corrupt gzip stream, a wrong magic number, an
    element type other than 0x08, or a payload whose length is not the product of the
    sizes (truncated or with trailing bytes). A partial array is never returned.
  """
  with open(path, "rb") as f:
    raw = f.read()
  if raw[:2] == b"\x1f\x8b":
    try:
      raw = gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
      raise ValueError(f"{path}: not a complete gzip file ({e}); the file is truncated or "
                       "corrupt. Replace it with a fresh copy of the original.") from None
  if len(raw) < 4:
    raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX header (4-byte magic "
                     "number, then one 4-byte size per dimension); the file is truncated.")
  magic = int.from_bytes(raw[:4], "big")
  if magic >> 16 != 0 or magic & 0xFF not in (1, 3):
    raise ValueError(f"{path}: magic number 0x{magic:08x} is not that of an IDX file of "
                     "uint8 labels (0x00000801) or uint8 images (0x00000803); is it an IDX "
                     "file at all?")
  dtype_code = (magic >> 8) & 0xFF
  if dtype_code != _IDX_UBYTE:
    name = _IDX_TYPE_NAMES.get(dtype_code, "not an IDX type")
    raise ValueError(f"{path}: IDX element type 0x{dtype_code:02x} ({name}); this reader "
                     f"takes type 0x08 (unsigned byte) only, which every (Fashion-)MNIST "
                     f"file uses (magic 0x00000801 or 0x00000803, got 0x{magic:08x}).")
  ndim = _IDX_MAGICS[magic]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f"{path}: the IDX header of {ndim} dimension(s) needs {header} bytes, "
                     f"the file has {len(raw)}; the file is truncated.")
  dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  expected = int(np.prod(dims, dtype=np.int64))
  payload = len(raw) - header
  if payload != expected:
    what = "truncated" if payload < expected else "longer than its header says"
    raise ValueError(f"{path}: the header gives shape {list(dims)}, i.e. {expected} bytes of "
                     f"uint8 data after the {header}-byte header, but the file holds {payload}: "
                     f"it is {what}. Replace it with a fresh copy of the original.")
  return np.frombuffer(raw, np.uint8, count=expected, offset=header).reshape(dims).copy()


def _find_idx_files(directory: str) -> Tuple[Optional[Dict[Tuple[str, str], str]], str]:
  """The four IDX files in `directory` ({(split, kind): path}, or None) and what was found.

  Each file may be gzip'd (the original name) or uncompressed (the name without '.gz').
  Raises FileNotFoundError when some but not all of the four are there (never a partial
  dataset).
  """
  if not os.path.isdir(directory):
    return None, "no such directory"
  found, missing = {}, []
  for key, name in FASHION_MNIST_FILES.items():
    for candidate in (name, name[:-len(".gz")]):
      if os.path.isfile(os.path.join(directory, candidate)):
        found[key] = os.path.join(directory, candidate)
        break
    else:
      missing.append(name)
  if not found:
    return None, "none of the four IDX files " + ", ".join(FASHION_MNIST_FILES.values())
  if missing:
    raise FileNotFoundError(
        f"dataset 'fashion_mnist': {directory} holds only some of the four original IDX files; "
        f"missing: {', '.join(missing)} (or the same names without .gz). Put all four there "
        f"(from https://github.com/zalandoresearch/fashion-mnist, or reinstall Debian's "
        f"package: apt-get install --reinstall dataset-fashion-mnist).")
  return found, "the four IDX files"


def _check_fashion_mnist(split: str, images: np.ndarray, labels: np.ndarray,
                         source: str) -> None:
  """Counts, shape and label range of one split; ValueError naming `source` otherwise."""
  expected = FASHION_MNIST_SIZES[split]
  if images.ndim != 3 or tuple(images.shape[1:]) != FASHION_MNIST_SHAPE:
    raise ValueError(f"fashion_mnist {split} images from {source}: shape {list(images.shape)}, "
                     f"expected [N, 28, 28] (Fashion-MNIST images are 28x28 grey).")
  if labels.ndim != 1:
    raise ValueError(f"fashion_mnist {split} labels from {source}: shape {list(labels.shape)}, "
                     "expected [N] (one class index per image).")
  if images.shape[0] != labels.shape[0]:
    raise ValueError(f"fashion_mnist {split} split from {source}: {images.shape[0]} images but "
                     f"{labels.shape[0]} labels; the image and label files do not belong "
                     "together.")
  if images.shape[0] != expected:
    raise ValueError(f"fashion_mnist {split} split from {source}: {images.shape[0]} examples, "
                     f"expected {expected:,}; the data is incomplete or not Fashion-MNIST.")
  if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
    raise ValueError(f"fashion_mnist {split} labels from {source}: values in "
                     f"[{labels.min()}, {labels.max()}], expected class indices in [0, 9].")


def _fashion_mnist_from_idx(files: Dict[Tuple[str, str], str]) -> InMemoryData:
  arrays = {}
  for split in ("train", "test"):
    images_path, labels_path = files[(split, "images")], files[(split, "labels")]
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
      raise ValueError(f"{images_path}: an IDX file of {images.ndim} dimension(s) (magic "
                       f"0x0000080{images.ndim}) where images [N, 28, 28] (magic 0x00000803) "
                       "were expected; are the image and label files swapped?")
    if labels.ndim != 1:
      raise ValueError(f"{labels_path}: an IDX file of {labels.ndim} dimensions (magic "
                       f"0x0000080{labels.ndim}) where labels [N] (magic 0x00000801) were "
                       "expected; are the image and label files swapped?")
    _check_fashion_mnist(split, images, labels, f"{images_path} and {labels_path}")
    arrays[split] = (images[..., None], labels.astype(np.int32))
  return InMemoryData("fashion_mnist", *arrays["train"], *arrays["test"],
                      len(FASHION_MNIST_CLASSES))


def _tfds_fashion_mnist_builder(data_dir: Optional[str], label: str):
  """(builder or None, where it looked): a prepared tfds `fashion_mnist` in `data_dir`.

  Never downloads. Returns (None, reason) when tensorflow-datasets or TensorFlow is not
  installed (TensorFlow is only located here, not imported) or the dataset is not prepared.
  `label` says what the place is, for the message.
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    return None, f"{label}: not searched (tensorflow-datasets is not installed)"
  if importlib.util.find_spec("tensorflow") is None:
    return None, f"{label}: not searched (TensorFlow, which tfds needs, is not installed)"
  builder = tfds.builder("fashion_mnist", data_dir=data_dir)
  if builder.is_prepared():
    return builder, builder.data_dir
  return None, f"{builder.data_dir} ({label}): no prepared tfds fashion_mnist"


def _fashion_mnist_from_tfds(builder) -> InMemoryData:
  import tensorflow_datasets as tfds
  import tensorflow  # noqa: F401  (tfds needs TensorFlow to read its files)
  arrays = {}
  for split in ("train", "test"):
    batches = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=_READ_BATCH,
                                                    as_supervised=True)))
    if not batches:
      raise ValueError(f"fashion_mnist {split} split in {builder.data_dir} is empty; prepare "
                       "it again with: tfds build fashion_mnist")
    images = np.concatenate([b[0] for b in batches]).astype(np.uint8, copy=False)
    labels = np.concatenate([b[1] for b in batches]).astype(np.int32)
    grey = images[..., 0] if images.ndim == 4 and images.shape[-1] == 1 else images
    _check_fashion_mnist(split, grey, labels, f"the tfds dataset in {builder.data_dir}")
    arrays[split] = (grey[..., None], labels)
  return InMemoryData("fashion_mnist", *arrays["train"], *arrays["test"],
                      len(FASHION_MNIST_CLASSES))


def fashion_mnist_missing_message(looked: List[str], data_dir: Optional[str]) -> str:
  """The FileNotFoundError text: every place looked, and the three ways to get the data."""
  files = ", ".join(FASHION_MNIST_FILES.values())
  scope = f"config.data_dir = {data_dir!r} holds neither. " if data_dir else ""
  then_unset = ""
  flag = f" --data_dir={data_dir}" if data_dir else ""
  places = "".join(f"  - {place}\n" for place in looked)
  return (f"dataset 'fashion_mnist' was not found. {scope}Looked in:\n{places}"
          "Get it in one of three ways:\n"
          f"  1. apt-get install dataset-fashion-mnist (Debian/Ubuntu, as root or with sudo): "
          f"the four original files in {FASHION_MNIST_DEBIAN_DIR}{then_unset};\n"
          f"  2. tfds build fashion_mnist{flag} (downloads and prepares it once; needs "
          "TensorFlow: pip install -e '.[tf]');\n"
          f"  3. put the four original files {files} (from "
          "https://github.com/zalandoresearch/fashion-mnist) directly in a directory and pass "
          f"--config.data_dir={data_dir or 'DIR'}.\n"
          "Debian's files cannot serve tfds as a manual download: they are recompressed, so "
          "their checksums differ from the ones tfds expects and tfds rejects them; this "
          "loader reads them directly (way 1).")


def load_fashion_mnist(data_dir: Optional[str] = None) -> InMemoryData:
  """Zalando's Fashion-MNIST: 60,000 train / 10,000 test 28x28 grey images, 10 classes.

  Images uint8 [N, 28, 28, 1], labels int32 [N] in [0, 9] (FASHION_MNIST_CLASSES). Never
  touches the network. Sources, in this order (the first that holds the data is read):
    (a) `data_dir`, when given: the four original IDX files directly in it (gzip'd or not),
        else a prepared tfds `fashion_mnist` in it as a tfds data_dir (a warning says when it
        holds neither and a later source is read);
    (b) FASHION_MNIST_DEBIAN_DIR, Debian's package dataset-fashion-mnist;
    (c) a prepared tfds `fashion_mnist` in FASHION_MNIST_TFDS_DIR (None: tfds's default
        data_dir), skipped when tensorflow-datasets or TensorFlow is not installed.
  Every split is checked (60,000 / 10,000 examples, 28x28, labels in [0, 9], as many images
  as labels): ValueError naming the source otherwise.

  Raises:
    FileNotFoundError, at once, when no source holds the data: it names every place looked
    and the three ways to get the data.
  """
  looked = []

  def from_files(directory, label):
    files, found = _find_idx_files(directory)
    if files is None:
      looked.append(f"{directory} ({label}): {found}")
      return None
    logging.info("fashion_mnist: reading the IDX files in %s", directory)
    return _fashion_mnist_from_idx(files)

  def from_tfds(directory, label):
    builder, where = _tfds_fashion_mnist_builder(directory, label)
    if builder is None:
      looked.append(where)
      return None
    logging.info("fashion_mnist: reading the prepared tfds dataset in %s", builder.data_dir)
    return _fashion_mnist_from_tfds(builder)

  sources = []
  if data_dir:
    data_dir = os.path.expanduser(data_dir)
    sources += [lambda: from_files(data_dir, "config.data_dir"),
                lambda: from_tfds(data_dir, "config.data_dir as a tfds data_dir")]
  sources += [lambda: from_files(FASHION_MNIST_DEBIAN_DIR, "Debian's dataset-fashion-mnist"),
              lambda: from_tfds(FASHION_MNIST_TFDS_DIR, "tfds's default data_dir"
                                if FASHION_MNIST_TFDS_DIR is None else "tfds data_dir")]
  for number, source in enumerate(sources):
    data = source()
    if data is not None:
      if data_dir and number >= 2:
        logging.warning("fashion_mnist: config.data_dir = %s holds neither the four IDX files "
                        "nor a prepared tfds fashion_mnist; read it from a later source.",
                        data_dir)
      return data
  raise FileNotFoundError(fashion_mnist_missing_message(looked, data_dir))


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


def validation_split(data: InMemoryData, fraction: float, seed: int) -> InMemoryData:
  """The same data with the test split replaced by a validation split: `fraction` of the
  training images, drawn by a permutation fixed by `seed`; training (and pretraining, unless
  it has its own images) keeps the rest. The test images are not used at all, so a recipe
  chosen on this split has never seen them."""
  order = np.random.RandomState(seed).permutation(data.num_train)
  num_validation = int(round(fraction * data.num_train))
  if not 0 < num_validation < data.num_train:
    raise ValueError(f"config.validation_fraction = {fraction} leaves {num_validation} of the "
                     f"{data.num_train} training images for validation; choose a fraction "
                     "that leaves some on both sides.")
  held, kept = np.sort(order[:num_validation]), np.sort(order[num_validation:])
  return dataclasses.replace(data, name=f"{data.name}:validation",
                             train_images=data.train_images[kept],
                             train_labels=data.train_labels[kept],
                             test_images=data.train_images[held],
                             test_labels=data.train_labels[held])


def load_dataset(config):
  """The dataset a config names (raises early and clearly if missing, before anything
  compiles): InMemoryData, or StreamingData for imagenet2012. With config.eval_split
  'validation', in-memory data are `validation_split` of it (seed config.split_seed)."""
  if config.dataset == "digits":
    data = load_digits(config.split_seed, config.test_fraction)
  elif config.dataset == "fashion_mnist":
    data = load_fashion_mnist(config.data_dir)
  elif config.dataset in STREAMING:
    return load_streaming(config)
  else:
    data = load_tfds(config.dataset, config.data_dir, config.download, config.pretrain_split)
  if config.eval_split == "validation":
    data = validation_split(data, config.validation_fraction, config.split_seed)
  return data


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
