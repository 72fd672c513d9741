"""What the scripts of experiments/ share: paths, config fields, JSON records, the commit.

Every script here runs as `python experiments/<script>.py`, so experiments/ is first on
sys.path and `import common` finds this module; importing it puts the repository on sys.path
too, so that the scripts run from a checkout without `pip install -e .`.

Nothing here imports jax: the page generator (results_pages.py) imports this module and only
reads JSON.
"""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")

sys.path.insert(0, REPO)


def set_field(config, key, value):
  """config[key] = value for a dotted key: 'ring.outer' sets config.ring.outer."""
  *parents, leaf = key.split(".")
  for part in parents:
    config = config[part]
  config[leaf] = value


def flatten(config, prefix=""):
  """{dotted key: value} of a nested config (ml_collections.ConfigDict or dict)."""
  out = {}
  for key, value in config.items():
    if hasattr(value, "items"):
      out.update(flatten(value, prefix + key + "."))
    else:
      out[prefix + key] = value
  return out


def read_json(path, default=None):
  """The JSON at `path`, or `default` when it is missing or unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return default


def read_jsonl(path):
  """The records of a JSON-lines file, in file order; [] when it is missing. A line cut by a
  kill (not valid JSON) is skipped."""
  records = []
  try:
    with open(path) as f:
      for line in f:
        line = line.strip()
        if line:
          try:
            records.append(json.loads(line))
          except ValueError:
            pass
  except OSError:
    pass
  return records


def write_json(path, data):
  """`data` as JSON (indent 1, sorted keys, a final newline), replacing `path` atomically
  (mi_contrast.files.atomic_write); its folder is made when missing."""
  from mi_contrast import files   # the package imports jax; read-only users never need it

  def dump(f):
    json.dump(data, f, indent=1, sort_keys=True, default=str)
    f.write("\n")

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  files.atomic_write(path, dump)


def append_jsonl(path, record):
  """One record as one more line of a JSON-lines file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def record_key(record, fields):
  """The identity of a record: its values of `fields` (a missing one is None), as text."""
  return json.dumps([record.get(field) for field in fields], sort_keys=True)


def done_keys(path, fields):
  """record_key of every record already in the JSON-lines file at `path`."""
  return {record_key(record, fields) for record in read_jsonl(path)}


def variant_names(text, variants):
  """'a,b' (or 'all': every one) -> the variant names, checked against `variants`."""
  names = list(variants) if text == "all" else text.split(",")
  unknown = [n for n in names if n not in variants]
  if unknown:
    raise SystemExit(f"unknown variants {unknown}; known: {list(variants)}")
  return names


def print_variants(variants):
  """--list: one line per variant, its name and its overrides."""
  for name, overrides in variants.items():
    print(name, json.dumps(overrides))


def git_commit():
  """HEAD's sha (STUDY_COMMIT when set), with '+dirty' when tracked files outside
  experiments/results/ have uncommitted changes (the records a script rewrites as it runs are
  no change to the code it ran); None without git."""
  if os.environ.get("STUDY_COMMIT"):
    return os.environ["STUDY_COMMIT"]
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                         text=True, timeout=10)
    if out.returncode:
      return None
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                            capture_output=True, text=True, timeout=10).stdout.splitlines()
    dirty = [line for line in status if not line[3:].startswith("experiments/results/")]
    return out.stdout.strip() + ("+dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return None
