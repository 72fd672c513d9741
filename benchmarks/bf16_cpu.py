"""bfloat16 on the CPU: where the time of a bfloat16 backbone step goes, and whether an XLA
route uses the CPU's bfloat16 units.

Command:  python benchmarks/bf16_cpu.py [--reps=7] [--batch=256] [--size=20] [--width=16]
              [--routes=default,onednn,onednn_custom_call,xnnpack] [--output=FILE|-]

For each route (a set of XLA_FLAGS, run in its own child process, since XLA reads its flags
once), times float32 against bfloat16, alternately within each repetition, medians of --reps
calls after a compile and a warm-up call:
  matmul        a 2048 x 2048 x 2048 product (GFLOP/s)
  conv_fwd      the width-16 ResNet's 3x3 convolution at the preset's view size: batch x size x
                size x width -> width channels, NHWC (GFLOP/s)
  conv_bwd      its backward (input and weight gradients)
  backbone      the project's digits encoder (models.build_encoder, width 16) forward and
                backward on
                batch x size x size x 1 views with a trivial loss, as benchmarks/step_overhead.py
                times it: parameters float32, computation in config.compute_dtype
The ratio bf16 / f32 of each (below 1: bfloat16 is faster) says where bfloat16 helps or hurts.
Prints progress, then the record as one JSON line; writes benchmarks/results/bf16_cpu.json.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROUTES = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_custom_call": ("--xla_cpu_use_onednn=true "
                           "--xla_cpu_experimental_onednn_custom_call=true"),
    "xnnpack": "--xla_cpu_use_xnnpack=true",
}
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bf16_cpu.json")


def cpu_model():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


# The instruction sets that decide which kernels XLA can use for float32 and bfloat16.
ISA = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_isa():
  """The CPU's vector instruction sets of ISA that /proc/cpuinfo lists (None elsewhere)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          flags = set(line.split(":", 1)[1].split())
          return [name for name in ISA if name in flags]
  except OSError:
    pass
  return None


def child(args):
  """Times every case in float32 and bfloat16 in this process; prints one JSON line."""
  import jax
  import jax.numpy as jnp
  import optax
  from mi_contrast import models

  def timed(fn, *xs):
    start = time.perf_counter()
    jax.block_until_ready(fn(*xs))
    return time.perf_counter() - start

  key = jax.random.key(0)
  b, s, w = args.batch, args.size, args.width
  cases = {}

  def matmul(dtype):
    x = jax.random.normal(key, (2048, 2048), dtype)
    f = jax.jit(lambda a, c: a @ c)
    return f, (x, x), 2 * 2048 ** 3

  def conv(dtype, backward):
    x = jax.random.normal(key, (b, s, s, w), dtype)
    k = jax.random.normal(key, (3, 3, w, w), dtype)
    dn = ("NHWC", "HWIO", "NHWC")
    fwd = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dn)
    flops = 2 * b * s * s * w * w * 9
    if not backward:
      return jax.jit(fwd), (x, k), flops
    grad = jax.jit(jax.grad(lambda x, k: jnp.sum(fwd(x, k).astype(jnp.float32) ** 2),
                            argnums=(0, 1)))
    return grad, (x, k), 2 * flops

  def backbone(dtype):
    net = models.build_encoder(_config(dtype), (0.5,), (0.25,), bn_axis_name=None)
    x = jax.random.uniform(key, (b, s, s, 1), jnp.float32)
    variables = net.init(key, x, train=False)
    tx = optax.sgd(0.1, momentum=0.9)
    opt = tx.init(variables["params"])

    def step(params, stats, opt, x):
      def loss(p):
        (_, z), upd = net.apply({"params": p, "batch_stats": stats}, x, train=True,
                                mutable=["batch_stats"])
        return jnp.mean(jnp.square(z.astype(jnp.float32))), upd["batch_stats"]
      (_, stats), g = jax.value_and_grad(loss, has_aux=True)(params)
      upd, opt = tx.update(g, opt, params)
      return optax.apply_updates(params, upd), stats, opt

    return jax.jit(step), (variables["params"], variables["batch_stats"], opt, x), None

  def _config(dtype):
    from mi_contrast import config as config_lib
    c = config_lib.default_config()
    c.width = w
    c.image_size = s
    c.compute_dtype = "bfloat16" if dtype == jnp.bfloat16 else "float32"
    return c

  makers = {"matmul": matmul, "conv_fwd": lambda d: conv(d, False),
            "conv_bwd": lambda d: conv(d, True), "backbone": backbone}
  for name in args.cases.split(","):
    built = {d: makers[name](dt) for d, dt in (("f32", jnp.float32), ("bf16", jnp.bfloat16))}
    for fn, xs, _ in built.values():
      timed(fn, *xs)
      timed(fn, *xs)
    times = {"f32": [], "bf16": []}
    for rep in range(args.reps):
      order = ("f32", "bf16") if rep % 2 == 0 else ("bf16", "f32")
      for d in order:
        fn, xs, _ = built[d]
        times[d].append(timed(fn, *xs))
    med = {d: statistics.median(t) for d, t in times.items()}
    flops = built["f32"][2]
    cases[name] = {
        "f32_ms": 1e3 * med["f32"], "bf16_ms": 1e3 * med["bf16"],
        "bf16_over_f32": med["bf16"] / med["f32"],
        **({"f32_gflops": flops / med["f32"] / 1e9, "bf16_gflops": flops / med["bf16"] / 1e9}
           if flops else {}),
    }
    print(f"  {name}: f32 {cases[name]['f32_ms']:.1f} ms, bf16 {cases[name]['bf16_ms']:.1f} ms",
          file=sys.stderr, flush=True)
  print(json.dumps(cases))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--reps", type=int, default=7)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--size", type=int, default=20)
  parser.add_argument("--width", type=int, default=16)
  parser.add_argument("--cases", default="matmul,conv_fwd,conv_bwd,backbone")
  parser.add_argument("--routes", default=",".join(ROUTES))
  parser.add_argument("--output", default=OUT)
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return child(args)
  load_before = os.getloadavg()
  routes = {}
  for route in args.routes.split(","):
    flags = ROUTES[route]
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flags).strip(),
               JAX_PLATFORMS="cpu")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", f"--reps={args.reps}",
           f"--batch={args.batch}", f"--size={args.size}", f"--width={args.width}",
           f"--cases={args.cases}"]
    print(f"route {route}: XLA_FLAGS={env['XLA_FLAGS']!r}", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.stderr.write(out.stderr[-3000:])
    if out.returncode != 0:
      routes[route] = {"xla_flags": flags, "error": out.stderr.strip().splitlines()[-1:]}
      continue
    routes[route] = {"xla_flags": flags, "cases": json.loads(out.stdout.strip().splitlines()[-1])}
  record = {
      "benchmark": "bf16_cpu", "cpu": cpu_model(), "cpu_isa": cpu_isa(),
      "cpu_count": os.cpu_count(),
      "load_before": load_before, "load_after": os.getloadavg(),
      "batch": args.batch, "size": args.size, "width": args.width, "reps": args.reps,
      "routes": routes,
      "date": time.strftime("%Y-%m-%d"),
  }
  text = json.dumps(record)
  if args.output != "-":
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output + ".tmp", "w") as f:
      f.write(json.dumps(record, indent=1) + "\n")
    os.replace(args.output + ".tmp", args.output)
  print(text)


if __name__ == "__main__":
  main()
