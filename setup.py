"""Packaging for nnmf-pipeline.

The same file serves as Beam's ``--setup_file``: a runner installs this distribution on every
worker, so the worker imports the same ``pipeline`` and ``nnmf_tf`` code as the launcher.

TensorFlow: CPU-only machines install ``tensorflow-cpu`` (the default requirement below).
GPU workers need the full ``tensorflow`` build instead: install with the ``gpu`` extra and set
``NNMF_TENSORFLOW=tensorflow`` so the default CPU build is not also required (see README).
"""

import os

from setuptools import find_packages, setup

TENSORFLOW = os.environ.get("NNMF_TENSORFLOW", "tensorflow-cpu")

setup(
    name="nnmf-pipeline",
    version="0.1.0",
    description="Beam pipeline for non-negative matrix factorization of sparse ratings with TensorFlow",
    long_description=open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md"), encoding="utf-8").read()
    if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md"))
    else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nnmf_tf", "nnmf_tf.*", "pipeline", "pipeline.*"]),
    # The native half-step kernel ships as source: it is built on first use against the
    # TensorFlow installed next to it (nnmf_tf/native.py).
    package_data={"nnmf_tf": ["kernels/*.cc"]},
    install_requires=[
        f"{TENSORFLOW}>=2.16",
        "numpy>=1.26",
        "pandas>=2.1",
        "apache-beam>=2.60",
        "pyarrow>=14,<26",
        "pyyaml>=6",
        # Read directly (not only through Beam) to detect truncated zstd input.
        "zstandard>=0.18",
        "matplotlib>=3.8",
    ],
    extras_require={
        "test": ["pytest>=8", "scipy>=1.11", "duckdb>=1.0"],
        "gpu": ["tensorflow[and-cuda]>=2.16"],
        "gcp": ["apache-beam[gcp]>=2.60"],
        "aws": ["apache-beam[aws]>=2.60"],
        "bench": ["pyspark>=3.5", "psutil>=5"],
    },
    entry_points={"console_scripts": ["nnmf-pipeline=pipeline.cli:main"]},
)
