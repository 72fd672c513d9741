"""IR: instance recognition with a memory bank (Wu et al. 2018), as InfoNCE (Wu et al. 2020).

One view per image and step. For anchor z_i (unit row) and bank M (unit rows, no gradient):
  positive  s_i+ = z_i . M[i] / tau                      (the image's own bank row)
  negatives s_ik = z_i . M[j_k] / tau,  k = 1..K         (uniform, ball or ring rows of M)
  value     = InfoNCE(s_i+, s_i)  = s_i+ - logsumexp([s_i+, s_i]) + log(K + 1)     [nats]
  or, with config.bound = 'nce', IR's original binary NCE with constant partition Z.
Negatives: 'uniform' draws j_k ~ U{0..N-1}; 'ball' and 'ring' draw K rows uniformly (with
replacement) from each anchor's similarity band of the bank (IR Ball / IR Ring; the band comes
from the annealed outer/inner fractions). Bank update: M[i] <- normalise(m M[i] + (1-m) z_i).
"""

import math

import jax
import jax.numpy as jnp

from mi_contrast import bounds
from mi_contrast import memory
from mi_contrast import negatives as negatives_lib
from mi_contrast import sharded_bank
from mi_contrast.methods.base import Objective

NUM_VIEWS = 1

# IR's partition constant, an ImageNet estimate rescaled by the dataset size (Wu et al. 2018).
_IR_Z_PER_ROW = 2876934.2 / 1281167


def init_state(rng, config, num_train):
  return {"bank": memory.bank_init(rng, num_train, config.embedding_dim,
                                   dtype=jnp.dtype(config.bank_dtype))}


def objective(config, z, indices, state, rng, band):
  """z: [1, B, D] unit rows of this device's anchors; indices: [B] their dataset rows."""
  if config.bank_sharded:  # state['bank'] holds this device's rows only
    return sharded_bank.ir_objective(config, z, indices, state, rng, band)
  z = z[0]
  bank = jax.lax.stop_gradient(state["bank"]).astype(jnp.float32)
  num_rows = bank.shape[0]
  k = config.num_negatives
  tau = config.temperature
  pos = jnp.sum(z * bank[indices], axis=-1) / tau
  if config.negatives == "uniform":
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(indices)
    neg_rows = jax.vmap(lambda key: jax.random.randint(key, (k,), 0, num_rows))(keys)
    # Scores against the whole bank, then gathered: the backward is one dense matmul instead
    # of a [B, K, D] gather of bank rows.
    scores = z @ bank.T / tau
    neg = jnp.take_along_axis(scores, neg_rows, axis=1)
  else:
    neg, _ = negatives_lib.band_negatives(
        rng, z, bank, band.lower, band.upper, k, temperature=tau,
        candidates=config.candidates or None, anchor_ids=indices)
  infonce = bounds.infonce(pos, neg)
  if config.bound == "nce":
    log_z = math.log(_IR_Z_PER_ROW * num_rows)
    value = bounds.nce(pos, neg, log_z, num_rows)
  else:
    value = infonce
  cap = jnp.full_like(pos, math.log(k + 1))
  return Objective(value=value, bound=infonce, cap=cap)


def update_state(config, state, all_indices, all_z):
  if config.bank_sharded:
    return sharded_bank.ir_update_state(config, state, all_indices, all_z)
  return {"bank": memory.bank_update(state["bank"], all_indices, all_z[0],
                                     config.bank_momentum)}
