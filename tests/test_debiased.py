"""Debiased (DCL) and hardness-tilted (HCL) negatives: the bounds against an independent float64
formula, their reduction to InfoNCE, finite-difference gradients, and every InfoNCE-shaped
method's objective with config.bound = 'dcl' / 'hcl'."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jitted import jitted

from mi_contrast import bounds as bounds_module
from mi_contrast import config as config_lib
from mi_contrast import memory
from mi_contrast import methods
from mi_contrast import results as results_lib
from mi_contrast.mesh import make_mesh
from mi_contrast.methods import cmc
from mi_contrast.methods import ir
from mi_contrast.methods import moco
from helpers import tiny_config

bounds = jitted(bounds_module)

T = 0.1


def _reference(pos, neg, keep, beta, tau_plus, temperature):
  """The published form, directly in float64: value and clamped, per row."""
  values, clamped = [], []
  for p, row, k in zip(pos, neg, keep):
    row = row[k].astype(np.float64)
    n = len(row)
    if n == 0:
      values.append(0.0)
      clamped.append(False)
      continue
    e_p, e_k = np.exp(np.float64(p)), np.exp(row)
    w = np.exp(beta * row) / np.mean(np.exp(beta * row))
    ng = (np.sum(w * e_k) - tau_plus * n * e_p) / (1.0 - tau_plus)
    floor = n * np.exp(-1.0 / temperature)
    clamped.append(bool(ng < floor))
    ng = max(ng, floor)
    values.append(p - np.log(e_p + ng) + np.log(n + 1.0))
  return np.array(values), np.array(clamped)


def _cosine_scores(seed, b=32, k=24, spread=0.3):
  """Scores of a cosine critic: pos and neg in [-1/T, 1/T], positives above the negatives."""
  rng = np.random.default_rng(seed)
  neg = np.clip(rng.normal(0.0, spread, (b, k)), -1, 1) / T
  pos = np.clip(rng.normal(0.5, spread, b), -1, 1) / T
  keep = rng.random((b, k)) < 0.85
  keep[0] = False                                  # a row with no negative
  return pos.astype(np.float32), neg.astype(np.float32), keep


@pytest.mark.parametrize("beta, tau_plus", [(0.0, 0.0), (0.0, 0.01), (0.0, 0.1), (0.2, 0.03),
                                            (0.5, 0.1), (1.2, 0.0)])
def test_against_float64_formula(beta, tau_plus):
  pos, neg, keep = _cosine_scores(1)
  value = bounds.hcl(pos, neg, beta=beta, tau_plus=tau_plus, temperature=T, neg_mask=keep)
  clamped = bounds.hcl_clamped(pos, neg, beta=beta, tau_plus=tau_plus, temperature=T,
                               neg_mask=keep)
  want, want_clamped = _reference(pos, neg, keep, beta, tau_plus, T)
  np.testing.assert_allclose(np.asarray(value), want, rtol=2e-5, atol=2e-5)
  # The clamp decision agrees except where Ng sits within rounding of the floor.
  assert np.mean(np.asarray(clamped) == want_clamped) >= 0.95
  if beta == 0.0:
    np.testing.assert_array_equal(
        bounds.dcl(pos, neg, tau_plus=tau_plus, temperature=T, neg_mask=keep), value)


def test_reduces_to_infonce_with_no_correction():
  pos, neg, keep = _cosine_scores(2)
  ref = bounds.infonce(pos, neg, keep)
  for value in (bounds.dcl(pos, neg, tau_plus=0.0, temperature=T, neg_mask=keep),
                bounds.hcl(pos, neg, beta=0.0, tau_plus=0.0, temperature=T, neg_mask=keep)):
    np.testing.assert_allclose(np.asarray(value), np.asarray(ref), atol=1e-5)
  # Scores below -1/T (not a cosine critic) hit the clamp: then the two differ.
  low = bounds.dcl(pos, neg - 30.0, tau_plus=0.0, temperature=T, neg_mask=keep)
  assert not np.allclose(np.asarray(low), np.asarray(bounds.infonce(pos, neg - 30.0, keep)))


def test_no_overflow_at_low_temperature():
  pos, neg, keep = _cosine_scores(3)
  for t in (0.05, 0.02):
    scale = T / t
    value = bounds.hcl(pos * scale, neg * scale, beta=0.5, tau_plus=0.05, temperature=t,
                       neg_mask=keep)
    want, _ = _reference(pos * scale, neg * scale, keep, 0.5, 0.05, t)
    assert np.all(np.isfinite(np.asarray(value)))
    np.testing.assert_allclose(np.asarray(value), want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow   # over 2 s on a 2-core CPU
def test_gradient_by_finite_differences():
  pos, neg, keep = _cosine_scores(4, b=6, k=8, spread=0.4)
  pos = pos - 3.0                                   # rows away from the clamp
  args = dict(beta=0.3, tau_plus=0.05, temperature=T, neg_mask=keep)
  assert not np.any(np.asarray(bounds.hcl_clamped(pos, neg, **args))[1:])
  f = lambda p, n: jnp.sum(bounds.hcl(p, n, **args))
  g_pos, g_neg = jax.grad(f, argnums=(0, 1))(pos, neg)
  f64 = lambda p, n: float(np.sum(_reference(p, n, keep, 0.3, 0.05, T)[0]))
  eps = 1e-3
  for i in range(1, 4):
    d = np.zeros_like(pos)
    d[i] = eps
    num = (f64(pos + d, neg) - f64(pos - d, neg)) / (2 * eps)
    assert float(g_pos[i]) == pytest.approx(num, rel=2e-2, abs=2e-3)
    for j in np.flatnonzero(keep[i])[:2]:
      d = np.zeros_like(neg)
      d[i, j] = eps
      num = (f64(pos, neg + d) - f64(pos, neg - d)) / (2 * eps)
      assert float(g_neg[i, j]) == pytest.approx(num, rel=2e-2, abs=2e-3)
  # Masked entries and the empty row carry no gradient.
  assert np.all(np.asarray(g_neg)[~keep] == 0) and float(g_pos[0]) == 0.0


@pytest.mark.slow   # over 2 s on a 2-core CPU
def test_clamped_rows_give_their_negatives_no_gradient():
  pos = jnp.array([9.0, 0.0])
  neg = jnp.zeros((2, 5))
  args = dict(tau_plus=0.1, temperature=T)
  assert bounds.hcl_clamped(pos, neg, beta=0.0, **args).tolist() == [True, False]
  g = jax.grad(lambda n: jnp.sum(bounds.dcl(pos, n, **args)))(neg)
  assert np.all(np.asarray(g[0]) == 0) and np.all(np.asarray(g[1]) != 0)


# ---------------------------------------------------------------------------------------------
# The config and the methods.
# ---------------------------------------------------------------------------------------------


def test_config_validates_the_new_fields():
  c = tiny_config("uniform", bound="dcl", tau_plus=0.05)
  config_lib.validate(c, num_devices=1, num_train=1000)
  for field, value, words in (("tau_plus", 1.0, "tau_plus"), ("hcl_beta", -0.1, "hcl_beta")):
    bad = tiny_config("uniform", bound="hcl", **{field: value})
    with pytest.raises(ValueError, match=words):
      config_lib.validate(bad, num_devices=1, num_train=1000)
  for method in ("moco", "simclr"):          # the debiased bounds replace InfoNCE there too
    config_lib.validate(tiny_config("ring", method=method, bound="hcl"), num_devices=1,
                        num_train=1000)
  for bad in (tiny_config("uniform", method="la", bound="dcl"),
              tiny_config("ring", bound="dcl", **{"ir.neighbour_views": True})):
    with pytest.raises(ValueError, match="bound 'infonce'|config.bound"):
      config_lib.validate(bad, num_devices=1, num_train=1000)


def test_digest_of_an_infonce_run_ignores_the_debiasing_fields():
  c = tiny_config("ring")
  digest = results_lib.config_digest(c)
  c.tau_plus, c.hcl_beta = 0.37, 0.9
  assert results_lib.config_digest(c) == digest
  c.bound = "dcl"
  with_dcl = results_lib.config_digest(c)
  c.hcl_beta = 0.1                                  # dcl does not read hcl_beta
  assert results_lib.config_digest(c) == with_dcl
  c.tau_plus = 0.2
  assert results_lib.config_digest(c) != with_dcl


def _on_one_device(fn, *args):
  mesh = make_mesh(jax.devices()[:1])
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=P(), out_specs=P(),
                               check_vma=False))(*args)


@pytest.mark.parametrize("method, negatives", [("ir", "uniform"), ("ir", "ring"),
                                               ("moco", "ring"), ("simclr", "uniform"),
                                               ("cmc", "uniform")])
@pytest.mark.slow
def test_methods_train_the_chosen_objective_and_report_infonce(method, negatives):
  d, b, n = 8, 6, 40
  band = methods.Band(jnp.float32(0.5), jnp.float32(0.95))
  key = jax.random.PRNGKey(0)
  outs = {}
  for bound in ("infonce", "dcl", "hcl"):
    c = tiny_config(negatives, method=method, bound=bound, tau_plus=0.05, hcl_beta=0.3,
                    num_negatives=16, embedding_dim=d, temperature=T)
    if method == "ir":
      state = {"bank": memory.l2_normalize(jax.random.normal(key, (n, d)))}
      z = memory.l2_normalize(jax.random.normal(jax.random.PRNGKey(1), (1, b, d)))
      fn = lambda z, c=c, s=state: ir.objective(c, z, jnp.arange(b), s, key, band)
    elif method == "moco":
      state = {"queue": memory.l2_normalize(jax.random.normal(key, (n, d)))}
      z = memory.l2_normalize(jax.random.normal(jax.random.PRNGKey(1), (1, b, d)))
      keys = memory.l2_normalize(z[0] + 0.3 * jax.random.normal(jax.random.PRNGKey(2), (b, d)))
      fn = lambda z, c=c, s=state: moco.objective(c, z, None, s, None, band,
                                                   moco.MocoTargets(keys))
    elif method == "simclr":
      z = memory.l2_normalize(jax.random.normal(jax.random.PRNGKey(1), (2, b, d)))
      fn = lambda z, c=c: methods.get("simclr").objective(c, z, None, {}, None, band, None)
    else:
      state = cmc.init_state(key, c, n, None)
      z = memory.l2_normalize(jax.random.normal(jax.random.PRNGKey(1), (1, b, 2, d)))
      fn = lambda z, c=c, s=state: cmc.objective(c, z, jnp.arange(b), s, key, band)
    outs[bound] = _on_one_device(fn, z)
  base = outs["infonce"]
  assert base.clamped is None
  for bound in ("dcl", "hcl"):
    out = outs[bound]
    # The reported bound stays InfoNCE of the same scores; the trained value differs.
    np.testing.assert_allclose(np.asarray(out.bound), np.asarray(base.bound), rtol=1e-6)
    assert not np.allclose(np.asarray(out.value), np.asarray(base.value))
    assert out.clamped is not None and out.clamped.shape == out.value.shape


@pytest.mark.slow
def test_a_run_logs_the_clamped_fraction(tmp_path):
  """The train step logs clamped_fraction (results.json copies the last logged value, next to
  bound, tau_plus and hcl_beta)."""
  import json
  from mi_contrast import train
  c = tiny_config("ring", bound="hcl", tau_plus=0.02, hcl_beta=0.2, num_epochs=1,
                  log_every_steps=2)
  train.train_and_evaluate(c, str(tmp_path), stop_after_steps=4)
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  logged = [r["clamped_fraction"] for r in rows if "clamped_fraction" in r]
  assert logged and all(0.0 <= v <= 1.0 for v in logged)
  assert all(r["bound_nats"] <= r["log_k_plus_1"] + 1e-6 for r in rows if "bound_nats" in r)


def test_false_negative_weight_against_numpy():
  """The share of the negative sum on the anchor's class: a softmax over each anchor's
  labelled, kept negatives of their log-terms, averaged over anchors (step.py)."""
  from mi_contrast import step as step_lib
  rng = np.random.default_rng(5)
  labels = rng.integers(-1, 3, 50).astype(np.int32)
  anchors = rng.integers(0, 50, 7).astype(np.int32)
  rows = rng.integers(-1, 50, (7, 9)).astype(np.int32)
  keep = rng.random((7, 9)) < 0.8
  logw = rng.normal(0, 3, (7, 9)).astype(np.float32)
  drawn = methods.DrawnNegatives(anchors=jnp.asarray(anchors), rows=jnp.asarray(rows),
                                 keep=jnp.asarray(keep), log_weights=jnp.asarray(logw))
  got = float(_on_one_device(lambda d: step_lib.false_negative_weight(jnp.asarray(labels), d),
                             drawn))
  shares = []
  for i in range(7):
    a = labels[anchors[i]]
    lab = np.where(rows[i] >= 0, labels[np.maximum(rows[i], 0)], -1)
    ok = keep[i] & (lab >= 0) & (a >= 0)
    if ok.any():
      w = np.exp(logw[i][ok].astype(np.float64) - logw[i][ok].max())
      shares.append(np.sum(w[lab[ok] == a]) / np.sum(w))
  assert got == pytest.approx(np.mean(shares), rel=1e-5)
  assert base_terms_tilt() == pytest.approx(1.3)


def base_terms_tilt():
  """HCL's terms are (1 + beta) * score: the tilt exp(beta s) times e_k = exp(s)."""
  from mi_contrast.methods import base
  c = tiny_config("uniform", bound="hcl", hcl_beta=0.3)
  return float(base.negative_terms(c, jnp.ones(())))
