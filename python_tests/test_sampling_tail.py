"""Full-vocabulary sampling is exact in the far tail.

The claim (csrc/include/mavis/philox.h): with ``top_k=0`` a draw follows softmax(t) to within 1e-9
of total probability mass for V up to 262,144. Why the design meets it:

* The draw is a Gumbel-max, ``argmax_j t_j + g_j``, with ``g = -log(-log(u))`` and ``u`` the
  midpoint of one of 2^52 equal cells of (0, 1), from 52 random Philox bits. Couple each column's
  ``u`` with a continuous uniform ``U`` in the same cell: the continuous Gumbel-max is an exact
  softmax draw, and the two draws can differ only where some column's noise moves, inside its cell,
  across the best score of the other columns. For one column that has probability at most about
  ``2 * 2^-52 * (density of the others' best score, integrated over g) <= 2 * 2^-52``, because
  ``width(cell) = 2^-52 * dg/du`` and ``dg/du du = dg``; the top cell (``u = 1 - 2^-53``, noise
  36.74, where the continuous noise is unbounded) adds 2^-52. Over V = 262,144 columns:
  ``<= 3 * 262144 * 2^-52 ~= 1.7e-10`` of total variation, plus libm rounding (relative 1e-16 on
  ``g``, far smaller).
* So the design is exact if the implementation really has (1) 52 uniform bits per column in the
  right place, (2) the cell midpoints ``(k + 0.5) 2^-52`` as uniforms, (3) ``g`` the Gumbel quantile
  of them to rounding, including the far upper tail (a token 25 or 36 nats down can win), and
  (4) kernels that skip a column only when it cannot win. (1)-(3) are checked deterministically
  below, (3) as the distance between the implemented noise CDF and the Gumbel CDF at thresholds up
  to 36.7 (V times that distance bounds the error of every draw probability, which must stay
  < 1e-9); (4) by the kernel = reference token identity (test_ops_tilted_sample.py, and here on
  far-tail draws).
* Statistically, with power: a row whose tail tokens sit 18 nats below the top. The old 23-bit
  noise (maximum 16.6) drew such a tail at <= 0.16x its mass; the test computes the old law's
  probability and asserts the binomial test would reject it. A tail 25 nats down cannot be measured
  by sampling at V <= 262,144 (its mass is < 4e-6), which is what the CDF check covers.
"""

from decimal import Decimal, getcontext

import numpy as np
import pytest
import torch
from scipy import stats

import mavis_ext
from mavis_ext import reference

P_MIN = 1e-3  # reject the exact law only at p < 1e-3 (inputs and seeds are fixed: deterministic)
V_MAX = 262144
TWO52 = 2**52
getcontext().prec = 60


# ----------------------------------------------------------------------------- deterministic
# Random123's published known-answer vectors of Philox4x32-10: (counter, key, output).
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,want", PHILOX_KAT)
def test_philox_known_answers(ctr, key, want):
    t = lambda x: torch.tensor([x], dtype=torch.int64)
    got = reference._philox4x32_10(*(t(c) for c in ctr), *(t(k) for k in key))
    assert tuple(int(x) for x in got) == want


def _words(k: int):
    """Philox words (x0, x1) whose 52-bit draw is k (x1's low 12 bits are unused)."""
    return torch.tensor([k >> 20], dtype=torch.int64), torch.tensor([(k & 0xFFFFF) << 12], dtype=torch.int64)


def _noise_of_k(k: int) -> float:
    return float(reference.gumbel_from_uniform(reference.uniform_from_words(*_words(k)))[0])


def test_uniform_layout():
    """52 bits: all of x0 above the top 20 of x1; u = (k + 0.5) 2^-52, never 0 or 1."""
    u = lambda x0, x1: float(reference.uniform_from_words(torch.tensor([x0]), torch.tensor([x1]))[0])
    assert u(0, 0) == 2.0**-53
    assert u(0, 0xFFF) == 2.0**-53  # the low 12 bits of x1 are not used
    assert u(0, 0x1000) == 1.5 * 2.0**-52  # the lowest used bit
    assert u(1, 0) == (2**20 + 0.5) * 2.0**-52  # x0 sits above x1's 20 bits
    assert u(0xFFFFFFFF, 0xFFFFFFFF) == 1.0 - 2.0**-53
    assert reference.uniform_from_words(torch.tensor([0]), torch.tensor([0])).dtype == torch.float64
    # noise of a real stream: float64, in [-log(-log 2^-53), -log(-log(1 - 2^-53))]
    g = reference.gumbel_noise(torch.tensor([5]), torch.tensor([0]), 4, 5000)
    assert g.dtype == torch.float64 and g.min() > -3.61 and g.max() < 36.74


def _gumbel_cdf(x: float) -> Decimal:
    return (-(-Decimal(x)).exp()).exp()


def test_largest_noise():
    """The largest noise is -log(-log(1 - 2^-53)) = 36.7368...: a token up to ~36.7 nats below the
    best can still be drawn (with its exact, tiny probability), not 16.6 as with 23-bit floats."""
    u_max = Decimal(1) - Decimal(2) ** -53
    exact = -(-(u_max.ln())).ln()
    got = _noise_of_k(TWO52 - 1)
    assert abs(Decimal(got) - exact) < Decimal("1e-13")
    assert 36.73 < got < 36.8  # and below the kernels' skip bound kGumbelMax = 36.8
    assert _noise_of_k(0) == pytest.approx(float(-(-((Decimal(2) ** -53).ln())).ln()), rel=1e-15)


def _atoms_at_or_below(x: float) -> int:
    """#{k : noise(k) <= x}, by bisection over k (the noise is increasing in k)."""
    lo, hi = 0, TWO52  # invariant: noise(k) <= x for k < lo, > x for k >= hi
    while lo < hi:
        mid = (lo + hi) // 2
        if _noise_of_k(mid) <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


THRESHOLDS = [-3.5, -2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 16.7, 17.0, 18.0, 19.4, 20.0, 22.0,
              25.0, 28.0, 30.0, 33.0, 35.0, 36.0, 36.5, 36.7]


def test_noise_cdf_is_gumbel_to_2e_52():
    """P(noise <= x) of the implemented discrete noise (exact count of its 2^52 equally likely values)
    against the Gumbel CDF exp(-e^-x), computed in 60-digit decimal, from the bottom of the range to
    36.7. A distance eps bounds the error of every draw probability by V * eps (the Gumbel-max
    probability of a column is an integral of a product of V CDFs), so V = 262,144 needs eps below
    1e-9 / V = 3.8e-15 = 17 * 2^-52. The noise meets eps <= 2 * 2^-52: its cells are equal and its
    quantiles are exact to rounding. The old 23-bit noise (2^23 cells, never above 16.64) is off by
    up to 2^-24 = 6e-8 anywhere and by 5.6e-8 at x = 16.7: this test fails for it."""
    worst = 0.0
    for x in THRESHOLDS:
        got = Decimal(_atoms_at_or_below(x)) / TWO52
        dist = abs(got - _gumbel_cdf(x))
        worst = max(worst, float(dist))
        assert dist <= Decimal(2) * Decimal(2) ** -52, (x, float(dist))
    assert V_MAX * worst < 1e-9
    # the upper tail in particular: P(noise > x) ~ e^-x is matched absolutely, e.g. at 25 nats
    tail = Decimal(TWO52 - _atoms_at_or_below(25.0)) / TWO52
    assert abs(tail - (1 - _gumbel_cdf(25.0))) / (1 - _gumbel_cdf(25.0)) < 1e-3


# ----------------------------------------------------------------------------- statistical
def _old_23bit_tail_probability(D: float, n: int) -> float:
    """P(one of n tokens D nats below a single top token wins) under the former noise: 23-bit
    float32 uniforms (k + 0.5) 2^-23 and float32 logs. Exact sum over the 2^23 noise values of the
    top token (ties ignored: they have probability ~2^-23)."""
    u = ((np.arange(2**23, dtype=np.float64) + 0.5) * 2.0**-23).astype(np.float32)
    g = (-np.log(-np.log(u))).astype(np.float64)  # increasing in k
    below = np.searchsorted(g, D + g, side="left") / 2.0**23  # P(tail noise < D + top noise)
    with np.errstate(divide="ignore"):
        p_top = np.exp(n * np.log(below))
    return float(1.0 - p_top.mean())


def _binom_accepts(count: int, draws: int, p: float) -> bool:
    return stats.binomtest(count, draws, p).pvalue > P_MIN


def _power_against(p_alt: float, draws: int, p: float) -> float:
    """Probability that the binomial test rejects p when draws really have probability p_alt."""
    accept = [c for c in range(0, int(draws * p * 4) + 20) if _binom_accepts(c, draws, p)]
    return 1.0 - float(stats.binom.pmf(accept, draws, p_alt).sum())


def _tail_row(V: int, D: float) -> torch.Tensor:
    """Column 0 at logit 0, the other V - 1 columns D nats below (all float32-exact)."""
    row = torch.full((V,), -D, dtype=torch.float32)
    row[0] = 0.0
    return row


def _exact_tail_mass(V: int, D: float) -> float:
    a = (V - 1) * np.exp(-D)
    return a / (1.0 + a)


@pytest.mark.slow  # ~1.6e9 Philox draws: the cost of seeing ~24 events of a mass 18 nats down
def test_far_tail_mass_kernel():
    """V = 262,144 with 262,143 tokens 18 nats below the top: exact tail mass 0.00398, drawn at
    0.155x that by the old noise. One seed per row, so the draws are independent."""
    if not mavis_ext.HAS_C:
        pytest.skip("compiled extension not built")
    D, draws = 18.0, 6000
    p = _exact_tail_mass(V_MAX, D)
    p_old = _old_23bit_tail_probability(D, V_MAX - 1)
    assert p_old < 0.2 * p  # the defect this test is about
    assert _power_against(p_old, draws, p) > 0.99  # and the test has the power to see it
    row = _tail_row(V_MAX, D)
    seeds = torch.arange(draws, dtype=torch.int64) * 7919 + 13
    ids = torch.cat([mavis_ext.tilted_sample(row.expand(len(s), V_MAX), seed=s) for s in seeds.split(1000)])
    tail = int((ids != 0).sum())
    assert _binom_accepts(tail, draws, p), (tail, draws * p, draws * p_old)
    # the reference (slow at this V) draws exactly the same tokens for the same seeds: far-tail
    # draws and top-token draws
    rows = torch.cat([(ids != 0).nonzero().flatten()[:3], (ids == 0).nonzero().flatten()[:1]])
    want, _, _ = reference.tilted_sample(row.expand(len(rows), V_MAX), seed=seeds[rows],
                                         offset=torch.zeros(len(rows), dtype=torch.int64))
    assert torch.equal(ids[rows], want)


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_bulk_tail_mass(impl):
    """A tail carrying a large share of the mass (V - 1 tokens log(V) + 0.5 nats down, 0.38 of the
    mass), estimated precisely: the kernel on the full V = 262,144, the reference (slow) on
    V = 8,192 at the same mass."""
    if impl == "kernel" and not mavis_ext.HAS_C:
        pytest.skip("compiled extension not built")
    V, draws = (V_MAX, 1000) if impl == "kernel" else (8192, 400)
    D = float(np.float32(np.log(V - 1) + 0.5))
    p = _exact_tail_mass(V, D)
    assert 0.3 < p < 0.5
    row = _tail_row(V, D)
    seeds = torch.arange(draws, dtype=torch.int64) * 104729 + 1
    chunk = 1000 if impl == "kernel" else 100
    parts = []
    for s in seeds.split(chunk):
        if impl == "kernel":
            parts.append(mavis_ext.tilted_sample(row.expand(len(s), V), seed=s))
        else:
            parts.append(reference.tilted_sample(row.expand(len(s), V), seed=s, offset=torch.zeros_like(s))[0])
    ids = torch.cat(parts)
    tail = int((ids != 0).sum())
    assert _binom_accepts(tail, draws, p), (tail, draws * p)
    # which tail token is drawn is uniform over the V - 1 equal ones (chi-squared over 16 bins)
    counts = np.bincount((ids[ids != 0].numpy() - 1) * 16 // (V - 1), minlength=16)
    assert stats.chisquare(counts).pvalue > P_MIN
