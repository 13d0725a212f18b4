// The Philox draws of many columns of one row at once (declared in sampling.h), for the
// full-vocabulary Gumbel-max. It needs the 52-bit draw of every column within kGumbelMax of the
// best score; one Philox4x32-10 is 20 dependent 32x32->64 multiplies, so the scalar call is
// latency-bound. Written as a plain loop over columns with the 10 rounds unrolled, it vectorises
// (pmuludq / vpmuludq) and gives bit-identical words: it is integer arithmetic.
//
// The same loop also screens the draws, so that the scalar pass after it only looks at the few
// columns whose noise can lift them to the best score (on a long row, nearly none). The screen
// needs no log: with d = best - t, the noise g = -log(-log u) reaches d only if -log(u) <= e^-d,
// and -log(u) >= 1 - u, so a column with 1 - u > e^-d cannot reach the best (it can neither beat
// nor tie it). 1 - u is bounded below from the top 31 bits of x0 and e^-d is computed in float
// with a 1e-4 relative margin, far above the float rounding of either side: the screen only ever
// keeps too many columns, never too few.
#include <cmath>
#include <cstring>

#include "cpu_math.h"
#include "sampling.h"

namespace mavis {
namespace cpu {


MAVIS_CLONES void gumbel_draws_block(const NoiseKey& nk, const uint32_t* __restrict cols,
                                     const float* __restrict ts, int64_t n, float best_lo,
                                     uint64_t* __restrict k, int32_t* __restrict may_reach) {
  const uint64_t seed = nk.seed, offset = nk.offset;
  const uint32_t row = nk.row;
  // Two loops, each vectorised: 64-bit draws, then a screen in 32-bit lanes (x0, the top 32 bits
  // of the draw, is parked in may_reach meanwhile).
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t ki = philox_bits52(seed, offset, row, cols[i]);
    k[i] = ki;
    may_reach[i] = static_cast<int32_t>(ki >> 20);
  }
  // The screen needs ts[i] - best_lo in [-37.1, 4] (exp_in_range's domain). The caller passes only
  // columns with best - kGumbelMax <= t, and t <= best + 3.61 (best includes the block maximum plus
  // its noise, >= -3.61), so it holds up to the float spacing at best: 0.125 below 2^20. Beyond,
  // every draw goes to the exact test.
  if (!(best_lo > -1048576.0f && best_lo < 1048576.0f)) {
    for (int64_t i = 0; i < n; ++i) may_reach[i] = 1;
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    // 1 - u >= (2^32 - 1 - x0) * 2^-32 >= ((2^32 - 1 - x0) >> 1) * 2^-31 (an int32 after the
    // shift: it converts to float in-vector)
    const uint32_t x0 = static_cast<uint32_t>(may_reach[i]);
    const float one_minus_u_lo = static_cast<float>(static_cast<int32_t>((0xFFFFFFFFu - x0) >> 1)) * 4.656612873e-10f;
    const float e_minus_d = exp_in_range(ts[i] - best_lo);  // e^-(best - t), best_lo <= best
    may_reach[i] = one_minus_u_lo <= e_minus_d * 1.0001f;
  }
}

}  // namespace cpu
}  // namespace mavis
