"""The IR Ring train step in PyTorch, as a PyTorch user would write it, against the project's
JAX train step on the same shapes, timed alternately in one process.

Command:  python benchmarks/torch_step.py [--config=configs/ring.py:fashion_mnist] [--batch=N]
              [--rows=N] [--outer=0.1] [--reps=9] [--set=FIELD=VALUE] [--output=FILE|-]
Reads:    no dataset: synthetic uint8 images of the preset's shape, N of them (the preset's
          dataset size unless --rows), held by both sides, and a memory bank of N rows.
Prints:   progress lines, then the record as one JSON line (the last line); also writes
          benchmarks/results/torch_step_<config>.json unless --output says otherwise.
Needs:    torch (pip install -e ".[torch]"), a benchmark-only dependency. Its OpenMP threads
          are set before torch is imported, unless already set: OMP_WAIT_POLICY=PASSIVE (idle
          threads sleep instead of spinning on the cores the JAX side needs) and
          OMP_NUM_THREADS = the CPU count; the record keeps every OMP_* variable and torch's
          thread counts.

Both sides run one IR Ring step of the config (IR, ring negatives, InfoNCE; one view per
image) on the same sizes: global batch B, the recipe's views (fashion_mnist: 20x20 crops of
the 28x28 images), the encoder (ResNet of config.model and config.width, projection head),
K = config.num_negatives ring draws per anchor, the band over config.bank.candidates random
bank rows (or the whole bank when 0), bank update, SGD with momentum and weight decay.
  jax    mi_contrast.step.make_train_step, called as the training loop calls it (the epoch's
         order, step.EpochOrder), on one device.
  torch  eager PyTorch: a torchvision-layout ResNet (the layout mi_contrast.export writes; it
         starts from the JAX network's initial weights, loaded from the export), channels_last;
         the epoch's torch.randperm of the rows, sliced per step; batched views (crop box and
         flip as one affine_grid / grid_sample, brightness / contrast jitter, noise); the bank a
         torch tensor; the ring as a B x M score matrix (M candidates drawn with torch.randint,
         the anchor's own row masked out), its ranks [start, end) by torch.topk, K uniform
         draws within them by torch.randint, the scores gathered; InfoNCE; torch.optim.SGD; the
         bank rows replaced by the normalised embeddings.
The band is constant on both sides: --outer (rho_o, default 0.1: the ring the anneal ends on)
with the config's rho_i. Compile and one warm-up step of each side are excluded; then --reps
repetitions, each one torch step and one JAX step (their order alternated), each timed alone
(the JAX step blocked until ready). ratio = torch median / jax median. The record keeps the
machine's CPU model and load averages before and after: on a shared machine compare only
records taken at a low load.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")          # before torch is imported
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mi_contrast import export  # noqa: E402
from mi_contrast import host_malloc  # noqa: E402
from mi_contrast import models  # noqa: E402
from mi_contrast import negatives as negatives_lib  # noqa: E402
from mi_contrast import views as views_lib  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "step_overhead", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  "step_overhead.py"))
step_overhead = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(step_overhead)

RESULTS = os.path.join(REPO, "benchmarks", "results")
# Recipe ops the torch views implement (batched); a recipe with another op is refused.
TORCH_OPS = ("random_resized_crop", "random_horizontal_flip", "random_intensity",
             "random_gaussian_noise")


def import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise SystemExit("torch is not installed: pip install -e \".[torch]\"") from e
  torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
  return torch


# ----------------------------------------------------------------------------------------------
# The torch model: the torchvision layout (names of torchvision.models.resnet, without fc).
# ----------------------------------------------------------------------------------------------


def build_encoder(torch, config, arch, width, mean, std):
  nn = torch.nn

  class Block(nn.Module):
    def __init__(self, inplanes, planes, stride, bottleneck):
      super().__init__()
      self.bottleneck = bottleneck
      out = planes * (4 if bottleneck else 1)
      if bottleneck:
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
      else:
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
      self.downsample = None
      if stride != 1 or inplanes != out:
        self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False),
                                        nn.BatchNorm2d(out))

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      if self.bottleneck:
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
      else:
        y = self.bn2(self.conv2(y))
      return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

  class ResNet(nn.Module):
    def __init__(self, stages, bottleneck, in_channels):
      super().__init__()
      if config.stem == "cifar":
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.maxpool = None
      else:
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
      self.bn1 = nn.BatchNorm2d(width)
      inplanes = width
      for s, num_blocks in enumerate(stages):
        blocks = []
        for b in range(num_blocks):
          blocks.append(Block(inplanes, width * 2**s, 2 if (s > 0 and b == 0) else 1,
                              bottleneck))
          inplanes = width * 2**s * (4 if bottleneck else 1)
        setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
      self.num_stages, self.features = len(stages), inplanes

    def forward(self, x):
      x = torch.relu(self.bn1(self.conv1(x)))
      if self.maxpool is not None:
        x = self.maxpool(x)
      for s in range(self.num_stages):
        x = getattr(self, f"layer{s + 1}")(x)
      return x.mean(dim=(2, 3))

  class Encoder(nn.Module):
    """Normalise, ResNet, projection head (Linear, BN, ReLU, Linear, BN without affine)."""

    def __init__(self):
      super().__init__()
      block, stages = models.ARCHITECTURES[arch]
      self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
      self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
      self.backbone = ResNet(stages, block == "bottleneck", len(mean))
      self.fc1 = nn.Linear(self.backbone.features, config.head_hidden, bias=False)
      self.bn_h = nn.BatchNorm1d(config.head_hidden)
      self.fc2 = nn.Linear(config.head_hidden, config.embedding_dim, bias=False)
      self.bn_z = nn.BatchNorm1d(config.embedding_dim, affine=False)

    def forward(self, x):
      h = self.backbone((x - self.mean) / self.std)
      return h, self.bn_z(self.fc2(torch.relu(self.bn_h(self.fc1(h)))))

  return Encoder()


def load_jax_weights(torch, encoder, params, batch_stats):
  """The JAX encoder's weights into the torch encoder: the backbone through mi_contrast.export
  (strict), the head by hand."""
  state = export.export_backbone(params, batch_stats, "torchvision")
  encoder.backbone.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                                   strict=True)
  head, stats = params["head"], batch_stats["head"]
  with torch.no_grad():
    encoder.fc1.weight.copy_(torch.from_numpy(np.array(head["fc1"]["kernel"]).T.copy()))
    encoder.fc2.weight.copy_(torch.from_numpy(np.array(head["fc2"]["kernel"]).T.copy()))
    encoder.bn_h.weight.copy_(torch.from_numpy(np.array(head["bn1"]["scale"])))
    encoder.bn_h.bias.copy_(torch.from_numpy(np.array(head["bn1"]["bias"])))
    for bn, name in ((encoder.bn_h, "bn1"), (encoder.bn_z, "bn2")):
      bn.running_mean.copy_(torch.from_numpy(np.array(stats[name]["mean"])))
      bn.running_var.copy_(torch.from_numpy(np.array(stats[name]["var"])))


# ----------------------------------------------------------------------------------------------
# The torch step.
# ----------------------------------------------------------------------------------------------


def torch_views(torch, x, recipe):
  """Batched views of x [B, C, H, W] in [0, 1] by the recipe's entries (TORCH_OPS)."""
  F = torch.nn.functional
  b = x.shape[0]
  theta = torch.zeros(b, 2, 3)
  theta[:, 0, 0] = theta[:, 1, 1] = 1.0
  size = x.shape[-2:]
  geometric = False
  for name, params, prob in views_lib.normalize_recipe(recipe):
    if name not in TORCH_OPS:
      raise SystemExit(f"torch_step: the view op {name!r} has no torch version here "
                       f"({', '.join(TORCH_OPS)}).")
    if name == "random_resized_crop":
      lo, hi = params.get("scale", (0.08, 1.0))
      r_lo, r_hi = params.get("ratio", (3 / 4, 4 / 3))
      area = torch.empty(b).uniform_(lo, hi)
      aspect = torch.exp(torch.empty(b).uniform_(math.log(r_lo), math.log(r_hi)))
      w = torch.sqrt(area * aspect).clamp(max=1.0)
      h = torch.sqrt(area / aspect).clamp(max=1.0)
      cx = (torch.rand(b) * (1 - w) + w / 2) * 2 - 1
      cy = (torch.rand(b) * (1 - h) + h / 2) * 2 - 1
      theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = w, h, cx, cy
      if "size" in params:
        size = (params["size"],) * 2 if isinstance(params["size"], int) else params["size"]
      geometric = True
    elif name == "random_horizontal_flip":
      flip = torch.rand(b) < params.get("p", 0.5) * prob
      theta[:, 0, 0] = torch.where(flip, -theta[:, 0, 0], theta[:, 0, 0])
      geometric = True
  if geometric:
    grid = F.affine_grid(theta, (b, x.shape[1]) + tuple(size), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
  for name, params, prob in views_lib.normalize_recipe(recipe):
    if name == "random_intensity":
      on = (torch.rand(b, 1, 1, 1) < prob).float()
      bright = 1 + on * torch.empty(b, 1, 1, 1).uniform_(-params.get("brightness", 0.4),
                                                         params.get("brightness", 0.4))
      contrast = 1 + on * torch.empty(b, 1, 1, 1).uniform_(-params.get("contrast", 0.4),
                                                           params.get("contrast", 0.4))
      x = (x * bright).clamp(0, 1)
      mean = x.mean(dim=(1, 2, 3), keepdim=True)
      x = (contrast * x + (1 - contrast) * mean).clamp(0, 1)
    elif name == "random_gaussian_noise":
      x = (x + params.get("std", 0.05) * torch.randn_like(x)).clamp(0, 1)
  return x


class TorchIRRing:
  """One IR Ring step per call, in eager PyTorch (see the module docstring)."""

  def __init__(self, torch, run, images_u8, band, jax_variables, seed=0):
    config = run.config
    self.torch, self.config = torch, config
    torch.manual_seed(seed)
    mean, std = (0.5,) * images_u8.shape[-1], (0.25,) * images_u8.shape[-1]
    self.encoder = build_encoder(torch, config, config.model, config.width, mean, std)
    load_jax_weights(torch, self.encoder, *jax_variables)
    self.encoder = self.encoder.to(memory_format=torch.channels_last).train()
    self.optimizer = torch.optim.SGD(self.encoder.parameters(), lr=config.learning_rate,
                                     momentum=config.momentum,
                                     weight_decay=config.weight_decay)
    # [N, C, H, W] uint8, as a torch dataset held in memory would give them.
    self.images = torch.from_numpy(np.ascontiguousarray(np.transpose(images_u8, (0, 3, 1, 2))))
    n = self.images.shape[0]
    self.bank = torch.nn.functional.normalize(torch.randn(n, config.embedding_dim), dim=1)
    self.recipe = run.recipes[0]
    self.batch, self.rows = config.global_batch_size, n
    self.steps_per_epoch = n // self.batch
    self.candidates = config.bank.candidates or None
    pool = self.candidates or n - 1            # the exact band leaves the own row out
    start, end = negatives_lib.band_bounds(pool, *band)
    self.start, self.end = int(start), max(int(end), int(start) + 1)
    self.step, self.order = 0, None

  def __call__(self):
    torch, config = self.torch, self.config
    F = torch.nn.functional
    if self.step % self.steps_per_epoch == 0:
      self.order = torch.randperm(self.rows)
    first = (self.step % self.steps_per_epoch) * self.batch
    idx = self.order[first:first + self.batch]
    x = torch_views(torch, self.images[idx].float().div_(255), self.recipe)
    x = x.contiguous(memory_format=torch.channels_last)
    _, z = self.encoder(x)
    z = F.normalize(z, dim=1)
    tau, b = config.temperature, self.batch
    pos = (z * self.bank[idx]).sum(1) / tau
    if self.candidates:
      cand = torch.randint(0, self.rows, (self.candidates,))
      scores = z @ self.bank[cand].T / tau                                   # [B, M]
      own = cand[None, :] == idx[:, None]
    else:
      cand = None
      scores = z @ self.bank.T / tau                                         # [B, N]
      own = torch.zeros_like(scores, dtype=torch.bool)
      own[torch.arange(b), idx] = True
    ranked = torch.topk(scores.detach().masked_fill(own, -math.inf), self.end, dim=1).indices
    ring = ranked[:, self.start:self.end]
    pick = torch.randint(0, self.end - self.start, (b, config.num_negatives))
    neg = scores.gather(1, ring.gather(1, pick))
    loss = -(pos - torch.logsumexp(torch.cat([pos[:, None], neg], 1), 1)).mean()
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    with torch.no_grad():
      m = config.bank.momentum
      self.bank[idx] = F.normalize(m * self.bank[idx] + (1 - m) * z.detach(), dim=1)
    self.step += 1
    return float(loss.detach())


# ----------------------------------------------------------------------------------------------
# Measurement.
# ----------------------------------------------------------------------------------------------


def measure(config, rows, reps, log=print):
  torch = import_torch()
  load_before = os.getloadavg()
  if config.method != "ir" or config.negatives != "ring" or config.bound != "infonce":
    raise SystemExit("torch_step compares IR Ring steps (method ir, negatives ring, bound "
                     "infonce): give configs/ring.py and one of its presets.")
  run, inputs, views = step_overhead.synthetic_run(config, rows)
  if views["views"][0] != 1:
    raise SystemExit("torch_step writes IR with one view per image (config.num_views = 0).")
  jax_side = step_overhead._Stepper(run, inputs)
  state = jax_side.state
  band = [float(x) for x in run.band_fn(0, state.ring_state)[0]]
  torch_side = TorchIRRing(torch, run, np.array(inputs[0]), band,
                           (jax.device_get(state.params), jax.device_get(state.batch_stats)))
  first = {}
  for name, call in (("jax", jax_side.call), ("torch", torch_side)):
    start = time.perf_counter()
    call()                                                  # compile + first call
    first[name] = time.perf_counter() - start
    call()                                                  # warm-up
    log(f"{name}: first call {first[name]:.1f} s")
  times = {"jax": [], "torch": []}
  losses = []
  for rep in range(reps):
    for name in (("torch", "jax") if rep % 2 == 0 else ("jax", "torch")):
      start = time.perf_counter()
      out = torch_side() if name == "torch" else jax_side.call()
      times[name].append(time.perf_counter() - start)
      if name == "torch":
        losses.append(out)
  median = {k: float(np.median(v)) for k, v in times.items()}
  log(f"torch {1000 * median['torch']:.1f} ms, jax {1000 * median['jax']:.1f} ms, "
      f"ratio {median['torch'] / median['jax']:.2f}")
  return {
      "torch_over_jax": median["torch"] / median["jax"],
      "jax_step_s": median["jax"], "torch_step_s": median["torch"],
      "jax_times_s": times["jax"], "torch_times_s": times["torch"],
      "torch_losses": losses,
      "first_call_s": first,
      "reps": reps,
      "global_batch": config.global_batch_size,
      "image_shape": list(run.image_shape),
      "view_shape": views["views"],
      "bank_rows": rows,
      "candidates": config.bank.candidates,
      "num_negatives": config.num_negatives,
      "band": {"lower": band[0], "upper": band[1], "outer": config.ring.outer_start,
               "inner": config.ring.inner, "torch_ranks": [torch_side.start, torch_side.end]},
      "model": config.model, "width": config.width, "stem": config.stem,
      "jax_devices": run.plan.num_devices,
      "torch": {"version": torch.__version__, "threads": torch.get_num_threads(),
                "interop_threads": torch.get_num_interop_threads(),
                "omp_env": {k: v for k, v in sorted(os.environ.items())
                            if k.startswith("OMP_")},
                "channels_last": True},
      "machine": step_overhead.machine_record(load_before),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/ring.py:fashion_mnist")
  parser.add_argument("--batch", type=int, default=None, help="global batch (default: the "
                      "preset's)")
  parser.add_argument("--rows", type=int, default=None,
                      help="images and bank rows (default: the preset's dataset size)")
  parser.add_argument("--outer", type=float, default=0.1,
                      help="rho_o of the constant band of both sides")
  parser.add_argument("--reps", type=int, default=9)
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="override a config field, e.g. --set=num_negatives=63")
  parser.add_argument("--output", default=None,
                      help="JSON file (default: benchmarks/results/torch_step_<config>.json; "
                           "'-' writes none)")
  args = parser.parse_args(argv)
  # As the trainer does before JAX starts: on a CPU, glibc's allocator keeps the step's
  # buffers (mi_contrast/host_malloc.py); both sides of the comparison run under it.
  malloc_settings = host_malloc.tune()
  config, name = step_overhead.load_config(args.config)
  if args.batch:
    config.global_batch_size = args.batch
  for assignment in args.set:
    step_overhead.set_field(config, assignment)
  config.ring.schedule = "constant"
  config.ring.outer_start = config.ring.outer = args.outer
  rows = args.rows or step_overhead.PRESET_ROWS[config.dataset]
  if jax.device_count() != 1:
    print(f"note: JAX sees {jax.device_count()} devices; the step runs over all of them.",
          file=sys.stderr)
  log = lambda line: print(line, file=sys.stderr, flush=True)
  result = {"benchmark": "torch_step", "config": args.config, "overrides": args.set,
            "host_malloc": malloc_settings, **measure(config, rows, args.reps, log=log)}
  output = args.output or os.path.join(RESULTS, f"torch_step_{name}.json")
  if output != "-":
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
      json.dump(result, f, indent=2, sort_keys=True)
  print(json.dumps(result, sort_keys=True), flush=True)
  return result


if __name__ == "__main__":
  main()
