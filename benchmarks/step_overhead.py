"""What the contrastive machinery costs next to the backbone: full train step vs backbone only,
and where the full step's time goes.

Command:  python benchmarks/step_overhead.py --config=configs/ring.py:cifar10 [--batch=64]
              [--reps=9] [--parts=views,backbone,...|none] [--output=FILE|-]
Reads:    no dataset. Synthetic uint8 images of the preset's shape, and a memory bank of the
          preset's size (50,000 rows for cifar10/cifar100, 5,000 for stl10, 1,281,167 for
          imagenet2012, 60,000 for fashion_mnist, 1,438 for digits). In-memory presets hold N
          synthetic images on the device, as a real run does; imagenet2012 feeds the streaming
          step one synthetic batch of crops and indices.
Prints:   progress lines, then the record as one JSON line (the last line); also writes
          benchmarks/results/step_overhead_<config>.json (e.g. step_overhead_ring_cifar10.json).

Jitted steps over the same mesh (every local device), timed in turn within each repetition
(the order rotated from one repetition to the next) so that all see the same machine load;
compile and one warm-up call excluded; medians of --reps calls, each blocked until ready:
  full       mi_contrast.step.make_train_step, called as the training loop calls it (with the
             epoch's data order, step.EpochOrder): on-device views, encoder forward and
             backward, the method's objective (bank scores, band negatives, bound), gradient
             all-reduce, optax update, memory-bank update, metrics.
  backbone   the same encoder (same BatchNorm synchronisation), forward and backward on inputs
             of the views the full step's encoder embeds (the same view shape, and as many
             views per image as the full step embeds with gradients: its online views) with a
             trivial loss (mean of z^2), the same gradient all-reduce and optax update: no
             views made, no bank, no negatives.
overhead_ratio = full seconds / backbone seconds; full_view_shape ([views per image, H, W, C]
of the views the full step makes, the first full_online_views of them embedded with
gradients) and backbone_view_shape ([views per image, H, W, C] the backbone step embeds) say
what was compared. Images per second per device count the batch's source images.

Breakdown (--parts): each part's share of the full step, measured by removing it: a variant
of the full step without the part, timed in the same rotation as the full step; share =
(full - variant) / full of the medians (and the median of the per-repetition ratios). Parts:
  views               the view augmentation: the recipes replaced by a plain resize to the
                      view size (the gather of the batch's images stays)
  backbone            the ResNet's forward and backward: the encoder's ResNet replaced by the
                      view's mean over H and W (the projection head stays)
  objective           the method's whole objective (bank scores, negatives, bound) and its
                      backward: replaced by value = first coordinate of z
  objective_backward  the objective's backward only (its forward runs as it is)
  band_search         the band's cut and masks (negatives._select): every candidate in the band
  draws               the random ranks of the draws (negatives._band_draws): fixed ranks
  draw_lookup         the rank -> candidate lookup (negatives._draw_from_words): the rank is
                      used as the candidate
  bank_update         the method's state update (memory-bank rows): the state kept as it is
and one addition, per_call_order: the step called without its order input, so that the call
permutes the bank rows itself (what every step did before the order was computed once an
epoch); its share is negative: the cost it adds. A part the config's step does not contain
(band parts of uniform negatives, the backbone of a two-stream encoder) is reported as
skipped. Shares of different parts overlap where XLA fuses them and need not sum to one.

Like the trainer (python -m mi_contrast.main), the script sets glibc's allocator to keep the
step's buffers before JAX starts, on a CPU (mi_contrast/host_malloc.py); the record's
`host_malloc` says whether it did (null: glibc's defaults, e.g. MI_CONTRAST_MALLOC=default).

--batch overrides the preset's global batch (a ResNet-18 step at batch 256 takes about 45 s
on a 2-core CPU); the ratio is what matters and the output records the batch used. The record
keeps the machine's load average before and after the measurement and the CPU model: on a
shared machine, compare only records taken at a low load.
"""

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import platform
import sys
import time
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mi_contrast import host_malloc  # noqa: E402
from mi_contrast import input_pipeline  # noqa: E402
from mi_contrast import methods  # noqa: E402
from mi_contrast import models  # noqa: E402
from mi_contrast import negatives as negatives_lib  # noqa: E402
from mi_contrast import run as run_lib  # noqa: E402
from mi_contrast import step as step_lib  # noqa: E402
from mi_contrast import views as views_lib  # noqa: E402
from mi_contrast.mesh import AXIS  # noqa: E402

RESULTS = os.path.join(REPO, "benchmarks", "results")
# Memory-bank rows (pretraining images) and image shape of each preset, without reading it.
PRESET_ROWS = {"digits": 1438, "fashion_mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000,
               "stl10": 5_000, "imagenet2012": 1_281_167}
CHANNELS = {"digits": 1, "fashion_mnist": 1}
PARTS = ("views", "backbone", "objective", "objective_backward", "band_search", "draws",
         "draw_lookup", "bank_update")
ADDED = ("per_call_order",)


# ----------------------------------------------------------------------------------------------
# The machine (shared with the other timing scripts of this folder).
# ----------------------------------------------------------------------------------------------


def cpu_model():
  """The CPU's model name (/proc/cpuinfo), else platform.processor()."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_record(load_before):
  """The machine a measurement ran on: CPU model and count, platform, jax, and the 1/5/15-min
  load averages before (`load_before`, os.getloadavg() taken when it started) and after."""
  return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
          "platform": platform.platform(), "device_kind": jax.devices()[0].device_kind,
          "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "load_average_before": [round(x, 2) for x in load_before],
          "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def load_config(spec):
  """'configs/ring.py:cifar10' -> (ConfigDict, 'ring_cifar10')."""
  path, _, preset = spec.partition(":")
  if not os.path.isabs(path) and not os.path.exists(path):
    path = os.path.join(REPO, path)
  module_spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(preset or None)
  name = os.path.splitext(os.path.basename(path))[0] + "_" + config.dataset
  return config, name


def set_field(config, assignment):
  """'ring.outer=0.2' -> config.ring.outer = 0.2 (value parsed as JSON, else a string)."""
  key, _, raw = assignment.partition("=")
  try:
    value = json.loads(raw)
  except json.JSONDecodeError:
    value = raw
  target = config
  *parents, leaf = key.split(".")
  for part in parents:
    target = target[part]
  target[leaf] = value


def synthetic_run(config, num_rows, seed=0):
  """(run, step inputs without the order, view shapes) on synthetic data: the Run of `config`
  without its dataset, uint8 images of the preset's shape (all N on the devices, or one
  streaming batch of crops and indices), and {'views': [V, H, W, C] made per image,
  'online': views embedded with gradients}."""
  size = config.image_size
  shape = (size, size, CHANNELS.get(config.dataset, 3))
  run = run_lib.build_run(config, bank_rows=num_rows,
                          channel_stats=((0.5,) * shape[-1], (0.25,) * shape[-1]))
  rng = np.random.default_rng(seed)
  batch = config.global_batch_size
  if run.streaming:  # the host hands each step a batch of fixed-size crops and their indices
    split = NamedSharding(run.mesh, P(AXIS))
    images = rng.integers(0, 256, (batch,) + shape, dtype=np.uint8)
    indices = rng.choice(num_rows, batch, replace=False).astype(np.int32)
    inputs = (jax.device_put(images, split), jax.device_put(indices, split))
  else:              # in-memory data: every image on the device, the step gathers by index
    images = rng.integers(0, 256, (num_rows,) + shape, dtype=np.uint8)
    inputs = (jax.device_put(images, NamedSharding(run.mesh, P())),)
  made = jax.eval_shape(lambda x: views_lib.make_views(jax.random.PRNGKey(0), x, run.recipes),
                        jax.ShapeDtypeStruct((2,) + shape, jnp.float32))
  views = {"views": [made.shape[0]] + list(made.shape[2:]),
           "online": methods.online_views(run.method, config)}
  return run, inputs, views


def backbone_step(model, tx, mesh):
  """(state, images) -> state: encoder forward/backward on the images, trivial loss."""
  def per_device(state, images):
    def loss_fn(params):
      (_, z), updated = model.apply({"params": params, "batch_stats": state.batch_stats},
                                    input_pipeline.as_float(images), train=True,
                                    mutable=["batch_stats"])
      return jnp.mean(jnp.square(z.astype(jnp.float32))), updated["batch_stats"]

    (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(params=optax.apply_updates(state.params, updates),
                         batch_stats=batch_stats, opt_state=opt_state, step=state.step + 1)

  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)),
                               out_specs=P(), check_vma=False), donate_argnums=(0,))


# ----------------------------------------------------------------------------------------------
# Variants of the full step, each without one part.
# ----------------------------------------------------------------------------------------------


class PooledEncoder(nn.Module):
  """The encoder without its ResNet: h = the normalised view's mean over H and W, z = the same
  projection head as models.ContrastiveEncoder's."""
  head_hidden: int
  embedding_dim: int
  bn_axis_name: str = None
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, images, train=True):
    h = jnp.mean((images - 0.5) / 0.25, axis=(1, 2))
    norm = lambda **kw: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                     axis_name=self.bn_axis_name if train else None,
                                     dtype=self.dtype, **kw)
    z = models.ProjectionHead(self.head_hidden, self.embedding_dim, norm, self.dtype,
                              name="head")(h)
    return h, z


def _with_method(run, **overrides):
  """`run` whose method has some functions replaced."""
  method = types.SimpleNamespace(**{k: v for k, v in vars(run.method).items()
                                    if not k.startswith("__")})
  for name, fn in overrides.items():
    setattr(method, name, fn)
  return dataclasses.replace(run, method=method)


def _first_coordinate(z):
  return z.reshape(z.shape[0] * z.shape[1], -1)[:, 0]


@contextlib.contextmanager
def _patched_negatives(name, replacement, used):
  """negatives.<name> replaced while a variant traces (the jitted functions of negatives are
  retraced through it, and again after); `used` counts the calls of the replacement."""
  original = getattr(negatives_lib, name)

  def counted(*args, **kwargs):
    used.append(name)
    return replacement(*args, **kwargs)

  jitted = [fn for fn in vars(negatives_lib).values() if hasattr(fn, "clear_cache")]
  setattr(negatives_lib, name, counted)
  for fn in jitted:
    fn.clear_cache()
  try:
    yield
  finally:
    setattr(negatives_lib, name, original)
    for fn in jitted:
      fn.clear_cache()


def _all_in_band(x, start, end, fn=lambda inner, band: (inner, band)):
  del start, end
  return fn(jnp.zeros(x.shape, bool), jnp.ones(x.shape, bool))


def _fixed_ranks(draw_key, anchor_ids, size, num):
  del draw_key
  ranks = jnp.broadcast_to(jnp.arange(num, dtype=jnp.uint32), (jnp.shape(anchor_ids)[0], num))
  return (ranks % jnp.reshape(size, (-1, 1)).astype(jnp.uint32)).astype(jnp.int32)


def _rank_as_candidate(words, u):
  del words
  return u


NEGATIVES_PATCHES = {"band_search": ("_select", _all_in_band),
                     "draws": ("_band_draws", _fixed_ranks),
                     "draw_lookup": ("_draw_from_words", _rank_as_candidate)}


def variant(run, part, views):
  """(run of the variant, context to trace it in, why it is skipped or None)."""
  config = run.config
  nothing = contextlib.nullcontext()
  if part == "views":
    made = views["views"]
    if made[-1] != run.image_shape[-1]:
      return None, None, "the views change the channel count: no plain resize gives them"
    recipe = [] if made[1:3] == list(run.image_shape[:2]) else [("resize", {"size": made[1]})]
    return dataclasses.replace(run, recipes=[recipe] * made[0]), nothing, None
  if part == "backbone":
    if methods.encoder_kind(config) != "single":
      return None, None, "two-stream encoder"
    model = PooledEncoder(config.head_hidden, config.embedding_dim, run.model.bn_axis_name,
                          jnp.dtype(config.compute_dtype))
    return dataclasses.replace(run, model=model), nothing, None
  if part == "objective":
    def objective(config, z, *args):
      value = _first_coordinate(z)
      return methods.Objective(value=value, bound=value, cap=jnp.zeros_like(value))
    return _with_method(run, objective=objective), nothing, None
  if part == "objective_backward":
    full_objective = run.method.objective

    def objective(config, z, *args):
      out = full_objective(config, jax.lax.stop_gradient(z), *args)
      first = _first_coordinate(z)
      return out._replace(value=out.value + jnp.mean(first - jax.lax.stop_gradient(first)))
    return _with_method(run, objective=objective), nothing, None
  if part == "bank_update":
    return _with_method(run, update_state=lambda config, state, *args: state), nothing, None
  if part in NEGATIVES_PATCHES:
    name, replacement = NEGATIVES_PATCHES[part]
    if not hasattr(negatives_lib, name):
      return None, None, f"mi_contrast.negatives has no {name}"
    return run, ("patch", name, replacement), None
  raise ValueError(f"unknown part {part!r}; allowed: {', '.join(PARTS + ADDED)}")


# ----------------------------------------------------------------------------------------------
# Measurement.
# ----------------------------------------------------------------------------------------------


class _Stepper:
  """One jitted step and its own state: `call()` runs one step, blocked until ready."""

  def __init__(self, run, inputs, *, with_order=True):
    config = run.config
    state = run_lib.create_train_state(run)
    self.state = jax.device_put(state, run_lib.state_shardings(config, state, run.mesh))
    self.fn = step_lib.make_train_step(run, state_spec=run_lib.state_specs(config, state))
    self.inputs = inputs
    self.orders = step_lib.EpochOrder(run) if with_order and not run.streaming else None
    self.step = 0

  def call(self):
    inputs = self.inputs
    if self.orders is not None:
      inputs += (self.orders(self.state, self.step),)
    self.state, _ = jax.block_until_ready(self.fn(self.state, *inputs))
    self.step += 1


class _Backbone:
  def __init__(self, run, views, seed=1):
    mesh, batch = run.mesh, run.config.global_batch_size
    shape = (views["online"] * batch,) + tuple(views["views"][1:])
    images = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    self.images = jax.device_put(images, NamedSharding(mesh, P(AXIS)))
    state = run_lib.create_train_state(run)
    self.state = jax.device_put(state, run_lib.state_shardings(run.config, state, mesh))
    self.fn = backbone_step(run.model, run.tx, mesh)

  def call(self):
    self.state = jax.block_until_ready(self.fn(self.state, self.images))


def _warm(name, stepper, patch, log):
  """Compile (inside the variant's patch) and one warm-up call; returns the seconds of the
  first call, or a reason to skip (a patched function the step never called)."""
  used = []
  context = (_patched_negatives(patch[1], patch[2], used) if isinstance(patch, tuple)
             else contextlib.nullcontext())
  start = time.perf_counter()
  with context:
    stepper.call()
  seconds = time.perf_counter() - start
  if isinstance(patch, tuple) and not used:
    return None, f"this step never calls negatives.{patch[1]}"
  stepper.call()
  log(f"{name}: compiled and ran in {seconds:.1f} s")
  return seconds, None


def measure(config, num_rows, reps, parts=PARTS + ADDED, log=print):
  load_before = os.getloadavg()
  run, inputs, views = synthetic_run(config, num_rows)
  steppers = {"full": _Stepper(run, inputs), "backbone": _Backbone(run, views)}
  patches, skipped = {}, {}
  for part in parts:
    if part == "per_call_order":
      if run.streaming:
        skipped[part] = "streaming data: the host hands the step its indices"
        continue
      steppers[part] = _Stepper(run, inputs, with_order=False)
      continue
    variant_run, patch, why = variant(run, part, views)
    if why is not None:
      skipped[part] = why
      continue
    steppers["without_" + part] = _Stepper(variant_run, inputs)
    patches["without_" + part] = patch
  compile_s = {}
  for name in list(steppers):
    seconds, why = _warm(name, steppers[name], patches.get(name), log)
    if why is not None:
      skipped[name.removeprefix("without_")] = why
      del steppers[name]
      continue
    compile_s[name] = seconds
  names = list(steppers)
  times = {name: [] for name in names}
  for rep in range(reps):
    shift = rep % len(names)
    for name in names[shift:] + names[:shift]:
      start = time.perf_counter()
      steppers[name].call()
      times[name].append(time.perf_counter() - start)
  median = {k: float(np.median(v)) for k, v in times.items()}
  full = median["full"]
  breakdown = {}
  for name in names:
    if name in ("full", "backbone"):
      continue
    pairs = [(f - v) / f for f, v in zip(times["full"], times[name])]
    part = name.removeprefix("without_")
    breakdown[part] = {"share": (full - median[name]) / full,
                       "share_pair_median": float(np.median(pairs)),
                       "variant_step_s": median[name], "variant_times_s": times[name],
                       "kind": "removed" if name.startswith("without_") else "added"}
  num_devices = run.plan.num_devices
  batch = config.global_batch_size
  per_device = lambda seconds: batch / seconds / num_devices
  bank = steppers["full"].state.method_state.get("bank") if isinstance(
      steppers["full"].state.method_state, dict) else None
  return {
      "overhead_ratio": full / median["backbone"],
      "full_view_shape": views["views"],
      "full_online_views": views["online"],
      "backbone_view_shape": [views["online"]] + views["views"][1:],
      "full_images_per_s_per_device": per_device(full),
      "backbone_images_per_s_per_device": per_device(median["backbone"]),
      "full_step_s": full,
      "backbone_step_s": median["backbone"],
      "full_times_s": times["full"],
      "backbone_times_s": times["backbone"],
      "breakdown": breakdown,
      "breakdown_skipped": skipped,
      "compile_and_first_call_s": compile_s,
      "reps": reps,
      "global_batch": batch,
      "num_devices": num_devices,
      "bank_rows": num_rows,
      "bank_dtype": str(bank.dtype) if bank is not None else None,
      "bank_sharded": config.bank.sharded,
      "compute_dtype": config.compute_dtype,
      "image_shape": list(run.image_shape),
      "views": config.views,
      "streaming": run.streaming,
      "model": config.model,
      "width": config.width,
      "method": config.method,
      "negatives": config.negatives,
      "num_negatives": config.num_negatives,
      "candidates": config.bank.candidates,
      "machine": machine_record(load_before),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/ring.py:cifar10",
                      help="config file and preset, as for mi_contrast.main")
  parser.add_argument("--batch", type=int, default=None,
                      help="global batch to measure (default: the preset's)")
  parser.add_argument("--rows", type=int, default=None,
                      help="memory-bank rows (default: the preset's dataset size)")
  parser.add_argument("--reps", type=int, default=9)
  parser.add_argument("--parts", default=",".join(PARTS + ADDED),
                      help="parts of the breakdown, comma-separated, or 'none'")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="override a config field, e.g. --set=bank.candidates=65536")
  parser.add_argument("--output", default=None,
                      help="JSON file (default: benchmarks/results/step_overhead_<config>.json; "
                           "'-' writes none)")
  args = parser.parse_args(argv)
  # As the trainer does before JAX starts (python -m mi_contrast.main): on a CPU, glibc's
  # allocator keeps the step's buffers (mi_contrast/host_malloc.py).
  malloc_settings = host_malloc.tune()
  parts = () if args.parts == "none" else tuple(p for p in args.parts.split(",") if p)
  unknown = sorted(set(parts) - set(PARTS + ADDED))
  if unknown:
    parser.error(f"--parts: unknown {unknown}; allowed {list(PARTS + ADDED)} or 'none'")
  config, name = load_config(args.config)
  if args.batch:
    config.global_batch_size = args.batch
  for assignment in args.set:
    set_field(config, assignment)
  rows = args.rows or PRESET_ROWS[config.dataset]
  log = lambda line: print(line, file=sys.stderr, flush=True)
  result = {"benchmark": "step_overhead", "config": args.config,
            **measure(config, rows, args.reps, parts, log=log),
            "preset_global_batch": load_config(args.config)[0].global_batch_size,
            "overrides": args.set, "host_malloc": malloc_settings}
  for part, row in result["breakdown"].items():
    log(f"{part:>20}: {100 * row['share']:+6.1f}% of the full step")
  output = args.output or os.path.join(RESULTS, f"step_overhead_{name}.json")
  if output != "-":
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
      json.dump(result, f, indent=2, sort_keys=True)
  print(json.dumps(result, sort_keys=True), flush=True)
  return result


if __name__ == "__main__":
  main()
