"""The trainer: build the run, restore or initialise its state, loop over steps, probe, report.

  run     <- run.build_run(config)                    (mesh, data, encoder, method, optimiser)
  state   <- checkpoints.restore_latest, or run.create_train_state
  loop    <- step.make_train_step(run), fed the epoch's data order (step.EpochOrder, once an
             epoch) for in-memory data: metrics fetched every log_every_steps, the kNN monitor
             every eval_every_steps, checkpoints every checkpoint_every_steps and on SIGTERM
  results <- results.probe_networks (trained, untrained, raw pixels) -> results.json, report.md
The pieces live in their own modules (run, step, checkpoints, probes, results); this module
holds the loop only.
"""

import collections
import contextlib
import dataclasses
import json
import math
import os
import time

import jax
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mi_contrast import checkpoints
from mi_contrast import files
from mi_contrast import multihost
from mi_contrast import probes
from mi_contrast import report
from mi_contrast import results as results_lib
from mi_contrast import run as run_lib
from mi_contrast import step as step_lib
from mi_contrast import writers
from mi_contrast import workdir_lock
from mi_contrast.mesh import AXIS

# Every training step of the loop runs under this transfer guard: an implicit transfer between
# host and device inside a step (a stray float(), a host constant, a resharded input) raises
# instead of silently synchronising every step. Metrics are fetched, evaluation runs and
# checkpoints are written outside it. (On the CPU backend JAX does not guard device-to-host
# reads, which copy nothing there; tests/test_scale.py adds a detector for those.)
STEP_TRANSFER_GUARD = "disallow"


def _device_prefetch(host_batches, sharding, depth=2):
  """Host batches -> global device arrays, `depth` batches ahead of the step that uses them
  (the transfers are asynchronous, so they overlap the running step)."""
  queue = collections.deque()
  to_global = lambda batch: tuple(jax.make_array_from_process_local_data(sharding, x)
                                  for x in batch)
  for batch in host_batches:
    queue.append(to_global(batch))
    if len(queue) > depth:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def _step_guard():
  """The context every step of the loop runs in (inputs fetched and step dispatched)."""
  return jax.transfer_guard(STEP_TRANSFER_GUARD)


@dataclasses.dataclass
class RunOutcome:
  results: dict
  preempted: bool = False
  reused: bool = False     # a finished run's saved results.json, returned without probing


def train_and_evaluate(config, workdir, *, stop_after_steps=None, reevaluate=False):
  """Trains (resuming from `workdir`'s newest checkpoint), evaluates, writes results.json.

  Process 0 holds the workdir's lock (workdir_lock: `<workdir>/run.lock`) for the whole call,
  so a second run on the same workdir is refused before it writes anything.

  A finished run started again (its newest checkpoint is at the last step) returns the saved
  results.json without probing, when that file is of the same run: the same steps, the same
  config (`config_sha256`) and the checkpoint's `params_sha256`. Otherwise, or with
  `reevaluate`, it probes the final network again and rewrites results.json.

  Args:
    config: a ConfigDict from configs/*.py.
    workdir: directory for checkpoints, metrics and results.
    stop_after_steps: stop (with a checkpoint) once this step is reached; for tests of resume.
    reevaluate: probe a finished run again even if its results.json is up to date.
  Returns:
    RunOutcome with the results dict (also written to workdir/results.json when finished). For
    saved results (`reused`), 'resumed_from_step' is this call's (the last step).
  """
  is_lead = multihost.is_lead()
  created = is_lead and not os.path.exists(workdir)
  if is_lead:
    os.makedirs(workdir, exist_ok=True)
  # One process: a SIGTERM outside the loop (loading, compiling, probing) exits through the
  # lock's release. Several: JAX's preemption service owns SIGTERM.
  on_sigterm = (workdir_lock.exit_on_sigterm() if jax.process_count() == 1
                else contextlib.nullcontext())
  try:
    with workdir_lock.held(workdir, enabled=is_lead), on_sigterm:
      multihost.sync("workdir lock")  # the peers write nothing before process 0 holds the lock
      return _train_and_evaluate(config, workdir, stop_after_steps=stop_after_steps,
                                 reevaluate=reevaluate)
  finally:
    if created:  # a run that failed before writing anything leaves no empty workdir behind
      _remove_if_empty(workdir)


def _remove_if_empty(workdir):
  """Removes `workdir` if it holds nothing but an empty checkpoints/ folder (or nothing)."""
  folder = os.path.join(workdir, "checkpoints")
  if os.listdir(workdir) == ["checkpoints"] and not os.listdir(folder):
    os.rmdir(folder)
  if not os.listdir(workdir):
    os.rmdir(workdir)


def _train_and_evaluate(config, workdir, *, stop_after_steps, reevaluate):
  start_time = time.time()
  manager = checkpoints.checkpoint_manager(workdir, config)
  saved = None if reevaluate else results_lib.saved_results(config, workdir, manager)
  if saved is not None:  # a finished run started again: its saved results, not probed again
    logging.info("The run finished (step %d of %d) and %s is up to date: not probing again "
                 "(--reevaluate probes again).", saved["steps"], saved["steps"],
                 os.path.join(workdir, "results.json"))
    return RunOutcome(saved, reused=True)
  run = run_lib.build_run(config)
  if manager.all_steps():
    checkpoints.check_resume_config(workdir, config, run.plan.bank_rows)
  state, resumed_from, band_start = _start_or_resume(run, manager, workdir)
  loop = _Loop(run, workdir, manager, state, resumed_from, band_start, stop_after_steps)
  preempted = loop.run()
  if loop.step < run.plan.total_steps:
    loop.writer.flush()
    return RunOutcome({"steps": loop.step, "resumed_from_step": resumed_from},
                      preempted=preempted)
  return RunOutcome(_finish(run, workdir, loop, start_time))


def _start_or_resume(run, manager, workdir):
  """(state on the mesh, the step it starts from, the band at step 0): the newest readable
  checkpoint, or a fresh state whose config.json and run.json process 0 writes."""
  init_state = run_lib.create_train_state(run)
  shardings = run_lib.state_shardings(run.config, init_state, run.mesh)
  band_start = [float(x) for x in run.band_fn(0, init_state.ring_state)[0]]
  restored = checkpoints.restore_latest(manager, init_state, shardings)
  if restored is not None:
    logging.info("Resuming from the checkpoint at step %d of %d.", restored[1],
                 run.plan.total_steps)
    return (*restored, band_start)
  if multihost.is_lead():
    mean, std = run.data.channel_stats()
    files.write_json(os.path.join(workdir, "config.json"), json.loads(run.config.to_json()))
    files.write_json(os.path.join(workdir, "run.json"), {
        "memory_bank_rows": run.plan.bank_rows, "num_devices": run.plan.num_devices,
        "num_processes": jax.process_count(),
        "channel_mean": list(mean), "channel_std": list(std)})
  return jax.device_put(init_state, shardings), 0, band_start


class _Loop:
  """The training loop of a run from `state` (at step `resumed_from`) to the last step, or to
  `stop_after_steps`, or to a SIGTERM. Metrics stay on the device until they are written."""

  def __init__(self, run, workdir, manager, state, resumed_from, band_start, stop_after_steps):
    config, plan = run.config, run.plan
    self.run_, self.workdir, self.manager, self.state = run, workdir, manager, state
    self.resumed_from = self.step = resumed_from
    self.stop_at = (plan.total_steps if stop_after_steps is None
                    else min(plan.total_steps, stop_after_steps))
    self.pending = []        # (step, device metrics) not yet fetched: no host sync per step
    self.last_good = resumed_from if resumed_from else None
    self.last_metrics = {}
    self.band_start = band_start   # the band at step 0 (results.json)
    self.writer = writers.create(workdir, is_lead=multihost.is_lead())
    if resumed_from == 0:
      self.writer.write_hparams({k: v for k, v in json.loads(config.to_json()).items()
                                 if not isinstance(v, dict)})
    self.progress = writers.Progress(plan.total_steps, resumed_from, config.global_batch_size,
                                     plan.num_devices)
    self.train_step = step_lib.make_train_step(
        run, state_spec=run_lib.state_specs(config, state))
    if run.streaming:
      batches = run.data.train_batches(config.seed, resumed_from, config.global_batch_size,
                                       plan.steps_per_epoch)
      self.inputs = _device_prefetch(batches, NamedSharding(run.mesh, P(AXIS))).__next__
    else:  # the images on the devices, and the epoch's order (computed once an epoch)
      orders = step_lib.EpochOrder(run)
      self.inputs = lambda: (run.images["pretrain"], orders(self.state, self.step))

  def run(self):
    """Steps to `stop_at`; returns whether a SIGTERM stopped it (after a checkpoint)."""
    config = self.run_.config
    with checkpoints.Preemption() as preemption:
      while self.step < self.stop_at:
        with _step_guard():
          self.state, metrics = self.train_step(self.state, *self.inputs())
        self.step += 1
        self.pending.append((self.step, metrics))
        if self.step % config.log_every_steps == 0 or self.step == self.stop_at:
          self.flush_metrics()
        if self.step % config.eval_every_steps == 0 and self.step < self.run_.plan.total_steps:
          self.monitor()
        if self.step % config.checkpoint_every_steps == 0 or self.step == self.stop_at:
          self.save()
        if preemption.reached(self.step):
          if self.last_good != self.step:
            self.save()
          logging.warning("SIGTERM: checkpoint written at step %d; the same command resumes.",
                          self.step)
          return True
      self.flush_metrics()
    return False

  def flush_metrics(self):
    """Fetches the pending metrics, stops on a non-finite loss, writes the newest."""
    if not self.pending:
      return
    fetched = jax.device_get(self.pending)
    self.pending = []
    for s, m in fetched:
      m = {k: float(v) for k, v in m.items()}
      if not math.isfinite(m["loss"]):
        where = (f"the last good checkpoint is step {self.last_good} in "
                 f"{self.manager.directory}" if self.last_good is not None
                 else "no checkpoint was written yet")
        raise FloatingPointError(
            f"non-finite loss {m['loss']} at step {s}; stopping without checkpointing the bad "
            f"state ({where}). Lower config.learning_rate or check the data.")
      self.last_metrics = m
    self.writer.write_scalars(fetched[-1][0], self.last_metrics)
    self.progress.report(fetched[-1][0], self.last_metrics)

  def monitor(self):
    """The kNN monitor of the current network."""
    run = self.run_
    variables = {"params": self.state.params, "batch_stats": self.state.batch_stats}
    knn = probes.probe_knn(run.config, run.model, variables, run.data, run.images, run.mesh)
    self.writer.write_scalars(self.step, knn)
    logging.info("step %d: kNN top-1 %.4f, 1-NN top-1 %.4f", self.step, knn["knn_top1"],
                 knn["nn1_top1"])

  def save(self):
    self.flush_metrics()  # never checkpoint a state whose loss is not finite
    checkpoints.save(self.manager, self.step, self.state)
    self.last_good = self.step


def _finish(run, workdir, loop, start_time):
  """The end of a finished run: probes, results.json and report.md; returns the results."""
  probed = results_lib.probe_networks(run, loop.state)
  last = loop.last_metrics
  if not last:  # a finished run started again: its last logged training metrics
    last = writers.last_scalars(workdir, ("loss", "bound_nats", "log_k_plus_1"))
  results = results_lib.results_record(
      run, loop.state, probed,
      {"metrics": last, "band_start": loop.band_start, "resumed_from": loop.resumed_from},
      start_time)
  loop.writer.write_scalars(loop.step, {k: v for k, v in probed[0].items() if k != "fewshot"})
  loop.writer.flush()
  if multihost.is_lead():
    files.write_json(os.path.join(workdir, "results.json"), results)
    report.write_report(workdir)
  logging.info("results: %s", json.dumps(results, sort_keys=True))
  return results
