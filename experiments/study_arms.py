"""The negatives study's arms and their configs (experiments/negatives_study.py runs them).

An arm is a config file, optionally with values of its own for the fields an arm is made of
(ARM_FIELDS, ARM_SECTIONS), and the arm it is compared with (`compare_to`: its method's
uniform arm). Adding an arm is one entry in ARMS, e.g. a debiased bound on IR's uniform
negatives:

  "ir_dcl": Arm("configs/ir.py", fields={"bound": "dcl", "tau_plus": 0.1},
                compare_to="ir_uniform"),

Its runs' workdirs are <workdir_root>/<arm>_s<seed>, its command is the config file with the
study's flags and then `--config.<field>=<value>` for each of its own fields, and `paired`
gains "<arm> - <compare_to>" (the arms named <method>_<negatives> that the study started with
keep their labels "<method>: <negatives> - uniform").

Every other field takes the study's value (study_values): the dataset preset's, then
study_overrides, the budget and --set. The one exception is BANK_ONLY, which the methods
without a memory bank refuse.

Nothing here imports jax at import time (the page generator reads ARMS and arm_order); the
config functions import mi_contrast.config when they run.
"""

import collections
import importlib.util
import json
import os

import common

REPO = common.REPO


class Arm(collections.namedtuple("Arm", ["config", "fields", "compare_to"])):
  """config: the config file (relative to the repository); fields: {arm field: value} set on
  top of it; compare_to: the arm its paired differences are taken against (None: none)."""

  def __new__(cls, config, fields=None, compare_to=None):
    return super().__new__(cls, config, dict(fields or {}), compare_to)


# arm -> Arm. Order: the runs' order, the JSON's and the plot's.
ARMS = {
    "ir_uniform": Arm("configs/ir.py"),
    "ir_ring": Arm("configs/ring.py", compare_to="ir_uniform"),
    "ir_ball": Arm("configs/ball.py", compare_to="ir_uniform"),
    "moco_uniform": Arm("configs/moco.py"),
    "moco_ring": Arm("configs/moco_ring.py", compare_to="moco_uniform"),
    "simclr_uniform": Arm("configs/simclr.py"),
    "simclr_ring": Arm("configs/simclr_ring.py", compare_to="simclr_uniform"),
    # Debiased (DCL) and hardness-tilted (HCL) negatives, their parameters chosen on the
    # validation split (experiments/results/negatives_study_validation.json: one seed, 3
    # epochs; the best linear probe of each grid).
    "ir_dcl": Arm("configs/ir.py", fields={"bound": "dcl", "tau_plus": 0.01},
                  compare_to="ir_uniform"),
    "ir_hcl": Arm("configs/ir.py", fields={"bound": "hcl", "tau_plus": 0.01, "hcl_beta": 0.5},
                  compare_to="ir_uniform"),
    # The ring's draws debiased with tau_plus near their measured class-collision share at the
    # end of annealing (0.39-0.41 in the 10-epoch study). A heuristic: DCL's correction assumes
    # negatives drawn from the marginal, and the ring's share grows from chance as it anneals.
    "ir_ring_dcl": Arm("configs/ring.py", fields={"bound": "dcl", "tau_plus": 0.4},
                       compare_to="ir_uniform"),
    # SimCLR's in-batch negatives, the same validation grid: DCL best at tau_plus 0.03, HCL
    # (tau_plus 0.01) best at beta 0.1. The grid's spread (0.823-0.835 linear against
    # InfoNCE's 0.829) is within one seed's noise: the 10-epoch seeds decide.
    "simclr_dcl": Arm("configs/simclr.py", fields={"bound": "dcl", "tau_plus": 0.03},
                      compare_to="simclr_uniform"),
    "simclr_hcl": Arm("configs/simclr.py",
                      fields={"bound": "hcl", "tau_plus": 0.01, "hcl_beta": 0.1},
                      compare_to="simclr_uniform"),
}
# What an arm is made of; every other field is set to the study's value. tau_plus and
# hcl_beta are the debiased bounds' parameters (bound = dcl or hcl).
ARM_FIELDS = ("method", "negatives", "bound", "tau_plus", "hcl_beta")
ARM_SECTIONS = ("ring.",)
# What a variant (--variant) may change besides ring.*: the objective and its parameters, e.g.
# --variant=ir_dcl_t03=ir_uniform:bound=dcl,tau_plus=0.03 (the validation choice of tau_plus).
VARIANT_FIELDS = ("bound", "tau_plus", "hcl_beta")
# Memory-bank options that methods without a bank (MoCo's queue, SimCLR's batch) refuse: those
# arms take this value (the band over the whole queue or batch); the IR arms keep the study's.
BANK_ONLY = {"bank.candidates": 0}
BANKLESS_METHODS = ("moco", "simclr")

DEFAULT_SEEDS = (1337, 1, 2)
DEFAULT_EPOCHS = {"fashion_mnist": 10, "digits": 40}
QUICK = {"num_epochs": 2, "warmup_epochs": 0, "probe_epochs": 30, "eval_every_steps": 1000,
         "log_every_steps": 2}
QUICK_SEEDS = (1337,)
# Controlled variations (--variant): name -> {"base": arm, "fields": {ring.* field: value}}.
VARIANTS = {}


def study_overrides(dataset):
  """Study values beyond the preset's (field -> value) for `dataset`."""
  from mi_contrast import config as config_lib
  return {
      # K = 4,096: a multiple of the batch (MoCo's queue), the same for IR's bank draws.
      # The band of IR's bank over 8,192 random rows, as configs/ring.py's preset (BANK_ONLY:
      # MoCo's and SimCLR's bands are over their whole queue or batch).
      "fashion_mnist": {"num_negatives": 4096,
                        "bank.candidates": config_lib.FASHION_MNIST_CANDIDATES},
      # The digits recipe of configs/ring.py (views without the flip, temperature 0.1).
      "digits": {"views": "digits_noflip", "temperature": 0.1, "num_negatives": 1024},
  }.get(dataset, {})


def is_arm_field(key):
  return key in ARM_FIELDS or key.startswith(ARM_SECTIONS)


def arm_file(arm):
  """The config file of an arm or of a variant's base arm."""
  return ARMS[VARIANTS[arm]["base"] if arm in VARIANTS else arm].config


def arm_order():
  return list(ARMS) + [v for v in VARIANTS if v not in ARMS]


def own_fields(arm):
  """{field: value} an arm sets on top of its config file: its ARMS entry's, then, for a
  variant, its base arm's and its own."""
  base = VARIANTS[arm]["base"] if arm in VARIANTS else arm
  shared = [key for key in ARMS[base].fields if not is_arm_field(key)]
  if shared:   # the study's value would silently replace it
    raise SystemExit(f"arm {base}: {shared} are shared fields, not what an arm is made of "
                     f"({', '.join(ARM_FIELDS + tuple(s + '*' for s in ARM_SECTIONS))}).")
  return {**ARMS[base].fields, **VARIANTS.get(arm, {}).get("fields", {})}


def comparisons(runs):
  """(arm, the arm it is compared with) for the arms of `runs` that have one: the ring arms
  first (the study's question), then the other ARMS entries, in ARMS order, then the variants
  (each against its method's uniform arm)."""
  negatives = {r["arm"]: r["negatives"] for r in runs}
  compared = [a for a in ARMS if ARMS[a].compare_to and a in negatives]
  compared.sort(key=lambda a: negatives[a] != "ring")   # stable: ARMS order within
  pairs = [(a, ARMS[a].compare_to) for a in compared]
  variants = sorted({r["arm"] for r in runs if r["arm"] not in ARMS},
                    key=lambda a: ((arm_order() + [a]).index(a), a))
  return pairs + [(v, next(r["method"] for r in runs if r["arm"] == v) + "_uniform")
                  for v in variants]


def run_name(arm, seed):
  """A run's workdir name: <arm>_s<seed> (for the study's first arms, <method>_<negatives>)."""
  return f"{arm}_s{seed}"


# ----------------------------------------------------------------------------------------------
# Configs: the arms' effective configs and the flags that give them.
# ----------------------------------------------------------------------------------------------

def parse_assignment(text):
  """'probe_epochs=5' -> ('probe_epochs', 5): the value as JSON, else a string."""
  key, sep, raw = text.partition("=")
  if not sep or not key:
    raise SystemExit(f"--set {text!r}: expected FIELD=VALUE, e.g. --set=probe_epochs=5")
  try:
    value = json.loads(raw)
  except json.JSONDecodeError:
    value = raw
  return key, value


def parse_variant(text):
  """'ir_ring_wide=ir_ring:ring.outer=0.5,ring.inner=0.2' -> (name, base, {field: value})."""
  usage = ("expected NAME=BASE_ARM:FIELD=VALUE[,FIELD=VALUE...], e.g. "
           "--variant=ir_ring_wide=ir_ring:ring.outer=0.5,ring.inner=0.2")
  name, sep, rest = text.partition("=")
  base, sep2, assignments = rest.partition(":")
  if not (sep and sep2 and name and assignments):
    raise SystemExit(f"--variant {text!r}: {usage}")
  if name in ARMS or not name.replace("_", "").isalnum():
    raise SystemExit(f"--variant {text!r}: the name {name!r} must be new (not one of "
                     f"{', '.join(ARMS)}) and made of letters, digits and '_'.")
  if base not in ARMS:
    raise SystemExit(f"--variant {text!r}: unknown base arm {base!r}; allowed: "
                     + ", ".join(ARMS))
  fields = dict(parse_assignment(a) for a in assignments.split(",") if a)
  own = common.flatten(load_arm_config(base, None))
  for key in fields:
    if not (key.startswith(ARM_SECTIONS) or key in VARIANT_FIELDS) or key not in own:
      raise SystemExit(f"--variant {text!r}: {key} is not one of "
                       f"{', '.join(VARIANT_FIELDS + tuple(s + '*' for s in ARM_SECTIONS))}; "
                       "a variant changes only what an arm is made of (every other field is "
                       "shared: use --set).")
  return name, base, fields


def load_arm_config(arm, preset):
  """The arm's config file's get_config(preset), with the arm's own fields set."""
  path = os.path.join(REPO, arm_file(arm))
  spec = importlib.util.spec_from_file_location(f"study_{arm}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(preset)
  for key, value in own_fields(arm).items():
    common.set_field(c, key, value)
  return c


def study_values(preset, quick, epochs, data_dir, extra):
  """Every field's study value (flat dict): the preset's, then study_overrides, the budget and
  --set."""
  from mi_contrast import config as config_lib
  values = common.flatten(config_lib.default_config(preset))
  values.update(study_overrides(preset))
  if quick:
    values.update(QUICK)
  if epochs is not None:
    values["num_epochs"] = epochs
  if data_dir:
    values["data_dir"] = data_dir
  values["eval_split"] = "test"
  if values["warmup_epochs"] >= values["num_epochs"]:
    values["warmup_epochs"] = 0   # a 1-epoch budget: no warm-up
  for key, value in extra:
    if key not in values:
      raise SystemExit(f"--set {key}=...: {key} is not a config field.")
    if is_arm_field(key):
      raise SystemExit(f"--set {key}=...: {key} defines the arms; it is not a shared field.")
    values[key] = value
  return values


def _flag_value(value):
  if isinstance(value, bool):
    return "True" if value else "False"
  if isinstance(value, float):
    return repr(value)
  return str(value)


def arm_plan(arm, preset, values):
  """(effective config, the --config.* flags that turn the arm's config file into it)."""
  c = load_arm_config(arm, preset)
  own = common.flatten(c)
  if c.method in BANKLESS_METHODS:
    values = {**values, **BANK_ONLY}
  flags = []
  for key, value in sorted(values.items()):
    if is_arm_field(key) or own[key] == value:
      continue
    if value is None:
      raise SystemExit(f"{arm_file(arm)}: {key} = {own[key]!r}, the study's is None (no flag "
                       "can set None); give the study a value with --set.")
    flags.append(f"--config.{key}={_flag_value(value)}")
    common.set_field(c, key, value)
  # The arm's own fields (already in c): flags on top of its config file.
  for key, value in sorted(own_fields(arm).items()):
    flags.append(f"--config.{key}={_flag_value(value)}")
  return c, flags


def config_digest(c):
  """results.json's config_sha256 (mi_contrast.checks.config_digest: no jax imported)."""
  from mi_contrast import checks
  return checks.config_digest(c)


def arm_differences(configs):
  """{field: {arm: value}} for the fields whose effective values differ between arms."""
  flat = {arm: common.flatten(c) for arm, c in configs.items()}
  keys = sorted(set().union(*(f.keys() for f in flat.values())))
  out = {}
  for key in keys:
    column = {arm: f.get(key) for arm, f in flat.items()}
    if len({json.dumps(v) for v in column.values()}) > 1:
      out[key] = column
  return out


def check_differences(differences):
  stray = [k for k in differences if not is_arm_field(k) and k not in BANK_ONLY]
  if stray:
    raise SystemExit(f"arms differ in shared fields {stray}: {differences}")
