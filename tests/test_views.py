"""Tests for mi_contrast.views: each primitive against an independent reference."""

import colorsys
import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.ndimage
import skimage.color

from jitted import jitted

from mi_contrast import views as views_module

views = jitted(views_module)

RNG = np.random.default_rng(0)

# Tests check values, not speed: skipping LLVM's optimisation passes cuts compile time ~4x.
_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def _rgb(h=9, w=11):
  return RNG.uniform(0.0, 1.0, (h, w, 3)).astype(np.float32)


def _gray_np(x):
  return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


# ------------------------------------------------------------------ deterministic primitives


@pytest.mark.parametrize('factor', [0.0, 0.5, 1.3])
def test_brightness_contrast_saturation_against_numpy(factor):
  x = _rgb()
  np.testing.assert_allclose(views.adjust_brightness(x, factor),
                             np.clip(x * factor, 0, 1), atol=1e-6)
  mean = _gray_np(x).mean()
  np.testing.assert_allclose(views.adjust_contrast(x, factor),
                             np.clip(factor * x + (1 - factor) * mean, 0, 1), atol=1e-6)
  gray = _gray_np(x)[..., None]
  np.testing.assert_allclose(views.adjust_saturation(x, factor),
                             np.clip(factor * x + (1 - factor) * gray, 0, 1), atol=1e-6)


def test_intensity_ops_work_on_one_channel():
  x = RNG.uniform(0, 1, (8, 8, 1)).astype(np.float32)
  np.testing.assert_allclose(views.adjust_contrast(x, 0.5),
                             np.clip(0.5 * x + 0.5 * x.mean(), 0, 1), atol=1e-6)
  np.testing.assert_allclose(views.adjust_brightness(x, 2.0), np.clip(2 * x, 0, 1), atol=1e-6)


@pytest.mark.parametrize('op', [
    lambda x: views.adjust_saturation(x, 0.5), lambda x: views.adjust_hue(x, 0.1),
    views.to_grayscale, views.rgb_to_lab,
    lambda x: views.color_jitter(jax.random.key(0), x, saturation=0.4)])
def test_colour_ops_reject_one_channel(op):
  with pytest.raises(ValueError, match='RGB'):
    op(np.zeros((8, 8, 1), np.float32))


def test_grayscale_and_solarize_against_numpy():
  x = _rgb()
  g = np.asarray(views.to_grayscale(x))
  assert g.shape == x.shape
  for c in range(3):
    np.testing.assert_allclose(g[..., c], _gray_np(x), atol=1e-6)
  np.testing.assert_allclose(views.solarize(x, 0.4), np.where(x >= 0.4, 1 - x, x))


@pytest.mark.parametrize('delta', [-0.5, -0.2, 0.0, 0.13, 0.4])
def test_adjust_hue_against_colorsys(delta):
  x = _rgb(6, 7)
  x[0, 0] = (0.3, 0.3, 0.3)  # achromatic pixel: hue undefined, must stay put
  x[0, 1] = (1.0, 0.0, 0.0)
  out = np.asarray(_jit(views.adjust_hue)(x, delta))
  for i in range(x.shape[0]):
    for j in range(x.shape[1]):
      h, s, v = colorsys.rgb_to_hsv(*x[i, j])
      expected = colorsys.hsv_to_rgb((h + delta) % 1.0, s, v)
      np.testing.assert_allclose(out[i, j], expected, atol=1e-5)


def test_rgb_to_lab_against_skimage():
  x = _rgb(16, 16)
  x[0, :4] = [[0, 0, 0], [1, 1, 1], [0.02, 0.01, 0.03], [1, 0, 0]]  # dark: linear branch
  ours = np.asarray(_jit(views.rgb_to_lab)(x))
  ref = skimage.color.rgb2lab(x.astype(np.float64))
  np.testing.assert_allclose(ours, ref, atol=2e-3 * 100, rtol=1e-3)
  np.testing.assert_allclose(ours[..., 0], ref[..., 0], atol=0.05)


def test_lab_split_shapes_and_range():
  x = RNG.uniform(0, 1, (4, 8, 8, 3)).astype(np.float32)
  x[0, 0, :4] = [[0, 0, 0], [1, 1, 1], [0, 0, 1], [0, 1, 0]]  # gamut corners
  lightness, ab = _jit(views.lab_split)(x)
  assert lightness.shape == (4, 8, 8, 1) and ab.shape == (4, 8, 8, 2)
  assert float(jnp.min(lightness)) >= -1.001 and float(jnp.max(lightness)) <= 1.001
  assert float(jnp.max(jnp.abs(ab))) <= 1.01
  one_l, one_ab = views.lab_split(x[1])
  np.testing.assert_allclose(one_l, lightness[1], atol=1e-6)
  np.testing.assert_allclose(one_ab, ab[1], atol=1e-6)


@pytest.mark.parametrize('sigma', [0.1, 0.7, 2.0])
def test_gaussian_blur_against_scipy(sigma):
  x = _rgb(20, 23)
  ref = scipy.ndimage.gaussian_filter(x.astype(np.float64), sigma=(sigma, sigma, 0),
                                      mode='mirror', truncate=4.0)
  np.testing.assert_allclose(_jit(views.gaussian_blur, static_argnums=1)(x, sigma), ref,
                             atol=1e-5)
  # Traced sigma with a larger fixed kernel: same result (extra taps get weight 0).
  traced = _jit(lambda s: views.gaussian_blur(x, s, max_sigma=2.0))(sigma)
  np.testing.assert_allclose(traced, ref, atol=1e-5)


def test_gaussian_blur_traced_sigma_needs_max_sigma():
  with pytest.raises(ValueError, match='max_sigma'):
    _jit(lambda s: views.gaussian_blur(_rgb(), s))(1.0)


@pytest.mark.parametrize('size', [(26, 34), (7, 9), 5])
def test_resize_against_jax_image(size):
  x = _rgb(13, 17)
  hw = (size, size) if isinstance(size, int) else size
  ref = jax.image.resize(x, hw + (3,), 'bilinear', antialias=True)
  np.testing.assert_allclose(_jit(views.resize, static_argnums=1)(x, size), ref, atol=1e-5)


def test_resized_crop_matches_resize_of_the_crop():
  x = _rgb(16, 16)
  crop = _jit(views.resized_crop, static_argnames='size')
  out = crop(x, 3, 5, 8, 6, size=(16, 12))
  ref = jax.image.resize(x[3:11, 5:11], (16, 12, 3), 'bilinear')
  np.testing.assert_allclose(out, ref, atol=1e-5)
  np.testing.assert_allclose(crop(x, 0, 0, 16, 16, size=(16, 16)), x, atol=1e-6)


# ------------------------------------------------------------------ random ops


@pytest.mark.parametrize('height,width,scale,ratio', [
    (1000, 1000, (0.08, 1.0), (3 / 4, 4 / 3)),
    (800, 1200, (0.2, 1.0), (3 / 4, 4 / 3)),
    (1000, 1000, (0.5, 1.0), (0.5, 2.0))])
def test_sample_crop_box_ranges(height, width, scale, ratio):
  keys = jax.random.split(jax.random.key(3), 2000)
  boxes = np.asarray(_jit(jax.vmap(
      lambda k: views.sample_crop_box(k, height, width, scale, ratio)))(keys))
  top, left, h, w = boxes.T
  assert np.all(top >= 0) and np.all(left >= 0)
  assert np.all(top + h <= height) and np.all(left + w <= width)
  area = h * w / (height * width)
  aspect = w / h
  # torchvision's fallback: the centre crop with the aspect ratio clamped into `ratio`.
  if width / height < ratio[0]:
    fallback_hw = (round(width / ratio[0]), width)
  elif width / height > ratio[1]:
    fallback_hw = (height, round(height * ratio[1]))
  else:
    fallback_hw = (height, width)
  drawn = ~((h == fallback_hw[0]) & (w == fallback_hw[1]))
  assert drawn.mean() > 0.9
  assert np.all(area[drawn] >= scale[0] * 0.99) and np.all(area[drawn] <= scale[1] * 1.01)
  assert np.all(aspect[drawn] >= ratio[0] * 0.99) and np.all(aspect[drawn] <= ratio[1] * 1.01)
  # The draws spread over the range (not stuck at one box).
  assert area.min() < scale[0] + 0.05
  assert area.max() > scale[0] + 0.6 * (scale[1] - scale[0])
  assert np.quantile(np.log(aspect[drawn]), 0.05) < 0.5 * np.log(ratio[0])
  assert np.quantile(np.log(aspect[drawn]), 0.95) > 0.5 * np.log(ratio[1])
  # Positions spread too.
  assert len(np.unique(top)) > 50


def test_sample_crop_box_falls_back_to_centre_crop():
  # A 10 x 100 image: no box of aspect ratio <= 4/3 with area >= 0.9 fits.
  box = np.asarray(_jit(lambda k: views.sample_crop_box(k, 10, 100, (0.9, 1.0)))(
      jax.random.key(0)))
  np.testing.assert_array_equal(box, [0, (100 - 13) // 2, 10, 13])


RANDOM_OPS = {
    'random_resized_crop': (views.random_resized_crop, {'size': 8}),
    'random_horizontal_flip': (views.random_horizontal_flip, {}),
    'color_jitter': (views.color_jitter,
                     dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)),
    'random_intensity': (views.random_intensity, {}),
    'random_grayscale': (views.random_grayscale, {'p': 0.5}),
    'random_gaussian_blur': (views.random_gaussian_blur, {}),
    'random_solarize': (views.random_solarize, {}),
    'random_gaussian_noise': (views.random_gaussian_noise, {}),
}


@pytest.mark.parametrize('name', sorted(RANDOM_OPS))
def test_random_ops_reproducible_and_key_dependent(name):
  op, params = RANDOM_OPS[name]
  x = _rgb(12, 12)
  fn = _jit(jax.vmap(lambda k: op(k, x, **params)))
  keys = jax.random.split(jax.random.key(5), 16)
  a, b = np.asarray(fn(keys)), np.asarray(fn(keys))
  np.testing.assert_array_equal(a, b)
  assert a.min() >= 0.0 and a.max() <= 1.0
  distinct = {a[i].tobytes() for i in range(len(a))}
  assert len(distinct) > 1


def test_flip_and_grayscale_frequency():
  x = _rgb(4, 5)
  keys = jax.random.split(jax.random.key(7), 4000)
  flipped = _jit(jax.vmap(lambda k: views.random_horizontal_flip(k, x, p=0.3)))(keys)
  is_flip = np.all(np.asarray(flipped) == x[:, ::-1], axis=(1, 2, 3))
  assert np.all(is_flip | np.all(np.asarray(flipped) == x, axis=(1, 2, 3)))
  assert abs(is_flip.mean() - 0.3) < 0.04
  gray = _jit(jax.vmap(lambda k: views.random_grayscale(k, x, p=0.2)))(keys)
  is_gray = np.all(np.ptp(np.asarray(gray), axis=-1) == 0, axis=(1, 2))
  assert abs(is_gray.mean() - 0.2) < 0.04


def test_color_jitter_factors_in_range():
  x = RNG.uniform(0.1, 0.5, (6, 6, 3)).astype(np.float32)
  keys = jax.random.split(jax.random.key(8), 500)
  out = np.asarray(_jit(jax.vmap(lambda k: views.color_jitter(k, x, brightness=0.4)))(keys))
  ratio = out / x
  np.testing.assert_allclose(ratio, ratio[:, :1, :1, :1] * np.ones_like(ratio), rtol=1e-4)
  factors = ratio[:, 0, 0, 0]
  assert factors.min() >= 0.6 - 1e-5 and factors.max() <= 1.4 + 1e-5
  assert factors.min() < 0.65 and factors.max() > 1.35
  # Hue-only jitter keeps each pixel's max and min channel (value and chroma).
  out = np.asarray(_jit(jax.vmap(lambda k: views.color_jitter(k, x, hue=0.5)))(keys[:20]))
  np.testing.assert_allclose(out.max(-1), np.broadcast_to(x.max(-1), out.max(-1).shape),
                             atol=1e-5)


def test_color_jitter_order_is_random():
  # Brightness then contrast differs from contrast then brightness once clipping bites;
  # check both orders occur by recomputing each draw's two possible results.
  x = _rgb(6, 6)
  keys = jax.random.split(jax.random.key(9), 64)
  out = np.asarray(_jit(jax.vmap(
      lambda k: views.color_jitter(k, x, brightness=(1.5, 1.5), contrast=(0.2, 0.2))))(keys))
  bc = np.asarray(views.adjust_contrast(views.adjust_brightness(x, 1.5), 0.2))
  cb = np.asarray(views.adjust_brightness(views.adjust_contrast(x, 0.2), 1.5))
  is_bc = np.all(np.isclose(out, bc, atol=1e-5), axis=(1, 2, 3))
  is_cb = np.all(np.isclose(out, cb, atol=1e-5), axis=(1, 2, 3))
  assert np.all(is_bc | is_cb) and is_bc.any() and is_cb.any()


def test_gaussian_noise_std_and_clip():
  x = np.full((64, 64, 1), 0.5, np.float32)
  out = np.asarray(views.random_gaussian_noise(jax.random.key(0), x, std=0.05))
  assert abs(out.std() - 0.05) < 0.005 and abs(out.mean() - 0.5) < 0.005
  out = np.asarray(views.random_gaussian_noise(jax.random.key(0), x, std=5.0))
  assert out.min() == 0.0 and out.max() == 1.0


# ------------------------------------------------------------------ recipes and make_views


@functools.lru_cache(maxsize=None)
def _jitted_views(recipe_name, num_views):
  return _jit(lambda k, x, ids: views.make_views(
      k, x, [recipe_name] * num_views, image_ids=ids))


@pytest.mark.slow
def test_make_views_shapes_keys_and_id_permutation():
  x = jnp.asarray(RNG.uniform(0, 1, (8, 16, 16, 3)), jnp.float32)
  fn = _jitted_views('mocov2', 2)
  key = jax.random.key(11)
  full = np.asarray(fn(key, x, jnp.arange(8)))
  assert full.shape == (2, 8, 16, 16, 3)
  assert full.min() >= 0.0 and full.max() <= 1.0
  assert not np.array_equal(full[0], full[1])  # the two views differ
  np.testing.assert_array_equal(fn(key, x, jnp.arange(8)), full)  # reproducible
  assert not np.array_equal(fn(jax.random.key(12), x, jnp.arange(8)), full)
  # The same ids in another order give the same views, permuted: a view depends on its
  # example's id, not its position in the batch.
  perm = np.array([5, 2, 7, 0, 1, 6, 3, 4])
  shuffled = np.asarray(fn(key, x[perm], jnp.asarray(perm)))
  np.testing.assert_allclose(shuffled, full[:, perm], atol=1e-6)


@pytest.mark.slow
def test_make_views_independent_of_batch_split():
  x = jnp.asarray(RNG.uniform(0, 1, (8, 16, 16, 3)), jnp.float32)
  fn = _jitted_views('cmc', 2)
  key = jax.random.key(11)
  full = np.asarray(fn(key, x, jnp.arange(8)))
  first = np.asarray(fn(key, x[:4], jnp.arange(4)))
  second = np.asarray(fn(key, x[4:], jnp.arange(4, 8)))
  # Equal up to float reassociation: XLA may order a reduction differently per batch size.
  np.testing.assert_allclose(np.concatenate([first, second], axis=1), full, atol=1e-5)


@pytest.mark.slow
def test_make_views_digits_one_channel_and_output_size():
  x = jnp.asarray(RNG.uniform(0, 1, (4, 16, 16, 1)), jnp.float32)
  out = _jit(lambda k, x: views.make_views(k, x, ['digits', 'digits_noflip', 'none']))(
      jax.random.key(0), x)
  assert out.shape == (3, 4, 16, 16, 1)
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  assert not np.allclose(out[0], x) and not np.allclose(out[1], x)
  np.testing.assert_array_equal(out[2], x)
  recipe = [('random_resized_crop', {'scale': (0.5, 1.0), 'size': 8}, 1.0)]
  shape = jax.eval_shape(lambda k: views.make_views(k, x, [recipe, recipe]), jax.random.key(0))
  assert shape.shape == (2, 4, 8, 8, 1)
  with pytest.raises(ValueError, match='same size'):
    jax.eval_shape(lambda k: views.make_views(k, x, [recipe, 'none']), jax.random.key(0))


def test_make_views_rejects_a_single_recipe():
  x = jnp.zeros((2, 8, 8, 3))
  with pytest.raises(ValueError, match='one per view'):
    views.make_views(jax.random.key(0), x, views.RECIPES['mocov2'])


def test_all_recipes_trace():
  # mocov2 and digits run for real above; the others share their ops, so tracing suffices.
  x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  for name in ['ir', 'simclr', 'cmc', 'none']:
    out = jax.eval_shape(lambda k, x: views.make_views(k, x, [name, name]), jax.random.key(0), x)
    assert out.shape == (2, 2, 8, 8, 3) and out.dtype == jnp.float32


def test_entry_probability():
  x = _rgb(4, 4)
  recipe = [('grayscale', {}, 0.3)]
  keys = jax.random.split(jax.random.key(13), 2000)
  out = np.asarray(_jit(jax.vmap(lambda k: views.apply_recipe(k, x, recipe)))(keys))
  is_gray = np.all(np.ptp(out, axis=-1) == 0, axis=(1, 2))
  assert abs(is_gray.mean() - 0.3) < 0.04
  never = views.apply_recipe(jax.random.key(0), x, [('grayscale', {}, 0.0)])
  np.testing.assert_array_equal(never, x)


def test_recipes_survive_config_round_trip():
  config = ml_collections.ConfigDict({'views': {k: list(v) for k, v in views.RECIPES.items()}})
  through_json = json.loads(config.to_json())  # tuples become lists
  config_again = ml_collections.ConfigDict(through_json)
  for name, recipe in views.RECIPES.items():
    expected = views.normalize_recipe(recipe)
    assert views.normalize_recipe(config.views[name]) == expected
    assert views.normalize_recipe(through_json['views'][name]) == expected
    assert views.normalize_recipe(config_again.views[name]) == expected
  # ConfigDict params (a dict inside a config converted to a ConfigDict) are accepted too.
  entry = ('color_jitter', ml_collections.ConfigDict({'brightness': 0.4}), 0.8)
  assert views.normalize_recipe([entry]) == (('color_jitter', {'brightness': 0.4}, 0.8),)


def test_recipe_errors_name_the_problem():
  with pytest.raises(ValueError, match=r"'random_rotate'.*allowed ops.*random_resized_crop"):
    views.normalize_recipe([('random_rotate', {}, 1.0)])
  with pytest.raises(ValueError, match=r"unknown parameters \['sclae'\]"):
    views.normalize_recipe([('random_resized_crop', {'sclae': (0.2, 1.0)}, 1.0)])
  with pytest.raises(ValueError, match='probability'):
    views.normalize_recipe([('random_grayscale', {}, 1.5)])
  with pytest.raises(ValueError, match='known recipes'):
    views.normalize_recipe('mocov3')
