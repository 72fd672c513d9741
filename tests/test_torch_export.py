"""The torchvision export computes the same function in PyTorch.

A torchvision-layout ResNet is written here in torch (torchvision itself is not installed: its
index build pulls a CUDA torch), generic in the layout models.ResNet allows: any stages, basic or
bottleneck blocks, any width, 1 or 3 input channels, the CIFAR stem (3x3 convolution, stride 1,
no max-pool) or the ImageNet stem (7x7 stride 2, then 3x3 max-pool stride 2 padding 1). It mirrors
models.ResNet: padding k // 2 on every k x k convolution, no convolution biases, the stride of a
stage's first block in its 3x3 convolution (torchvision's v1.5 layout), a 1x1-convolution +
BatchNorm projection on the shortcut when the stride or the width changes, BatchNorm with
epsilon 1e-5 and momentum 0.1 (Flax's 0.9: running = 0.9 running + 0.1 batch), ReLU after the
residual sum, and global average pooling. Neither network normalises its input: the encoder
does, before its ResNet, so the digits case normalises by the same mean/std on both sides.

The exported state dict is loaded with strict=True; both networks run in inference mode on the
same random images, with BatchNorm statistics and affine parameters drawn away from 0/1 (and,
in the fresh networks, some BatchNorm inputs with variances near 1e-3, so that a wrong epsilon
shows), and their pooled features must agree within 1e-4 of their largest magnitude. Controls
on the digits run check that an epsilon of 1e-3 or swapped running mean/var fail that bound by
far. Cases: (a) the backbone of the tiny trained digits run (1 input channel), exported by
export.export_run as the CLI does, both as the numpy pickle and as a torch.save .pt file;
(b)-(d) fresh ResNet-18 with the CIFAR stem, ResNet-18 with the ImageNet stem and ResNet-50.
Detectron2 is not installed or run here: tests/test_export.py checks only its renaming.

A test that needs torch is skipped where torch is not importable, except with CI=true, where
that fails; torch is imported by the first such test, not when the file is collected.
"""

import functools
import os
import pickle
import shutil
import sys

import flax.linen as flax_nn
import flax.serialization as flax_serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mi_contrast import checkpoints
from mi_contrast import export
from mi_contrast import models
from mi_contrast import run as run_lib

RTOL = 1e-4          # max |h_torch - h_flax| <= RTOL * max |h_flax|
BN_EPS = 1e-5


# ----------------------------------------------------------------------------------------------
# A torchvision-layout ResNet (names of torchvision.models.resnet, without fc).
# ----------------------------------------------------------------------------------------------


def _require_torch():
  """torch, imported when a test needs it (not at collection: `pytest -m "not slow"` runs none
  of this file's torch tests, and importing torch costs each test process seconds). Skips the
  test where torch is missing, except with CI=true, where that fails."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    if os.environ.get("CI") == "true":
      pytest.fail("CI=true but torch is not importable: install it with "
                  "pip install -e \".[torch]\" (as .ci/run does).", pytrace=False)
    pytest.skip("torch is not installed (pip install -e \".[torch]\"): the PyTorch equivalence "
                "of the torchvision export is not checked.")
  return torch


@functools.lru_cache(maxsize=None)
def _torch_resnet():
  """The TorchResNet class (its modules are torch.nn subclasses, defined once torch is in)."""
  torch = _require_torch()
  from torch import nn  # pylint: disable=import-outside-toplevel

  def _bn(channels, eps):
    return nn.BatchNorm2d(channels, eps=eps, momentum=0.1)


  class Block(nn.Module):
    """torchvision's BasicBlock / Bottleneck (stride in the 3x3 convolution)."""

    def __init__(self, inplanes, planes, stride, bottleneck, eps=BN_EPS):
      super().__init__()
      self.bottleneck = bottleneck
      out = planes * (4 if bottleneck else 1)
      if bottleneck:
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _bn(planes, eps)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _bn(planes, eps)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = _bn(out, eps)
      else:
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = _bn(planes, eps)
        self.conv2 = nn.Conv2d(planes, out, 3, 1, 1, bias=False)
        self.bn2 = _bn(out, eps)
      self.downsample = None
      if stride != 1 or inplanes != out:
        self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False),
                                        _bn(out, eps))

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      if self.bottleneck:
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
      else:
        y = self.bn2(self.conv2(y))
      residual = x if self.downsample is None else self.downsample(x)
      return torch.relu(y + residual)


  class TorchResNet(nn.Module):
    """models.ResNet in torch: [B, C, H, W] normalised images -> pooled features [B, C_last]."""

    def __init__(self, stages, bottleneck=False, width=64, stem="cifar", in_channels=3,
                 eps=BN_EPS):
      super().__init__()
      if stem == "cifar":
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.maxpool = None
      elif stem == "imagenet":
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
      else:
        raise ValueError(stem)
      self.bn1 = _bn(width, eps)
      inplanes = width
      for s, num_blocks in enumerate(stages):
        planes = width * 2**s
        blocks = []
        for b in range(num_blocks):
          blocks.append(Block(inplanes, planes, 2 if (s > 0 and b == 0) else 1, bottleneck, eps))
          inplanes = planes * (4 if bottleneck else 1)
        setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
      self.num_stages = len(stages)

    def forward(self, x):
      x = torch.relu(self.bn1(self.conv1(x)))
      if self.maxpool is not None:
        x = self.maxpool(x)
      for s in range(self.num_stages):
        x = getattr(self, f"layer{s + 1}")(x)
      return x.mean(dim=(2, 3))

  return TorchResNet


def torch_features(state_dict, images_nhwc, **layout):
  """Strict load of `state_dict` (numpy arrays or tensors), eval mode, features as numpy."""
  torch = _require_torch()
  net = _torch_resnet()(**layout)
  assert list(state_dict) == list(net.state_dict()), "export order != torchvision's order"
  tensors = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(v)
             for k, v in state_dict.items()}
  result = net.load_state_dict(tensors, strict=True)
  assert not result.missing_keys and not result.unexpected_keys
  net.eval()
  with torch.no_grad():
    x = torch.from_numpy(np.ascontiguousarray(np.transpose(images_nhwc, (0, 3, 1, 2))))
    return net(x).numpy()


# ----------------------------------------------------------------------------------------------
# Variables with non-trivial BatchNorm.
# ----------------------------------------------------------------------------------------------

_NORM_OF_CONV = {"conv1": "bn1", "conv2": "bn2", "conv3": "bn3", "downsample_conv": "downsample_bn"}


def _numpy_tree(tree):
  return jax.tree.map(lambda x: np.array(x, np.float32), jax.device_get(tree))


def _at(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def perturb_batch_norm(resnet, params, batch_stats, images, seed):
  """Every BatchNorm of a models.ResNet gets random affine parameters and running statistics.

  scale in +-[0.5, 1.5], bias ~ N(0, 0.5); then the running mean and variance are drawn around
  what a training-mode pass over `images` sees at that BatchNorm's input (mean + N(0, 0.5) std,
  variance times a factor in [1/4, 4]): far from 0/1 and from each other, yet a deep network's
  activations stay within a few orders of magnitude. Returns new (params, batch_stats).
  """
  rng = np.random.RandomState(seed)
  params, batch_stats = _numpy_tree(params), _numpy_tree(batch_stats)
  norms = [path[:-1] for path, _ in jax.tree_util.tree_flatten_with_path(batch_stats)[0]
           if path[-1].key == "mean"]
  norms = [tuple(k.key for k in path) for path in norms]
  for path in norms:
    bn, n = _at(params, path), _at(batch_stats, path)["mean"].shape
    bn["scale"] = (rng.uniform(0.5, 1.5, n) * rng.choice([-1.0, 1.0], n)).astype(np.float32)
    bn["bias"] = rng.normal(0.0, 0.5, n).astype(np.float32)
  capture = lambda module, _: isinstance(module, flax_nn.Conv)
  _, captured = jax.jit(lambda v, x: resnet.apply(
      v, x, train=True, mutable=["batch_stats", "intermediates"],
      capture_intermediates=capture))({"params": params, "batch_stats": batch_stats}, images)
  inputs = {}
  for path, value in jax.tree_util.tree_flatten_with_path(captured["intermediates"])[0]:
    keys = [k.key for k in path if hasattr(k, "key")]   # [..., conv, '__call__'], index 0
    inputs[tuple(keys[:-2]) + (_NORM_OF_CONV[keys[-2]],)] = np.asarray(value)
  assert sorted(inputs) == sorted(norms), (sorted(inputs), sorted(norms))
  for path in norms:
    y = inputs[path]
    mean, var = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))
    stats = _at(batch_stats, path)
    stats["mean"] = (mean + rng.normal(0.0, 0.5, mean.shape) * np.sqrt(var)).astype(np.float32)
    stats["var"] = (var * np.exp(rng.uniform(np.log(0.25), np.log(4.0), var.shape))
                    ).astype(np.float32)
  return params, batch_stats


def fresh_variables(resnet, images, seed):
  """He-normal kernels, each layer's scaled by a random factor in [0.03, 1] (so that some
  BatchNorm inputs have variances near 1e-3, where a wrong epsilon shows), then
  perturb_batch_norm."""
  shapes = jax.eval_shape(lambda: resnet.init(jax.random.PRNGKey(0), images[:1], train=False))
  rng = np.random.RandomState(seed)

  def draw(path, s):
    if path[-1].key == "kernel":
      fan_in = int(np.prod(s.shape[:-1]))
      gain = np.exp(rng.uniform(np.log(0.03), 0.0))
      return (rng.standard_normal(s.shape) * gain * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return np.zeros(s.shape, np.float32)

  variables = jax.tree_util.tree_map_with_path(draw, shapes)
  return perturb_batch_norm(resnet, variables["params"], variables["batch_stats"], images,
                            seed + 1)


def features_diff(h_flax, h_torch):
  h_flax, h_torch = np.asarray(h_flax), np.asarray(h_torch)
  assert h_flax.shape == h_torch.shape
  return float(np.max(np.abs(h_flax - h_torch))), float(np.max(np.abs(h_flax)))


def assert_same_features(h_flax, h_torch, what):
  diff, scale = features_diff(h_flax, h_torch)
  print(f"{what}: max |h| {scale:.4g}, max |diff| {diff:.3g} = {diff / scale:.3g} of it")
  assert scale > 0 and np.std(np.asarray(h_flax)) > 1e-3 * scale, "degenerate features"
  assert diff <= RTOL * scale, f"{what}: max |diff| {diff} > {RTOL} x max |h| {scale}"


def _images(shape, seed):
  return np.random.RandomState(seed).standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# (b)-(d): fresh ResNet-18 (CIFAR and ImageNet stems) and ResNet-50.
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch,stem,size", [("resnet18", "cifar", 32),
                                            ("resnet18", "imagenet", 64),
                                            ("resnet50", "imagenet", 64)])
def test_fresh_resnet_matches_torch(arch, stem, size):
  _require_torch()
  block, stages = models.ARCHITECTURES[arch]
  layout = dict(stages=stages, bottleneck=block == "bottleneck", width=64, stem=stem)
  resnet = models.ResNet(**layout)
  params, stats = fresh_variables(resnet, _images((4, size, size, 3), 0), seed=size)
  images = _images((2, size, size, 3), 1)
  h_flax = jax.jit(lambda v, x: resnet.apply(v, x, train=False))(
      {"params": params, "batch_stats": stats}, images)
  state = export.export_backbone(params, stats, "torchvision")
  assert_same_features(h_flax, torch_features(state, images, in_channels=3, **layout),
                       f"{arch} {stem}")


# ----------------------------------------------------------------------------------------------
# (a): the digits backbone of a trained run, exported as the CLI does (pickle and .pt).
# ----------------------------------------------------------------------------------------------

MEAN, STD = (0.3,), (0.2,)   # any values: they enter the encoder's forward pass, not its weights


def _perturbed_run(tiny_run, tmp_path):
  """A copy of the tiny trained run whose newest checkpoint (step 3) is step 2 with the
  backbone's BatchNorm perturbed. Returns (workdir, encoder, params, batch_stats, layout)."""
  workdir, _ = tiny_run
  run = str(tmp_path / "run")
  shutil.copytree(workdir, run)
  config = checkpoints.load_run_config(run)
  assert config.model == "resnet_digits" and config.method != "cmc"
  encoder = models.build_encoder(config, MEAN, STD, bn_axis_name=None)
  image_shape = (config.image_size, config.image_size, 1)
  built = run_lib.build_run(config, bank_rows=config.global_batch_size,
                            channel_stats=(MEAN, STD), training=False)
  assert built.image_shape == image_shape
  state, step = checkpoints.restore_run(run, built)
  assert step == 2
  block, stages = models.ARCHITECTURES[config.model]
  layout = dict(stages=stages, bottleneck=block == "bottleneck", width=encoder.width,
                stem=encoder.stem)
  rng = np.random.RandomState(2)
  calibration = (rng.uniform(0, 1, (16,) + image_shape).astype(np.float32) - MEAN[0]) / STD[0]
  params, stats = _numpy_tree(state.params), _numpy_tree(state.batch_stats)
  params["backbone"], stats["backbone"] = perturb_batch_norm(
      models.ResNet(**layout), params["backbone"], stats["backbone"], calibration, seed=3)
  manager = checkpoints.checkpoint_manager(run, config)
  new_state = state.replace(params=params, batch_stats=stats)
  manager.save(3, args=ocp.args.StandardSave(flax_serialization.to_state_dict(new_state)),
               force=True)
  manager.wait_until_finished()
  manager.close()
  return run, encoder, params, stats, layout


@pytest.mark.slow
def test_trained_digits_run_matches_torch(tiny_run, tmp_path):
  torch = _require_torch()
  run, encoder, params, stats, layout = _perturbed_run(tiny_run, tmp_path)
  pkl, pt = str(tmp_path / "backbone.pkl"), str(tmp_path / "backbone.pt")
  assert export.export_run(run, "torchvision", pkl)["checkpoint_step"] == 3
  assert export.export_run(run, "torchvision", pt)["checkpoint_step"] == 3
  with open(pkl, "rb") as f:
    from_pickle = pickle.load(f)
  from_torch = torch.load(pt)          # weights_only: a plain state dict of tensors
  assert list(from_torch) == list(from_pickle)
  assert all(isinstance(v, torch.Tensor) for v in from_torch.values())
  for name, value in from_pickle.items():
    assert from_torch[name].dtype == torch.from_numpy(value).dtype, name
    np.testing.assert_array_equal(from_torch[name].numpy(), value, err_msg=name)
  # The checkpoint really holds the perturbed statistics (what the exporter read).
  np.testing.assert_array_equal(from_pickle["layer2.0.bn1.running_var"],
                                stats["backbone"]["layer2_0"]["bn1"]["var"])

  raw = np.random.RandomState(4).uniform(0, 1, (4, 16, 16, 1)).astype(np.float32)
  h_flax, _ = encoder.apply({"params": params, "batch_stats": stats}, raw, train=False)
  normalised = (raw - np.float32(MEAN[0])) / np.float32(STD[0])
  h_pickle = torch_features(from_pickle, normalised, in_channels=1, **layout)
  h_pt = torch_features(from_torch, normalised, in_channels=1, **layout)
  assert_same_features(h_flax, h_pickle, "digits run, pickle")
  assert_same_features(h_flax, h_pt, "digits run, .pt")

  # The comparison is sharp enough to see a wrong epsilon or swapped statistics.
  diff, scale = features_diff(h_flax, torch_features(from_pickle, normalised, in_channels=1,
                                                     eps=1e-3, **layout))
  print(f"control, epsilon 1e-3: {diff / scale:.3g} of max |h|")
  assert diff > 10 * RTOL * scale
  swapped = dict(from_pickle)
  for name in from_pickle:
    if name.endswith("running_mean"):
      var = name.replace("running_mean", "running_var")
      swapped[name], swapped[var] = from_pickle[var], from_pickle[name]
  swapped = {k: np.abs(v) if k.endswith("running_var") else v for k, v in swapped.items()}
  diff, scale = features_diff(h_flax, torch_features(swapped, normalised, in_channels=1,
                                                     **layout))
  print(f"control, mean/var swapped: {diff / scale:.3g} of max |h|")
  assert diff > 10 * RTOL * scale


def test_pt_output_without_torch_is_refused_before_anything_loads(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)     # `import torch` now raises ImportError
  output = tmp_path / "backbone.pth"
  with pytest.raises(ValueError, match=r"needs PyTorch.*\.pkl"):   # not: no config.json
    export.export_run(str(tmp_path / "no_run"), "torchvision", str(output))
  assert not output.exists()
