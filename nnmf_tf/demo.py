"""The worked example: a 4 users × 3 movies rating matrix with one missing entry, rank 3.

Run ``python -m nnmf_tf.demo``. It factorizes the matrix by joint projected gradient on the
masked Frobenius cost (learning rate 0.001, 1000 steps, factors clipped at zero after every
step), prints the cost every 100 steps and the rounded prediction, which equals the matrix
at every observed entry; then does the same with the alternating solver.
"""

from __future__ import annotations

import numpy as np

from nnmf_tf.data import MaskedDense
from nnmf_tf.gradient import fit_joint_gradient
from nnmf_tf.params import SolverParams
from nnmf_tf.solver import fit

#: Users × movies; the rating of user 0 for movie 0 is missing.
RATINGS = np.array([[np.nan, 4, 5], [4, 4, 5], [5, 3, 4], [2, 3, 4]])
RANK = 3


def worked_example() -> MaskedDense:
    """The example's matrix and mask."""
    return MaskedDense.from_nan(RATINGS)


def main() -> int:
    """Print both solvers' cost traces and rounded predictions."""
    data = worked_example()
    print("A (nan = missing):")
    print(RATINGS)
    print("\nJoint projected gradient, learning rate 0.001, 1000 steps:")
    result = fit_joint_gradient(data, RANK, learning_rate=0.001, steps=1000, log_every=100)
    for step, cost in result.cost_history:
        print(f"  step {step:5d}  cost {cost:.6f}")
    prediction = result.factors.user_factors @ result.factors.item_factors.T
    print("Rounded prediction W Hᵀ:")
    print(np.round(prediction).astype(int))

    print("\nAlternating projected gradient (no regularisation), 30 iterations:")
    params = SolverParams(rank=RANK, reg=0.0, max_iter=30, inner_max_iter=200, inner_tol=1e-6)
    alternating = fit(data, params)
    for iteration in (1, 5, 10, 30):
        print(f"  iteration {iteration:4d}  cost {alternating.objective_history[iteration - 1]:.6f}")
    prediction = alternating.factors.user_factors @ alternating.factors.item_factors.T
    print("Rounded prediction W Hᵀ:")
    print(np.round(prediction).astype(int))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
