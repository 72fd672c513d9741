"""Contrastive methods by name. Each module reads top to bottom as its method's math.

A method module owns every fact about its method; nothing outside methods/ knows a method by
name. Adding one is one module and one line in REGISTRY below, or, from outside the package,
`methods.register(name, module)`. A method module provides:
  VIEWS: (default, minimum, maximum) views per image and step; config.num_views = 0 takes
    the default, another value must lie in [minimum, maximum].
  ONLINE_VIEWS: how many of the leading views the online encoder embeds with gradients
    (None: all of them; MoCo: 1, its second view goes to the key encoder).
  ENCODER: the encoder it embeds with: 'single' (models.ContrastiveEncoder, z [n, D]) or 'lab'
    (models.LabEncoder: L and ab streams, z [n, 2, D]; CMC).
  validate(config, *, num_devices, num_train) -> None: the method's own config rules (what it
    requires of the shared fields: bound, bank.candidates, negatives, its own sub-config, ...),
    raising ValueError through mi_contrast.checks (num_train may be None). config.validate
    checks every field's type and range first, then calls this.
  describe(config) -> {'negatives': str, 'pool': str, 'objective': str}: what results.json
    reports (which selection of negatives, from which pool, what training maximises).
  init_state(rng, config, num_train, variables) -> pytree (bank, queue, key encoder, ...),
    checkpointed with the train state; `variables` are the online encoder's initial
    {'params', 'batch_stats'}.
  prepare(config, state, ctx) -> (targets, state)   [optional]: work before the gradient, without
    gradients (MoCo: the EMA and the keys; LA: the k-means refit), ctx a StepContext. targets is
    a NamedTuple of the method's module (IRTargets, LATargets, MocoTargets), passed through the
    trainer untouched; None for a method without prepare.
  objective(config, z, indices, state, rng, band, targets) -> Objective, per device inside the
    step; z [V_online, b, ...] unit embeddings. Its optional `drawn` (DrawnNegatives: the
    dataset rows of the anchors and of their negatives) feeds the false-negative diagnostic
    (step.false_negative_share, with the run's labels); the objective never reads labels.
  update_state(config, state, all_indices, all_z, targets) -> new state, from the all-gathered
    (index, z) of the global batch (identical on every replica).
"""

from mi_contrast.methods import cmc
from mi_contrast.methods import ir
from mi_contrast.methods import la
from mi_contrast.methods import moco
from mi_contrast.methods import simclr
from mi_contrast.methods.base import Band, DrawnNegatives, Objective, StepContext

REGISTRY = {"ir": ir, "la": la, "cmc": cmc, "moco": moco, "simclr": simclr}

REQUIRED = ("VIEWS", "ONLINE_VIEWS", "ENCODER", "validate", "describe", "init_state",
            "objective", "update_state")
ENCODERS = ("single", "lab")


def register(name, module):
  """Adds a method (a module or any object with the attributes above) under `name`.

  Raises ValueError on a name already registered or a method missing an attribute.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"methods.register: the name must be a non-empty string, not {name!r}.")
  if name in REGISTRY:
    raise ValueError(f"methods.register: a method {name!r} is already registered "
                     f"({' | '.join(REGISTRY)}); unregister it first or choose another name.")
  missing = [attr for attr in REQUIRED if not hasattr(module, attr)]
  if missing:
    raise ValueError(f"methods.register: method {name!r} lacks {', '.join(missing)} (a method "
                     f"provides {', '.join(REQUIRED)}; see mi_contrast/methods/__init__.py).")
  if module.ENCODER not in ENCODERS:
    raise ValueError(f"methods.register: method {name!r} has ENCODER = {module.ENCODER!r}; "
                     f"allowed values: {' | '.join(ENCODERS)}.")
  REGISTRY[name] = module
  return module


def unregister(name):
  """Removes a registered method; returns it (KeyError if there is none of that name)."""
  return REGISTRY.pop(name)


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


def encoder_kind(config):
  """'single' or 'lab': the encoder config.method embeds with (models.build_encoder)."""
  return get(config.method).ENCODER


def describe(config):
  """{'negatives', 'pool', 'objective'} of config.method, as results.json reports them."""
  return get(config.method).describe(config)


def describe_negatives(config):
  """(negatives, pool) as results.json reports them: which selection, from which pool.

  LA's negatives are its background neighbours ('background'), whatever config.negatives says
  (that names its IR warm-up's).
  """
  description = describe(config)
  return description["negatives"], description["pool"]


def describe_objective(config):
  """What training maximises: 'infonce', 'nce' (IR's), 'la' or 'neighbour_views'."""
  return describe(config)["objective"]


__all__ = ["Band", "DrawnNegatives", "ENCODERS", "Objective", "REGISTRY", "REQUIRED",
           "StepContext", "describe", "describe_negatives", "describe_objective",
           "encoder_kind", "get", "num_views", "online_views", "prepare", "register",
           "unregister"]
