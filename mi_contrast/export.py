"""Backbone export for PyTorch and Detectron2 users.

  python -m mi_contrast.export --workdir=<run> --format=torchvision --output=backbone.pkl
  python -m mi_contrast.export --workdir=<run> --format=torchvision --output=backbone.pt
  python -m mi_contrast.export --workdir=<run> --format=detectron2 --output=backbone_d2.pkl

Restores the newest checkpoint of <run> and writes its ResNet backbone (no projection head) as a
pickle (protocol 4) of plain numpy arrays, readable without JAX (and without torch):

- torchvision: {name: array} in the state-dict layout of torchvision.models.resnet{18,34,50}
  (conv1.weight, bn1.{weight,bias,running_mean,running_var,num_batches_tracked},
  layerS.B.conv1.weight, layerS.B.bn1.*, ..., layerS.B.downsample.{0,1}.*). Load with
  `model.load_state_dict({k: torch.from_numpy(v) for k, v in d.items()}, strict=False)`: the
  classifier `fc` is not part of the backbone (a ResNet without `fc` loads it with strict=True).
  An output name ending in .pt or .pth writes the same state dict as torch tensors with
  `torch.save` instead, for `model.load_state_dict(torch.load(path))`; that needs torch
  installed (pip install -e ".[torch]"), the pickle does not.
- detectron2: {"model": {name: array}, "__author__": "mi_contrast", "matching_heuristics": True},
  the names Detectron2's ResNet uses (stem.conv1.weight, stem.conv1.norm.*,
  res{S+1}.B.conv{i}.weight, res{S+1}.B.conv{i}.norm.*, res{S+1}.B.shortcut[.norm].*), i.e. what
  Detectron2's tools/convert-torchvision-to-d2.py makes of the torchvision layout. Detectron2
  reads it as MODEL.WEIGHTS when the file name ends in .pkl; like converted torchvision weights
  it needs RESNETS.STRIDE_IN_1X1 False (the stride is in the 3x3 convolution), INPUT.FORMAT RGB,
  and PIXEL_MEAN / PIXEL_STD set to 255 x the training set's per-channel mean / std (the encoder
  normalises [0, 1] images by those; see InMemoryData.channel_stats).

Conversion: convolution kernels HWIO (Flax) -> OIHW (PyTorch); BatchNorm scale -> weight,
bias -> bias, running averages mean -> running_mean, var -> running_var. Stage s (from 1) block
b of the Flax ResNet (`layer{s}_{b}`) is torchvision's layer{s}.{b} and Detectron2's res{s+1}.{b}.
A CIFAR stem (3x3 convolution, no max-pool) or a 1-channel stem (digits) is exported as it is:
Detectron2's stem is a 7x7 convolution over 3 channels, so it would skip such stem weights.

The backbone's input is the normalised image, (x - mean) / std per channel: the encoder
(models.ContrastiveEncoder) normalises before its ResNet, and that step is not part of the
exported weights. tests/test_torch_export.py loads the torchvision export with strict=True into
a torchvision-layout ResNet written in torch (CIFAR and ImageNet stems, basic and bottleneck
blocks, 1 or 3 input channels) and checks that it computes the same pooled features as the Flax
backbone in inference mode; Detectron2 itself is not run, only its renaming is tested.
"""

import os
import pickle
import re

import jax
import numpy as np
from absl import app
from absl import flags
from absl import logging

from mi_contrast import checkpoints
from mi_contrast import files
from mi_contrast import methods
from mi_contrast import run as run_lib

FORMATS = ("torchvision", "detectron2")
TORCH_SUFFIXES = (".pt", ".pth")   # torchvision format only: a torch.save state dict
PICKLE_PROTOCOL = 4
DETECTRON2_AUTHOR = "mi_contrast"

FLAGS = flags.FLAGS
_BLOCK = re.compile(r"layer(\d+)_(\d+)$")
_BLOCK_LAYERS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


def _backbone(tree):
  """The backbone's subtree of a full ContrastiveEncoder tree, or the tree itself."""
  tree = dict(tree)
  return dict(tree["backbone"]) if "backbone" in tree else tree


def _layers(params):
  """(flax conv, flax norm, torchvision prefix pair, detectron2 prefix pair) in network order."""
  yield ("conv1",), ("bn1",), ("conv1", "bn1"), ("stem.conv1", "stem.conv1.norm")
  blocks = {}
  for name in params:
    match = _BLOCK.match(name)
    if match:
      blocks[(int(match.group(1)), int(match.group(2)))] = name
  for (stage, index), name in sorted(blocks.items()):
    tv, d2 = f"layer{stage}.{index}", f"res{stage + 1}.{index}"
    for conv, norm in _BLOCK_LAYERS:
      if conv in params[name]:
        yield (name, conv), (name, norm), (f"{tv}.{conv}", f"{tv}.{norm}"), (
            f"{d2}.{conv}", f"{d2}.{conv}.norm")
    if "downsample_conv" in params[name]:
      yield (name, "downsample_conv"), (name, "downsample_bn"), (
          f"{tv}.downsample.0", f"{tv}.downsample.1"), (f"{d2}.shortcut", f"{d2}.shortcut.norm")


def _get(tree, path, what):
  for part in path:
    if part not in tree:
      raise ValueError(f"{what} has no {'/'.join(path)}: is it a mi_contrast ResNet backbone?")
    tree = tree[part]
  return tree


def export_backbone(params, batch_stats, format):
  """The backbone's tensors under PyTorch names, as numpy arrays.

  Args:
    params: a ContrastiveEncoder's params (or their 'backbone' subtree).
    batch_stats: its batch_stats (or their 'backbone' subtree).
    format: 'torchvision' (a state dict of torchvision's ResNet) or 'detectron2' (the
      'model' dict of a Detectron2 weights file).
  Returns:
    {name: np.ndarray} in network order: float32 tensors, and for torchvision each BatchNorm's
    num_batches_tracked as a 0-d int64 array (0: the running averages use the momentum).
  Raises:
    ValueError: unknown format, a backbone module the exporter does not know, or a missing one.
  """
  if format not in FORMATS:
    raise ValueError(f"format {format!r}: allowed values are {', '.join(FORMATS)}.")
  params, batch_stats = _backbone(params), _backbone(batch_stats)
  out = {}
  used = set()
  for conv, norm, tv, d2 in _layers(params):
    conv_name, norm_name = tv if format == "torchvision" else d2
    kernel = np.asarray(_get(params, conv + ("kernel",), "params"), np.float32)
    out[f"{conv_name}.weight"] = np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))
    for key, value in (("weight", _get(params, norm + ("scale",), "params")),
                       ("bias", _get(params, norm + ("bias",), "params")),
                       ("running_mean", _get(batch_stats, norm + ("mean",), "batch_stats")),
                       ("running_var", _get(batch_stats, norm + ("var",), "batch_stats"))):
      out[f"{norm_name}.{key}"] = np.array(value, np.float32)
    if format == "torchvision":
      out[f"{norm_name}.num_batches_tracked"] = np.array(0, np.int64)
    used.update({conv, norm})
  names = {(name,) for name in params if not _BLOCK.match(name)}
  names |= {(name, sub) for name in params if _BLOCK.match(name) for sub in params[name]}
  unknown = sorted("/".join(path) for path in names - used)
  if unknown:
    raise ValueError(f"backbone modules {unknown} have no PyTorch name: the exporter knows "
                     "conv1, bn1 and layer{s}_{b}/{conv1..3, bn1..3, downsample_conv, "
                     "downsample_bn}.")
  return out


def export_payload(params, batch_stats, format):
  """What the exported file holds: the state dict, or Detectron2's weights-file dict."""
  tensors = export_backbone(params, batch_stats, format)
  if format == "detectron2":
    return {"model": tensors, "__author__": DETECTRON2_AUTHOR, "matching_heuristics": True}
  return tensors


def _check_output(output, format, overwrite):
  if format not in FORMATS:
    raise ValueError(f"--format={format!r}: allowed values are {', '.join(FORMATS)}.")
  if os.path.exists(output) and not overwrite:
    raise FileExistsError(f"--output={output} already exists; pass --overwrite to replace it, "
                          "or choose another file.")
  if format == "detectron2" and not output.endswith(".pkl"):
    raise ValueError(f"--output={output}: Detectron2 reads a weights file as a pickle only when "
                     "its name ends in .pkl; name it e.g. backbone_d2.pkl.")
  if output.endswith(TORCH_SUFFIXES):
    _import_torch(output)


def _import_torch(output):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(f"--output={output}: a .pt/.pth file is written with torch.save and needs "
                     "PyTorch, which is not installed (pip install -e \".[torch]\"). Name the "
                     "file .pkl for the numpy pickle, which loads without torch.") from e
  return torch


def _write(payload, output):
  """Writes `payload` atomically: torch.save of torch tensors for .pt/.pth, else a pickle."""
  parent = os.path.dirname(os.path.abspath(output))
  os.makedirs(parent, exist_ok=True)
  if output.endswith(TORCH_SUFFIXES):
    torch = _import_torch(output)
    tensors = {name: torch.from_numpy(np.ascontiguousarray(value))
               for name, value in payload.items()}
    files.atomic_write(output, lambda f: torch.save(tensors, f), binary=True)
  else:
    files.atomic_write(output, lambda f: pickle.dump(payload, f, protocol=PICKLE_PROTOCOL),
                       binary=True)


def export_run(workdir, format, output, *, overwrite=False):
  """Exports the backbone of `workdir`'s newest checkpoint to `output`.

  `output` ending in .pt or .pth (torchvision format only) is written with torch.save as a
  state dict of torch tensors; any other name is the numpy pickle.

  Returns:
    {'output', 'format', 'checkpoint_step', 'model', 'stem', 'num_tensors'}.
  Raises:
    FileExistsError: `output` exists and `overwrite` is False (checked before anything loads).
    ValueError: a .pt/.pth output without torch installed, or for the detectron2 format (also
      checked before anything loads).
  """
  _check_output(output, format, overwrite)
  config = checkpoints.load_run_config(workdir)
  if methods.encoder_kind(config) != "single":
    raise ValueError(f"{workdir} is a {config.method} run: its encoder has two backbones (an L "
                     "stream and an ab stream, params 'l' and 'ab'), and export writes one "
                     "ResNet. Export supports the single-backbone methods (those whose "
                     "ENCODER is 'single': ir, la, moco, simclr).")
  # Mean and std enter the forward pass only, not the parameters: any value restores the same
  # tree, so the dataset need not be loaded. Digits and Fashion-MNIST are grey, the tfds
  # presets RGB.
  channels = 1 if config.dataset in ("digits", "fashion_mnist") else 3
  bank_rows = checkpoints.read_run_record(workdir).get("memory_bank_rows",
                                                       config.global_batch_size)
  run = run_lib.build_run(config, bank_rows=bank_rows,
                          channel_stats=((0.0,) * channels, (1.0,) * channels), training=False)
  state, step = checkpoints.restore_run(workdir, run)
  payload = export_payload(jax.device_get(state.params), jax.device_get(state.batch_stats),
                           format)
  if jax.process_index() == 0:
    _write(payload, output)
  if format == "detectron2" and (config.stem != "imagenet" or channels != 3):
    logging.warning("This backbone's stem (%s, %d input channel(s)) differs from Detectron2's "
                    "(7x7 convolution over 3 channels, then max-pool): Detectron2 will skip the "
                    "stem weights for their shape.", config.stem, channels)
  tensors = payload["model"] if format == "detectron2" else payload
  logging.info("Wrote %d tensors of the %s backbone (checkpoint step %d) to %s.", len(tensors),
               config.model, step, output)
  return {"output": output, "format": format, "checkpoint_step": int(step),
          "model": config.model, "stem": config.stem, "num_tensors": len(tensors)}


def define_flags():
  flags.DEFINE_string("workdir", None, "Run directory (holds config.json and checkpoints/).")
  flags.DEFINE_enum("format", None, FORMATS, "Layout and names of the exported weights.")
  flags.DEFINE_string("output", None, "File to write: a pickle of numpy arrays (.pkl for "
                      "detectron2), or for torchvision a torch.save state dict if the name ends "
                      "in .pt or .pth (needs torch).")
  flags.DEFINE_bool("overwrite", False, "Replace --output if it exists.")
  flags.mark_flags_as_required(["workdir", "format", "output"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    export_run(FLAGS.workdir, FLAGS.format, FLAGS.output, overwrite=FLAGS.overwrite)
  except (FileExistsError, FileNotFoundError, ValueError) as e:
    raise app.UsageError(str(e)) from e


if __name__ == "__main__":
  define_flags()
  app.run(main)
