"""Contrastive methods by name. Each module reads top to bottom as its method's math.

A method module provides:
  NUM_VIEWS: views per image and step.
  init_state(rng, config, num_train) -> pytree (bank, queue, ...), checkpointed with the state.
  objective(config, z, indices, state, rng, band) -> Objective (per-device, inside the step).
  update_state(config, state, all_indices, all_z) -> new state, from all-gathered (index, z).
"""

from mi_contrast.methods import ir
from mi_contrast.methods import simclr
from mi_contrast.methods.base import Band, Objective

REGISTRY = {"ir": ir, "simclr": simclr}


def get(name):
  if name not in REGISTRY:
    raise ValueError(f"config.method = {name!r} is not allowed; allowed values: "
                     f"{' | '.join(REGISTRY)}.")
  return REGISTRY[name]


__all__ = ["Band", "Objective", "REGISTRY", "get"]
