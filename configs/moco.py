# MoCo v2: a momentum key encoder, shuffle-BN and a FIFO queue of K past keys as negatives.
#
#   python -m mi_contrast.main --config=configs/moco.py --workdir=/tmp/mi_moco
#
# Runtime: 117 s on a 2-core CPU shared with other work (load 4), compilation included.
# Digits test split: linear 0.978, kNN 0.978, 10-shot 0.891 (raw pixels 0.967 / 0.972 / 0.868).
# Results: docs/results/methods.md.
"""MoCo v2 with uniform negatives (the whole queue)."""

from mi_contrast import config


def get_config(preset=None):
  c = config.default_config(preset)
  c.method = "moco"
  c.negatives = "uniform"
  c.bound = "infonce"
  if c.dataset == "digits":
    c.views = "digits_noflip"   # a mirrored digit is another symbol
  else:
    # Grey Fashion-MNIST keeps its preset's views (no colour jitter on one channel).
    c.views = c.views if c.dataset == "fashion_mnist" else "mocov2"
    c.num_negatives = 65536 if c.dataset == "imagenet2012" else 4096
  return c
