"""Augmentation lesion: IR with no augmentation, crop only, flip only, colour only, all.

The paper (Wu et al. 2020, on ImageNet): with no augmentation IR plateaus near chance, flip
alone does not help, cropping matters most. This script trains IR (InfoNCE, uniform bank
negatives) on the digits preset with each recipe and records kNN / 1-NN / linear accuracy and
the final bound value; tfds presets are added with --presets when their data is on disk.

  python experiments/augmentation_lesion.py --out=experiments/results/augmentation_lesion.json
"""

import argparse
import json
import os
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import common  # noqa: E402  (experiments/ is this script's folder; it puts the repo on sys.path)
from mi_contrast import config as config_lib  # noqa: E402
from mi_contrast import train  # noqa: E402

LESIONS = {  # lesion name -> view recipe per preset
    "digits": {"none": "none", "crop": "digits_crop", "flip": "digits_flip",
               "colour": "digits_intensity", "all": "digits"},
    "cifar10": {"none": "none", "crop": "digits_crop", "flip": "digits_flip",
                "colour": "digits_intensity", "all": "ir"},
}


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--presets", nargs="*", default=["digits"])
  parser.add_argument("--num_epochs", type=int, default=None,
                      help="override the preset's epochs (digits default: 40)")
  parser.add_argument("--out", default=os.path.join(common.RESULTS, "augmentation_lesion.json"))
  args = parser.parse_args()
  table = {}
  for preset in args.presets:
    table[preset] = {}
    for lesion, recipe in LESIONS[preset].items():
      config = config_lib.default_config(preset)
      config.views = recipe
      if args.num_epochs:
        config.num_epochs = args.num_epochs
      with tempfile.TemporaryDirectory() as workdir:
        results = train.train_and_evaluate(config, workdir).results
      table[preset][lesion] = {k: results[k] for k in (
          "knn_top1", "nn1_top1", "linear_top1", "bound_nats", "log_k_plus_1",
          "random_init_knn_top1", "wall_seconds")}
      table[preset][lesion]["recipe"] = recipe
      print(preset, lesion, json.dumps(table[preset][lesion]), flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(table, f, indent=2)
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for preset, rows in table.items():
    names = list(rows)
    axes[0].plot(names, [rows[n]["knn_top1"] for n in names], "o-", label=f"{preset} kNN")
    axes[0].plot(names, [rows[n]["linear_top1"] for n in names], "s--",
                 label=f"{preset} linear")
    axes[1].plot(names, [rows[n]["bound_nats"] for n in names], "o-", label=preset)
  axes[0].set_ylabel("test accuracy")
  axes[0].set_title("IR augmentation lesion")
  axes[1].set_ylabel("InfoNCE bound (nats)")
  for ax in axes:
    ax.legend()
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.splitext(args.out)[0] + ".png", dpi=120)


if __name__ == "__main__":
  main()
