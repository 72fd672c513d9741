"""Writes the tables of the results pages from the committed records, so that no number drifts.

  python experiments/results_pages.py            # rewrite every generated block
  python experiments/results_pages.py --check    # exit 1, naming each page that differs

Pages: docs/results/digits.md, docs/results/fashion_mnist.md, docs/results/negatives_study.md,
docs/results/methods.md, docs/benchmarks.md, and the README's headline block. A page is
hand-written prose with generated blocks between the lines

  <!-- BEGIN GENERATED: name -->
  <!-- END GENERATED: name -->

and only what lies between them is replaced: every table of a page is a function of the
records under experiments/results/ and benchmarks/results/ (PAGES lists them), the prose
around them is edited by hand. A page whose markers do not match its blocks is an error that
names the page and the block; the README, whose prose is written elsewhere, is left untouched
while it has no headline markers.

Reads JSON only (no jax, no training): a few seconds.
"""

import argparse
import glob
import os
import re
import sys

import common  # experiments/ is this script's folder
import study_analysis

REPO = common.REPO
DIGITS_SEARCH = "experiments/results/digits_recipe_search.jsonl"
FASHION_SEARCH = "experiments/results/fashion_recipe_search.jsonl"
BENCH = "benchmarks/results/"
METHODS = BENCH + "methods_digits.jsonl"
STUDY_10 = "experiments/results/negatives_study_fashion_mnist.json"
STUDY_30 = "experiments/results/negatives_study_fashion_mnist_30ep.json"
STUDY_VALIDATION = "experiments/results/negatives_study_validation.json"
STUDY_WEIGHTS = "experiments/results/negatives_study_fashion_mnist_weights.json"
CURVE = "experiments/results/fashion_ring_curve.json"
# The Fashion-MNIST preset's runs: results.json of `configs/ring.py:fashion_mnist`, copied
# under the seed's name (results.json does not hold the seed; the file name does).
FASHION_SEEDS = {1337: "experiments/results/fashion_ring_preset_results.json",
                 1: "experiments/results/fashion_ring_preset_results_s1.json",
                 2: "experiments/results/fashion_ring_preset_results_s2.json"}
# configs/ring.py's digits recipe as the digits recipe search named it, and the recipe before
# it (the search's `default`: ring.py as it was then).
MAIN_VARIANT = "noflip_t0.1_ep60"
PREVIOUS_VARIANT = "default"
# The comparisons of the study's IR arms with each other (its JSON pairs each with uniform).
IR_PAIRS = (("ir_ring", "ir_ball"), ("ir_ring_inner3", "ir_ring"), ("ir_ring_wide", "ir_ring"))
REGENERATE = "python experiments/results_pages.py"
METHOD_NAMES = {"ir": "IR", "la": "LA", "cmc": "CMC", "moco": "MoCo", "simclr": "SimCLR"}

MARKERS = re.compile(r"<!-- BEGIN GENERATED: (?P<name>[\w-]+) -->\n(?P<body>.*?)"
                     r"<!-- END GENERATED: (?P=name) -->", re.S)


class PageError(Exception):
  """A page or a record the generator cannot use; the message names it."""


class Records:
  """The committed records under `root`, each read once."""

  def __init__(self, root):
    self.root = root
    self._cache = {}

  def json(self, path):
    if path not in self._cache:
      data = common.read_json(os.path.join(self.root, path))
      if data is None:
        raise PageError(f"{path}: no such record (or not valid JSON)")
      self._cache[path] = data
    return self._cache[path]

  def jsonl(self, path):
    if path not in self._cache:
      if not os.path.exists(os.path.join(self.root, path)):
        raise PageError(f"{path}: no such record")
      self._cache[path] = common.read_jsonl(os.path.join(self.root, path))
    return self._cache[path]

  def glob(self, pattern):
    return sorted(os.path.relpath(p, self.root)
                  for p in glob.glob(os.path.join(self.root, pattern)))


# ----------------------------------------------------------------------------------------------
# Formatting.
# ----------------------------------------------------------------------------------------------

def f3(x):
  return "-" if x is None else f"{x:.3f}"


def f2(x):
  if x is None:
    return "-"
  return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.2f}"


def signed(x):
  return "-" if x is None else f"{round(x, 3) + 0.0:+.3f}"


def pm(values):
  """'mean ± std' over the values (3 decimals); the mean alone for one value."""
  average, std, n = study_analysis.mean_std(values)
  if not n:
    return "-"
  return f3(average) + (f" ± {std:.3f}" if std is not None else "")


def mean(values):
  return study_analysis.mean_std(values)[0]


def row(*cells):
  return "| " + " | ".join(str(c) for c in cells) + " |"


def header(*names):
  return [row(*names), "|" + "---|" * len(names)]


def source(*paths):
  return "Records: " + ", ".join(f"`{p}`" for p in paths) + "."


def shot(results, n, network="trained"):
  """Few-shot mean of a results.json-shaped record (fewshot[n][network]['mean'])."""
  return ((results.get("fewshot") or {}).get(str(n), {}).get(network) or {}).get("mean")


def machine(record):
  """The machine a benchmark record names: its CPU model (or that it names none), cores,
  platform, jax, load."""
  m = record.get("machine") or {}
  cpu = record.get("cpu") or m.get("cpu") or m.get("cpu_model")
  devices = (record.get("setup") or {}).get("devices")
  if cpu:
    parts = [f"CPU {cpu}"]
  else:
    known = m.get("processor") or ("devices " + ", ".join(devices) if devices else None)
    parts = ["CPU model not recorded" + (f" ({known})" if known else "")]
  if m.get("cpu_count"):
    parts.append(f"{m['cpu_count']} cores")
  if m.get("platform"):
    parts.append(m["platform"])
  jax = m.get("jax") or record.get("jax")
  if isinstance(jax, dict):
    jax = jax.get("version")
  if jax:
    parts.append(f"jax {jax}")
  load = m.get("load_average") or m.get("load_average_before")
  if load:
    parts.append("load average " + " / ".join(f"{x:.1f}" for x in load))
  return "Machine (from the record): " + ", ".join(parts) + "."


# ----------------------------------------------------------------------------------------------
# Digits.
# ----------------------------------------------------------------------------------------------

def _search(records, variant, phase):
  return [r for r in records.jsonl(DIGITS_SEARCH) if r["variant"] == variant
          and r["phase"] == phase]


def _main_command_records(records):
  """methods_digits.jsonl's records of configs/ring.py at the main recipe, oldest first."""
  want = _search(records, MAIN_VARIANT, "test")[0]["overrides"]
  return [r for r in records.jsonl(METHODS) if r["config"] == "ring"
          and all(r.get(k) == v for k, v in want.items())
          and (r.get("eval_split") or "test") == "test" and not r.get("overrides")]


def _pixels_record(records):
  """The newest methods_digits.jsonl record of configs/ring.py with the raw pixels' kNN and the
  untrained network's few-shot scores (the same test split, the main command's initialisation:
  neither depends on the training recipe)."""
  usable = [r for r in records.jsonl(METHODS) if r["config"] == "ring"
            and r.get("raw_pixels_knn_top1") is not None and shot(r, 10, "random_init")]
  if not usable:
    raise PageError(f"{METHODS}: no record of ring with raw_pixels_knn_top1 and fewshot")
  return usable[-1]


def _shots(r):
  """A search record's 10-, 5- and 1-shot means of the trained network."""
  return [r["fewshot_trained"][n] for n in ("10", "5", "1")]


def digits_seeds(records):
  runs = _search(records, MAIN_VARIANT, "test")
  previous = _search(records, PREVIOUS_VARIANT, "test")
  lines = header("test split", "linear", "kNN", "1-NN", "10-shot", "5-shot", "1-shot",
                 "bound / cap (nats)", "steps", "process seconds")
  for r in runs:
    lines.append(row(f"seed {r['seed']}", f3(r["linear_top1"]), f3(r["knn_top1"]),
                     f3(r["nn1_top1"]), *map(f3, _shots(r)),
                     f"{r['bound_nats']:.2f} / {r['log_k_plus_1']:.2f}", r["steps"],
                     f"{r['process_seconds']:.0f}"))
  for label, group in ((f"mean ± std, {len(runs)} seeds", runs),
                       (f"previous recipe, {len(previous)} seeds", previous)):
    lines.append(row(f"**{label}**",
                     *(pm([r[k] for r in group]) for k in ("linear_top1", "knn_top1",
                                                           "nn1_top1")),
                     *(pm([_shots(r)[i] for r in group]) for i in range(3)), "-", "-", "-"))
  return "\n".join(lines + ["", source(DIGITS_SEARCH) + f" Rows: variant `{MAIN_VARIANT}` "
                            f"(previous recipe: `{PREVIOUS_VARIANT}`), phase `test`."])


def digits_baselines(records):
  runs = _search(records, MAIN_VARIANT, "test")
  ref = _pixels_record(records)
  pixels = [r["fewshot_raw_pixels"] for r in runs]
  lines = header("representation, test split", "linear", "kNN", "10-shot", "5-shot", "1-shot",
                 "record")
  lines.append(row("trained backbone, mean of the seeds above",
                   f3(mean([r["linear_top1"] for r in runs])),
                   f3(mean([r["knn_top1"] for r in runs])),
                   *(f3(mean(_shots(r)[i] for r in runs)) for i in range(3)),
                   f"`{DIGITS_SEARCH}`"))
  lines.append(row("raw pixels", " / ".join(f3(r["raw_pixels_linear_top1"]) for r in runs)
                   + " (per seed)", f3(ref["raw_pixels_knn_top1"]),
                   *(f3(mean(p[n] for p in pixels)) for n in ("10", "5", "1")),
                   f"`{DIGITS_SEARCH}`; kNN: `{METHODS}` ({_commit(ref)})"))
  lines.append(row("untrained network (the main command's initialisation)",
                   f3(ref["random_init_linear_top1"]), "-",
                   *(f3(shot(ref, n, "random_init")) for n in (10, 5, 1)),
                   f"`{METHODS}` ({_commit(ref)})"))
  return "\n".join(lines)


def digits_margins(records):
  runs = _search(records, MAIN_VARIANT, "test")
  knn_pixels = _pixels_record(records)["raw_pixels_knn_top1"]
  lines = header("trained minus raw pixels, test split", "linear", "kNN", "10-shot")
  margins = [(r["linear_top1"] - r["raw_pixels_linear_top1"], r["knn_top1"] - knn_pixels,
              r["fewshot10_margin"]) for r in runs]
  for r, m in zip(runs, margins):
    lines.append(row(f"seed {r['seed']}", *map(signed, m)))
  lines.append(row("**mean**", *(signed(mean(m[i] for m in margins)) for i in range(3))))
  lines.append(row("smallest", *(signed(min(m[i] for m in margins)) for i in range(3))))
  return "\n".join(lines + ["", "Linear and 10-shot against the same run's raw-pixel probes; "
                            "kNN against the raw pixels' kNN of the baselines table."])


def digits_main_command(records):
  found = _main_command_records(records)
  if not found:
    return (f"No record of `configs/ring.py` at this recipe in `{METHODS}` yet "
            "(`python benchmarks/methods_digits.py --configs ring` appends one).")
  r = found[-1]
  lines = header("main command (its own seed)", "linear", "kNN", "1-NN", "10-shot",
                 "bound / cap (nats)", "process seconds", "params_sha256", "commit", "CPU")
  lines.append(row("`configs/ring.py`", f3(r["linear_top1"]), f3(r["knn_top1"]),
                   f3(r["nn1_top1"]), f3(shot(r, 10)),
                   f"{r['bound_nats']:.2f} / {r['log_k_plus_1']:.2f}",
                   f"{r['wall_process']:.0f}", f"`{r['params_sha256'][:16]}`", _commit(r),
                   r.get("cpu") or "-"))
  return "\n".join(lines + ["", source(METHODS) + " The newest record of config `ring` with "
                            "views, temperature and epochs of the recipe."])


def digits_search(records):
  rows = {}
  for r in records.jsonl(DIGITS_SEARCH):
    if r["eval_split"] == "validation":
      rows.setdefault((r["variant"], r["phase"]), []).append(r)
  lines = header("variant", "overrides of configs/ring.py", "phase", "seeds", "linear", "kNN",
                 "1-NN", "10-shot")
  for (variant, phase), group in rows.items():
    lines.append(row(f"`{variant}`", _overrides(group[0]["overrides"]), phase,
                     ",".join(str(r["seed"]) for r in group),
                     *(f3(mean(r[k] for r in group)) for k in ("linear_top1", "knn_top1",
                                                               "nn1_top1")),
                     f3(mean(r["fewshot_trained"]["10"] for r in group))))
  every = [r for group in rows.values() for r in group]
  lines.append(row("raw pixels", "", "", "", f3(mean(r["raw_pixels_linear_top1"]
                                                     for r in every)), "-", "-",
                   f3(mean(r["fewshot_raw_pixels"]["10"] for r in every))))
  return "\n".join(lines + ["", source(DIGITS_SEARCH) + " Validation split "
                            "(`eval_split=validation`: held out from the training images); a "
                            "row with several seeds shows their mean."])


def _overrides(overrides):
  return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "none"


def _commit(record):
  commit = record.get("commit")
  if not commit:
    return "commit not recorded"
  return f"commit {commit[:7]}" + ("+dirty" if record.get("dirty") else "")


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST.
# ----------------------------------------------------------------------------------------------

PROBES = (("linear", lambda r: r["linear_top1"]), ("kNN", lambda r: r["knn_top1"]),
          ("1-NN", lambda r: r["nn1_top1"]), ("1-shot", lambda r: shot(r, 1)),
          ("5-shot", lambda r: shot(r, 5)), ("10-shot", lambda r: shot(r, 10)))
PIXELS = (("linear", lambda r: r["raw_pixels_linear_top1"]),
          ("kNN", lambda r: r["raw_pixels_knn_top1"]), ("1-NN", lambda r: None),
          ("1-shot", lambda r: shot(r, 1, "raw_pixels")),
          ("5-shot", lambda r: shot(r, 5, "raw_pixels")),
          ("10-shot", lambda r: shot(r, 10, "raw_pixels")))
UNTRAINED = (("linear", lambda r: r["random_init_linear_top1"]),
             ("kNN", lambda r: r["random_init_knn_top1"]),
             ("1-NN", lambda r: r["random_init_nn1_top1"]),
             ("1-shot", lambda r: shot(r, 1, "random_init")),
             ("5-shot", lambda r: shot(r, 5, "random_init")),
             ("10-shot", lambda r: shot(r, 10, "random_init")))


def fashion_seeds(records):
  runs = {seed: records.json(path) for seed, path in FASHION_SEEDS.items()}
  lines = header("test split", *(name for name, _ in PROBES), "steps", "run minutes")
  for seed, r in runs.items():
    lines.append(row(f"IR Ring, seed {seed}", *(f3(get(r)) for _, get in PROBES),
                     f"{r['steps']:,}", f"{r['wall_seconds'] / 60:.1f}"))
  n = len(runs)
  for label, getters in ((f"**mean ± std, {n} seeds**", PROBES),
                         (f"raw pixels (mean of the {n} records)", PIXELS),
                         (f"untrained network (mean ± std of the {n} initialisations)",
                          UNTRAINED)):
    cells = []
    for _, get in getters:
      values = [get(r) for r in runs.values()]
      cells.append("-" if None in values else pm(values) if "pixels" not in label
                   else f3(mean(values)))
    lines.append(row(label, *cells, "", ""))
  return "\n".join(lines + ["", source(*FASHION_SEEDS.values())])


def fashion_margins(records):
  runs = {seed: records.json(path) for seed, path in FASHION_SEEDS.items()}
  names = [name for name, _ in PROBES if name != "1-NN"]
  lines = header("trained minus raw pixels, test split", *names)
  margins = {seed: [dict(PROBES)[k](r) - dict(PIXELS)[k](r) for k in names]
             for seed, r in runs.items()}
  for seed, m in margins.items():
    lines.append(row(f"seed {seed}", *map(signed, m)))
  lines.append(row("**mean**", *(signed(mean(m[i] for m in margins.values()))
                                 for i in range(len(names)))))
  lines.append(row("smallest", *(signed(min(m[i] for m in margins.values()))
                                 for i in range(len(names)))))
  return "\n".join(lines + ["", "Each run against its own raw-pixel probes (the same images "
                            "and the same few-shot draws)."])


def fashion_curve(records):
  curve = records.json(CURVE)
  points = curve["points"]
  lines = header("training minutes", *(f"{p['seconds'] / 60:.1f}" for p in points))
  lines += [row("epochs", *(f"{p['epoch']:g}" for p in points)),
            row("linear", *(f3(p["linear_top1"]) for p in points)),
            row("kNN", *(f3(p["knn_top1"]) for p in points)),
            row("10-shot", *(f3(p["fewshot"].get("10", {}).get("mean")) for p in points))]
  return "\n".join(lines + [
      "", f"Raw pixels on the same split: linear {f3(curve['raw_pixels_linear_top1'])}, kNN "
      f"{f3(curve['raw_pixels_knn_top1'])}, 10-shot {f3(curve['raw_pixels_fewshot_10'])}. "
      f"The run: {curve['method']} {curve['negatives']}, {curve['model']} at width "
      f"{curve['width']}, views `{curve['views']}`, {curve['total_steps']:,} steps, "
      f"{curve['eval_split']} split. " + source(CURVE)])


def fashion_search(records):
  runs = records.jsonl(FASHION_SEARCH)
  lines = header("variant", "overrides", "seed", "linear", "kNN", "10-shot", "process minutes")
  for r in runs:
    lines.append(row(f"`{r['variant']}`", _overrides(r["overrides"]), r["seed"],
                     f3(r["linear_top1"]), f3(r["knn_top1"]), f3(r["fewshot_trained"]["10"]),
                     f"{r['process_seconds'] / 60:.1f}"))
  lines.append(row("raw pixels", "", "", f3(mean(r["raw_pixels_linear_top1"] for r in runs)),
                   f3(mean(r.get("raw_pixels_knn_top1") for r in runs)),
                   f3(mean(r["fewshot_raw_pixels"]["10"] for r in runs)), ""))
  return "\n".join(lines + ["", source(FASHION_SEARCH) + " Validation split "
                            "(`eval_split=validation`: held out from the training images, on "
                            "which the network does not train); every variant's flags start "
                            "from the preset as it was then (`SEARCHED_AGAINST` in "
                            "`experiments/fashion_recipe_search.py`)."])


# ----------------------------------------------------------------------------------------------
# The negatives study.
# ----------------------------------------------------------------------------------------------

def _budget(study, path):
  b = study["budget"]
  return (f"`{path}`: {study['dataset']}, {b['epochs']} epochs = {b['steps']:,} steps of batch "
          f"{b['global_batch_size']} on {b['num_train']:,} training images, "
          f"{study['eval_split']} split; commit {str(study.get('commit'))[:7]}, last written "
          f"{study.get('updated')}.")


def study_block(path):
  def block(records):
    study = records.json(path)
    return "\n".join([_budget(study, path), "", study_analysis.table(study), "",
                      study_analysis.pixels_table(study)])
  return block


def study_seeds_block(path):
  def block(records):
    return study_analysis.per_seed_table(records.json(path).get("paired", []))
  return block


def false_negatives_block(path):
  def block(records):
    return study_analysis.false_negative_table(records.json(path))
  return block


def study_ir_pairs(records):
  study = records.json(STUDY_10)
  entries = study_analysis.paired(study["runs"], IR_PAIRS)
  return "\n".join(study_analysis.pairs_table(entries) + [
      "", "Mean ± standard error of the paired differences; the interval is mean ± "
      "t(0.975, seeds - 1) x standard error. " + source(STUDY_10)])


# ----------------------------------------------------------------------------------------------
# Methods.
# ----------------------------------------------------------------------------------------------

def newest_methods(records):
  """{config: its newest test-split record without overrides} in first-appearance order."""
  out = {}
  for r in records.jsonl(METHODS):
    if (r.get("eval_split") or "test") == "test" and not r.get("overrides"):
      out.setdefault(r["config"], None)
      out[r["config"]] = r
  return out


def _one_or_range(values):
  values = [v for v in values if v is not None]
  if not values:
    return "-"
  low, high = min(values), max(values)
  return f3(low) if f3(low) == f3(high) else f"{f3(low)}-{f3(high)}"


def methods_table(records):
  newest = newest_methods(records)
  lines = header("config", "method, negatives, bound", "views, temperature, epochs", "kNN",
                 "1-NN", "linear", "10-shot (pixels)", "untrained linear", "bound / cap (nats)",
                 "process seconds", "commit", "CPU")
  for name, r in newest.items():
    recipe = ", ".join(str(r[k]) for k in ("views", "temperature", "num_epochs") if k in r)
    lines.append(row(f"`{name}.py`", f"{r['method']}, {r['negatives']}, {r.get('bound', '-')}",
                     recipe or "not recorded", f3(r["knn_top1"]), f3(r["nn1_top1"]),
                     f3(r["linear_top1"]),
                     f"{f3(shot(r, 10))} ({f3(shot(r, 10, 'raw_pixels'))})",
                     f3(r.get("random_init_linear_top1")),
                     f"{r['bound_nats']:.2f} / {r['log_k_plus_1']:.2f}",
                     f"{r['wall_process']:.0f}", _commit(r), r.get("cpu") or "not recorded"))
  rows = list(newest.values())
  lines += ["", *header("raw pixels, same split", "linear", "kNN", "10-shot"),
            row("every record above", _one_or_range(r.get("raw_pixels_linear_top1")
                                                    for r in rows),
                _one_or_range(r.get("raw_pixels_knn_top1") for r in rows),
                _one_or_range(shot(r, 10, "raw_pixels") for r in rows))]
  return "\n".join(lines + ["", source(METHODS) + " The newest test-split record of each "
                            "config (a later line replaces an earlier one)."])


# ----------------------------------------------------------------------------------------------
# Benchmarks.
# ----------------------------------------------------------------------------------------------

def from_record(path, table):
  """A block made by table(record) -> (lines, note) from one benchmark record, followed by the
  note, the machine the record names and the record's path."""
  def block(records):
    r = records.json(path)
    lines, note = table(r)
    return "\n".join(lines + ["", (note + " " if note else "") + machine(r) + " "
                              + source(path)])
  return block


def bench_ring_speed(r):
  lines = header("case", "pool", "PyTorch ms", "mi_contrast ms", "PyTorch / mi_contrast")
  for c in r["results"]:
    pool = (f"queue {c['queue']:,}" if "queue" in c else f"bank {c['bank']:,}"
            + (f", {c['candidates']:,} sampled candidates" if c.get("candidates") else ""))
    lines.append(row(c["case"], pool, f"{c['torch_median_ms']:,.0f}",
                     f"{c['jax_median_ms']:,.0f}", f"{c['speedup_torch_over_jax']:.2f}x"))
  return lines, (f"Batch {r['batch']}, dim {r['dim']}, K = {r['k']:,}, rho_o = {r['outer']}, "
                 f"rho_i = {r['inner']}; {r['statistic']}; torch {r['torch']['version']}; "
                 f"allocator: {_allocator(r)}.")


def bench_band_drift(r):
  lines = header("candidates", "mean abs. quantile error, lower edge (binomial s.e.)",
                 "upper edge (binomial s.e.)", "drawn negatives inside the exact band")

  def edge(c, side):   # the mean |quantile error| of one band edge, with its binomial s.e.
    se = c.get(f"binomial_se_{side}")
    return f"{c[f'mean_abs_quantile_error_{side}']:.4f}" + (f" ({se:.4f})" if se else "")

  lines += [row(c["candidates"] if isinstance(c["candidates"], str) else f"{c['candidates']:,}",
                edge(c, "lower"), edge(c, "upper"), f"{100 * c['inside_exact_band']:.1f}%")
            for c in r["results"]]
  return lines, (f"Bank of {r['bank']:,} rows in {r['clusters']:,} clusters, band "
                 f"[{r['lower']}, {r['upper']}], batch {r['batch']}.")


def bench_gaussian_mi(r):
  levels = [f"{x:g}" for x in r["true_mi"]]
  lines = header("true MI (nats)", *levels)
  for name, by_level in r["bounds"].items():
    lines.append(row(name, *(f"{f2(by_level[k]['mean'])} ± {_std(by_level[k]['std'])}"
                             for k in levels)))
  s = r["setup"]
  return lines, (f"Mean ± std over {s['seeds']} seeds of the estimate (nats); d = {s['dim']}, "
                 f"batch {s['batch']} (K = {s['negatives_per_example']}, cap log(K+1) = "
                 f"{r['log_k_plus_1']:.2f}), ring band {s['ring_band_quantiles']}, "
                 f"{s['wall_seconds']:.0f} s.")


def _std(x):
  return f"{x:,.0f}" if x >= 1000 else f"{x:.3f}"


def bench_views(r):
  lines = header("what", "batch", "size (px)", "images/s")
  for key in ("views_32px", "views_224px", "resnet18_step_32px"):
    c = r[key]
    lines.append(row(key, c["batch"], c["size"], f"{c['images_per_s']:,.1f}"))
  share = 100 * r["views_over_resnet18_step_32px"]
  return lines, f"Views over a ResNet-18 step at 32 px: {share:.1f}% of its time."


def bench_knn(r):
  s = r["seconds"]
  lines = header("train rows", "test rows", "dim", "k", "whole probe (s)",
                 "one chunk, barrier (s)", "one chunk, no barrier (s)", "same predictions")
  lines.append(row(f"{r['train_rows']:,}", f"{r['test_rows']:,}", r["dim"], r["k"],
                   f"{s['knn_accuracy']:.2f}", f"{s['chunk_barrier']:.2f}",
                   f"{s['chunk_no_barrier']:.2f}", r["same_predictions"]))
  return lines, ""


def _shape(shape):
  return "x".join(str(d) for d in shape) if shape else "- (not recorded)"


def _allocator(r):
  """What a timing record says of the host allocator (mi_contrast/host_malloc.py)."""
  if "host_malloc" not in r:
    return "glibc defaults (not recorded)"
  return "one arena, kept (host_malloc)" if r["host_malloc"] else "glibc defaults"


def bench_step_overhead(records):
  paths = records.glob(BENCH + "step_overhead_*.json")
  lines = header("record", "config", "overrides", "batch", "allocator", "full step views",
                 "backbone step views", "full img/s", "backbone img/s", "overhead_ratio",
                 "reps")
  machines = []
  for path in paths:
    r = records.json(path)
    backbone = r.get("backbone_view_shape") or ([1] + r["image_shape"] if r.get("image_shape")
                                                else None)
    lines.append(row(f"`{os.path.basename(path)}`", r["config"],
                     ", ".join(r.get("overrides") or []) or "-", r["global_batch"],
                     _allocator(r), _shape(r.get("full_view_shape")), _shape(backbone),
                     f"{r['full_images_per_s_per_device']:,.1f}",
                     f"{r['backbone_images_per_s_per_device']:,.1f}",
                     f"{r['overhead_ratio']:.2f}", len(r["full_times_s"])))
    machines.append(f"`{os.path.basename(path)}`: " + machine(r))
  return "\n".join(lines + [""] + ["- " + m for m in machines])


def bench_step_parts(r):
  """The breakdown of one step_overhead record: each part's share of the full step."""
  if not r.get("breakdown"):
    return ["This record was measured before the breakdown existed (no `--parts`)."], ""
  lines = header("part", "share of the full step (medians)", "median of per-repetition shares",
                 "step without it (ms)")
  for part, b in sorted(r.get("breakdown", {}).items(), key=lambda kv: -kv[1]["share"]):
    sign = "" if b.get("kind") != "added" else " (added: the old per-step data order)"
    lines.append(row(part + sign, f"{100 * b['share']:+.1f}%",
                     f"{100 * b['share_pair_median']:+.1f}%",
                     f"{1000 * b['variant_step_s']:,.0f}"))
  note = (f"Allocator: {_allocator(r)}. Full step {1000 * r['full_step_s']:,.0f} ms, backbone step "
          f"{1000 * r['backbone_step_s']:,.0f} ms on views "
          f"{_shape(r.get('backbone_view_shape'))}, overhead_ratio "
          f"{r['overhead_ratio']:.2f}; batch {r['global_batch']}, {len(r['full_times_s'])} "
          f"repetitions.")
  old = r["breakdown"].get("per_call_order")
  if old:  # the same step with the data order computed in every call, as before
    steps = r["bank_rows"] // r["global_batch"]
    per_s = lambda s: r["global_batch"] / s
    note += (f" Before the order was computed once an epoch: {per_s(old['variant_step_s']):,.0f} "
             f"images/s, {steps * old['variant_step_s'] / 60:.1f} min of steps per epoch "
             f"({steps} steps); now {per_s(r['full_step_s']):,.0f} images/s, "
             f"{steps * r['full_step_s'] / 60:.1f} min.")
  return lines, note


def bench_torch_step(r):
  lines = header("step", "median (ms)", "what")
  lines.append(row("PyTorch", f"{1000 * r['torch_step_s']:,.0f}",
                   f"torch {r['torch']['version']}, {r['torch']['threads']} threads, "
                   f"channels_last, eager"))
  lines.append(row("mi_contrast (JAX)", f"{1000 * r['jax_step_s']:,.0f}",
                   f"{r['jax_devices']} device(s), the project's train step"))
  omp = ", ".join(f"{k}={v}" for k, v in r["torch"]["omp_env"].items()) or "none"
  return lines, (f"PyTorch / JAX = {r['torch_over_jax']:.2f} (below 1: PyTorch is faster); "
                 f"allocator (both sides): {_allocator(r)}; "
                 f"batch {r['global_batch']}, views {_shape(r['view_shape'])}, bank "
                 f"{r['bank_rows']:,} rows, {r['candidates']:,} candidates, K = "
                 f"{r['num_negatives']:,}, {r['reps']} alternating repetitions; OMP: {omp}.")


def bench_bf16(r):
  lines = header("route (XLA_FLAGS)", "matmul f32 / bf16 GFLOP/s", "conv fwd bf16 / f32",
                 "conv bwd bf16 / f32", "backbone step bf16 / f32")
  for name, route in r["routes"].items():
    if "error" in route:
      lines.append(row(f"{name}", "failed: " + " ".join(route["error"]), "", "", ""))
      continue
    c = route["cases"]
    lines.append(row(f"{name} (`{route['xla_flags'] or 'none'}`)",
                     f"{c['matmul']['f32_gflops']:,.0f} / {c['matmul']['bf16_gflops']:,.0f}",
                     f"{c['conv_fwd']['bf16_over_f32']:.2f}",
                     f"{c['conv_bwd']['bf16_over_f32']:.2f}",
                     f"{c['backbone']['bf16_over_f32']:.2f} ({c['backbone']['f32_ms']:,.0f} "
                     f"ms in f32)"))
  isa = ", ".join(r["cpu_isa"]) if r.get("cpu_isa") else "not recorded"
  return lines, (f"Batch {r['batch']} of {r['size']}x{r['size']} views, width {r['width']}; "
                 f"below 1: bfloat16 is faster. CPU: {r['cpu']}, {r['cpu_count']} cores, vector "
                 f"instruction sets {isa}.")


def bench_scale(records):
  paths = (BENCH + "scale_throughput.json", BENCH + "scale_throughput_moco.json")
  lines = header("case", "config", "model", "batch", "pool", "full img/s", "backbone img/s",
                 "ratio")
  notes = []
  for path in paths:
    r = records.json(path)
    for group in ("steps", "moco_steps"):
      for name, c in (r.get(group) or {}).items():
        pool = (f"{c['bank_rows']:,}-row bank" if c["method"] == "ir"
                else f"{c['num_negatives']:,}-key queue")
        if c.get("candidates"):
          pool += f", {c['candidates']:,} candidates"
        lines.append(row(name, c["config"], c["model"], c["global_batch"], pool,
                         f"{c['full_images_per_s_per_device']:.2f}",
                         f"{c['backbone_images_per_s_per_device']:.2f}",
                         f"{c['overhead_ratio']:.2f}"))
    notes.append(f"`{os.path.basename(path)}`: " + machine(r))
  sweep = records.json(paths[0]).get("bank_sweep") or {}
  lines += ["", *header("bank rows", "exact band, ms", "band over sampled candidates, ms")]
  for rows in sorted({c["bank_rows"] for c in sweep.values()}):
    exact = [c for c in sweep.values() if c["bank_rows"] == rows and not c["candidates"]]
    sampled = [c for c in sweep.values() if c["bank_rows"] == rows and c["candidates"]]
    lines.append(row(f"{rows:,}", *(f"{1000 * g[0]['median_s']:,.0f}" if g else "-"
                                    for g in (exact, sampled))))
  return "\n".join(lines + [""] + ["- " + n for n in notes])


def bench_false_negative_cost(r):
  lines = header("config", "bank rows", "batch", "CPU-time ratio (on / off)",
                 "wall ratio (on / off)", f"within {r['budget_ratio']}x")
  for c in r["cases"]:
    lines.append(row(c["config"], f"{c['bank_rows']:,}", c["global_batch"],
                     f"{c['cpu_ratio']:.3f}", f"{c['wall_ratio']:.3f}", c["within_budget"]))
  return lines, f"{r['reps']} alternating repetitions."


def bench_fault_injection(r):
  lines = header("cycles", "killed (SIGKILL)", "steps", "final exit code",
                 "params_sha256 identical", "uninterrupted run (s)")
  lines.append(row(r["cycles"], r["killed"], r["steps"], r["final_exit_code"], r["identical"],
                   f"{r['uninterrupted_seconds']:.0f}"))
  return lines, "Flags: " + " ".join(f"`{f}`" for f in r["flags"]) + "."


def experiments_lesion(records):
  path = "experiments/results/augmentation_lesion.json"
  r = records.json(path)
  lines = []
  for preset, lesions in r.items():
    lines += header(f"{preset}: views", *lesions)
    for key, label in (("knn_top1", "kNN top-1"), ("linear_top1", "linear top-1"),
                       ("nn1_top1", "1-NN top-1")):
      lines.append(row(label, *(f3(v[key]) for v in lesions.values())))
    lines.append(row("bound / cap (nats)", *(f"{v['bound_nats']:.2f} / {v['log_k_plus_1']:.2f}"
                                             for v in lesions.values())))
    lines.append(row("untrained network, kNN", *(f3(v["random_init_knn_top1"])
                                                 for v in lesions.values())))
    lines.append(row("recipe", *(f"`{v['recipe']}`" for v in lesions.values())))
  return "\n".join(lines + ["", source(path)])


def experiments_spirals(records):
  path = "experiments/results/two_spirals.json"
  r = records.json(path)
  lines = header("eta", "transfer accuracy", "held-out MI estimate (nats)", "collapsed runs")
  for t in r["table"]:
    lines.append(row(f"{t['eta']:g}", f"{t['accuracy_mean']:.3f} ± {t['accuracy_std']:.3f}",
                     f"{t['mi_nats_mean']:.2f} ± {t['mi_nats_std']:.2f}", t["collapsed_runs"]))
  s = r["settings"]
  return "\n".join(lines + [
      "", f"Mean ± std over {s['seeds']} seeds, {s['steps']:,} steps, K = "
      f"{s['num_negatives']:,} (cap {s['mi_cap_nats']:.2f} nats). Logistic regression on the "
      f"raw points: {r['raw_input_probe_accuracy']:.3f}. " + source(path)])


# ----------------------------------------------------------------------------------------------
# The README's headline.
# ----------------------------------------------------------------------------------------------

def headline(records):
  digits = _search(records, MAIN_VARIANT, "test")
  fashion = [records.json(p) for p in FASHION_SEEDS.values()]
  study = records.json(STUDY_10)
  rings = {METHOD_NAMES.get(p["method"], p["method"]): p for p in study["paired"]
           if p["arm_a"] == f"{p['method']}_ring"}
  seeds = sorted({len(p["seeds"]) for p in rings.values()})
  lines = header("measured (test split)", "result", "raw pixels", "details")
  lines.append(row(f"digits, IR Ring (`configs/ring.py`), mean of {len(digits)} seeds: "
                   "linear / 10-shot",
                   f"{f3(mean(r['linear_top1'] for r in digits))} / "
                   f"{f3(mean(r['fewshot_trained']['10'] for r in digits))}",
                   f"{f3(mean(r['raw_pixels_linear_top1'] for r in digits))} / "
                   f"{f3(mean(r['fewshot_raw_pixels']['10'] for r in digits))}",
                   "[digits](docs/results/digits.md)"))
  lines.append(row(f"Fashion-MNIST preset, IR Ring, mean of {len(fashion)} seeds: linear / "
                   "kNN / 10-shot",
                   " / ".join(f3(mean(get(r) for r in fashion))
                              for _, get in (PROBES[0], PROBES[1], PROBES[5])),
                   " / ".join(f3(mean(get(r) for r in fashion))
                              for _, get in (PIXELS[0], PIXELS[1], PIXELS[5])),
                   "[Fashion-MNIST](docs/results/fashion_mnist.md)"))
  for metric, label in (("linear_top1", "linear"), ("fewshot_10", "10-shot")):
    lines.append(row(
        f"negatives study, Fashion-MNIST, {study['budget']['epochs']} epochs: ring minus "
        f"uniform, {label}, mean [95% t-interval] over {'/'.join(map(str, seeds))} paired "
        "seeds",
        "; ".join(f"{m}: {signed(p[metric]['mean'])} {study_analysis.t_interval(p[metric])}"
                  for m, p in rings.items()), "",
        "[negatives study](docs/results/negatives_study.md)"))
  return "\n".join(lines + ["", f"Generated from the committed records by `{REGENERATE}`."])


# ----------------------------------------------------------------------------------------------
# Pages.
# ----------------------------------------------------------------------------------------------

PAGES = {
    "docs/results/digits.md": {
        "seeds": digits_seeds, "baselines": digits_baselines, "margins": digits_margins,
        "main-command": digits_main_command, "recipe-search": digits_search},
    "docs/results/fashion_mnist.md": {
        "seeds": fashion_seeds, "margins": fashion_margins, "curve": fashion_curve,
        "recipe-search": fashion_search},
    "docs/results/negatives_study.md": {
        "study-10": study_block(STUDY_10), "seeds-10": study_seeds_block(STUDY_10),
        "ir-pairs-10": study_ir_pairs, "false-negatives-10": false_negatives_block(STUDY_10),
        "study-30": study_block(STUDY_30), "seeds-30": study_seeds_block(STUDY_30),
        "false-negatives-30": false_negatives_block(STUDY_30),
        "validation": study_block(STUDY_VALIDATION), "weights-10": study_block(STUDY_WEIGHTS)},
    "docs/results/methods.md": {"methods": methods_table},
    "docs/benchmarks.md": {
        "ring-speed": from_record(BENCH + "ring_speed.json", bench_ring_speed),
        "band-drift": from_record(BENCH + "band_drift.json", bench_band_drift),
        "gaussian-mi": from_record(BENCH + "gaussian_mi.json", bench_gaussian_mi),
        "views": from_record(BENCH + "views_throughput.json", bench_views),
        "knn-probe": from_record(BENCH + "knn_probe.json", bench_knn),
        "step-overhead": bench_step_overhead, "scale": bench_scale,
        "step-parts": from_record(BENCH + "step_overhead_ring_fashion_mnist.json",
                                  bench_step_parts),
        "torch-step": from_record(BENCH + "torch_step_ring_fashion_mnist.json",
                                  bench_torch_step),
        "bf16": from_record(BENCH + "bf16_cpu.json", bench_bf16),
        "false-negative-cost": from_record(BENCH + "false_negative_cost.json",
                                           bench_false_negative_cost),
        "fault-injection": from_record(BENCH + "fault_injection.json", bench_fault_injection),
        "augmentation-lesion": experiments_lesion, "two-spirals": experiments_spirals},
    "README.md": {"headline": headline},
}
# Pages whose prose is written elsewhere: left untouched while they have no markers.
OPTIONAL = ("README.md",)


def fill(text, blocks, page, records):
  """`text` with every generated block replaced by its function's output."""
  seen = []

  def replace(match):
    name = match["name"]
    if name not in blocks:
      raise PageError(f"{page}: unknown generated block {name!r} (known: {', '.join(blocks)})")
    seen.append(name)
    body = blocks[name](records).rstrip("\n")
    return f"<!-- BEGIN GENERATED: {name} -->\n{body}\n<!-- END GENERATED: {name} -->"

  out = MARKERS.sub(replace, text)
  missing = [name for name in blocks if name not in seen]
  if missing:
    raise PageError(f"{page}: no markers for the generated block(s) {', '.join(missing)} "
                    "(<!-- BEGIN GENERATED: name --> ... <!-- END GENERATED: name -->)")
  return out


def render(root=REPO, pages=None):
  """{page: (its text now, the text the generator writes)}; a page it leaves alone (an OPTIONAL
  page without markers) is absent, and named in the second value returned."""
  records = Records(root)
  out, skipped = {}, []
  for page, blocks in (pages or PAGES).items():
    path = os.path.join(root, page)
    try:
      with open(path) as f:
        text = f.read()
    except OSError:
      if page in OPTIONAL:
        skipped.append(page)
        continue
      raise PageError(f"{page}: no such page") from None
    if page in OPTIONAL and not MARKERS.search(text):
      skipped.append(page)
      continue
    out[page] = (text, fill(text, blocks, page, records))
  return out, skipped


def update(root=REPO, check=False):
  """Writes every page whose generated blocks differ from the records (with `check`, writes
  nothing). Returns (the pages that differed, the pages left alone)."""
  pages, skipped = render(root)
  stale = [page for page, (old, new) in pages.items() if old != new]
  if not check:
    for page in stale:
      with open(os.path.join(root, page), "w") as f:
        f.write(pages[page][1])
  return stale, skipped


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 naming each page that differs")
  args = parser.parse_args(argv)
  try:
    stale, skipped = update(check=args.check)
  except PageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for page in skipped:
    print(f"{page}: no generated markers; left untouched")
  for page in stale:
    print(f"{page}: differs from what `{REGENERATE}` writes" if args.check else
          f"{page}: written")
  if not stale:
    print("every page matches its records")
  return 1 if args.check and stale else 0


if __name__ == "__main__":
  sys.exit(main())
