"""Named errors and array checks whose messages say which array or step went wrong."""

from __future__ import annotations

import numpy as np


class NNMFFitError(RuntimeError):
    """Fitting broke down numerically (non-finite or negative factors).

    The message names the iteration, the half-step and, when blocked, the block.
    """


class ConvergenceWarning(UserWarning):
    """The solver stopped at ``max_iter`` before meeting its tolerance."""


def check_array(
    array: np.ndarray, *, label: str, ndim: int, shape: tuple[int | None, ...] | None = None
) -> np.ndarray:
    """Check an array's rank and (partial) shape; return it unchanged.

    Raises
    ------
    ValueError
        Naming ``label`` with the expected and the found shape.
    """
    array = np.asarray(array)
    if array.ndim != ndim:
        raise ValueError(f"{label} must be a {ndim}-d array; got shape {array.shape}")
    if shape is not None:
        for axis, (want, got) in enumerate(zip(shape, array.shape)):
            if want is not None and want != got:
                expected = tuple("*" if s is None else s for s in shape)
                raise ValueError(f"{label} must have shape {expected}; got {array.shape} (axis {axis})")
    return array


def check_finite(array: np.ndarray, *, label: str, non_negative: bool = False) -> None:
    """Raise ``ValueError`` naming ``label`` when ``array`` holds NaN or inf (or, with
    ``non_negative``, a negative value)."""
    if array.size and not np.all(np.isfinite(array)):
        raise ValueError(f"{label} must be finite; found {int(array.size - np.count_nonzero(np.isfinite(array)))} NaN or inf")
    if non_negative and array.size and float(np.min(array)) < 0.0:
        raise ValueError(f"{label} must be non-negative; found {float(np.min(array))}")


def _half_step_name(side: str, iteration: int, block: int | None) -> str:
    return f"the {side} half-step of iteration {iteration}" + ("" if block is None else f" (block {block})")


def check_objective_finite(objective: float, *, side: str, iteration: int, block: int | None = None) -> None:
    """Raise :class:`NNMFFitError` when a half-step's objective is NaN or inf.

    Finite factors can still be too large for float32 products (an ``init_scale`` far above
    the ratings' scale): their Grams overflow, the solver cannot move, and the model would be
    published with a non-finite loss and no usable scores.
    """
    if not np.isfinite(objective):
        raise NNMFFitError(
            f"non-finite objective ({objective}) after {_half_step_name(side, iteration, block)}: the factors "
            "overflow float32 products; lower model.init_scale or raise reg"
        )


def check_factors_finite(
    factors: np.ndarray, *, side: str, iteration: int, block: int | None = None, bias: np.ndarray | None = None
) -> None:
    """Raise :class:`NNMFFitError` when ``factors`` hold NaN, inf or negative values, or ``bias``
    (when given) NaN or inf."""
    where = _half_step_name(side, iteration, block)
    if bias is not None and not np.all(np.isfinite(bias)):
        raise NNMFFitError(f"non-finite {side} bias after {where}")
    if not np.all(np.isfinite(factors)):
        bad = int(np.size(factors) - np.count_nonzero(np.isfinite(factors)))
        raise NNMFFitError(
            f"{bad} non-finite {side} factor value(s) after {where}: the factors overflow float32; "
            "lower model.init_scale or raise reg"
        )
    if factors.size and float(np.min(factors)) < 0.0:
        raise NNMFFitError(f"negative {side} factors after {where}")
