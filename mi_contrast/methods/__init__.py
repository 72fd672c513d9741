"""Contrastive methods by name. Each module reads top to bottom as its method's math.

A method module provides:
  VIEWS: (default, minimum, maximum) views per image and step; config.num_views = 0 takes
    the default, another value must lie in [minimum, maximum].
  ONLINE_VIEWS: how many of the leading views the online encoder embeds with gradients
    (None: all of them; MoCo: 1, its second view goes to the key encoder).
  init_state(rng, config, num_train, variables) -> pytree (bank, queue, key encoder, ...),
    checkpointed with the train state; `variables` are the online encoder's initial
    {'params', 'batch_stats'}.
  prepare(config, state, ctx) -> (targets, state)   [optional]: work before the gradient, without
    gradients (MoCo: the EMA and the keys; LA: the k-means refit), ctx a StepContext.
  objective(config, z, indices, state, rng, band, targets) -> Objective, per device inside the
    step; z [V_online, b, ...] unit embeddings.
  update_state(config, state, all_indices, all_z, targets) -> new state, from the all-gathered
    (index, z) of the global batch (identical on every replica).
"""

from mi_contrast.methods import cmc
from mi_contrast.methods import ir
from mi_contrast.methods import la
from mi_contrast.methods import moco
from mi_contrast.methods import simclr
from mi_contrast.methods.base import Band, Objective, StepContext

REGISTRY = {"ir": ir, "la": la, "cmc": cmc, "moco": moco, "simclr": simclr}


def get(name):
  if name not in REGISTRY:
    raise ValueError(f"config.method = {name!r} is not allowed; allowed values: "
                     f"{' | '.join(REGISTRY)}.")
  return REGISTRY[name]


def num_views(method, config):
  """Views per image for `config` (config.num_views, or the method's default)."""
  default, low, high = method.VIEWS
  if config.num_views == 0:
    return default
  if not low <= config.num_views <= high:
    allowed = f"{low}" if low == high else f"{low}..{high}"
    raise ValueError(f"config.num_views = {config.num_views} is not allowed for method "
                     f"{config.method!r}; allowed values: 0 (its default, {default}) or "
                     f"{allowed}.")
  return config.num_views


def online_views(method, config):
  """How many leading views the online encoder embeds with gradients."""
  return num_views(method, config) if method.ONLINE_VIEWS is None else method.ONLINE_VIEWS


def prepare(method, config, state, ctx):
  """The method's `prepare` hook, or (None, state) when it has none."""
  if hasattr(method, "prepare"):
    return method.prepare(config, state, ctx)
  return None, state


def describe_negatives(config):
  """(negatives, pool) as results.json reports them: which selection, from which pool.

  LA's negatives are its background neighbours ('background'), whatever config.negatives says
  (that names its IR warm-up's).
  """
  if config.method == "la":
    return "background", f"the {config.la.background} nearest bank rows"
  pool = {"ir": "memory bank", "cmc": "the other view's memory bank", "moco": "queue",
          "simclr": "global batch"}
  return config.negatives, pool[config.method]


def describe_objective(config):
  """What training maximises: 'infonce', 'nce' (IR's), 'la' or 'neighbour_views'."""
  if config.method == "la":
    return "la"
  if config.neighbour_views:
    return "neighbour_views"
  return config.bound


__all__ = ["Band", "Objective", "REGISTRY", "StepContext", "describe_negatives",
           "describe_objective", "get", "num_views", "online_views", "prepare"]
