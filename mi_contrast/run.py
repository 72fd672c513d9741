"""One place builds a run from a config: `build_run(config) -> Run`.

A Run holds everything the step, the loop, the probes and the entry points need, each piece
built once: the mesh, the data (and its copy on the devices), the encoder, the method, the
optimiser and its learning-rate schedule, the ring's band function, the view recipes and a
Plan of the run's sizes. The train state and its shardings are built from a Run too.

Randomness has names (`RootStream`, `StepStream`): every key of a run is
fold_in(root, stream) of the run's root key PRNGKey(config.seed), so data order, views and
draws are functions of (seed, step) only.
"""

import dataclasses
import enum
import functools
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mi_contrast import config as config_lib
from mi_contrast import input_pipeline
from mi_contrast import methods
from mi_contrast import models
from mi_contrast import negatives as negatives_lib
from mi_contrast import schedules
from mi_contrast import views as views_lib
from mi_contrast.mesh import make_mesh
from mi_contrast.methods import sharded_bank


class RootStream(enum.IntEnum):
  """Streams of the run's root key (fold_in(PRNGKey(config.seed), stream))."""
  PARAMS = 0        # the encoder's initial parameters
  DATA_ORDER = 1    # the permutation of each epoch (fold_in(stream, epoch))
  STEPS = 2         # the key of each step (fold_in(stream, step)), split by StepStream
  METHOD_STATE = 3  # the method's initial state (bank, queue)


class StepStream(enum.IntEnum):
  """Streams of one step's key."""
  VIEWS = 0         # the augmented views
  OBJECTIVE = 1     # the objective's draws (negatives)
  PREPARE = 2       # the method's `prepare` (StepContext.rng)


def stream(key, name):
  """The key of stream `name` (a RootStream or StepStream) of `key`."""
  return jax.random.fold_in(key, int(name))


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  method_state: Any
  ring_state: Any          # adaptive ring schedule state (schedules.AdaptiveState)
  rng: jax.Array           # raw uint32[2] key: the run's root randomness


@dataclasses.dataclass(frozen=True)
class Plan:
  """The run's sizes. `bank_rows` (one memory-bank row per pretraining image) is also what an
  epoch runs over: an epoch is bank_rows // global_batch steps."""
  bank_rows: int
  global_batch: int
  num_devices: int
  num_epochs: int

  @property
  def per_device_batch(self) -> int:
    return self.global_batch // self.num_devices

  @property
  def steps_per_epoch(self) -> int:
    return self.bank_rows // self.global_batch

  @property
  def total_steps(self) -> int:
    return self.num_epochs * self.steps_per_epoch


def make_plan(config, bank_rows, num_devices):
  return Plan(bank_rows=int(bank_rows), global_batch=config.global_batch_size,
              num_devices=int(num_devices), num_epochs=config.num_epochs)


@dataclasses.dataclass
class Run:
  """A run built from a config (`build_run`).

  data: InMemoryData, StreamingData, or None for a run restored without its dataset.
  images: the in-memory splits on every device ({'train', 'test', 'pretrain'}), else {}.
  image_shape: [H, W, C] of the images the encoder sees.
  lr_schedule: step -> learning rate. band_fn: (step, ring_state) -> (Band, outer fraction).
  recipes: one view recipe name per view.
  labels: int32 [bank_rows] on every device, the class of each pretraining image, for the
    false-negative diagnostic only (step.py; no objective reads labels); None where the
    pretraining images have none (streaming data, unlabelled pretraining splits, a run
    restored without its dataset): the step then computes no diagnostic.
  """
  config: Any
  mesh: Any
  plan: Plan
  data: Any
  images: dict
  image_shape: tuple
  model: Any
  method: Any
  tx: Any
  lr_schedule: Callable
  band_fn: Callable
  recipes: Sequence[str]
  labels: Any = None

  @property
  def streaming(self) -> bool:
    """Whether the data stream from disk (the step then takes images and indices)."""
    return self.config.dataset in input_pipeline.STREAMING


def build_run(config, devices=None, *, data=None, bank_rows=None, channel_stats=None,
              training=True):
  """The Run of `config` on a mesh of `devices` (default: all), validated once.

  By default the dataset is loaded (`input_pipeline.load_dataset`) and placed on the devices.
  `data`: an already loaded dataset. `bank_rows` and `channel_stats` ((mean, std) per channel):
  a run without its dataset (restoring a checkpoint, exporting), whose sizes come from there.
  training=False: a run only evaluated or exported here, on any number of devices (the batch
  need not split over them).
  """
  mesh = make_mesh(devices)
  num_devices = mesh.devices.size
  checked_devices = num_devices if training else 1
  if bank_rows is None:  # the fields first, before any data are read; then the dataset's size
    config_lib.validate(config, num_devices=checked_devices)
  else:                  # evaluation and export may pass a stand-in row count: not checked
    config_lib.validate(config, num_devices=checked_devices,
                        num_train=bank_rows if training else None)
  method = methods.get(config.method)
  recipes = view_recipes(config, method)
  for recipe in recipes:
    views_lib.normalize_recipe(recipe)
  images, labels = {}, None
  if bank_rows is None:
    data = input_pipeline.load_dataset(config) if data is None else data
    bank_rows, channel_stats = data.num_pretrain, data.channel_stats()
    config_lib.validate(config, num_devices=checked_devices, num_train=bank_rows)
    images, image_shape = device_images(config, data, mesh)
    labels = pretrain_labels(data, mesh)
  else:
    channels = len(channel_stats[0])
    image_shape = (config.image_size, config.image_size, channels)  # as device_images gives
  plan = make_plan(config, bank_rows, num_devices)
  tx, lr_schedule = make_optimizer(config, plan)
  return Run(config=config, mesh=mesh, plan=plan, data=data, images=images,
             image_shape=tuple(image_shape),
             model=models.build_encoder(config, *channel_stats),
             method=method, tx=tx, lr_schedule=lr_schedule, band_fn=make_band_fn(config, plan),
             recipes=recipes, labels=labels)


def make_optimizer(config, plan):
  """(optax transformation, learning-rate schedule): SGD with momentum and decoupled weight
  decay; warm-up, then cosine | step (x0.1 at 68% and 83%) | constant."""
  spe, total = plan.steps_per_epoch, plan.total_steps
  warmup = config.warmup_epochs * spe
  lr = config.learning_rate
  if config.lr_schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, max(1, total - warmup))
  elif config.lr_schedule == "step":
    main = optax.piecewise_constant_schedule(
        lr, {int(0.68 * total) - warmup: 0.1, int(0.83 * total) - warmup: 0.1})
  else:
    main = optax.constant_schedule(lr)
  schedule = (optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
              if warmup else main)
  tx = optax.chain(optax.add_decayed_weights(config.weight_decay),
                   optax.sgd(schedule, momentum=config.momentum))
  return tx, schedule


def make_band_fn(config, plan):
  """(step, ring_state) -> (Band, outer fraction): traced, so annealing never recompiles.

  A ball is the band with inner fraction 0, i.e. upper = 1.0; methods use the band as given.
  """
  ring = config.ring
  if ring.schedule == "adaptive":
    outer_of = lambda step, state: state.value
  else:
    fn = schedules.build(ring.schedule, init=ring.outer_start, final=ring.outer,
                         anneal_steps=max(1, int(round(ring.anneal_fraction * plan.total_steps))),
                         steps_per_epoch=plan.steps_per_epoch, rate=ring.exponential_rate,
                         name="config.ring")
    outer_of = lambda step, state: fn(step)

  def band(step, state):
    outer = jnp.asarray(outer_of(step, state), jnp.float32)
    inner = 0.0 if config.negatives == "ball" else ring.inner
    lower, upper = negatives_lib.fractions_to_quantiles(outer, inner, ring.dynamic_inner)
    return methods.Band(jnp.asarray(lower, jnp.float32), jnp.asarray(upper, jnp.float32)), outer

  return band


def view_recipes(config, method):
  """One recipe name per view: `config.views` is one name for every view, or one name per
  view separated by commas (e.g. 'mocov2,simclr')."""
  recipes = [name.strip() for name in config.views.split(",")]
  num_views = methods.num_views(method, config)
  if len(recipes) == 1:
    return recipes * num_views
  if len(recipes) != num_views:
    raise ValueError(f"config.views = {config.views!r} names {len(recipes)} recipes; method "
                     f"{config.method!r} uses {num_views} view(s): give one name, or "
                     f"{num_views} names separated by commas.")
  return recipes


def device_images(config, data, mesh):
  """In-memory data on every device ({'train', 'test', 'pretrain'}) and the encoder's input
  shape [H, W, C]; streaming data has no device copy ({})."""
  if isinstance(data, input_pipeline.StreamingData):
    return {}, (config.image_size, config.image_size, 3)
  replicated = NamedSharding(mesh, P())
  put = lambda x: input_pipeline.to_device(x, config.image_size, replicated)
  images = {"train": put(data.train_images), "test": put(data.test_images)}
  images["pretrain"] = images["train"] if data.pretrain_images is None else put(data.pretrain)
  return images, tuple(images["train"].shape[1:])


def pretrain_labels(data, mesh):
  """The pretraining images' labels, int32 [N] on every device (`Run.labels`), or None when
  they have none: streaming data, and pretraining images of their own (stl10's 'unlabelled'
  and 'train+unlabelled' pretrain splits)."""
  if not isinstance(data, input_pipeline.InMemoryData) or data.pretrain_images is not None:
    return None
  labels = np.asarray(data.train_labels, np.int32)
  return jax.device_put(labels, NamedSharding(mesh, P()))


# ----------------------------------------------------------------------------------------------
# The train state.
# ----------------------------------------------------------------------------------------------


def create_train_state(run):
  """The state at step 0, from config.seed: encoder variables, optimiser state, the method's
  state (bank, queue: one row per `run.plan.bank_rows`), the ring schedule's state and the root
  key. A sharded bank is padded to whole shards (`shard_bank`)."""
  config = run.config
  root = jax.random.PRNGKey(config.seed)
  dummy = jnp.zeros((2,) + tuple(run.image_shape), jnp.float32)
  variables = _init_variables(run.model.clone(bn_axis_name=None), stream(root, RootStream.PARAMS),
                             dummy)
  params = variables["params"]
  ring_state = schedules.adaptive_init(config.ring.outer_start, config.ring.adaptive_window)
  method_state = run.method.init_state(
      stream(root, RootStream.METHOD_STATE), config, run.plan.bank_rows,
      {"params": params, "batch_stats": variables["batch_stats"]})
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     batch_stats=variables["batch_stats"], opt_state=run.tx.init(params),
                     method_state=method_state, ring_state=ring_state, rng=root)
  return shard_bank(config, state, run.plan.num_devices)


@functools.partial(jax.jit, static_argnums=0)
def _init_variables(model, key, dummy):
  """The encoder's variables from ``key``, compiled as one program (the same values as flax's
  op-by-op ``init``, which compiles each of a few hundred small operations on first use: 4-8 s
  of a small run's start on a 2-core CPU, against 1.5-4 s for one program; cached per model)."""
  return model.init(key, dummy, train=False)


def untrained_variables(run):
  """{'params', 'batch_stats'} of the network before training, built again from config.seed
  as `create_train_state` builds them (a run's initial buffers are donated to its first step)."""
  fresh = create_train_state(run)
  return {"params": fresh.params, "batch_stats": fresh.batch_stats}


def shard_bank(config, state, num_devices):
  """With config.bank.sharded, pads the bank to whole shards (see methods/sharded_bank.py)."""
  if not config.bank.sharded:
    return state
  return state.replace(method_state=sharded_bank.shard_state(state.method_state, num_devices))


def state_specs(config, state):
  """PartitionSpecs of the train state: replicated, except a sharded bank's rows."""
  specs = jax.tree.map(lambda _: P(), state)
  if config.bank.sharded:
    specs = specs.replace(method_state=sharded_bank.state_spec(state.method_state))
  return specs


def state_shardings(config, state, mesh):
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), state_specs(config, state),
                      is_leaf=lambda x: isinstance(x, P))


def abstract_state(run):
  """The train state's shapes, dtypes and shardings (jax.ShapeDtypeStruct leaves) without
  computing it: a restore target."""
  abstract = jax.eval_shape(lambda: create_train_state(run))
  shardings = state_shardings(run.config, abstract, run.mesh)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract, shardings)
