# SimCLR: two views per image, InfoNCE against the other 2B - 2 embeddings of the global batch
# (all-gathered over devices), symmetric, self-similarity masked.
#
#   python -m mi_contrast.main --config=configs/simclr.py --workdir=/tmp/mi_simclr
#
# Runtime: about 70 s on a 2-core CPU (embedded digits preset, compilation included).
# Expected result (digits test split): see the README method table (kNN ~0.97, linear ~0.975).
# `--config=configs/simclr.py:cifar10` (also cifar100, stl10, imagenet2012) uses the SimCLR
# view recipe and the reference setup.
"""SimCLR with in-batch negatives."""

from mi_contrast import config


def get_config(preset=None):
  c = config.default_config(preset)
  c.method = "simclr"
  c.negatives = "uniform"
  c.bound = "infonce"
  if c.dataset != "digits":
    # Grey Fashion-MNIST keeps its preset's views (no colour jitter on one channel).
    c.views = c.views if c.dataset == "fashion_mnist" else "simclr"
  return c
