"""Views: augmentation ops and view recipes, computed on the device.

Every op works on ONE image, float32 HWC with values in [0, 1]; `make_views` vmaps a recipe
over the batch. Two kinds of op:

* deterministic primitives `op(image, **params) -> image` (torchvision's definitions):
  `adjust_brightness`, `adjust_contrast`, `adjust_saturation`, `adjust_hue`, `to_grayscale`,
  `gaussian_blur`, `solarize`, `horizontal_flip`, `resize`, `normalize`, `rgb_to_lab`;
* random ops `op(rng, image, **params) -> image`: `random_resized_crop`,
  `random_horizontal_flip`, `color_jitter`, `random_intensity`, `random_grayscale`,
  `random_gaussian_blur`, `random_solarize`, `random_gaussian_noise`.

A recipe is a plain list of `(op_name, params, probability)` entries, applied in order; an
entry is applied with the given probability (torchvision's `RandomApply`), on top of any `p`
the op itself takes (`RandomGrayscale(p)`, `RandomHorizontalFlip(p)`). Recipes are plain
python (lists, tuples, dicts) so they live in an ml_collections config; `normalize_recipe`
also accepts what a config round trip gives back (lists for tuples, ConfigDicts for dicts)
and recipe names from `RECIPES`.

Views stay in [0, 1]: per-channel mean/std normalisation is the model input's job
(`normalize`), and CMC's Lab conversion and L/ab split is done by the CMC method on the views
(`lab_split`).

Randomness: `make_views` keys image b by `fold_in(rng, image_ids[b])` and view v of it by
`fold_in(image_key, v)`, so a view depends on the global example id and never on how the
batch is split across devices. Nothing's shape depends on a random draw, so a jitted step
never recompiles.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

Array = jax.Array

__all__ = [
    "RECIPES",
    "LAB_MEAN",
    "LAB_STD",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "to_grayscale",
    "adjust_hue",
    "gaussian_blur",
    "solarize",
    "horizontal_flip",
    "normalize",
    "rgb_to_lab",
    "lab_split",
    "resized_crop",
    "resize",
    "sample_crop_box",
    "random_resized_crop",
    "random_horizontal_flip",
    "color_jitter",
    "random_intensity",
    "random_grayscale",
    "random_gaussian_blur",
    "random_solarize",
    "random_gaussian_noise",
    "colormap",
    "normalize_recipe",
    "apply_recipe",
    "make_views",
]

# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale and PIL's convert('L').
_LUMA = (0.299, 0.587, 0.114)


def _check_rgb(image: Array, op: str) -> None:
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(
        f'{op} needs an RGB image [H, W, 3]; got shape {tuple(image.shape)}. '
        'Colour ops (saturation, hue, grayscale, Lab) are undefined for other channel '
        'counts; for 1-channel images use brightness/contrast (random_intensity).')


def _check_image(image: Array, op: str) -> None:
  if image.ndim != 3:
    raise ValueError(f'{op} takes one image [H, W, C]; got shape {tuple(image.shape)}. '
                     'Use make_views for batches.')


def _gray(image: Array) -> Array:
  """[H, W, 1] luma of an RGB image, or the image itself when it has one channel."""
  if image.shape[-1] == 1:
    return image
  _check_rgb(image, 'grayscale')
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b)[..., None]


def _mean_luma(image: Array) -> Array:
  """Mean of the grayscale image (a scalar).

  Computed as one flat weighted sum: on CPU, reducing a computed luma image over H and W is
  about 20x slower.
  """
  channels = image.shape[-1]
  if channels != 1:
    _check_rgb(image, 'grayscale')
  weights = np.tile(np.asarray(_LUMA if channels == 3 else (1.0,), np.float32),
                    image.shape[0] * image.shape[1]) / (image.shape[0] * image.shape[1])
  return jnp.sum(image.reshape(-1) * weights)


def _blend(image: Array, other: Array, factor) -> Array:
  """torchvision's _blend: factor * image + (1 - factor) * other, clipped to [0, 1]."""
  return jnp.clip(factor * image + (1.0 - factor) * other, 0.0, 1.0)


# ---------------------------------------------------------------------------------------
# Deterministic primitives.
# ---------------------------------------------------------------------------------------


def adjust_brightness(image: ArrayLike, factor: ArrayLike) -> Array:
  """image * factor, clipped to [0, 1] (torchvision adjust_brightness). Any channel count."""
  _check_image(image, 'adjust_brightness')
  return jnp.clip(image * factor, 0.0, 1.0)


def adjust_contrast(image: ArrayLike, factor: ArrayLike) -> Array:
  """Blend with the mean of the grayscale image (torchvision adjust_contrast).

  For a 1-channel image the grayscale image is the image itself.
  """
  _check_image(image, 'adjust_contrast')
  return _blend(image, _mean_luma(image), factor)


def adjust_saturation(image: ArrayLike, factor: ArrayLike) -> Array:
  """Blend with the grayscale image (torchvision adjust_saturation). RGB only."""
  _check_rgb(image, 'adjust_saturation')
  return _blend(image, _gray(image), factor)


def to_grayscale(image: ArrayLike) -> Array:
  """0.299 R + 0.587 G + 0.114 B, returned as 3 identical channels. RGB only."""
  _check_rgb(image, 'to_grayscale')
  return jnp.broadcast_to(_gray(image), image.shape)


def _fractional_part(x: Array) -> Array:
  """x mod 1 for float x; x - floor(x) vectorises where jnp.mod (fmod) does not on CPU."""
  return x - jnp.floor(x)


def _rgb_to_hsv(image: Array):
  """torchvision's _rgb2hsv: h, s, v in [0, 1], each [H, W]."""
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  # Channel-wise maxima: a reduction over a minor axis of size 3 vectorises poorly.
  maxc = jnp.maximum(r, jnp.maximum(g, b))
  minc = jnp.minimum(r, jnp.minimum(g, b))
  eqc = maxc == minc
  cr = maxc - minc
  s = cr / jnp.where(eqc, 1.0, maxc)
  cr_divisor = jnp.where(eqc, 1.0, cr)
  rc = (maxc - r) / cr_divisor
  gc = (maxc - g) / cr_divisor
  bc = (maxc - b) / cr_divisor
  is_r = maxc == r
  is_g = (maxc == g) & ~is_r
  h = jnp.where(is_r, bc - gc, jnp.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
  h = _fractional_part(h / 6.0 + 1.0)
  return h, s, maxc


def _hsv_to_rgb(h: Array, s: Array, v: Array) -> Array:
  """HSV [H, W] each -> RGB [H, W, 3].

  Channel n in (5, 3, 1) for (r, g, b): v - v s clip(min(k, 4 - k), 0, 1) with
  k = (n + 6 h) mod 6; the closed form of torchvision's six-sector _hsv2rgb.
  """
  def channel(n):
    k = 6.0 * _fractional_part((n + 6.0 * h) / 6.0)
    return v * (1.0 - s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0))

  return jnp.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)


def adjust_hue(image: ArrayLike, delta: ArrayLike) -> Array:
  """Rotate the hue by `delta` of a full turn, delta in [-0.5, 0.5] (torchvision adjust_hue).

  RGB only. Goes through HSV as torchvision's tensor path does (its _rgb2hsv; the closed form
  of its _hsv2rgb), so results agree to float rounding.
  """
  _check_rgb(image, 'adjust_hue')
  h, s, v = _rgb_to_hsv(image)
  h = _fractional_part(h + delta)
  return _hsv_to_rgb(h, s, v)


def _gaussian_kernel_radius(sigma: float, truncate: float) -> int:
  # scipy.ndimage.gaussian_filter's radius: int(truncate * sigma + 0.5).
  return int(truncate * float(sigma) + 0.5)


def gaussian_blur(image: ArrayLike, sigma: ArrayLike, *, max_sigma: float | None = None,
                  truncate: float = 4.0) -> Array:
  """Separable Gaussian blur with standard deviation `sigma` pixels, reflect padding.

  Kernel: weights exp(-x^2 / (2 sigma^2)) for |x| <= int(truncate * sigma + 0.5), normalised
  to sum 1: scipy.ndimage.gaussian_filter's kernel (mode='mirror' is this padding, which is
  torch's 'reflect', the padding torchvision's gaussian_blur uses). `sigma` may be traced
  (random per image): then give `max_sigma`, a python float; the kernel has the fixed size
  2 * int(truncate * max_sigma + 0.5) + 1 and the taps beyond sigma's own radius get weight 0,
  so no shape depends on sigma.
  """
  _check_image(image, 'gaussian_blur')
  if max_sigma is None:
    try:
      max_sigma = float(sigma)
    except (TypeError, jax.errors.ConcretizationTypeError):
      raise ValueError('gaussian_blur: a traced sigma needs a python max_sigma to fix the '
                       'kernel size.') from None
  radius = _gaussian_kernel_radius(max_sigma, truncate)
  if radius == 0:
    return image
  sigma = jnp.asarray(sigma, jnp.float32)
  x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  own_radius = jnp.floor(truncate * sigma + 0.5)
  w = jnp.where(jnp.abs(x) <= own_radius, jnp.exp(-0.5 * (x / sigma) ** 2), 0.0)
  w = w / jnp.sum(w)
  # One banded [n, n] matrix per axis (reflect padding folded in): blur = Mh @ image @ Mw^T.
  # On CPU two small matmuls beat both a per-image depthwise convolution and shift-and-add.
  def band(n):
    taps = _reflect_indices(n, radius)[np.arange(n)[:, None] + np.arange(w.size)[None, :]]
    one_hot = (taps[..., None] == np.arange(n)).astype(np.float32)  # [n, taps, n]
    return jnp.einsum('t,itj->ij', w, one_hot, precision=jax.lax.Precision.HIGHEST)

  return jnp.einsum('ih,hwc,jw->ijc', band(image.shape[0]), image, band(image.shape[1]),
                    precision=jax.lax.Precision.HIGHEST)


def _reflect_indices(n: int, radius: int) -> np.ndarray:
  """Indices of [-radius, n + radius) reflected into [0, n) (d c b | a b c d | c b a)."""
  idx = np.arange(-radius, n + radius)
  if n == 1:
    return np.zeros_like(idx)
  period = 2 * (n - 1)
  idx = np.mod(idx, period)
  return np.where(idx >= n, period - idx, idx)


def solarize(image: ArrayLike, threshold: ArrayLike) -> Array:
  """Invert pixels >= threshold: where(x >= t, 1 - x, x) (torchvision solarize)."""
  _check_image(image, 'solarize')
  return jnp.where(image >= threshold, 1.0 - image, image)


def horizontal_flip(image: ArrayLike) -> Array:
  """Mirror left-right."""
  _check_image(image, 'horizontal_flip')
  return image[:, ::-1, :]


def normalize(image: ArrayLike, mean: ArrayLike, std: ArrayLike) -> Array:
  """(image - mean) / std per channel; the model input's step, not part of recipes."""
  return (image - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


# sRGB (D65) -> XYZ, the matrix skimage.color uses.
_XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                          [0.212671, 0.715160, 0.072169],
                          [0.019334, 0.119193, 0.950227]], np.float32)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883], np.float32)


def rgb_to_lab(image: ArrayLike) -> Array:
  """CIE L*a*b* under illuminant D65 (2 degree observer), as skimage.color.rgb2lab.

  sRGB gamma is linearised (c / 12.92 below 0.04045, ((c + 0.055) / 1.055)^2.4 above), mapped
  to XYZ, divided by the D65 white point, then f(t) = t^(1/3) above 0.008856 and
  7.787 t + 16/116 below (skimage's constants). Returns [H, W, 3]: L in [0, 100], a and b
  roughly in [-86, 98] and [-108, 95].
  """
  _check_rgb(image, 'rgb_to_lab')
  c = image.astype(jnp.float32)
  linear = jnp.where(c > 0.04045, ((jnp.maximum(c, 0.04045) + 0.055) / 1.055) ** 2.4,
                     c / 12.92)
  xyz = jnp.einsum('hwc,kc->hwk', linear, jnp.asarray(_XYZ_FROM_RGB),
                   precision=jax.lax.Precision.HIGHEST) / _D65_WHITE
  eps = 0.008856
  f = jnp.where(xyz > eps, jnp.cbrt(jnp.maximum(xyz, eps)), 7.787 * xyz + 16.0 / 116.0)
  fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
  lightness = 116.0 * fy - 16.0
  a = 500.0 * (fx - fy)
  b = 200.0 * (fy - fz)
  return jnp.stack([lightness, a, b], axis=-1)


# CMC's Lab normalisation (HobbitLong/CMC train_CMC.py): mid-range and half-range of each
# channel over the sRGB gamut, so each channel lands in about [-1, 1].
LAB_MEAN = ((0.0 + 100.0) / 2, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
LAB_STD = ((100.0 - 0.0) / 2, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)


def lab_split(image: ArrayLike) -> tuple[Array, Array]:
  """CMC's two views of an RGB image: (L [..., H, W, 1], ab [..., H, W, 2]).

  Lab (rgb_to_lab) normalised with CMC's constants LAB_MEAN / LAB_STD, so every channel lies
  in about [-1, 1]. Accepts one image or any batch of them ([..., H, W, 3]).
  """
  if image.ndim > 3:
    flat = image.reshape((-1,) + image.shape[-3:])
    lab = jax.vmap(rgb_to_lab)(flat).reshape(image.shape)
  else:
    lab = rgb_to_lab(image)
  lab = normalize(lab, LAB_MEAN, LAB_STD)
  return lab[..., :1], lab[..., 1:]


def _size_hw(size, image: Array) -> tuple[int, int]:
  if size is None:
    return int(image.shape[0]), int(image.shape[1])
  if isinstance(size, (int, np.integer)):
    return int(size), int(size)
  h, w = size
  return int(h), int(w)


def _interpolation_matrix(start, length, in_size: int, out_size: int) -> Array:
  """[out_size, in_size] bilinear weights sampling [start, start + length) at out_size points.

  Half-pixel centres (align_corners=False). When shrinking, the triangle filter widens by the
  scale factor (antialiasing, as torchvision's resize with antialias=True); taps outside the
  crop are dropped and each row renormalised, which at the borders equals clamping.
  """
  start = jnp.asarray(start, jnp.float32)
  length = jnp.asarray(length, jnp.float32)
  scale = length / out_size
  support = jnp.maximum(scale, 1.0)
  centres = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale - 0.5
  pixels = jnp.arange(in_size, dtype=jnp.float32)
  w = jnp.maximum(0.0, 1.0 - jnp.abs(centres[:, None] - pixels[None, :]) / support)
  inside = (pixels >= start) & (pixels <= start + length - 1.0)
  w = jnp.where(inside[None, :], w, 0.0)
  return w / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1e-12)


def resized_crop(image: ArrayLike, top: ArrayLike, left: ArrayLike, height: ArrayLike,
                 width: ArrayLike, size: int | tuple[int, int] | None = None) -> Array:
  """Crop rows [top, top + height) and columns [left, left + width), resize bilinearly.

  The box may be traced; the output size (`size`: int, (h, w) or None for the input's size)
  may not. Computed as R @ image @ C^T per channel with [out, in] interpolation matrices.
  """
  _check_image(image, 'resized_crop')
  out_h, out_w = _size_hw(size, image)
  rows = _interpolation_matrix(top, height, image.shape[0], out_h)
  cols = _interpolation_matrix(left, width, image.shape[1], out_w)
  return jnp.einsum('ih,hwc,jw->ijc', rows, image.astype(jnp.float32), cols,
                    precision=jax.lax.Precision.HIGHEST)


def resize(image: ArrayLike, size: int | tuple[int, int]) -> Array:
  """Bilinear resize to `size` (int for a square, or (h, w)), antialiased when shrinking."""
  _check_image(image, 'resize')
  return resized_crop(image, 0, 0, image.shape[0], image.shape[1], size)


# ---------------------------------------------------------------------------------------
# Random ops.
# ---------------------------------------------------------------------------------------


# Each jax.random call compiles to its own hash network, so every op makes ONE call and
# slices the uniforms it needs from it: compile time stays a few seconds per recipe.


def _bernoulli(rng, p) -> Array:
  return jax.random.uniform(rng) < p


def _range(value, center: float, name: str, bound: tuple[float, float] | None = None):
  """torchvision ColorJitter's parameter convention: v -> [center - v, center + v]."""
  if isinstance(value, (int, float, np.integer, np.floating)):
    if value < 0:
      raise ValueError(f'{name} must be non-negative; got {value}.')
    lo, hi = center - float(value), center + float(value)
    if bound is not None:
      lo = max(lo, bound[0])
  else:
    lo, hi = (float(v) for v in value)
  if bound is not None and not (bound[0] <= lo <= hi <= bound[1]):
    raise ValueError(f'{name} range must lie in {bound}; got ({lo}, {hi}).')
  return lo, hi


def sample_crop_box(rng: ArrayLike, height: int, width: int,
                    scale: tuple[float, float] = (0.08, 1.0),
                    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)) -> Array:
  """torchvision RandomResizedCrop.get_params, vectorised: int32 [top, left, h, w].

  Ten candidate boxes are drawn at once (area fraction ~ U(scale), log aspect ratio w / h ~
  U(log ratio)); the first that fits is taken, else the centre crop of the largest box whose
  aspect ratio is clamped into `ratio`.
  """
  attempts = 10
  u = jax.random.uniform(rng, (2 * attempts + 2,))
  area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:attempts])
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  log_ratio = log_lo + (log_hi - log_lo) * u[attempts:2 * attempts]
  aspect = jnp.exp(log_ratio)
  w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = jnp.argmax(valid)
  found = jnp.any(valid)

  in_ratio = width / height
  if in_ratio < min(ratio):
    fallback_w, fallback_h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    fallback_h, fallback_w = height, int(round(height * max(ratio)))
  else:
    fallback_w, fallback_h = width, height
  box_h = jnp.where(found, h[first], fallback_h)
  box_w = jnp.where(found, w[first], fallback_w)
  # torch.randint(0, n + 1): uniform over {0, ..., n}.
  top_random = jnp.floor(u[-2] * (height - box_h + 1)).astype(jnp.int32)
  left_random = jnp.floor(u[-1] * (width - box_w + 1)).astype(jnp.int32)
  top = jnp.where(found, jnp.minimum(top_random, height - box_h), (height - fallback_h) // 2)
  left = jnp.where(found, jnp.minimum(left_random, width - box_w), (width - fallback_w) // 2)
  return jnp.stack([top, left, box_h, box_w]).astype(jnp.int32)


def random_resized_crop(rng: ArrayLike, image: ArrayLike,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
                        size: int | tuple[int, int] | None = None) -> Array:
  """torchvision RandomResizedCrop: a random box (sample_crop_box), resized to `size`.

  `size` (int or (h, w)) defaults to the input's size.
  """
  _check_image(image, 'random_resized_crop')
  scale = tuple(float(s) for s in scale)
  ratio = tuple(float(r) for r in ratio)
  if not 0.0 < scale[0] <= scale[1] <= 1.0:
    raise ValueError(f'random_resized_crop: scale must satisfy 0 < lo <= hi <= 1; got {scale}.')
  if not 0.0 < ratio[0] <= ratio[1]:
    raise ValueError(f'random_resized_crop: ratio must satisfy 0 < lo <= hi; got {ratio}.')
  box = sample_crop_box(rng, image.shape[0], image.shape[1], scale, ratio)
  return resized_crop(image, box[0], box[1], box[2], box[3], size)


def random_horizontal_flip(rng: ArrayLike, image: ArrayLike, p: float = 0.5) -> Array:
  """Mirror left-right with probability p (torchvision RandomHorizontalFlip)."""
  _check_image(image, 'random_horizontal_flip')
  return jnp.where(_bernoulli(rng, p), image[:, ::-1, :], image)


def color_jitter(rng: ArrayLike, image: ArrayLike, brightness: float = 0.0,
                 contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0) -> Array:
  """torchvision ColorJitter: random factors, the four adjustments in a random order.

  brightness, contrast, saturation: v (factor ~ U[max(0, 1 - v), 1 + v]) or a (lo, hi) range;
  hue: h in [0, 0.5] (delta ~ U[-h, h]) or a range within [-0.5, 0.5]. Adjustments whose
  strength is 0 are left out, so brightness/contrast-only jitter works on 1-channel images.
  The order is one of the permutations of the enabled adjustments, uniformly.
  """
  _check_image(image, 'color_jitter')
  b_lo, b_hi = _range(brightness, 1.0, 'brightness', (0.0, math.inf))
  c_lo, c_hi = _range(contrast, 1.0, 'contrast', (0.0, math.inf))
  s_lo, s_hi = _range(saturation, 1.0, 'saturation', (0.0, math.inf))
  h_lo, h_hi = _range(hue, 0.0, 'hue', (-0.5, 0.5))
  # u[0:4]: the factors; u[4:8]: sort keys of a uniformly random order.
  u = jax.random.uniform(rng, (8,))
  enabled = [(b_lo, b_hi) != (1.0, 1.0), (c_lo, c_hi) != (1.0, 1.0),
             (s_lo, s_hi) != (1.0, 1.0), (h_lo, h_hi) != (0.0, 0.0)]
  if enabled[2] or enabled[3]:
    _check_rgb(image, 'color_jitter with saturation or hue')
  kinds = [k for k in range(4) if enabled[k]]  # 0 brightness, 1 contrast, 2 saturation, 3 hue
  if not kinds:
    return image
  factors = jnp.stack([b_lo + (b_hi - b_lo) * u[0], c_lo + (c_hi - c_lo) * u[1],
                       s_lo + (s_hi - s_lo) * u[2], h_lo + (h_hi - h_lo) * u[3]])
  order = jnp.asarray(kinds)[jnp.argsort(u[4:4 + len(kinds)])]  # kind at each position
  # Brightness, contrast and saturation are all clip(f x + (1 - f) g) with g = 0, the mean
  # luma, or the luma: one blend per position with f and g selected, no per-op branches.
  # Hue (the costly one) runs once, between the positions before it and those after it.
  hue_position = jnp.argmax(order == 3) if enabled[3] else len(kinds)

  def blend(x, position, active):
    kind = order[position]
    f = jnp.where(active & (kind != 3), factors[jnp.minimum(kind, 2)], 1.0)
    offset = jnp.where(kind == 1, (1.0 - f) * _mean_luma(x), 0.0)
    out = f * x + offset
    if enabled[2]:
      out = out + jnp.where(kind == 2, 1.0 - f, 0.0) * _gray(x)
    return jnp.clip(out, 0.0, 1.0)

  for position in range(len(kinds)):
    image = blend(image, position, position < hue_position)
  if enabled[3]:
    image = adjust_hue(image, factors[3])
    for position in range(len(kinds)):
      image = blend(image, position, position > hue_position)
  return image


def random_intensity(rng: ArrayLike, image: ArrayLike, brightness: float = 0.4,
                     contrast: float = 0.4) -> Array:
  """Brightness and contrast jitter in a random order; any channel count (digits)."""
  return color_jitter(rng, image, brightness=brightness, contrast=contrast)


def random_grayscale(rng: ArrayLike, image: ArrayLike, p: float = 0.1) -> Array:
  """to_grayscale with probability p (torchvision RandomGrayscale). RGB only."""
  _check_rgb(image, 'random_grayscale')
  return jnp.where(_bernoulli(rng, p), to_grayscale(image), image)


def random_gaussian_blur(rng: ArrayLike, image: ArrayLike,
                         sigma: tuple[float, float] = (0.1, 2.0), p: float = 1.0) -> Array:
  """gaussian_blur with sigma ~ U(sigma) with probability p (MoCo v2's GaussianBlur)."""
  lo, hi = (float(s) for s in sigma)
  if not 0.0 < lo <= hi:
    raise ValueError(f'random_gaussian_blur: sigma must satisfy 0 < lo <= hi; got {sigma}.')
  u = jax.random.uniform(rng, (2,))
  s = lo + (hi - lo) * u[1]
  return jnp.where(u[0] < p, gaussian_blur(image, s, max_sigma=hi), image)


def random_solarize(rng: ArrayLike, image: ArrayLike, threshold: float = 0.5,
                    p: float = 0.5) -> Array:
  """solarize with probability p (torchvision RandomSolarize)."""
  return jnp.where(_bernoulli(rng, p), solarize(image, threshold), image)


def random_gaussian_noise(rng: ArrayLike, image: ArrayLike, std: float = 0.05) -> Array:
  """image + N(0, std^2) per pixel, clipped to [0, 1]."""
  _check_image(image, 'random_gaussian_noise')
  noise = std * jax.random.normal(rng, image.shape, jnp.float32)
  return jnp.clip(image + noise, 0.0, 1.0)


def colormap(image: ArrayLike) -> Array:
  """A grey image [H, W, 1 or 3] in false colour: RGB = (g, g^2, 1 - g), g the grey level.

  Gives grey data (digits) both a lightness and a colour (ab) channel that follow the shapes,
  so CMC's L and ab views share the content. (Random colours per view were tried on digits:
  the ab encoder then has to become invariant to the colour before any content is shared, and
  CMC did not learn within a 40-epoch run.) Returns [H, W, 3] in [0, 1].
  """
  _check_image(image, 'colormap')
  grey = jnp.clip(image if image.shape[-1] == 1 else _gray(image), 0.0, 1.0)
  return jnp.concatenate([grey, grey * grey, 1.0 - grey], axis=-1)


# ---------------------------------------------------------------------------------------
# Recipes.
# ---------------------------------------------------------------------------------------

OPS: dict[str, Callable[..., Array]] = {
    'random_resized_crop': random_resized_crop,
    'random_horizontal_flip': random_horizontal_flip,
    'color_jitter': color_jitter,
    'random_intensity': random_intensity,
    'random_grayscale': random_grayscale,
    'random_gaussian_blur': random_gaussian_blur,
    'random_solarize': random_solarize,
    'random_gaussian_noise': random_gaussian_noise,
    'colormap': lambda rng, image: colormap(image),
    # Deterministic primitives, usable in a recipe with an entry probability.
    'grayscale': lambda rng, image: to_grayscale(image),
    'horizontal_flip': lambda rng, image: horizontal_flip(image),
    'solarize': lambda rng, image, threshold=0.5: solarize(image, threshold),
    'gaussian_blur': lambda rng, image, sigma: gaussian_blur(image, sigma),
    'resize': lambda rng, image, size: resize(image, size),
}

_IR_CROP = ('random_resized_crop', {'scale': (0.2, 1.0)}, 1.0)
_HFLIP = ('random_horizontal_flip', {'p': 0.5}, 1.0)
_GRAY = ('random_grayscale', {'p': 0.2}, 1.0)

RECIPES: dict[str, list] = {
    # IR / LA default (lemniscate): jitter always applied, hue 0.4.
    'ir': [
        _IR_CROP,
        _GRAY,
        ('color_jitter', {'brightness': 0.4, 'contrast': 0.4, 'saturation': 0.4, 'hue': 0.4},
         1.0),
        _HFLIP,
    ],
    # MoCo v2.
    'mocov2': [
        _IR_CROP,
        ('color_jitter', {'brightness': 0.4, 'contrast': 0.4, 'saturation': 0.4, 'hue': 0.1},
         0.8),
        _GRAY,
        ('random_gaussian_blur', {'sigma': (0.1, 2.0)}, 0.5),
        _HFLIP,
    ],
    # SimCLR at 32 px (no blur at this size, as SimCLR's CIFAR setup).
    'simclr': [
        ('random_resized_crop', {'scale': (0.08, 1.0)}, 1.0),
        ('color_jitter', {'brightness': 0.8, 'contrast': 0.8, 'saturation': 0.8, 'hue': 0.2},
         0.8),
        _GRAY,
        _HFLIP,
    ],
    # CMC: geometry only; the CMC method converts the views to Lab and splits L / ab
    # (lab_split).
    'cmc': [
        ('random_resized_crop', {'scale': (0.08, 1.0)}, 1.0),
        _HFLIP,
    ],
    # 1-channel digits (upsampled to e.g. 16 or 24 px). The flip can turn one digit into
    # another's mirror image; 'digits_noflip' is the same recipe without it.
    'digits': [
        ('random_resized_crop', {'scale': (0.5, 1.0), 'ratio': (3.0 / 4.0, 4.0 / 3.0)}, 1.0),
        ('random_intensity', {'brightness': 0.4, 'contrast': 0.4}, 0.8),
        ('random_gaussian_noise', {'std': 0.05}, 1.0),
        _HFLIP,
    ],
    # CMC on grey digits: the digits recipe, then false colour (colormap), so that L and ab
    # both carry the digit. Evaluation gives the encoder the same false colour (LabEncoder).
    'digits_cmc': [
        ('random_resized_crop', {'scale': (0.5, 1.0), 'ratio': (3.0 / 4.0, 4.0 / 3.0)}, 1.0),
        ('random_intensity', {'brightness': 0.4, 'contrast': 0.4}, 0.8),
        ('random_gaussian_noise', {'std': 0.05}, 1.0),
        _HFLIP,
        ('colormap', {}, 1.0),
    ],
    # 28x28 grey Fashion-MNIST: no colour ops (one channel). Garments fill most of the frame
    # and are left-right symmetric, so a milder crop than IR's and the flip; the crop scale is
    # a first choice, to be tuned with the CPU recipe.
    'fashion_mnist': [
        ('random_resized_crop', {'scale': (0.3, 1.0), 'ratio': (3.0 / 4.0, 4.0 / 3.0)}, 1.0),
        _HFLIP,
        ('random_intensity', {'brightness': 0.4, 'contrast': 0.4}, 0.8),
    ],
    # The same at 20x20: half the encoder's work per view; probes still see the 28x28 images.
    'fashion_mnist_20': [
        ('random_resized_crop', {'scale': (0.3, 1.0), 'ratio': (3.0 / 4.0, 4.0 / 3.0),
                                 'size': 20}, 1.0),
        _HFLIP,
        ('random_intensity', {'brightness': 0.4, 'contrast': 0.4}, 0.8),
    ],
    # Single-op digits recipes for the augmentation lesion (experiments/augmentation_lesion.py).
    'digits_crop': [
        ('random_resized_crop', {'scale': (0.5, 1.0), 'ratio': (3.0 / 4.0, 4.0 / 3.0)}, 1.0),
    ],
    'digits_flip': [_HFLIP],
    'digits_intensity': [
        ('random_intensity', {'brightness': 0.4, 'contrast': 0.4}, 0.8),
        ('random_gaussian_noise', {'std': 0.05}, 1.0),
    ],
    'digits_noflip': [
        ('random_resized_crop', {'scale': (0.5, 1.0), 'ratio': (3.0 / 4.0, 4.0 / 3.0)}, 1.0),
        ('random_intensity', {'brightness': 0.4, 'contrast': 0.4}, 0.8),
        ('random_gaussian_noise', {'std': 0.05}, 1.0),
    ],
    'none': [],
}


def _plain(value):
  """Config values back to python: ConfigDicts -> dicts, lists -> tuples (recursively)."""
  if hasattr(value, 'to_dict'):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(_plain(v) for v in value)
  return value


def normalize_recipe(recipe: str | Sequence) -> tuple[tuple[str, dict, float], ...]:
  """Validate a recipe and return it as a tuple of (op_name, params dict, probability).

  Accepts a name in RECIPES, or a sequence of entries (op_name, params, probability) where
  params is a mapping (dict or ConfigDict; may be omitted) and probability a number in
  [0, 1] (may be omitted: 1). Lists, tuples and ConfigDicts from a config round trip are all
  accepted. Unknown ops, unknown parameters and probabilities outside [0, 1] raise ValueError
  naming the entry, before anything is traced.
  """
  if isinstance(recipe, str):
    if recipe not in RECIPES:
      raise ValueError(f'Unknown view recipe {recipe!r}; known recipes: {sorted(RECIPES)}.')
    recipe = RECIPES[recipe]
  if isinstance(recipe, Mapping) or not isinstance(recipe, (list, tuple)):
    raise ValueError(f'A recipe is a list of (op_name, params, probability); got {recipe!r}.')
  entries = []
  for i, entry in enumerate(recipe):
    if not isinstance(entry, (list, tuple)) or not 1 <= len(entry) <= 3:
      raise ValueError(f'Recipe entry {i} must be (op_name, params, probability); '
                       f'got {entry!r}.')
    name = entry[0]
    params = _plain(entry[1]) if len(entry) > 1 and entry[1] is not None else {}
    prob = entry[2] if len(entry) > 2 else 1.0
    if name not in OPS:
      raise ValueError(f'Unknown view op {name!r} in recipe entry {i}; allowed ops: '
                       f'{sorted(OPS)}.')
    if not isinstance(params, dict):
      raise ValueError(f'Recipe entry {i} ({name}): params must be a mapping; got {params!r}.')
    try:
      prob = float(prob)
    except (TypeError, ValueError):
      raise ValueError(f'Recipe entry {i} ({name}): probability must be a number in [0, 1]; '
                       f'got {prob!r}.') from None
    if not 0.0 <= prob <= 1.0:
      raise ValueError(f'Recipe entry {i} ({name}): probability must lie in [0, 1]; '
                       f'got {prob}.')
    signature = inspect.signature(OPS[name])
    allowed = [p for p in signature.parameters if p not in ('rng', 'image')]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
      raise ValueError(f'Recipe entry {i} ({name}): unknown parameters {unknown}; '
                       f'allowed: {allowed}.')
    entries.append((name, params, prob))
  return tuple(entries)


def apply_recipe(rng: ArrayLike, image: ArrayLike, recipe: str | Sequence) -> Array:
  """One view of one image [H, W, C]: the recipe's entries in order.

  Entry i draws from the i-th of split(rng, n + 1); it is applied when its Bernoulli
  (probability) draw, from the last key, says so (probability 0 skips the op).
  """
  _check_image(image, 'apply_recipe')
  image = jnp.asarray(image, jnp.float32)
  recipe = normalize_recipe(recipe)
  if not recipe:
    return image
  keys = jax.random.split(rng, len(recipe) + 1)
  gates = jax.random.uniform(keys[-1], (len(recipe),))
  for i, (name, params, prob) in enumerate(recipe):
    if prob == 0.0:
      continue
    out = OPS[name](keys[i], image, **params)
    if prob < 1.0:
      if out.shape != image.shape:
        raise ValueError(f'Recipe op {name} changes the image size and cannot be applied '
                         f'with probability {prob} < 1.')
      out = jnp.where(gates[i] < prob, out, image)
    image = out
  return image


def make_views(rng: ArrayLike, images: ArrayLike, recipes: Sequence, *,
               image_ids: ArrayLike | None = None) -> Array:
  """V augmented views of a batch: [V, B, H', W', C].

  images: [B, H, W, C] float32 in [0, 1]. recipes: a sequence of V recipes, one per view
  (names from RECIPES or entry lists; views may use different recipes), all giving the same
  output size. image_ids: [B] int, the GLOBAL example ids (default arange(B)); image b's key
  is fold_in(rng, image_ids[b]) and view v's key fold_in(image_key, v), so a view never
  depends on the batch split.
  """
  if isinstance(recipes, str) or (
      isinstance(recipes, (list, tuple)) and recipes and
      isinstance(recipes[0], (list, tuple)) and recipes[0] and isinstance(recipes[0][0], str)):
    # A recipe's entries start with an op name; a sequence of recipes holds names or lists.
    raise ValueError('make_views takes a sequence of recipes, one per view, e.g. '
                     "['mocov2', 'mocov2'] or [recipe, recipe]; got what looks like a single "
                     'recipe.')
  if images.ndim != 4:
    raise ValueError(f'make_views takes images [B, H, W, C]; got shape {tuple(images.shape)}.')
  recipes = [normalize_recipe(r) for r in recipes]
  if not recipes:
    raise ValueError('make_views needs at least one recipe (one per view).')
  if image_ids is None:
    image_ids = jnp.arange(images.shape[0])
  image_ids = jnp.asarray(image_ids)
  if image_ids.shape != (images.shape[0],):
    raise ValueError(f'image_ids must have shape [{images.shape[0]}]; got {image_ids.shape}.')
  image_keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(image_ids)
  # Views that share a recipe are computed by one vmapped program (compiled once).
  groups: list[tuple[tuple, list[int]]] = []
  for v, recipe in enumerate(recipes):
    for known, members in groups:
      if known == recipe:
        members.append(v)
        break
    else:
      groups.append((recipe, [v]))
  views = [None] * len(recipes)
  for recipe, view_ids in groups:
    view_keys = jax.vmap(lambda v: jax.vmap(lambda k: jax.random.fold_in(k, v))(image_keys))(
        jnp.asarray(view_ids))
    per_image = lambda k, x, recipe=recipe: apply_recipe(k, x, recipe)
    out = jax.vmap(jax.vmap(per_image), in_axes=(0, None))(view_keys, images)
    for j, v in enumerate(view_ids):
      views[v] = out[j]
  shapes = {tuple(x.shape) for x in views}
  if len(shapes) != 1:
    raise ValueError(f'All views must have the same size; recipes give {sorted(shapes)}.')
  return jnp.stack(views)
