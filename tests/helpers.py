"""Helpers shared by the test modules: a tiny config, one train step on a mesh, mocked tfds
datasets, and the 1-vs-8-device comparison that separates the continuous part of a step from its
discrete choice of negatives.

Why the separation: one device and eight compute the encoder's outputs with different
reduction orders (BatchNorm's global mean is a pmean of eight partial means), so embeddings
differ in the sixth or seventh digit. Any selection of negatives by rank (a ball, a ring, LA's
background neighbours) can turn that into a different member set: a row whose score lies
within rounding of a band edge may cross it, and with it every later draw shifts. Such a flip
is legitimate, not a bug; a dependence of the *math* on the split would be one. So the
comparison (a) checks that the two selections differ only in entries within 2 * delta of a cut,
delta being the measured largest difference between the two runs' scores (an entry can only
swap sides with one whose score is within 2 * delta of it), and (b) replays the one-device
selection on eight devices and checks loss and gradients as tightly as the uniform path.
"""

import contextlib
import os

import jax
import jax.numpy as jnp
import numpy as np

from mi_contrast import config as config_lib
from mi_contrast import negatives as negatives_lib
from mi_contrast import run as run_lib
from mi_contrast import step as step_lib
from mi_contrast.mesh import AXIS
from mi_contrast.methods import la as la_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 1-vs-8 tolerances, the same for every method and for the uniform and the replayed paths.
# Measured over the 11 device tests (IR uniform / ring / NCE / ball with 2 views, CMC Ring,
# MoCo Ring, SimCLR uniform / ring / 3 views, LA, neighbour views) on a 2-core AMD EPYC, natively
# (AVX-512) and with XLA_FLAGS=--xla_cpu_max_isa=AVX2: loss and bound differ by at most 9.5e-7
# (2.3e-7 relative); gradients by at most 4.6e-6 of their largest entry, and by at most 1.4e-4
# relative on the entries above 1% of it. The tolerances leave factors of 10 to 40 over those.
LOSS_TOL = 1e-5        # absolute and relative
GRAD_ATOL = 2e-4       # times the largest gradient entry
GRAD_RTOL = 2e-3
# Rows of the same anchor's scores on 1 and 8 devices differ by rounding (measured: at most
# 4.4e-5, scores being similarities / temperature); the tolerance leaves a factor of 20.
MATCH_TOL = 1e-3


def tiny_config(negatives="ring", **overrides):
  c = config_lib.default_config()
  c.negatives = negatives
  c.width = 8
  c.head_hidden = 32
  c.embedding_dim = 16
  c.num_negatives = 64
  c.global_batch_size = 64
  c.num_epochs = 2
  c.warmup_epochs = 0
  c.lr_schedule = "constant"
  c.learning_rate = 0.05
  c.probe_epochs = 5
  c.eval_every_steps = 1000
  c.log_every_steps = 5
  c.checkpoint_every_steps = 1000
  for key, value in overrides.items():
    target = c
    *parents, leaf = key.split(".")
    for part in parents:
      target = target[part]
    target[leaf] = value
  return c


# The main job's flags for a tiny digits IR Ring run (22 steps of batch 64): the child runs that
# use them share their compiled programs through the session's compilation cache.
TINY_MAIN_FLAGS = [
    "--config=configs/ring.py", "--config.num_epochs=1", "--config.width=8",
    "--config.head_hidden=32", "--config.embedding_dim=16", "--config.num_negatives=64",
    "--config.global_batch_size=64", "--config.probe_epochs=2", "--config.warmup_epochs=0"]


def child_xla_flags(num_devices):
  """XLA_FLAGS for a child process with `num_devices` simulated CPU devices: the session's
  flags (conftest: the tests' optimisation level) with that device count instead of 8."""
  kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
          if not f.startswith("--xla_force_host_platform_device_count=")]
  return " ".join(kept + [f"--xla_force_host_platform_device_count={num_devices}"])




def no_tensorflow(directory):
  """A folder to put first on a child process's PYTHONPATH so that `import tensorflow` fails,
  as on a machine without it (the trainer then writes no TensorBoard summaries, and the
  process starts 4-5 s faster). Returns its path."""
  blocker = os.path.join(str(directory), "no_tensorflow")
  os.makedirs(os.path.join(blocker, "tensorflow"), exist_ok=True)
  with open(os.path.join(blocker, "tensorflow", "__init__.py"), "w") as f:
    f.write("raise ImportError('TensorFlow is not installed (blocked by the test)')\n")
  return blocker


def checkpoint_steps(workdir):
  """The steps of the checkpoints in <workdir>/checkpoints, sorted."""
  path = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(path):
    return []
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


@contextlib.contextmanager
def mocked_tfds(monkeypatch, num_examples):
  """tfds datasets on mocked data (tfds.testing.mock_data: random examples of each dataset's
  features), declared prepared and with downloads refused, so that the trainer takes the same
  path as for a dataset on disk. tensorflow_datasets is imported on the call, not when the
  module loads (most test modules never need it)."""
  import tensorflow_datasets as tfds
  monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
  with tfds.testing.mock_data(num_examples=num_examples):
    yield


def no_network(self, *args, **kwargs):
  """A stand-in for tfds.core.DatasetBuilder.download_and_prepare that fails the test."""
  del args, kwargs
  raise AssertionError(f"{self.name}: download_and_prepare was called with downloads off")


def build_step(config, devices):
  """(train state placed on the mesh, the train step, device images, model, data) for one
  step of `config` on a mesh of `devices`, built as the trainer builds them (run.build_run); a
  sharded bank (config.bank.sharded) is split over the devices."""
  run = run_lib.build_run(config, devices)
  state = run_lib.create_train_state(run)
  step = step_lib.make_train_step(run, state_spec=run_lib.state_specs(config, state))
  state = jax.device_put(state, run_lib.state_shardings(config, state, run.mesh))
  return state, step, run.images["pretrain"], run.model, run.data


def one_step(config, devices):
  """Metrics, gradients and new state after one step on a mesh of `devices`."""
  state, step, images, _, _ = build_step(config, devices)
  params0 = jax.device_get(state.params)
  new_state, metrics = step(state, images)
  new_params = jax.device_get(new_state.params)
  # First SGD step with a zero momentum trace: p1 = p0 - lr * (g + wd * p0).
  lr, wd = config.learning_rate, config.weight_decay
  grads = jax.tree.map(lambda a, b: (a - b) / lr - wd * a, params0, new_params)
  return jax.device_get(metrics), grads, jax.device_get(new_state)


# ----------------------------------------------------------------------------------------------
# The discrete choices of a step: recorded, compared, replayed.
# ----------------------------------------------------------------------------------------------

_SELECT = negatives_lib._select
_BACKGROUND = la_lib.background_rows


class Record:
  """The selections of one step: for every call of `negatives._select` (bands, balls, rings)
  and `la.background_rows` (LA's neighbours) on every device, the scores it ranked and what
  it chose, keyed by the anchor's place in the global batch.

  Every method lays out its rows per device as V blocks (views or directions) of the device's
  b images, so local row r of device d is anchor (v, d * b + r % b), v = r // b, whatever the
  device count. Calls that rank the same anchor (CMC's two directions) are told apart by their
  scores, which differ by O(1).
  """

  def __init__(self, num_devices, global_batch):
    self.local = global_batch // num_devices
    self.rows = {"band": {}, "background": {}}      # kind -> {anchor: [(x, outputs), ...]}

  def anchor(self, device, r):
    return (r // self.local, int(device) * self.local + r % self.local)

  def add(self, kind, device, x, *outputs):
    for r in range(x.shape[0]):
      entry = (np.array(x[r]), tuple(np.array(o[r]) for o in outputs))
      self.rows[kind].setdefault(self.anchor(device, r), []).append(entry)

  def __len__(self):
    return sum(len(v) for rows in self.rows.values() for v in rows.values())

  def entries(self, kind):
    return [(a, x, out) for a, calls in self.rows[kind].items() for x, out in calls]

  def find(self, kind, anchor, x):
    """The recorded (x, outputs) of the same anchor and call: scores within rounding."""
    finite = lambda a: np.where(np.isfinite(a), a, 0.0)
    calls = [(x1, out) for x1, out in self.rows[kind][anchor] if x1.shape == x.shape]
    gaps = [np.max(np.abs(finite(x1) - finite(x))) for x1, _ in calls]
    x1, out = calls[int(np.argmin(gaps))]
    assert min(gaps) <= MATCH_TOL, f"anchor {anchor}: no recorded row within {MATCH_TOL}"
    assert np.array_equal(np.isfinite(x1), np.isfinite(x)), anchor
    return x1, out


def _device():
  return jax.lax.axis_index(AXIS)


def _retrace():
  """The jitted functions of negatives that call _select retrace through the patched one."""
  for fn in (negatives_lib._band_membership, negatives_lib._band_negatives):
    fn.clear_cache()


@contextlib.contextmanager
def _patched(select, background):
  negatives_lib._select, la_lib.background_rows = select, background
  _retrace()
  try:
    yield
  finally:
    negatives_lib._select, la_lib.background_rows = _SELECT, _BACKGROUND
    _retrace()


@contextlib.contextmanager
def recording(config, num_devices):
  """Runs the real selections and records them (a Record)."""
  record = Record(num_devices, config.global_batch_size)

  def select(x, start, end, fn=lambda inner, band: (inner, band)):
    inner, band = _SELECT(x, start, end)
    jax.debug.callback(lambda *a: record.add("band", *a), _device(), x, inner, band,
                       partitioned=True)
    return fn(inner, band)

  def background(scores, k):
    near = _BACKGROUND(scores, k)
    jax.debug.callback(lambda *a: record.add("background", *a), _device(),
                       jax.lax.stop_gradient(scores), near, partitioned=True)
    return near

  with _patched(select, background):
    yield record


@contextlib.contextmanager
def replaying(record, config, num_devices):
  """Replaces every selection by the recorded one of the same anchor and call."""
  layout = Record(num_devices, config.global_batch_size)

  def lookup(kind, device, x):
    x = np.asarray(x)
    chosen = [record.find(kind, layout.anchor(device, r), x[r])[1] for r in range(len(x))]
    return tuple(np.stack([c[j] for c in chosen]) for j in range(len(chosen[0])))

  def select(x, start, end, fn=lambda inner, band: (inner, band)):
    mask = jax.ShapeDtypeStruct(x.shape, jnp.bool_)
    inner, band = jax.pure_callback(lambda d, x: lookup("band", d, x), (mask, mask), _device(),
                                    x, vmap_method="sequential")
    return fn(inner, band)

  def background(scores, k):
    shape = jax.ShapeDtypeStruct(scores.shape[:-1] + (k,), jnp.int32)
    return jax.pure_callback(lambda d, x: lookup("background", d, x)[0].astype(np.int32),
                             shape, _device(), jax.lax.stop_gradient(scores),
                             vmap_method="sequential")

  with _patched(select, background):
    yield


def selection_differences(one, eight):
  """Compares the selections of the same anchors recorded on 1 and on 8 devices.

  Every chosen set is a top-r set of its row (a ball's, or a ring's two nested balls: inner
  and inner | band). An entry j can change sides of a top-r cut only together with an entry j'
  on the other side with x1[j] - x1[j'] <= 2 * delta, so every flipped entry lies within
  2 * delta of the cut value c of its row (c: the smallest member's score in the 1-device run).
  Asserts that, and returns {'delta', 'flipped', 'near_cut', 'members'}: the largest score
  difference, the number of flipped entries (counted on both sides), the number of entries
  within 2 * delta of a cut (the bound on flips) and the number of chosen entries.
  """
  out = {"delta": 0.0, "flipped": 0, "near_cut": 0, "members": 0}
  pairs = []
  for kind in ("band", "background"):
    for anchor, x8, c8 in eight.entries(kind):
      x1, c1 = one.find(kind, anchor, x8)
      finite = np.isfinite(x1)
      out["delta"] = max(out["delta"], float(np.max(np.abs(x1[finite] - x8[finite]))))
      if kind == "band":   # nested top-r sets: inner, and inner | band
        sets = [(c1[0], c8[0]), (c1[0] | c1[1], c8[0] | c8[1])]
      else:                # indices of the top-k -> a top-k mask
        to_mask = lambda idx: np.isin(np.arange(len(x1)), idx)
        sets = [(to_mask(c1[0]), to_mask(c8[0]))]
      pairs.append((x1, sets))
  for x1, sets in pairs:
    for s1, s8 in sets:
      out["members"] += int(s1.sum())
      if not s1.any():
        assert not s8.any()
        continue
      cut = np.min(x1[s1])
      # Excluded entries score -inf; with a cut at -inf their distance is nan, so they count
      # as far from it: any of them changing sides fails the assertion below.
      with np.errstate(invalid="ignore"):
        near = np.abs(x1 - cut) <= 2 * out["delta"]
      flipped = s1 != s8
      assert np.all(near[flipped]), (
          f"an entry {np.max(np.abs(x1[flipped] - cut))} from the cut changed sides; the runs' "
          f"scores differ by at most {out['delta']}")
      out["flipped"] += int(flipped.sum())
      out["near_cut"] += int(near.sum())
  assert out["flipped"] <= out["near_cut"]
  return out


def assert_close_steps(a, b, *, bound=False):
  """Loss (and bound) and gradients of two one-step results (metrics, grads, state)."""
  (m1, g1, _), (m8, g8, _) = a, b
  assert np.isclose(m1["loss"], m8["loss"], rtol=LOSS_TOL, atol=LOSS_TOL), (m1["loss"], m8["loss"])
  if bound:
    assert np.isclose(m1["bound_nats"], m8["bound_nats"], rtol=LOSS_TOL, atol=LOSS_TOL)
  flat1, flat8 = jax.tree.leaves(g1), jax.tree.leaves(g8)
  scale = max(float(np.max(np.abs(g))) for g in flat1)
  assert scale > 0
  for x, y in zip(flat1, flat8):
    np.testing.assert_allclose(x, y, atol=GRAD_ATOL * scale, rtol=GRAD_RTOL)


def assert_devices_agree(config, *, bound=False):
  """One step on 1 and on 8 devices computes the same function.

  Uniform negatives (no selection): loss, bound and gradients agree within the tolerances
  above. With a selection: the two selections differ only near a cut (selection_differences),
  and the 8-device step with the 1-device selection replayed agrees as tightly as the uniform
  path. Returns (1-device state, 8-device state with the 1-device selection, the comparison).
  """
  devices = jax.devices()
  with recording(config, 1) as one:
    r1 = one_step(config, devices[:1])
  with recording(config, len(devices)) as eight:
    r8 = one_step(config, devices)
  if not len(one):
    assert not len(eight)
    assert_close_steps(r1, r8, bound=bound)
    return r1[2], r8[2], None
  assert len(one) == len(eight)
  differences = selection_differences(one, eight)
  if differences["flipped"]:
    with replaying(one, config, len(devices)):
      r8 = one_step(config, devices)
  assert_close_steps(r1, r8, bound=bound)
  return r1[2], r8[2], differences
