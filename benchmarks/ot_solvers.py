"""Exact minibatch OT for flow matching: scipy's ``linear_sum_assignment`` (what
:mod:`course_lib.couplings` uses) against POT's network simplex ``ot.emd``, when POT is
installed (it is not a dependency of the course). Prints a Markdown table of median wall
times, and checks that both reach the same optimal cost.

    python benchmarks/ot_solvers.py [--sizes 64 256 1024] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.optimize import linear_sum_assignment


def cost_matrix(x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    return ((x0[:, None, :] - x1[None, :, :]) ** 2).sum(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 784])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    try:
        import ot
    except ImportError:
        ot = None
    rng = np.random.default_rng(0)
    print("| D | B | scipy linear_sum_assignment | POT ot.emd | same cost |")
    print("| --- | --- | --- | --- | --- |")
    for d in args.dims:
        for b in args.sizes:
            t_sp, t_pot, same = [], [], True
            for _ in range(args.repeats):
                x0 = rng.standard_normal((b, d))
                x1 = rng.standard_normal((b, d)) * 0.5 + 1.0
                c = cost_matrix(x0, x1)
                start = time.perf_counter()
                rows, cols = linear_sum_assignment(c)
                t_sp.append(time.perf_counter() - start)
                best = c[rows, cols].sum()
                if ot is not None:
                    w = np.full(b, 1.0 / b)
                    start = time.perf_counter()
                    plan = ot.emd(w, w, c)
                    t_pot.append(time.perf_counter() - start)
                    same &= bool(np.isclose((plan * c).sum() * b, best, rtol=1e-9))
            pot = f"{1e3 * np.median(t_pot):.1f} ms" if t_pot else "not installed"
            print(
                f"| {d} | {b} | {1e3 * np.median(t_sp):.1f} ms | {pot} | {same if t_pot else '—'} |"
            )


if __name__ == "__main__":
    main()
