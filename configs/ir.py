# IR: instance recognition as InfoNCE over K uniform memory-bank negatives (no ring).
#
#   python -m mi_contrast.main --config=configs/ir.py --workdir=/tmp/mi_ir
#
# Runtime: about 1 minute on a 2-core CPU (embedded digits preset, compilation included).
# Expected result: linear_top1 ~0.97-0.98, nn1_top1 ~0.96-0.98 on the digits test split;
# bound_nats below log_k_plus_1 = log(1025) = 6.93 nats.
# `--config=configs/ir.py:cifar10` (also cifar100, stl10, imagenet2012) uses the reference setup.
"""IR with uniform negatives."""

from mi_contrast import config


def get_config(preset=None):
  c = config.default_config(preset)
  c.method = "ir"
  c.negatives = "uniform"
  c.bound = "infonce"
  return c
