"""Backbone export: torchvision and Detectron2 names and shapes, values, the CLI on a real run.

The expected layouts are written out here from torchvision's ResNet definition (BasicBlock /
Bottleneck, `_make_layer`) and Detectron2's convert-torchvision-to-d2.py renaming rules, without
torch, so that they check the exporter instead of restating it.
"""

import json
import os
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mi_contrast import export
from mi_contrast import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# torchvision.models.resnet: (block, layers) per depth; Bottleneck.expansion = 4.
TORCHVISION_RESNETS = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]),
                       50: ("bottleneck", [3, 4, 6, 3])}


def _bn(name, channels):
  return [(f"{name}.weight", (channels,)), (f"{name}.bias", (channels,)),
          (f"{name}.running_mean", (channels,)), (f"{name}.running_var", (channels,)),
          (f"{name}.num_batches_tracked", ())]


def torchvision_layout(block, layers, *, stem_kernel, in_channels=3, width=64):
  """[(name, shape)] of torchvision's ResNet state dict without `fc`, in state-dict order."""
  expansion = 4 if block == "bottleneck" else 1
  layout = [("conv1.weight", (width, in_channels, stem_kernel, stem_kernel))] + _bn("bn1", width)
  inplanes = width
  for i, blocks in enumerate(layers, start=1):
    planes = width * 2 ** (i - 1)
    stride = 1 if i == 1 else 2
    for b in range(blocks):
      p = f"layer{i}.{b}"
      if block == "basic":
        layout += [(f"{p}.conv1.weight", (planes, inplanes, 3, 3))] + _bn(f"{p}.bn1", planes)
        layout += [(f"{p}.conv2.weight", (planes, planes, 3, 3))] + _bn(f"{p}.bn2", planes)
      else:
        layout += [(f"{p}.conv1.weight", (planes, inplanes, 1, 1))] + _bn(f"{p}.bn1", planes)
        layout += [(f"{p}.conv2.weight", (planes, planes, 3, 3))] + _bn(f"{p}.bn2", planes)
        layout += [(f"{p}.conv3.weight", (planes * expansion, planes, 1, 1))]
        layout += _bn(f"{p}.bn3", planes * expansion)
      if b == 0 and (stride != 1 or inplanes != planes * expansion):
        layout += [(f"{p}.downsample.0.weight", (planes * expansion, inplanes, 1, 1))]
        layout += _bn(f"{p}.downsample.1", planes * expansion)
      inplanes = planes * expansion
  return layout


def detectron2_layout(torchvision):
  """Detectron2's names for a torchvision layout (convert-torchvision-to-d2.py's rules)."""
  out = []
  for name, shape in torchvision:
    if name.endswith("num_batches_tracked"):
      continue  # Detectron2's (frozen) BatchNorm has no such buffer
    if "layer" not in name:
      name = "stem." + name
    for t in (1, 2, 3, 4):
      name = name.replace(f"layer{t}", f"res{t + 1}")
    for t in (1, 2, 3):
      name = name.replace(f"bn{t}", f"conv{t}.norm")
    name = name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
    out.append((name, shape))
  return out


def random_variables(model, image_shape, seed=0):
  """Shapes from the model, distinct random values (so a swapped tensor cannot pass)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1,) + image_shape), train=False))
  rng = np.random.RandomState(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


def _shapes(tensors):
  return [(name, tuple(np.shape(value))) for name, value in tensors.items()]


def test_layout_anchors():
  """The hand-written layout against facts about torchvision's models (120 / 318 tensors)."""
  r18 = dict(torchvision_layout(*TORCHVISION_RESNETS[18], stem_kernel=3))
  r50 = dict(torchvision_layout(*TORCHVISION_RESNETS[50], stem_kernel=7))
  assert len(r18) == 122 - 2 and len(r50) == 320 - 2  # state_dict() minus fc.weight, fc.bias
  assert r18["conv1.weight"] == (64, 3, 3, 3)
  assert r18["layer1.0.conv1.weight"] == (64, 64, 3, 3)
  assert r18["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
  assert "layer1.0.downsample.0.weight" not in r18
  assert r50["conv1.weight"] == (64, 3, 7, 7)
  assert r50["layer1.0.conv3.weight"] == (256, 64, 1, 1)
  assert r50["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
  assert r50["layer4.2.conv3.weight"] == (2048, 512, 1, 1)


@pytest.mark.slow   # builds three ResNets (ResNet-50 included)
@pytest.mark.parametrize("arch,depth,stem,kernel", [
    ("resnet18", 18, "cifar", 3), ("resnet50", 50, "imagenet", 7), ("resnet34", 34, "cifar", 3)])
def test_torchvision_and_detectron2_layouts(arch, depth, stem, kernel):
  model = models.ContrastiveEncoder(arch=arch, stem=stem, head_hidden=32, embedding_dim=16)
  variables = random_variables(model, (32, 32, 3))
  expected = torchvision_layout(*TORCHVISION_RESNETS[depth], stem_kernel=kernel)

  tv = export.export_backbone(variables["params"], variables["batch_stats"], "torchvision")
  assert _shapes(tv) == expected
  assert all(v.dtype == np.float32 for k, v in tv.items() if "num_batches" not in k)
  assert all(v.dtype == np.int64 and v.shape == () and v == 0
             for k, v in tv.items() if "num_batches" in k)

  d2 = export.export_backbone(variables["params"], variables["batch_stats"], "detectron2")
  assert _shapes(d2) == detectron2_layout(expected)

  # Values: HWIO -> OIHW, BatchNorm scale/bias/mean/var -> weight/bias/running_mean/var.
  backbone, stats = variables["params"]["backbone"], variables["batch_stats"]["backbone"]
  kernel_flax = backbone["layer2_0"]["conv2"]["kernel"]  # [3, 3, C_in, C_out]
  assert tv["layer2.0.conv2.weight"][7, 5, 2, 1] == kernel_flax[2, 1, 5, 7]
  np.testing.assert_array_equal(tv["conv1.weight"],
                                np.transpose(backbone["conv1"]["kernel"], (3, 2, 0, 1)))
  block = "layer1_0"
  last_bn = "bn3" if arch == "resnet50" else "bn2"
  np.testing.assert_array_equal(tv[f"layer1.0.{last_bn}.weight"], backbone[block][last_bn]["scale"])
  np.testing.assert_array_equal(tv[f"layer1.0.{last_bn}.bias"], backbone[block][last_bn]["bias"])
  np.testing.assert_array_equal(tv[f"layer1.0.{last_bn}.running_mean"],
                                stats[block][last_bn]["mean"])
  np.testing.assert_array_equal(tv[f"layer1.0.{last_bn}.running_var"], stats[block][last_bn]["var"])
  np.testing.assert_array_equal(d2["res3.0.shortcut.norm.running_var"],
                                stats["layer2_0"]["downsample_bn"]["var"])
  np.testing.assert_array_equal(d2["stem.conv1.weight"], tv["conv1.weight"])

  payload = export.export_payload(variables["params"], variables["batch_stats"], "detectron2")
  assert payload["__author__"] == "mi_contrast" and payload["matching_heuristics"] is True
  assert list(payload["model"]) == list(d2)


def test_digits_backbone_exports_with_its_grey_stem():
  model = models.ContrastiveEncoder(arch="resnet_digits", width=8, head_hidden=32,
                                    embedding_dim=16)
  variables = random_variables(model, (16, 16, 1))
  tv = export.export_backbone(variables["params"], variables["batch_stats"], "torchvision")
  expected = torchvision_layout("basic", [1, 1, 1], stem_kernel=3, in_channels=1, width=8)
  assert _shapes(tv) == expected
  assert tv["conv1.weight"].shape == (8, 1, 3, 3)
  d2 = export.export_backbone(variables["params"], variables["batch_stats"], "detectron2")
  assert _shapes(d2) == detectron2_layout(expected)
  assert {name.split(".")[0] for name in d2} == {"stem", "res2", "res3", "res4"}


def test_unknown_format_and_unknown_module():
  model = models.ContrastiveEncoder(arch="resnet_digits", width=8, head_hidden=32,
                                    embedding_dim=16)
  variables = random_variables(model, (16, 16, 1))
  with pytest.raises(ValueError, match="allowed values are torchvision, detectron2"):
    export.export_backbone(variables["params"], variables["batch_stats"], "onnx")
  params = dict(variables["params"]["backbone"])
  params["fc"] = {"kernel": np.zeros((8, 10), np.float32)}
  with pytest.raises(ValueError, match="fc"):
    export.export_backbone(params, variables["batch_stats"], "torchvision")


# ----------------------------------------------------------------------------------------------
# The command line on a tiny trained run.
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def trained_run(tiny_run):
  return tiny_run[0]


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
  return env


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "mi_contrast.export", *args], cwd=REPO,
                        env=_env(), capture_output=True, text=True, timeout=300)


_LOAD_WITHOUT_JAX = """
import pickle, sys
with open(sys.argv[1], "rb") as f:
  state = pickle.load(f)
assert "jax" not in sys.modules and "flax" not in sys.modules, "the pickle needs JAX"
import json
import numpy as np
assert all(type(v) is np.ndarray for v in state.values())
print(json.dumps([[name, str(value.dtype), list(value.shape)] for name, value in state.items()]))
"""


@pytest.mark.slow
def test_cli_exports_a_trained_run(trained_run, tmp_path):
  output = tmp_path / "backbone.pkl"
  proc = _cli(f"--workdir={trained_run}", "--format=torchvision", f"--output={output}")
  assert proc.returncode == 0, proc.stderr[-3000:]

  loaded = subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_JAX, str(output)], env=_env(),
                          capture_output=True, text=True, timeout=120)
  assert loaded.returncode == 0, loaded.stderr[-3000:]
  listed = json.loads(loaded.stdout)
  assert [(name, tuple(shape)) for name, _, shape in listed] == torchvision_layout(
      "basic", [1, 1, 1], stem_kernel=3, in_channels=1, width=8)
  assert {dtype for name, dtype, _ in listed if "num_batches" not in name} == {"float32"}

  # The values are the checkpoint's (step 2), read back by orbax without the exporter's help.
  saved = ocp.StandardCheckpointer().restore(trained_run / "checkpoints" / "2" / "default")
  with open(output, "rb") as f:
    state = pickle.load(f)
  params, stats = saved["params"]["backbone"], saved["batch_stats"]["backbone"]
  kernel = np.asarray(params["layer2_0"]["conv2"]["kernel"])
  np.testing.assert_array_equal(state["layer2.0.conv2.weight"], kernel.transpose(3, 2, 0, 1))
  np.testing.assert_array_equal(state["layer3.0.downsample.1.running_mean"],
                                stats["layer3_0"]["downsample_bn"]["mean"])
  np.testing.assert_array_equal(state["bn1.weight"], params["bn1"]["scale"])

  # An existing file is kept unless --overwrite is given.
  before = output.read_bytes()
  refused = _cli(f"--workdir={trained_run}", "--format=torchvision", f"--output={output}")
  assert refused.returncode != 0
  assert "already exists" in refused.stderr and "--overwrite" in refused.stderr
  assert output.read_bytes() == before


@pytest.mark.slow
def test_export_run_detectron2_and_overwrite(trained_run, tmp_path):
  output = str(tmp_path / "backbone_d2.pkl")
  info = export.export_run(str(trained_run), "detectron2", output)
  assert info["checkpoint_step"] == 2
  with open(output, "rb") as f:
    payload = pickle.load(f)
  assert set(payload) == {"model", "__author__", "matching_heuristics"}
  assert payload["__author__"] == "mi_contrast" and payload["matching_heuristics"] is True
  expected = torchvision_layout("basic", [1, 1, 1], stem_kernel=3, in_channels=1, width=8)
  assert _shapes(payload["model"]) == detectron2_layout(expected)

  with pytest.raises(FileExistsError, match="--overwrite"):
    export.export_run(str(trained_run), "detectron2", output)
  export.export_run(str(trained_run), "detectron2", output, overwrite=True)
  with pytest.raises(ValueError, match=r"\.pkl"):
    export.export_run(str(trained_run), "detectron2", str(tmp_path / "backbone_d2.pth"))
  with pytest.raises(FileNotFoundError, match="config.json"):
    export.export_run(str(tmp_path / "no_run"), "torchvision", str(tmp_path / "x.pkl"))
