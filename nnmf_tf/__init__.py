"""nnmf_tf: non-negative matrix factorization of partially observed matrices, in TensorFlow.

Pure math: representations (:mod:`nnmf_tf.data`), the half-step (:mod:`nnmf_tf.halfstep`,
with its native CPU kernel: :mod:`nnmf_tf.native`, :mod:`nnmf_tf.halfstep_native`), the
alternating solver (:mod:`nnmf_tf.solver`), the worked
example's joint gradient method (:mod:`nnmf_tf.gradient`), top-N (:mod:`nnmf_tf.topn`),
metrics (:mod:`nnmf_tf.metrics`) and the strategy helper (:mod:`nnmf_tf.device`). It never
imports Beam, reads or writes data, or sees external ids; its only files are the native
kernel's build, which :mod:`nnmf_tf.native` compiles and caches on first use.

Names are imported lazily so that ``import nnmf_tf`` (and :mod:`nnmf_tf.params`) does not
load TensorFlow: a process must configure TensorFlow (:func:`nnmf_tf.device.configure`)
before TensorFlow runs its first op.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SolverParams": "nnmf_tf.params",
    "SparseRatings": "nnmf_tf.data",
    "MaskedDense": "nnmf_tf.data",
    "Factors": "nnmf_tf.model",
    "predict": "nnmf_tf.model",
    "objective": "nnmf_tf.model",
    "HalfStepResult": "nnmf_tf.halfstep",
    "half_step": "nnmf_tf.halfstep",
    "SparseLayout": "nnmf_tf.halfstep",
    "sparse_layout": "nnmf_tf.halfstep",
    "uses_native_kernel": "nnmf_tf.halfstep",
    "NativeLayout": "nnmf_tf.halfstep_native",
    "FitResult": "nnmf_tf.solver",
    "fit": "nnmf_tf.solver",
    "initial_model": "nnmf_tf.solver",
    "fit_joint_gradient": "nnmf_tf.gradient",
    "top_n": "nnmf_tf.topn",
    "NNMFFitError": "nnmf_tf.errors",
    "ConvergenceWarning": "nnmf_tf.errors",
    "configure": "nnmf_tf.device",
    "DeviceSettings": "nnmf_tf.device",
    "make_strategy": "nnmf_tf.device",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nnmf_tf' has no attribute {name!r}")
