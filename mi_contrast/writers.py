"""Metric writers and the progress display.

Scalars always go to `<workdir>/metrics.jsonl` (one JSON object per write, read back by reports
and by a finished run started again) and to the log. When TensorFlow is installed, clu's
writer also writes TensorBoard summaries; without it (clu's writers import TensorFlow) the
plain writer is used alone, so the trainer runs without TensorFlow.
"""

import json
import os
import time

from absl import logging


class _JsonlWriter:
  """The clu MetricWriter calls the trainer uses, appending to metrics.jsonl."""

  def __init__(self, path):
    self._path = path

  def write_scalars(self, step, scalars):
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    with open(self._path, "a") as f:
      f.write(json.dumps(record) + "\n")

  def write_hparams(self, hparams):
    with open(os.path.join(os.path.dirname(self._path), "hparams.json"), "w") as f:
      json.dump(hparams, f, indent=2, sort_keys=True, default=str)

  def flush(self):
    pass


class _Writers:
  def __init__(self, writers):
    self._writers = writers

  def write_scalars(self, step, scalars):
    for w in self._writers:
      w.write_scalars(step, scalars)

  def write_hparams(self, hparams):
    for w in self._writers:
      w.write_hparams(hparams)

  def flush(self):
    for w in self._writers:
      w.flush()


class _Silent:
  def write_scalars(self, step, scalars):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass


def create(workdir, *, is_lead=True):
  """metrics.jsonl, plus TensorBoard through clu when TensorFlow is importable (lead only)."""
  if not is_lead:
    return _Silent()
  writers = [_JsonlWriter(os.path.join(workdir, "metrics.jsonl"))]
  try:
    from clu import metric_writers  # imports TensorFlow
    writers.append(metric_writers.create_default_writer(
        os.path.join(workdir, "tensorboard"), asynchronous=False))
  except ImportError:
    logging.info("TensorFlow is not installed: no TensorBoard summaries, metrics.jsonl only.")
  return _Writers(writers)


def read_scalars(workdir):
  """All records of `<workdir>/metrics.jsonl`, in order."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def last_scalars(workdir, keys):
  """The newest record of metrics.jsonl that holds every key in `keys`."""
  for record in reversed(read_scalars(workdir)):
    if all(k in record for k in keys):
      return record
  raise FileNotFoundError(f"{workdir}/metrics.jsonl holds no record with {keys}.")


class Progress:
  """Logs step, loss, bound, the band and the false-negative share (when logged), throughput
  (images/s per device) and the ETA."""

  def __init__(self, num_steps, first_step, global_batch, num_devices):
    self._num_steps = num_steps
    self._last_step = first_step
    self._last_time = time.time()
    self._batch = global_batch
    self._devices = num_devices
    self._rate = None

  def report(self, step, metrics):
    now = time.time()
    steps = step - self._last_step
    if steps > 0:
      rate = steps / max(now - self._last_time, 1e-9)
      self._rate = rate if self._rate is None else 0.5 * self._rate + 0.5 * rate
    self._last_step, self._last_time = step, now
    eta = (self._num_steps - step) / self._rate if self._rate else float("nan")
    per_device = (self._rate or 0.0) * self._batch / self._devices
    band = (f"  band [{metrics['band_lower']:.3f}, {metrics['band_upper']:.3f}]"
            if "band_lower" in metrics else "")
    if "false_negative_share" in metrics:  # labelled data only
      band += f"  false negatives {metrics['false_negative_share']:.3f}"
    logging.info("step %d/%d  loss %.4f  bound %.3f / cap %.3f nats%s  %.1f img/s/device  "
                 "ETA %s", step, self._num_steps, metrics["loss"], metrics["bound_nats"],
                 metrics["log_k_plus_1"], band, per_device, _format_eta(eta))


def _format_eta(seconds):
  if seconds != seconds:  # NaN: rate unknown yet
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
