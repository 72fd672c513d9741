"""Configuration: every field of the package, the dataset presets and their validation.

`configs/*.py` files start from `default_config(preset)` and override a few fields. `validate`
checks every field (type, range, contradictions) before anything compiles; the rules of one
method (what it requires of the shared fields) are its module's `validate` (methods/<m>.py).
`upgrade_saved` brings a config.json of an older version's layout (OLD_FIELDS) to this one.
"""

import ml_collections

from mi_contrast import checks
from mi_contrast import negatives
from mi_contrast.checks import check_keys as _check_keys
from mi_contrast.checks import choice as _choice
from mi_contrast.checks import fail as _fail
from mi_contrast.checks import number as _number

PRESETS = ("digits", "cifar10", "cifar100", "stl10", "imagenet2012", "fashion_mnist")
# bank.candidates of IR Ring and IR Ball on fashion_mnist (configs/ring.py, ball.py and the
# negatives study): the band over this many random bank rows per step.
FASHION_MNIST_CANDIDATES = 8192


def base_config():
  """Every field of the package, with the values of the embedded `digits` preset."""
  c = ml_collections.ConfigDict()
  c.seed = 1337
  _data_and_encoder_fields(c)
  _method_fields(c)
  _ring_and_training_fields(c)
  return c


def _data_and_encoder_fields(c):
  """base_config: the data and the encoder."""
  # Data. `digits` is scikit-learn's bundled 8x8 digits (no network), upsampled on the device.
  c.dataset = "digits"
  # tfds data_dir (fashion_mnist: also a folder of the four IDX files); None = tfds's default
  # (honours TFDS_DATA_DIR). A placeholder, so that --config.data_dir=<dir> can set it.
  c.data_dir = ml_collections.config_dict.placeholder(str)
  c.download = False           # tfds presets only: never download unless asked.
  c.pretrain_split = "train"   # train | unlabelled | train+unlabelled (the last two: stl10)
  c.split_seed = 0             # digits: the train/test split is fixed by this seed.
  c.test_fraction = 0.2        # digits: share of the 1,797 images held out for evaluation.
  c.eval_split = "test"        # test | validation: probe on a split carved from the training
                               # images (in-memory data; for choosing a recipe, never the test)
  c.validation_fraction = 0.2  # eval_split validation: share of the training images held out
  c.image_size = 16            # side of the images the encoder sees (digits: 8 -> 16).
  c.stream_resize = 256        # imagenet2012: host resizes the shorter side to this, then crops

  # Encoder: a Linen ResNet and a projection MLP to the embedding.
  c.model = "resnet_digits"    # resnet_digits | resnet18 | resnet50
  c.stem = "cifar"             # cifar (3x3, stride 1, no max-pool) | imagenet (7x7/2 + max-pool)
  c.width = 16                 # channels of the first stage (resnet_digits only)
  c.head_hidden = 256          # projection MLP hidden width
  c.embedding_dim = 128
  c.sync_batch_norm = True     # BatchNorm statistics over the global batch (all devices)
  c.compute_dtype = "float32"  # float32 | bfloat16: activations (mixed precision); parameters,
                               # BatchNorm statistics, embeddings and the loss stay float32


def _method_fields(c):
  """base_config: the objective, every method's own fields and the memory bank."""
  # Method: which pool, which negatives, which bound (see docs/method.md, "Methods").
  c.method = "ir"              # a name of methods.REGISTRY: ir | la | cmc | moco | simclr
  c.negatives = "uniform"      # uniform | ball | ring
  c.bound = "infonce"          # infonce | nce (IR's original binary NCE) | dcl | hcl
  c.tau_plus = 0.1             # dcl, hcl: class prior of a false negative, in [0, 1)
  c.hcl_beta = 0.2             # hcl: tilt exp(beta * score) of scores already divided by T
  c.num_negatives = 1024       # K: negatives per anchor (the cap is log(K + 1))
  c.temperature = 0.07
  c.views = "digits"           # views.RECIPES name for every view, or 'name1,name2' per view
  c.num_views = 0              # views per image; 0 = the method's own (IR 1, SimCLR/MoCo 2)

  # IR: its original NCE's partition estimate and IR Ring's neighbour views.
  c.ir = ml_collections.ConfigDict()
  c.ir.nce_partition = "per_batch"  # nce: log Z re-estimated every step | first_batch (reference)
  c.ir.neighbour_views = False  # IR ring: the ring's inner ball as extra positives (LA-like)
  c.ir.neighbour_views_warmup_epochs = 0  # IR Ring epochs before the neighbour views

  # MoCo: momentum key encoder and FIFO queue (num_negatives = queue length K, a multiple of the
  # global batch size).
  c.moco = ml_collections.ConfigDict()
  c.moco.momentum = 0.99       # key encoder EMA xi <- m xi + (1 - m) theta (reference 0.999)
  c.moco.bn_groups = 8         # shuffle-BN groups of the global batch (0: one per device)
  # (of the keys only: the query encoder's BatchNorm, synchronised, spans the whole global
  # batch, which holds the other view of every key group's images, so the queries' statistics
  # are correlated with every key group's; see methods/moco.py's docstring.)

  # LA: k-means close neighbours within the background neighbours, warm-started from IR.
  c.la = ml_collections.ConfigDict()
  c.la.num_clusterings = 10    # k-means runs with different seeds (reference 10)
  c.la.num_clusters = 40       # k per clustering (reference 30000 for ImageNet's 1.28M)
  c.la.kmeans_iterations = 20
  c.la.background = 256        # background neighbours: nearest bank rows (reference 4096)
  c.la.warmup_epochs = 5       # IR epochs before the LA objective (reference 10)

  # CMC: L and ab encoders on the Lab colour space, two banks.
  c.cmc = ml_collections.ConfigDict()
  c.cmc.width = "full"         # full | half: each stream's width relative to config.model's

  # Memory bank (IR, LA, CMC; bank.dtype also stores MoCo's queue): one row per pretraining
  # image.
  c.bank = ml_collections.ConfigDict()
  c.bank.dtype = "float32"     # float32 | bfloat16: storage of banks and queues (scores in float32)
  c.bank.sharded = False       # False: every device holds the whole bank. True: each device
                               # holds 1/num_devices of its rows, and each anchor's band and
                               # negatives come from every shard's own rows (bank.candidates = 0)
  c.bank.momentum = 0.0        # M[i] <- normalise(m M[i] + (1 - m) z); the paper: m = 0
  c.bank.candidates = 0        # 0: exact band over the whole bank; M > 0: band over M random rows


def _ring_and_training_fields(c):
  """base_config: the ring, optimisation, evaluation, logging and checkpoints."""
  # The ring (authors' parameterisation): outer fraction rho_o annealed, inner fraction rho_i.
  c.ring = ml_collections.ConfigDict()
  c.ring.schedule = "linear"   # constant | linear | step | exponential | cosine | adaptive
  #                              (adaptive: rho_o follows the training loss, adaptive_* below)
  c.ring.outer_start = 1.0     # rho_o at step 0 (easy: almost the whole bank)
  c.ring.outer = 0.1           # rho_o at the end of annealing (hard)
  c.ring.inner = 0.1           # rho_i (constant)
  c.ring.dynamic_inner = True  # inner cut = rho_i * outer cut (reference); False: rho_i * P
  c.ring.anneal_fraction = 0.5 # anneal over this fraction of training, then hold
  c.ring.exponential_rate = 0.5  # exponential schedule: decay per epoch
  c.ring.adaptive_delta = 0.01   # adaptive schedule: step of rho_o per recorded loss
  c.ring.adaptive_window = 10    # adaptive schedule: losses averaged for the comparison

  # Optimisation (reference: SGD lr 0.03, momentum 0.9, wd 1e-4, batch 256).
  c.global_batch_size = 128
  c.num_epochs = 40
  c.learning_rate = 0.06
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.lr_schedule = "cosine"     # cosine | step (x0.1 at 68% and 83%) | constant
  c.warmup_epochs = 2

  # Evaluation, logging, checkpoints.
  c.knn_features = "backbone"  # backbone (pooled h) | embedding (projection z); L2-normalised
  c.knn_k = 10                 # weighted kNN neighbours (200 for CIFAR-size data)
  c.knn_temperature = 0.07
  c.eval_every_steps = 200
  c.log_every_steps = 20
  c.checkpoint_every_steps = 100
  c.keep_checkpoints = 2
  c.probe_epochs = 300         # linear probe on frozen backbone features
  c.probe_learning_rate = 0.3
  c.probe_weight_decay = 1e-3
  c.probe_batch_size = 256


def apply_preset(c, preset):
  """Overrides the dataset-dependent fields for a preset; raises on unknown names."""
  if preset is None or preset == "":
    preset = "digits"
  if preset not in PRESETS:
    raise ValueError(f"config dataset preset: unknown preset {preset!r}; allowed values: "
                     f"{', '.join(PRESETS)} (e.g. --config=configs/ring.py:cifar10).")
  c.dataset = preset
  if preset == "digits":
    return c
  if preset == "fashion_mnist":
    return _fashion_mnist_preset(c)
  # Reference hyper-parameters for CIFAR / STL (docs/method.md, "Reference hyper-parameters").
  c.model = "resnet18"
  c.stem = "imagenet" if preset == "imagenet2012" else "cifar"
  c.head_hidden = 512
  c.image_size = {"stl10": 96, "imagenet2012": 224}.get(preset, 32)
  c.num_negatives = 4095
  c.num_epochs = 200
  c.learning_rate = 0.03
  c.weight_decay = 1e-4
  c.lr_schedule = "step"
  c.warmup_epochs = 0
  c.views = "ir"
  c.eval_every_steps = 2000
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.keep_checkpoints = 3
  _batch_and_probe_fields(c)
  c.moco.momentum = 0.999
  c.la.warmup_epochs = 10
  c.la.num_clusters = {"imagenet2012": 30000, "cifar100": 1000}.get(preset, 1000)
  if preset == "imagenet2012":  # 5,004 steps per epoch; kNN and probes read the whole split
    c.eval_every_steps = 25020
    c.checkpoint_every_steps = 5004
  return c


def _batch_and_probe_fields(c):
  """The reference batch, LA background and probes (docs/method.md, "Reference
  hyper-parameters"), shared by the fashion_mnist and CIFAR / STL / ImageNet presets."""
  c.global_batch_size = 256
  c.knn_k = 200
  c.probe_epochs = 100
  c.probe_learning_rate = 0.01
  c.probe_weight_decay = 1e-5
  c.la.background = 4096


def _fashion_mnist_preset(c):
  """apply_preset's fashion_mnist fields."""
  # Zalando's Fashion-MNIST, 60,000 train / 10,000 test 28x28 grey images, 10 classes
  # (input_pipeline.load_fashion_mnist); 60,000 // 256 = 234 steps per epoch. A recipe for
  # a 2-core CPU with the small digits ResNet (README, "Dataset presets", has its measured
  # runtime and result; recipes are compared on validation by
  # experiments/fashion_recipe_search.py). Full-size settings for an accelerator, as the
  # CIFAR presets (width 64 for ResNet-18), on the native 28x28 views and the exact band:
  #   model = "resnet18", stem = "cifar", head_hidden = 512, num_epochs = 200,
  #   views = "fashion_mnist", bank.candidates = 0,
  #   learning_rate = 0.03, weight_decay = 1e-4, lr_schedule = "step", warmup_epochs = 0,
  #   moco.momentum = 0.999, la.warmup_epochs = 10,
  #   eval_every_steps = checkpoint_every_steps = 2340 (10 epochs).
  c.image_size = 28            # native size: the uint8 images go to the device unresized,
                               # and the probes see them so
  c.model = "resnet_digits"    # three basic blocks, widths 16 / 32 / 64
  c.stem = "cifar"
  c.width = 16                 # 570 train images/s here, width 32 240 (28x28 views)
  c.head_hidden = 256
  # Training views cropped to 20x20: half the encoder's work per view. With configs/ring.py
  # and ball.py, which also cut the band over 8,192 random bank rows per step
  # (bank.candidates) instead of all 60,000, IR Ring runs at 1.8-2.3x the images/s of 28x28
  # views and the exact band (benchmarks/step_overhead.py) for about one point less per
  # epoch on validation, so more epochs fit the same time.
  c.views = "fashion_mnist_20"
  c.temperature = 0.1          # validation, 5 epochs: 0.1 above 0.07
  c.num_negatives = 4095
  c.num_epochs = 32            # 7,488 steps: about 35 minutes of training on 2 cores
  c.learning_rate = 0.03
  c.weight_decay = 5e-4
  c.lr_schedule = "cosine"
  c.warmup_epochs = 1
  c.eval_every_steps = 1872    # every 8 epochs (kNN over the 60,000-row train split)
  c.log_every_steps = 78       # 3 times per epoch
  c.checkpoint_every_steps = 234  # every epoch
  c.keep_checkpoints = 3
  _batch_and_probe_fields(c)
  c.la.num_clusters = 1000
  c.la.warmup_epochs = 5
  return c


def default_config(preset=None):
  """The default (IR, uniform negatives) configuration for a dataset preset."""
  return apply_preset(base_config(), preset)


# The flat fields of older versions (a config.json written before they moved into their
# sections) -> (section, field): `upgrade_saved` moves them.
OLD_FIELDS = {
    "nce_partition": ("ir", "nce_partition"),
    "neighbour_views": ("ir", "neighbour_views"),
    "neighbour_views_warmup_epochs": ("ir", "neighbour_views_warmup_epochs"),
    "bank_dtype": ("bank", "dtype"),
    "bank_sharded": ("bank", "sharded"),
    "bank_momentum": ("bank", "momentum"),
    "candidates": ("bank", "candidates"),
}


def upgrade_saved(saved):
  """A saved config (config.json's dict) in this version's layout: the flat fields of older
  versions (OLD_FIELDS) moved into their sections. Returns a new dict; `saved` is unchanged.

  Raises ValueError if a file holds a field both flat and in its section, with two values.
  """
  upgraded = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
  for old, (section, field) in OLD_FIELDS.items():
    if old not in upgraded:
      continue
    value = upgraded.pop(old)
    target = upgraded.setdefault(section, {})
    if not isinstance(target, dict):
      raise ValueError(f"saved config: config.{section} = {target!r} is not a section, and the "
                       f"older config.{old} belongs in it (as config.{section}.{field}).")
    if field in target and target[field] != value:
      raise ValueError(f"saved config: config.{old} = {value!r} (older layout) and "
                       f"config.{section}.{field} = {target[field]!r} disagree.")
    target[field] = value
  return upgraded


CMC_WIDTHS = ("full", "half")
NEGATIVES = ("uniform", "ball", "ring")
# dcl and hcl: for the methods whose objective is InfoNCE over drawn or in-batch negatives (IR,
# MoCo, SimCLR, CMC); each method's validate says which bounds it takes.
BOUNDS = ("infonce", "nce", "dcl", "hcl")
MODELS = ("resnet_digits", "resnet18", "resnet50")
STEMS = ("cifar", "imagenet")
LR_SCHEDULES = ("cosine", "step", "constant")
KNN_FEATURES = ("backbone", "embedding")
PRETRAIN_SPLITS = ("train", "unlabelled", "train+unlabelled")
DTYPES = ("float32", "bfloat16")
EVAL_SPLITS = ("test", "validation")
RING_SCHEDULES = ("constant", "linear", "step", "exponential", "cosine", "adaptive")


def __getattr__(name):
  """METHODS: the registered method names (methods.REGISTRY), read when asked for."""
  if name == "METHODS":
    from mi_contrast import methods  # pylint: disable=g-import-not-at-top
    return tuple(methods.REGISTRY)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def validate(config, *, num_devices, num_train=None):
  """Checks every field; raises ValueError naming the field and the allowed values.

  The fields' types and ranges first, then the method's own rules (its module's `validate`)
  and its view count.

  Args:
    config: a ConfigDict built from `default_config`.
    num_devices: devices the global batch is split over.
    num_train: training-set size (the memory bank's rows), when known.
  """
  from mi_contrast import methods  # pylint: disable=g-import-not-at-top
  _check_moved_fields(config)
  _check_keys(config, base_config())
  _check_choices(config, tuple(methods.REGISTRY))
  _check_data_and_model(config)
  _check_objective(config, num_train)
  _check_method_options(config)
  _check_ring(config)
  _check_optimisation(config, num_devices, num_train)
  _check_evaluation(config)
  method = methods.get(config.method)
  methods.num_views(method, config)  # raises for an unsupported count
  method.validate(config, num_devices=num_devices, num_train=num_train)
  return config


def _check_moved_fields(config):
  """A field of the older flat layout (OLD_FIELDS) names its new place."""
  for old, (section, field) in OLD_FIELDS.items():
    if old in config:
      raise ValueError(f"config.{old} is not a known field: it moved to "
                       f"config.{section}.{field} (e.g. --config.{section}.{field}=...).")


def _check_choices(config, method_names):
  """Fields with a fixed set of values, and the booleans."""
  _choice(config, "dataset", PRESETS)
  _choice(config, "method", method_names)
  _choice(config, "negatives", NEGATIVES)
  _choice(config, "bound", BOUNDS)
  _choice(config, "model", MODELS)
  _choice(config, "stem", STEMS)
  _choice(config, "lr_schedule", LR_SCHEDULES)
  _choice(config, "knn_features", KNN_FEATURES)
  _choice(config, "pretrain_split", PRETRAIN_SPLITS if config.dataset == "stl10" else ("train",))
  _choice(config, "ring.schedule", RING_SCHEDULES)
  _choice(config, "cmc.width", CMC_WIDTHS)
  _choice(config, "ir.nce_partition", ("per_batch", "first_batch"))
  _choice(config, "compute_dtype", DTYPES)
  _choice(config, "eval_split", EVAL_SPLITS)
  if config.eval_split == "validation" and config.dataset == "imagenet2012":
    _fail("eval_split", config.eval_split, "'test' for the streamed imagenet2012 (its "
          "validation split is already the evaluation split)")
  _choice(config, "bank.dtype", DTYPES)
  for field in ("download", "sync_batch_norm", "ring.dynamic_inner", "ir.neighbour_views",
                "bank.sharded"):
    checks.boolean(config, field)


def _check_data_and_model(config):
  """The data's and the encoder's fields."""
  if config.data_dir is not None and not isinstance(config.data_dir, str):
    _fail("data_dir", config.data_dir, "None or a directory path")
  _number(config, "seed", 0, None, integer=True)
  _number(config, "split_seed", 0, None, integer=True)
  _number(config, "test_fraction", 0.0, 1.0, low_open=True, high_open=True)
  _number(config, "validation_fraction", 0.0, 1.0, low_open=True, high_open=True)
  _number(config, "image_size", 8, 1024, integer=True)
  _number(config, "stream_resize", config.image_size, 4096, integer=True)
  _number(config, "width", 1, 4096, integer=True)
  _number(config, "head_hidden", 1, None, integer=True)
  _number(config, "embedding_dim", 1, None, integer=True)
  if not isinstance(config.views, str) or not all(config.views.split(",")):
    _fail("views", config.views, "a recipe name from mi_contrast.views.RECIPES, or one name "
          "per view separated by commas")


def _check_objective(config, num_train):
  """The fields every method's objective reads: temperature, negatives, bound."""
  _number(config, "temperature", 0.0, None, low_open=True)
  _number(config, "bank.momentum", 0.0, 1.0, high_open=True)
  candidates = _number(config, "bank.candidates", 0, None, integer=True)
  _number(config, "num_views", 0, 8, integer=True)
  num_negatives = _number(config, "num_negatives", 1, None, integer=True)
  if num_train is not None and num_negatives > num_train:
    _fail("num_negatives", num_negatives,
          f"at most the memory bank's size ({num_train} training images)")
  if candidates and num_train is not None and candidates > num_train:
    _fail("bank.candidates", candidates, f"0 (exact band) or 1..{num_train} (bank rows)")
  _number(config, "tau_plus", 0.0, 1.0, high_open=True)
  _number(config, "hcl_beta", 0.0, None)
  if config.bound == "nce" and config.negatives != "uniform":
    _fail("bound", config.bound, "infonce with ball or ring negatives (IR's NCE assumes uniform "
          "noise 1/N; set config.negatives = 'uniform' to use it)")


def _check_method_options(config):
  """The methods' sub-configs' numbers, whatever the method (its rules: methods/<m>.py)."""
  _number(config, "ir.neighbour_views_warmup_epochs", 0, None, integer=True)
  _number(config, "moco.momentum", 0.0, 1.0, high_open=True)
  _number(config, "moco.bn_groups", 0, None, integer=True)
  _number(config, "la.num_clusterings", 1, None, integer=True)
  _number(config, "la.num_clusters", 1, None, integer=True)
  _number(config, "la.kmeans_iterations", 1, None, integer=True)
  _number(config, "la.background", 1, None, integer=True)
  _number(config, "la.warmup_epochs", 0, None, integer=True)


def _check_ring(config):
  """The ring's fractions and schedule; the band they give is not empty."""
  ring = config.ring
  _number(config, "ring.outer_start", 0.0, 1.0, low_open=True)
  _number(config, "ring.outer", 0.0, 1.0, low_open=True)
  _number(config, "ring.inner", 0.0, 1.0, high_open=True)
  _number(config, "ring.anneal_fraction", 0.0, 1.0, low_open=True)
  _number(config, "ring.exponential_rate", 0.0, None, low_open=True)
  _number(config, "ring.adaptive_delta", 0.0, 1.0, low_open=True)
  _number(config, "ring.adaptive_window", 1, None, integer=True)
  if config.negatives in ("ring", "ball"):
    for outer in (ring.outer_start, ring.outer):
      lower, upper = negatives.fractions_to_quantiles(
          outer, 0.0 if config.negatives == "ball" else ring.inner, ring.dynamic_inner)
      if lower >= upper:
        raise ValueError(
            f"config.ring: the ring's lower quantile {lower:.4g} (1 - outer = 1 - {outer}) is not "
            f"below its upper quantile {upper:.4g} (from ring.inner = {ring.inner}); with "
            f"ring.dynamic_inner = False, ring.inner must be below both ring.outer_start and "
            f"ring.outer (allowed: 0 <= inner < outer <= 1).")


def _check_optimisation(config, num_devices, num_train):
  """Batch (against the devices and the training set), epochs, learning rate, ..."""
  batch = _number(config, "global_batch_size", 1, None, integer=True)
  if batch % num_devices:
    _fail("global_batch_size", batch, f"a multiple of the device count ({num_devices})")
  if num_train is not None and batch > num_train:
    _fail("global_batch_size", batch, f"at most the training-set size ({num_train})")
  _number(config, "num_epochs", 1, None, integer=True)
  _number(config, "learning_rate", 0.0, None, low_open=True)
  _number(config, "momentum", 0.0, 1.0, high_open=True)
  _number(config, "weight_decay", 0.0, None)
  _number(config, "warmup_epochs", 0, None, integer=True)
  if config.warmup_epochs >= config.num_epochs:
    _fail("warmup_epochs", config.warmup_epochs, f"0..{config.num_epochs - 1} (below num_epochs)")


def _check_evaluation(config):
  """kNN, logging, checkpoints and the linear probe."""
  _number(config, "knn_k", 1, None, integer=True)
  _number(config, "knn_temperature", 0.0, None, low_open=True)
  for field in ("eval_every_steps", "log_every_steps", "checkpoint_every_steps",
                "keep_checkpoints", "probe_epochs", "probe_batch_size"):
    _number(config, field, 1, None, integer=True)
  _number(config, "probe_learning_rate", 0.0, None, low_open=True)
  _number(config, "probe_weight_decay", 0.0, None)
