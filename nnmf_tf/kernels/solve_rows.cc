// The sparse half-step's CPU kernel: for each row, the Gram and right-hand side of its
// non-negative least-squares subproblem, then accelerated projected gradient on it, in one
// pass that keeps the row's Gram in registers and L1 cache.
//
// It computes what nnmf_tf/halfstep.py computes with TensorFlow ops (the same Gram, step
// size bound, Nesterov steps with adaptive restart and stopping rule, per row), so the two
// agree to float32 rounding. TensorFlow's own ops need the Gram of every row as a batch of
// small matmuls over padded pieces, summed by segment, and the solver as a batched matvec:
// each of these runs at a small fraction of the machine's matmul rate on 20 x 20 shapes.
// Here a row's entries are gathered into an L1 tile, 128 at a time, with the rows ahead
// prefetched, and accumulated from the tile into vector registers: the Gram's blocks on and
// above the diagonal only, the others being their transposes.
//
// Built by nnmf_tf/native.py against the installed TensorFlow on first use.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/util/work_sharder.h"

using namespace tensorflow;

REGISTER_OP("NnmfSolveRows")
    .Input("features: float")      // (n_other, d): the other side's rows
    .Input("row_splits: int64")    // (rows + 1,)
    .Input("cols: int32")          // (nnz,)
    .Input("targets: float")       // (nnz,)
    .Input("current: float")       // (rows, d)
    .Input("reg_diag: float")      // (d,)
    .Input("reg_power: float")     // (d,)
    .Input("center: float")        // (d,)
    .Input("lower: float")         // (d,)
    .Input("base_gram: float")     // (d, d)
    .Input("obs_weight: float")    // ()
    .Input("max_iter: int32")      // ()
    .Input("tol: float")           // ()
    .Output("z: float")
    .Output("objective: float")
    .Output("penalty: float")
    .Output("pg0_sq: float")
    .Output("steps: int32");       // (rows,): the steps each row took

// Eight floats, one AVX register; the compiler splits it on narrower CPUs (the library is
// built with -march=native where the compiler supports it). Rows of the Gram
// and of the factors are NB of these (the width d padded with zeros to 8 * NB).
typedef float v8 __attribute__((vector_size(32)));
// The same, for loads from any float address (feature rows start every d floats).
typedef float v8_unaligned __attribute__((vector_size(32), aligned(4), may_alias));

static inline v8 load(const float* p) { return *reinterpret_cast<const v8_unaligned*>(p); }

// Sum and maximum of the eight lanes, as a tree (three dependent operations, not seven).
static inline float hsum(v8 v) {
  const float a = (v[0] + v[4]) + (v[2] + v[6]), b = (v[1] + v[5]) + (v[3] + v[7]);
  return a + b;
}

static inline float hmax(v8 v) {
  const float a = std::max(std::max(v[0], v[4]), std::max(v[2], v[6]));
  const float b = std::max(std::max(v[1], v[5]), std::max(v[3], v[7]));
  return std::max(a, b);
}

static inline v8 vmax(v8 a, v8 b) { return a > b ? a : b; }

// Entries ahead whose feature rows are prefetched while a tile is gathered: far enough to
// cover a miss to memory (item rows gather from a table of every user).
constexpr int kAhead = 24;
// Entries whose feature rows are gathered together before the Gram's passes over them.
constexpr int kTile = 128;
// Pieces of rows per intra-op thread (see Compute), and the least work worth a piece of its
// own, in d x d multiply-add units (about ten rows of twenty entries).
constexpr int64_t kPiecesPerThread = 4;
constexpr int64_t kMinPieceCost = 500;

struct Shared {
  const float* features; int64_t n_other; const int64_t* splits; const int32_t* cols; const float* targets; const float* current;
  const float* reg_diag; const float* reg_power; const float* center; const float* lower; const float* base_gram;
  float obs_weight; int max_iter; float tol; int d;
  float* z; float* objective; float* penalty; float* pg0_sq; int32_t* steps;
};

// G x as a combination of G's rows (G is symmetric), summed in four interleaved partial sums
// so that consecutive multiply-adds do not wait on each other.
template <int NB>
static inline void matvec(const v8 (*G)[NB], int d, const v8* x, v8* out) {
  const float* xf = reinterpret_cast<const float*>(x);
  v8 part[4][NB];
  for (int q = 0; q < 4; ++q) for (int b = 0; b < NB; ++b) part[q][b] = v8{};
  int a = 0;
  for (; a + 4 <= d; a += 4)
    for (int q = 0; q < 4; ++q) {
      const float xa = xf[a + q];
      for (int b = 0; b < NB; ++b) part[q][b] += xa * G[a + q][b];
    }
  for (; a < d; ++a) {
    const float xa = xf[a];
    for (int b = 0; b < NB; ++b) part[0][b] += xa * G[a][b];
  }
  for (int b = 0; b < NB; ++b) out[b] = (part[0][b] + part[1][b]) + (part[2][b] + part[3][b]);
}

// Adds the outer products of n gathered rows to rows a0..a0+AB-1 of a Gram, from their
// diagonal block (vector B0 = a0 / 8) on: the Gram is symmetric, so the blocks left of the
// diagonal are filled in from those above it once the row's entries are all in
// (mirror_lower_blocks). AB divides 8, so the AB rows share one diagonal block.
template <int NB, int AB, int B0>
static inline void gram_rows(v8 (*G)[NB], const v8 (*tile)[NB], int n, int a0) {
  constexpr int W = NB - B0;
  v8 acc[AB][W];
  for (int a = 0; a < AB; ++a) for (int b = 0; b < W; ++b) acc[a][b] = G[a0 + a][B0 + b];
  for (int j = 0; j < n; ++j) {
    const float* x = reinterpret_cast<const float*>(tile[j]);
    for (int a = 0; a < AB; ++a) {
      const float xa = x[a0 + a];
      for (int b = 0; b < W; ++b) acc[a][b] += xa * tile[j][B0 + b];
    }
  }
  for (int a = 0; a < AB; ++a) for (int b = 0; b < W; ++b) G[a0 + a][B0 + b] = acc[a][b];
}

// gram_rows for the diagonal block `block`, known at run time only.
template <int NB, int AB, int B0 = 0>
static inline void gram_pass(int block, v8 (*G)[NB], const v8 (*tile)[NB], int n, int a0) {
  if constexpr (B0 < NB) {
    if (block == B0) return gram_rows<NB, AB, B0>(G, tile, n, a0);
    gram_pass<NB, AB, B0 + 1>(block, G, tile, n, a0);
  }
}

// Lanes of two vectors picked by index (0-7 from the first, 8-15 from the second).
#if defined(__clang__)
#define SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
typedef int v8i __attribute__((vector_size(32)));
#define SHUFFLE(a, b, ...) __builtin_shuffle(a, b, v8i{__VA_ARGS__})
#endif

// The 8 x 8 transpose of r[0..7] into out[0..7], in 24 shuffles.
static inline void transpose8(const v8* r, v8* out) {
  v8 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = SHUFFLE(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = SHUFFLE(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4)
    for (int h = 0; h < 2; ++h) {
      u[i + h * 2] = SHUFFLE(t[i + h], t[i + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + h * 2 + 1] = SHUFFLE(t[i + h], t[i + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int j = 0; j < 4; ++j) {
    out[j] = SHUFFLE(u[j], u[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    out[j + 4] = SHUFFLE(u[j], u[j + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// Block (A, B) below the diagonal (rows 8A.., vector B < A) is the transpose of block (B, A).
template <int NB>
static inline void mirror_lower_blocks(v8 (*G)[NB], int d) {
  for (int A = 1; 8 * A < d; ++A)
    for (int B = 0; B < A; ++B) {
      v8 upper[8], lower[8];
      for (int l = 0; l < 8; ++l) upper[l] = G[8 * B + l][A];
      transpose8(upper, lower);
      for (int j = 0; j < 8; ++j) G[8 * A + j][B] = lower[j];
    }
}

// One row's subproblem while it is being solved.
template <int NB>
struct Row {
  v8 G[8 * NB][NB];         // the regularised Gram
  v8 c[NB], pen[NB];        // right-hand side, penalty weights
  v8 z[NB], y[NB];          // iterate, extrapolated point
  float sq_total, step, move_threshold, pg0, t;
  bool done;
  int32_t steps;
};

// Rows solved in lockstep: each step of one row waits on its previous step, so the steps
// of kLockstep rows are interleaved to keep the core busy.
constexpr int kLockstep = 4;

// Rows first..last-1. A row's Gram is built AB rows at a time so that those rows'
// accumulators (their blocks from the diagonal on) stay in registers while the row's
// gathered entries stream past.
template <int NB, int AB>
static void solve_rows(const Shared& s, int64_t first, int64_t last) {
  constexpr int DP = 8 * NB;
  static_assert(DP % AB == 0, "blocks of Gram rows must not run past the padded width");
  const int d = s.d;
  // Per-coordinate inputs padded to DP lanes: padded lanes have zero Gram rows and columns,
  // zero right-hand side and lower bound 0, so they stay at 0 throughout.
  alignas(64) v8 base[DP][NB];
  v8 lo[NB], cen[NB], live[NB];
  {
    float lo_f[DP] = {}, cen_f[DP] = {}, live_f[DP] = {}, base_f[DP][DP] = {};
    for (int j = 0; j < d; ++j) {
      lo_f[j] = s.lower[j];
      cen_f[j] = s.center[j];
      live_f[j] = 1.f;
      for (int b = 0; b < d; ++b) base_f[j][b] = s.base_gram[j * d + b];
    }
    std::memcpy(lo, lo_f, sizeof(lo));
    std::memcpy(cen, cen_f, sizeof(cen));
    std::memcpy(live, live_f, sizeof(live));
    std::memcpy(base, base_f, sizeof(base));
  }
  // Rows from here on are read through `tail`: a load of DP floats from them would pass the
  // table's end (row i is safe when i * d + DP <= n_other * d).
  const int64_t safe_rows = s.n_other * d >= DP ? (s.n_other * d - DP) / d + 1 : 0;
  alignas(64) float tail[DP] = {};
  alignas(64) v8 tile[kTile][NB];
  const int64_t prefetch_end = s.splits[last];
  bool plain = s.obs_weight == 1.f;  // the rating objective: no base Gram, no weight
  for (int j = 0; j < d * d; ++j) plain = plain && s.base_gram[j] == 0.f;

  // Row r's regularised system: Gram, right-hand side, penalty weights, constant.
  auto set_up = [&](Row<NB>& q, int64_t r) {
    const int64_t e0 = s.splits[r], e1 = s.splits[r + 1];
    auto& G = q.G;
    for (int b = 0; b < NB; ++b) q.c[b] = v8{};
    double sq = 0.0;
    // A feature row is loaded as DP floats: its d values, then the start of the next rows
    // (cleared below). The last rows of the table, where that would read past its end, are
    // copied to a zero-padded buffer first.
    auto row_of = [&](int64_t e) {
      const int64_t col = s.cols[e];
      if (col < safe_rows) return s.features + col * d;
      std::memcpy(tail, s.features + col * d, d * sizeof(float));
      return static_cast<const float*>(tail);
    };
    // The row's entries are taken kTile at a time: their feature rows are gathered once into
    // `tile` (with the right-hand side), then every block of Gram rows streams through the
    // tile in L1 instead of through rows scattered over the table (a popular item's users
    // span more pages than the TLB holds: 1.6x faster on the 20M item side).
    for (int a = 0; a < DP; ++a) for (int b = 0; b < NB; ++b) G[a][b] = v8{};
    for (int64_t t0 = e0; t0 < e1; t0 += kTile) {
      const int n = int(std::min<int64_t>(kTile, e1 - t0));
      for (int j = 0; j < n; ++j) {
        const int64_t e = t0 + j;
        // Prefetch the lines of the row of the entry kAhead further on, into the next rows
        // of the chunk (most rows are shorter than the distance): all DP floats loaded.
        if (e + kAhead < prefetch_end) {
          const float* ahead = s.features + int64_t(s.cols[e + kAhead]) * d;
          for (int off = 0; off < DP; off += 16) __builtin_prefetch(ahead + off);
          __builtin_prefetch(ahead + DP - 1);
        }
        const float* x = row_of(e);
        const float t = s.targets[e];
        for (int b = 0; b < NB; ++b) {
          tile[j][b] = load(x + 8 * b);
          q.c[b] += t * tile[j][b];
        }
        sq += double(t) * t;
      }
      for (int a0 = 0; a0 < d; a0 += AB) gram_pass<NB, AB>(a0 / 8, G, tile, n, a0);
    }
    mirror_lower_blocks<NB>(G, d);
    for (int a = 0; a < DP; ++a)
      for (int b = 0; b < NB; ++b) G[a][b] = a >= d ? v8{} : live[b] > 0.f ? G[a][b] : v8{};
    for (int b = 0; b < NB; ++b) q.c[b] = live[b] > 0.f ? q.c[b] : v8{};

    // Regularised system: base + ω·data + diag(p); rhs + p⊙m; constant + Σ p m². The
    // penalty weight p_j = reg_j · n^power_j (0 for a row without entries); consecutive
    // coordinates share a power, so it is raised once per run of equal powers.
    const float n = float(e1 - e0);
    float p_f[DP] = {};
    float power = std::numeric_limits<float>::quiet_NaN(), scale = 0.f;
    for (int j = 0; n > 0.f && j < d; ++j) {
      if (!(s.reg_power[j] == power)) scale = std::pow(n, power = s.reg_power[j]);
      p_f[j] = s.reg_diag[j] * scale;
    }
    std::memcpy(q.pen, p_f, sizeof(q.pen));
    if (!plain)
      for (int a = 0; a < DP; ++a) for (int b = 0; b < NB; ++b) G[a][b] = base[a][b] + s.obs_weight * G[a][b];
    float* Gf = reinterpret_cast<float*>(G);
    for (int j = 0; j < d; ++j) Gf[j * DP + j] += p_f[j];
    v8 m{};
    for (int b = 0; b < NB; ++b) {
      q.c[b] += q.pen[b] * cen[b];
      m += q.pen[b] * cen[b] * cen[b];
    }
    q.sq_total = float(sq) + hsum(m);
  };

  // Step 1 / λ_max of rows' Grams by the Collatz–Wielandt bound after four power iterations
  // (the Gram's entries are non-negative, so every G x below is too, and padded lanes add
  // nothing). Each iteration waits on the one before: the rows' iterations are interleaved.
  auto set_step_sizes = [&](Row<NB>* q, int nr) {
    v8 x[kLockstep][NB], gx[kLockstep][NB];
    for (int i = 0; i < nr; ++i) for (int b = 0; b < NB; ++b) x[i][b] = live[b];
    for (int it = 0; it < 4; ++it)
      for (int i = 0; i < nr; ++i) {
        matvec<NB>(q[i].G, d, x[i], gx[i]);
        v8 top{};
        for (int b = 0; b < NB; ++b) top = vmax(top, gx[i][b]);
        const float scale = std::max(hmax(top), 1e-30f);
        for (int b = 0; b < NB; ++b) x[i][b] = gx[i][b] / scale + 1e-3f * live[b];
      }
    for (int i = 0; i < nr; ++i) {
      matvec<NB>(q[i].G, d, x[i], gx[i]);
      v8 ratio{};
      for (int b = 0; b < NB; ++b) ratio = vmax(ratio, gx[i][b] / (live[b] > 0.f ? x[i][b] : 1.f));
      q[i].step = 1.f / std::max(hmax(ratio), 1e-12f);
    }
  };

  // Row r's warm start, its projected gradient, the stopping thresholds.
  auto start_row = [&](Row<NB>& q, int64_t r) {
    auto& G = q.G;
    float start[DP] = {};
    std::memcpy(start, s.current + r * d, d * sizeof(float));
    std::memcpy(q.z, start, sizeof(q.z));
    for (int b = 0; b < NB; ++b) q.y[b] = q.z[b] = vmax(q.z[b], lo[b]);
    v8 g[NB];
    matvec<NB>(G, d, q.z, g);
    v8 pg_acc{};
    for (int b = 0; b < NB; ++b) {
      g[b] -= q.c[b];
      const v8 pg = q.z[b] <= lo[b] ? (g[b] < 0.f ? g[b] : v8{}) : g[b];
      pg_acc += pg * pg;
    }
    q.pg0 = hsum(pg_acc);
    const float threshold = s.tol * s.tol * q.pg0;
    q.move_threshold = threshold * q.step * q.step;
    q.done = q.pg0 <= threshold;
    q.t = 1.f;
    q.steps = 0;
  };

  // One Nesterov step from y with adaptive restart; the row is done when its gradient
  // mapping is within the tolerance.
  auto step_once = [&](Row<NB>& q) {
    v8 g[NB], dz[NB], mv{}, rs{};
    matvec<NB>(q.G, d, q.y, g);
    for (int b = 0; b < NB; ++b) {
      const v8 zn = vmax(q.y[b] - q.step * (g[b] - q.c[b]), lo[b]);
      const v8 move = q.y[b] - zn;
      dz[b] = zn - q.z[b];
      mv += move * move;
      rs += move * dz[b];
      q.z[b] = zn;
    }
    ++q.steps;
    q.done = hsum(mv) <= q.move_threshold;
    const bool restart = hsum(rs) > 0.f;
    const float t_new = 0.5f + std::sqrt(0.25f + q.t * q.t);
    const float beta = (restart || q.done) ? 0.f : (q.t - 1.f) / t_new;
    q.t = restart ? 1.f : t_new;
    for (int b = 0; b < NB; ++b) q.y[b] = q.z[b] + beta * dz[b];
  };

  // The row's loss zᵀGz − 2cᵀz + constant (clamped at 0, which float32 cancellation can
  // cross when a row is fitted exactly), its penalty alone, and the outputs.
  auto finish = [&](const Row<NB>& q, int64_t r) {
    v8 g[NB], ob{}, pe{};
    matvec<NB>(q.G, d, q.z, g);
    for (int b = 0; b < NB; ++b) {
      ob += q.z[b] * (g[b] - q.c[b] - q.c[b]);
      const v8 off = q.z[b] - cen[b];
      pe += q.pen[b] * off * off;
    }
    s.objective[r] = std::max(hsum(ob) + q.sq_total, 0.f);
    s.penalty[r] = hsum(pe);
    s.pg0_sq[r] = q.pg0;
    std::memcpy(s.z + r * d, q.z, d * sizeof(float));
    s.steps[r] = q.steps;
  };

  Row<NB> rows[kLockstep];
  for (int64_t r0 = first; r0 < last; r0 += kLockstep) {
    const int nr = int(std::min<int64_t>(kLockstep, last - r0));
    for (int i = 0; i < nr; ++i) set_up(rows[i], r0 + i);
    set_step_sizes(rows, nr);
    for (int i = 0; i < nr; ++i) start_row(rows[i], r0 + i);
    for (bool any = true; any;) {
      any = false;
      for (int i = 0; i < nr; ++i) {
        if (rows[i].done || rows[i].steps >= s.max_iter) continue;
        step_once(rows[i]);
        any = true;
      }
    }
    for (int i = 0; i < nr; ++i) finish(rows[i], r0 + i);
  }
}

class NnmfSolveRowsOp : public OpKernel {
 public:
  explicit NnmfSolveRowsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& features = ctx->input(0);
    const Tensor& splits = ctx->input(1);
    const Tensor& current = ctx->input(4);
    OP_REQUIRES(ctx, features.dims() == 2 && current.dims() == 2 && splits.dims() == 1 && ctx->input(2).dims() == 1 &&
                         ctx->input(3).dims() == 1 && ctx->input(9).dims() == 2,
                absl::InvalidArgumentError("features, current and base_gram must be matrices; row_splits, cols and "
                                           "targets vectors"));
    for (int i = 10; i <= 12; ++i)
      OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(ctx->input(i).shape()),
                  absl::InvalidArgumentError("obs_weight, max_iter and tol must be scalars"));
    const int64_t rows = current.dim_size(0);
    const int d = int(current.dim_size(1));
    const int nb = (d + 7) / 8;
    // 64 = 8 vectors of 8 floats, the widest template below (nnmf_tf.native.MAX_WIDTH).
    OP_REQUIRES(ctx, features.dim_size(1) == d && d >= 1 && d <= 64,
                absl::InvalidArgumentError("features must have d columns, 1 <= d <= 64, as current has"));
    OP_REQUIRES(ctx, splits.dim_size(0) == rows + 1, absl::InvalidArgumentError("row_splits must have rows + 1 entries"));
    // Every entry is read through an index: check them all (a few ms per million entries)
    // rather than read out of bounds.
    const int64_t nnz_in = ctx->input(2).NumElements(), n_other = features.dim_size(0);
    OP_REQUIRES(ctx, ctx->input(3).NumElements() == nnz_in, absl::InvalidArgumentError("cols and targets differ in length"));
    const int64_t* sp = splits.flat<int64_t>().data();
    bool ordered = sp[0] >= 0 && sp[rows] <= nnz_in;
    for (int64_t r = 0; r < rows && ordered; ++r) ordered = sp[r] <= sp[r + 1];
    OP_REQUIRES(ctx, ordered, absl::InvalidArgumentError("row_splits must ascend within [0, len(cols)]"));
    const int32_t* cp = ctx->input(2).flat<int32_t>().data();
    bool in_range = true;
    for (int64_t e = 0; e < nnz_in; ++e) in_range &= cp[e] >= 0 && cp[e] < n_other;
    OP_REQUIRES(ctx, in_range, absl::InvalidArgumentError("cols must index rows of features"));
    const int64_t dims[] = {ctx->input(5).NumElements(), ctx->input(6).NumElements(), ctx->input(7).NumElements(),
                            ctx->input(8).NumElements()};
    for (int64_t n : dims) OP_REQUIRES(ctx, n == d, absl::InvalidArgumentError("per-coordinate inputs must have d entries"));
    OP_REQUIRES(ctx, ctx->input(9).NumElements() == int64_t(d) * d, absl::InvalidArgumentError("base_gram must be d x d"));
    Tensor *z, *objective, *penalty, *pg0, *steps;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({rows, d}), &z));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({rows}), &objective));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({rows}), &penalty));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({rows}), &pg0));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, TensorShape({rows}), &steps));
    Shared s{features.flat<float>().data(), n_other, splits.flat<int64_t>().data(), ctx->input(2).flat<int32_t>().data(),
             ctx->input(3).flat<float>().data(), current.flat<float>().data(), ctx->input(5).flat<float>().data(),
             ctx->input(6).flat<float>().data(), ctx->input(7).flat<float>().data(), ctx->input(8).flat<float>().data(),
             ctx->input(9).flat<float>().data(), ctx->input(10).scalar<float>()(), ctx->input(11).scalar<int32_t>()(),
             ctx->input(12).scalar<float>()(), d, z->flat<float>().data(), objective->flat<float>().data(),
             penalty->flat<float>().data(), pg0->flat<float>().data(), steps->flat<int32_t>().data()};
    void (*fn)(const Shared&, int64_t, int64_t) = nullptr;
    switch (nb) {
      case 1: fn = solve_rows<1, 8>; break;
      case 2: fn = solve_rows<2, 4>; break;
      case 3: fn = solve_rows<3, 4>; break;
      case 4: fn = solve_rows<4, 4>; break;
      case 5: fn = solve_rows<5, 2>; break;
      case 6: fn = solve_rows<6, 2>; break;
      case 7: fn = solve_rows<7, 1>; break;
      default: fn = solve_rows<8, 1>; break;
    }
    // Rows differ in cost (a popular item's row has thousands of entries, a user's a few):
    // the rows are cut into pieces of about equal cost, a few per thread, rather than into
    // equal numbers of rows. A rough cost, in d x d multiply-adds: one Gram update per entry
    // and one matvec per step of the step budget (plus five for the step size) per row.
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    const int64_t per_row = std::max(s.max_iter, 0) + 5;
    const auto cost_before = [&](int64_t r) { return (s.splits[r] - s.splits[0]) + per_row * r; };
    const int64_t total = cost_before(rows);
    const int64_t pieces = std::clamp<int64_t>(std::min<int64_t>(kPiecesPerThread * workers->num_threads,
                                                                 total / kMinPieceCost), 1, std::max<int64_t>(rows, 1));
    if (pieces == 1) {
      fn(s, 0, rows);
      return;
    }
    std::vector<int64_t> edges(pieces + 1, rows);
    edges[0] = 0;
    // Piece p ends at the row boundary nearest to p / pieces of the total, not the first one
    // past it: a row that outweighs a piece is then not always packed with a piece's worth of
    // rows before it (and pieces can be left empty).
    for (int64_t r = 1, p = 1; r <= rows && p < pieces; ++r) {
      const int64_t before = cost_before(r - 1) * pieces, after = cost_before(r) * pieces;
      for (; p < pieces && after >= total * p; ++p)
        edges[p] = std::max(edges[p - 1], total * p - before < after - total * p ? r - 1 : r);
    }
    // Pieces are set far above the sharder's minimum cost, so that it runs them as separate
    // tasks (it may still group a few when they do not divide among its threads).
    Shard(workers->num_threads, workers->workers, pieces, int64_t(1) << 40,
          [&](int64_t a, int64_t b) { fn(s, edges[a], edges[b]); });
  }
};

REGISTER_KERNEL_BUILDER(Name("NnmfSolveRows").Device(DEVICE_CPU), NnmfSolveRowsOp);
