"""Field checks of a config: one ValueError naming the field and its allowed values.

A leaf module (nothing from the package), shared by `config.validate` and every method
module's own `validate`. `field` is a dotted path into the config ('ring.outer').
"""

import hashlib
import json

import ml_collections


def fail(field, value, allowed):
  raise ValueError(f"config.{field} = {value!r} is not allowed; allowed values: {allowed}.")


def value_of(config, field):
  """The value at a dotted path of the config."""
  value = config
  for part in field.split("."):
    value = value[part]
  return value


def check_keys(config, reference, prefix=""):
  """Every field of `reference` is in `config` and nothing else is (recursively)."""
  for key in config.keys():
    if key not in reference:
      raise ValueError(f"config.{prefix}{key} is not a known field; known fields: "
                       f"{', '.join(sorted(reference.keys()))}.")
    if isinstance(reference[key], ml_collections.ConfigDict):
      if not isinstance(config[key], ml_collections.ConfigDict):
        fail(prefix + key, config[key], "a ConfigDict of fields " + ", ".join(reference[key]))
      check_keys(config[key], reference[key], prefix + key + ".")
  for key in reference.keys():
    if key not in config:
      raise ValueError(f"config.{prefix}{key} is missing; start from configs/default.py.")


def number(config, field, low, high, *, integer=False, low_open=False, high_open=False):
  """A number (an int with integer=True; never a bool) in [low, high] (high None: no upper
  bound; *_open: that end excluded). Returns it."""
  value = value_of(config, field)
  kind = (int,) if integer else (int, float)
  if isinstance(value, bool) or not isinstance(value, kind):
    fail(field, value, "an integer" if integer else "a number")
  bad_low = value <= low if low_open else value < low
  bad_high = high is not None and (value >= high if high_open else value > high)
  if bad_low or bad_high:
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    fail(field, value, f"{lo}{low}, {high if high is not None else 'inf'}{hi}")
  return value


def choice(config, field, allowed):
  """One of `allowed`. Returns it."""
  value = value_of(config, field)
  if value not in allowed:
    fail(field, value, " | ".join(allowed))
  return value


def boolean(config, field):
  """True or False. Returns it."""
  value = value_of(config, field)
  if not isinstance(value, bool):
    fail(field, value, "True | False")
  return value


# Fields a run reads only with some bounds: left out of the digest when the run does not read
# them, so that the digest of an InfoNCE run is what it was before these fields existed.
_BOUND_FIELDS = {"tau_plus": ("dcl", "hcl"), "hcl_beta": ("hcl",)}


def config_digest(config):
  """sha256 of the whole config (sorted JSON): results.json's `config_sha256`. Fields the run
  does not read (tau_plus and hcl_beta unless its bound uses them) are left out. Here, in a
  leaf module without jax, so that scripts can compute it cheaply."""
  fields = json.loads(config.to_json())
  for field, bounds in _BOUND_FIELDS.items():
    if fields.get("bound") not in bounds:
      fields.pop(field, None)
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
