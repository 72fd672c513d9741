"""mi_contrast: contrastive representation learning as mutual-information estimation (JAX/Flax)."""
from setuptools import find_packages, setup

# Ranges were installed and tested together on a 2-core CPU machine (Python 3.11):
# jax/jaxlib 0.10.2, flax 0.12.8, optax 0.2.8, orbax-checkpoint 0.12.4, ml-collections 1.1.0,
# clu 0.0.12, tensorflow-datasets 4.9.10, scikit-learn 1.9.1, matplotlib 3.11.2,
# tensorflow-cpu 2.21.0, tensorboard 2.21.0, pytest 9.0.3, hypothesis 6.155.2, scikit-image 0.26.0.
# `pip install .`: the light modules (bounds, negatives, schedules, views) need jax and numpy.
INSTALL_REQUIRES = [
    "jax>=0.10.0,<0.11",
    "jaxlib>=0.10.0,<0.11",
    "numpy>=1.26",
]
# `pip install ".[train]"`: the trainer (python -m mi_contrast.main), its probes and reports.
TRAIN_REQUIRES = [
    "flax>=0.12.0,<0.13",
    "optax>=0.2.6,<0.3",
    "orbax-checkpoint>=0.12.0,<0.13",
    "ml-collections>=1.0,<2",
    "clu>=0.0.12",
    "tensorflow-datasets>=4.9.8,<5",
    "importlib_resources>=6",
    "absl-py>=2.0",
    "scikit-learn>=1.5",
    "matplotlib>=3.8",
]
TF_REQUIRES = ["tensorflow-cpu>=2.19,<2.22", "tensorboard>=2.19,<2.22"]
TEST_REQUIRES = ["pytest>=8", "pytest-xdist>=3.6", "hypothesis>=6.100",
                 "scikit-image>=0.24", "ruff>=0.6"] + TF_REQUIRES
# PyTorch (CPU wheel) for tests/test_torch_export.py and export's .pt/.pth output; never a
# dependency of the package itself.
TORCH_REQUIRES = ["torch==2.13.0"]

setup(
    name="mi_contrast",
    version="0.1.0",
    description="Contrastive visual representation learning as mutual-information estimation, "
                "with annealed ring negatives (JAX/Flax).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mi_contrast", "mi_contrast.*"]),
    package_data={"mi_contrast": ["py.typed"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={"train": TRAIN_REQUIRES, "tf": TF_REQUIRES, "test": TEST_REQUIRES,
                    "torch": TORCH_REQUIRES},
)
