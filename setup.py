"""EfficientDet on MXNet (SimpleDet style).

Install for development with `make test` (creates .venv from requirements.txt + constraints.txt),
or by hand:  pip install -c constraints.txt -r requirements.txt && pip install -e . --no-deps

The MXNet flavour is an extra, because pip cannot swap one distribution for another: `mxnet`
and `mxnet-cu112` both install the `mxnet` package, so having both installed leaves whichever was
written last. Pick exactly one:
    pip install -c constraints.txt ".[cpu]"      # mxnet 1.9.1, CPU wheel
    pip install -c constraints.txt ".[gpu]"      # mxnet-cu112 1.9.1 (CUDA 11.2, cuDNN 8, NCCL 2)
To move an existing CPU environment to GPU: pip uninstall -y mxnet, then
pip install -c constraints.txt mxnet-cu112==1.9.1.
"""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
TEST_ONLY = {"pytest", "pytest-timeout"}
MXNET = {"mxnet"}   # chosen through the cpu / gpu extras instead


def requirements():
    """Names from requirements.txt (comments dropped); versions stay in constraints.txt."""
    with open(os.path.join(HERE, "requirements.txt")) as f:
        names = [line.split("#", 1)[0].strip() for line in f]
    return [n for n in names if n]


REQS = requirements()

setup(
    name="efficientdet-mxnet",
    version="0.1.0",
    description="Config-driven EfficientDet D0-D7x (BiFPN / NAS-FPN) on Apache MXNet 1.9.1",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=[p + s for p in ("config", "models", "core", "utils", "operator_py")
                                    for s in ("", ".*")]),
    install_requires=[r for r in REQS if r not in TEST_ONLY | MXNET],
    extras_require={
        "cpu": ["mxnet==1.9.1"],
        "gpu": ["mxnet-cu112==1.9.1"],
        "torch": ["torch==2.13.0"],          # only to read published .pth checkpoints
        "test": [r for r in REQS if r in TEST_ONLY],
    },
)
