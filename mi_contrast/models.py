"""Encoders: the ResNet family (Flax Linen) with a projection head.

`ContrastiveEncoder(images) -> (h, z)`: h are the pooled backbone features (what linear
evaluation and export use), z the un-normalised projection (what the contrastive bound uses;
methods L2-normalise it). Module names follow torchvision's layout (conv1, bn1, layer{s}_{b}
with conv1/bn1/conv2/bn2[/conv3/bn3] and downsample_conv/downsample_bn) so that export is a
renaming.

BatchNorm: with `bn_axis_name='batch'` and inside a `shard_map` over that axis, training-mode
statistics are averaged over every device (global-batch BN), so a step computes the same
function on 1 or 8 devices.

Mixed precision: `dtype=jnp.bfloat16` computes convolutions, dense layers and activations in
bfloat16 while parameters and BatchNorm statistics stay float32; h and z are returned float32.

Public API (used by mi_contrast.export and tests/test_torch_export.py): `ResNet` with its
fields stages, bottleneck, width, stem, bn_axis_name (and dtype), and `ARCHITECTURES`.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mi_contrast import methods
from mi_contrast import views
from mi_contrast.mesh import AXIS

# Public API: config.model name -> (block, stages): block 'basic' or 'bottleneck', stages the
# number of blocks per stage (He et al. 2016); a ResNet for a name is
# ResNet(stages, bottleneck=(block == 'bottleneck'), width=..., stem=...).
ARCHITECTURES = {
    "resnet_digits": ("basic", (1, 1, 1)),
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


class _Block(nn.Module):
  features: int
  strides: int
  bottleneck: bool
  norm: type
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda f, k, s, name: nn.Conv(f, (k, k), (s, s), padding=[(k // 2, k // 2)] * 2,
                                         use_bias=False, dtype=self.dtype, name=name)
    out_features = self.features * (4 if self.bottleneck else 1)
    residual = x
    if self.bottleneck:
      y = nn.relu(self.norm(name="bn1")(conv(self.features, 1, 1, "conv1")(x)))
      y = nn.relu(self.norm(name="bn2")(conv(self.features, 3, self.strides, "conv2")(y)))
      y = self.norm(name="bn3")(
          conv(out_features, 1, 1, "conv3")(y))
    else:
      y = nn.relu(self.norm(name="bn1")(conv(self.features, 3, self.strides, "conv1")(x)))
      y = self.norm(name="bn2")(
          conv(out_features, 3, 1, "conv2")(y))
    if residual.shape[-1] != out_features or self.strides != 1:
      residual = conv(out_features, 1, self.strides, "downsample_conv")(residual)
      residual = self.norm(name="downsample_bn")(residual)
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """ResNet backbone (public API); returns pooled features [B, C_last].

  `ResNet(stages, bottleneck, width, stem, bn_axis_name)(x, train)` with x [B, H, W, C] the
  already normalised images (ContrastiveEncoder normalises by mean/std before calling it; this
  module has no normalisation of its own). Padding is k // 2 on every k x k convolution, the
  stride of a stage's first block is in its 3x3 convolution (ResNet v1.5, torchvision's layout),
  a block has a 1x1 projection (downsample_conv/downsample_bn) when its stride or width changes,
  BatchNorm uses epsilon 1e-5 and momentum 0.9 (PyTorch's momentum 0.1), and the features are
  the mean over H and W. mi_contrast.export writes these weights under torchvision's names.

  Attributes:
    stages: blocks per stage.
    bottleneck: bottleneck (ResNet-50) or basic (ResNet-18) blocks.
    width: channels of the first stage; stage s has width * 2**s (times 4 for bottlenecks).
    stem: 'cifar' (3x3 conv, stride 1, no max-pool: 32 px inputs) or 'imagenet' (7x7/2 conv +
      3x3/2 max-pool).
    bn_axis_name: axis to average BatchNorm statistics over in training, or None.
    dtype: computation dtype (parameters stay float32).
  """
  stages: Sequence[int]
  bottleneck: bool = False
  width: int = 64
  stem: str = "cifar"
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda **kw: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                     axis_name=self.bn_axis_name if train else None,
                                     dtype=self.dtype, **kw)
    x = x.astype(self.dtype)
    if self.stem == "cifar":
      x = nn.Conv(self.width, (3, 3), padding=[(1, 1), (1, 1)], use_bias=False,
                  dtype=self.dtype, name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x))
    elif self.stem == "imagenet":
      x = nn.Conv(self.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False,
                  dtype=self.dtype, name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])
    else:
      raise ValueError(f"stem {self.stem!r}: allowed values are 'cifar' and 'imagenet'.")
    for s, num_blocks in enumerate(self.stages):
      for b in range(num_blocks):
        x = _Block(self.width * 2**s, 2 if (s > 0 and b == 0) else 1, self.bottleneck, norm,
                   self.dtype, name=f"layer{s + 1}_{b}")(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class ProjectionHead(nn.Module):
  """MLP head h -> z: Linear, BatchNorm, ReLU, Linear (512-512-128 in the reference).

  The BatchNorm centres the hidden layer: without it the ReLU features of a freshly initialised
  network give embeddings with pairwise cosine ~0.98, and a memory-bank method whose early
  positives are still random rows can collapse onto that common direction.
  """
  hidden: int
  out: int
  norm: type
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    dense = lambda f, name: nn.Dense(f, use_bias=False, dtype=self.dtype, name=name)
    x = nn.relu(self.norm(name="bn1")(dense(self.hidden, "fc1")(h)))
    z = self.norm(name="bn2", use_scale=False, use_bias=False)(dense(self.out, "fc2")(x))
    return z.astype(jnp.float32)


class ContrastiveEncoder(nn.Module):
  """Backbone plus projection head: images [B, H, W, C] -> (h [B, F], z [B, embedding_dim])."""
  arch: str = "resnet18"
  width: int = 64
  stem: str = "cifar"
  head_hidden: int = 512
  embedding_dim: int = 128
  bn_axis_name: Optional[str] = None
  mean: Sequence[float] = (0.5,)
  std: Sequence[float] = (0.25,)
  dtype: Any = jnp.float32    # computation dtype; parameters stay float32

  @nn.compact
  def __call__(self, images, train: bool = True):
    if self.arch not in ARCHITECTURES:
      raise ValueError(f"model {self.arch!r}: allowed values are {', '.join(ARCHITECTURES)}.")
    block, stages = ARCHITECTURES[self.arch]
    x = (images - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)
    h = ResNet(stages, block == "bottleneck", self.width, self.stem, self.bn_axis_name,
               self.dtype, name="backbone")(x, train)
    norm = lambda **kw: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                     axis_name=self.bn_axis_name if train else None,
                                     dtype=self.dtype, **kw)
    z = ProjectionHead(self.head_hidden, self.embedding_dim, norm, self.dtype, name="head")(h)
    return h, z


class LabEncoder(nn.Module):
  """CMC's two-stream encoder: RGB images -> Lab -> an L encoder and an ab encoder.

  images [B, H, W, 3] (or [B, H, W, 1] grey, false-coloured by views.colormap as the
  'digits_cmc' views are) in [0, 1] ->
  (h [B, F_L + F_ab] the two pooled features side by side (CMC's evaluation features),
   z [B, 2, embedding_dim]: z[:, 0] from L, z[:, 1] from ab).
  Lab is normalised with CMC's constants (views.lab_split); each stream is a ContrastiveEncoder
  ('l' with 1 input channel, 'ab' with 2) of the same depth and `width`.
  """
  arch: str = "resnet18"
  width: int = 64
  stem: str = "cifar"
  head_hidden: int = 512
  embedding_dim: int = 128
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32    # computation dtype of both streams; parameters stay float32

  @nn.compact
  def __call__(self, images, train: bool = True):
    if images.shape[-1] == 1:
      images = jax.vmap(views.colormap)(images)
    lightness, ab = views.lab_split(images)
    stream = lambda name, channels: ContrastiveEncoder(
        self.arch, self.width, self.stem, self.head_hidden, self.embedding_dim,
        self.bn_axis_name, mean=(0.0,) * channels, std=(1.0,) * channels, dtype=self.dtype,
        name=name)
    h_l, z_l = stream("l", 1)(lightness, train)
    h_ab, z_ab = stream("ab", 2)(ab, train)
    return jnp.concatenate([h_l, h_ab], axis=-1), jnp.stack([z_l, z_ab], axis=1)


def build_encoder(config, mean, std, bn_axis_name=AXIS):
  """The encoder a config asks for (ResNet-18/50 use width 64, the digits ResNet config.width).

  A method whose ENCODER is 'lab' (methods.encoder_kind; CMC) gets a LabEncoder whose streams
  have that width ('full') or half of it (config.cmc.width).
  """
  width = config.width if config.model == "resnet_digits" else 64
  if methods.encoder_kind(config) == "lab":
    return LabEncoder(arch=config.model, width=width if config.cmc.width == "full" else
                      max(1, width // 2), stem=config.stem, head_hidden=config.head_hidden,
                      embedding_dim=config.embedding_dim,
                      bn_axis_name=bn_axis_name if config.sync_batch_norm else None,
                      dtype=jnp.dtype(config.compute_dtype))
  return ContrastiveEncoder(arch=config.model, width=width, stem=config.stem,
                            head_hidden=config.head_hidden, embedding_dim=config.embedding_dim,
                            bn_axis_name=bn_axis_name if config.sync_batch_norm else None,
                            mean=tuple(mean), std=tuple(std),
                            dtype=jnp.dtype(config.compute_dtype))
