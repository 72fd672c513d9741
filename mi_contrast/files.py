"""Files a run writes: every one replaced atomically, so that a reader or a crash never sees a
half-written file."""

import json
import os


def atomic_write(path, write, *, binary=False):
  """Writes `path` through `write(file)` into `path`.tmp, then renames it over `path`."""
  tmp = f"{path}.tmp"
  with open(tmp, "wb" if binary else "w") as f:
    write(f)
  os.replace(tmp, path)


def write_json(path, payload):
  """`payload` as indented JSON with sorted keys, written atomically."""
  atomic_write(path, lambda f: json.dump(payload, f, indent=2, sort_keys=True))
