// The sparse half-step's CPU kernel: for each row, the Gram and right-hand side of its
// non-negative least-squares subproblem, then accelerated projected gradient on it, in one
// pass that keeps the row's Gram in registers and L1 cache.
//
// It computes what nnmf_tf/halfstep.py computes with TensorFlow ops (the same Gram, step
// size bound, Nesterov steps with adaptive restart and stopping rule, per row), so the two
// agree to float32 rounding. TensorFlow's own ops need the Gram of every row as a batch of
// small matmuls over padded pieces, summed by segment, and the solver as a batched matvec:
// each of these runs at a small fraction of the machine's matmul rate on 20 x 20 shapes.
// Here a row's entries are gathered once per block of Gram rows and accumulated into
// vector registers, with the next rows prefetched.
//
// Built by nnmf_tf/native.py against the installed TensorFlow on first use.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/util/work_sharder.h"

using namespace tensorflow;

REGISTER_OP("NnmfSolveRows")
    .Input("features: float")      // (n_other, 8 * NB): the other side's rows, zero-padded
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

// One copy of the kernel per x86-64 level (AVX-512, AVX2 + FMA, baseline), chosen at load
// time by the CPU the process runs on, so a library built on one machine runs on another.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define NNMF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define NNMF_CLONES
#endif

// Eight floats, one AVX register; the compiler splits it on narrower CPUs. Rows of the Gram
// and of the factors are NB of these (the width d padded with zeros to 8 * NB).
typedef float v8 __attribute__((vector_size(32), aligned(4)));

static inline float hsum(v8 v) {
  float s = 0.f;
  for (int i = 0; i < 8; ++i) s += v[i];
  return s;
}

struct Shared {
  const float* features; const int64_t* splits; const int32_t* cols; const float* targets; const float* current;
  const float* reg_diag; const float* reg_power; const float* center; const float* lower; const float* base_gram;
  float obs_weight; int max_iter; float tol; int d;
  float* z; float* objective; float* penalty; float* pg0_sq; int32_t* steps;
};

// Rows first..last-1. The Gram is built AB rows at a time so that those AB x NB
// accumulators stay in registers while the row's entries stream past.
template <int NB, int AB>
NNMF_CLONES
static void solve_rows(const Shared& s, int64_t first, int64_t last) {
  constexpr int DP = 8 * NB;
  static_assert(DP % AB == 0, "blocks of Gram rows must not run past the padded width");
  const int d = s.d;
  alignas(64) v8 G[DP][NB];
  v8 c[NB], lo[NB], cen[NB], pen[NB];
  float lo_f[DP], cen_f[DP];
  for (int j = 0; j < DP; ++j) { lo_f[j] = j < d ? s.lower[j] : 0.f; cen_f[j] = j < d ? s.center[j] : 0.f; }
  std::memcpy(lo, lo_f, sizeof(lo));
  std::memcpy(cen, cen_f, sizeof(cen));
  for (int64_t r = first; r < last; ++r) {
    const int64_t e0 = s.splits[r], e1 = s.splits[r + 1];
    // Data Gram and right-hand side.
    for (int a0 = 0; a0 < d; a0 += AB) {
      v8 acc[AB][NB];
      for (int a = 0; a < AB; ++a) for (int b = 0; b < NB; ++b) acc[a][b] = v8{};
      for (int64_t e = e0; e < e1; ++e) {
        if (a0 == 0 && e + 8 < e1) __builtin_prefetch(s.features + int64_t(s.cols[e + 8]) * DP);
        const float* x = s.features + int64_t(s.cols[e]) * DP;
        v8 xv[NB];
        std::memcpy(xv, x, sizeof(xv));
        for (int a = 0; a < AB; ++a) {
          const float xa = x[a0 + a];
          for (int b = 0; b < NB; ++b) acc[a][b] += xa * xv[b];
        }
      }
      for (int a = 0; a < AB; ++a) for (int b = 0; b < NB; ++b) G[a0 + a][b] = acc[a][b];
    }
    for (int a = (d + AB - 1) / AB * AB; a < DP; ++a) for (int b = 0; b < NB; ++b) G[a][b] = v8{};
    for (int b = 0; b < NB; ++b) c[b] = v8{};
    double sq = 0.0;
    for (int64_t e = e0; e < e1; ++e) {
      const float t = s.targets[e];
      v8 xv[NB];
      std::memcpy(xv, s.features + int64_t(s.cols[e]) * DP, sizeof(xv));
      for (int b = 0; b < NB; ++b) c[b] += t * xv[b];
      sq += double(t) * t;
    }
    // Regularised system: base + ω·data + diag(p); rhs + p⊙m; constant + Σ p m².
    const float n = float(e1 - e0);
    float p_f[DP] = {};
    for (int j = 0; j < d; ++j) p_f[j] = n > 0.f ? s.reg_diag[j] * std::pow(n, s.reg_power[j]) : 0.f;
    std::memcpy(pen, p_f, sizeof(pen));
    float* Gf = reinterpret_cast<float*>(G);
    for (int a = 0; a < d; ++a)
      for (int b = 0; b < d; ++b) Gf[a * DP + b] = s.base_gram[a * d + b] + s.obs_weight * Gf[a * DP + b];
    for (int j = 0; j < d; ++j) Gf[j * DP + j] += p_f[j];
    for (int b = 0; b < NB; ++b) c[b] += pen[b] * cen[b];
    float sq_total = float(sq);
    {
      v8 m{};
      for (int b = 0; b < NB; ++b) m += pen[b] * cen[b] * cen[b];
      sq_total += hsum(m);
    }
    auto matvec = [&](const v8* x, v8* out) {
      const float* xf = reinterpret_cast<const float*>(x);
      for (int b = 0; b < NB; ++b) out[b] = v8{};
      for (int a = 0; a < d; ++a) {
        const float xa = xf[a];
        for (int b = 0; b < NB; ++b) out[b] += xa * G[a][b];
      }
    };
    // Step 1 / λ_max by the Collatz–Wielandt bound after four power iterations.
    v8 x[NB], gx[NB];
    {
      float ones[DP];
      for (int j = 0; j < DP; ++j) ones[j] = j < d ? 1.f : 0.f;
      std::memcpy(x, ones, sizeof(x));
    }
    const float* xf = reinterpret_cast<const float*>(x);
    const float* gxf = reinterpret_cast<const float*>(gx);
    for (int it = 0; it < 4; ++it) {
      matvec(x, gx);
      float mx = -std::numeric_limits<float>::infinity();
      for (int j = 0; j < d; ++j) mx = std::max(mx, gxf[j]);
      const float scale = std::max(mx, 1e-30f);
      float tmp[DP] = {};
      for (int j = 0; j < d; ++j) tmp[j] = gxf[j] / scale + 1e-3f;
      std::memcpy(x, tmp, sizeof(x));
    }
    matvec(x, gx);
    float lmax = -std::numeric_limits<float>::infinity();
    for (int j = 0; j < d; ++j) lmax = std::max(lmax, gxf[j] / xf[j]);
    const float step = 1.f / std::max(lmax, 1e-12f);
    // Warm start, its projected gradient, the stopping thresholds.
    v8 z[NB], y[NB], g[NB];
    {
      float tmp[DP] = {};
      for (int j = 0; j < d; ++j) tmp[j] = s.current[r * d + j];
      std::memcpy(z, tmp, sizeof(z));
    }
    for (int b = 0; b < NB; ++b) z[b] = z[b] > lo[b] ? z[b] : lo[b];
    matvec(z, g);
    for (int b = 0; b < NB; ++b) g[b] -= c[b];
    float pg0 = 0.f;
    {
      v8 acc{};
      for (int b = 0; b < NB; ++b) {
        v8 pg = z[b] <= lo[b] ? (g[b] < 0.f ? g[b] : v8{}) : g[b];
        acc += pg * pg;
      }
      pg0 = hsum(acc);
    }
    const float threshold = s.tol * s.tol * pg0;
    const float move_threshold = threshold * step * step;
    bool done = pg0 <= threshold;
    float t = 1.f;
    int32_t steps = 0;
    for (int b = 0; b < NB; ++b) y[b] = z[b];
    while (!done && steps < s.max_iter) {
      matvec(y, g);
      v8 mv{}, rs{};
      v8 dz[NB];
      for (int b = 0; b < NB; ++b) {
        v8 zn = y[b] - step * (g[b] - c[b]);
        zn = zn > lo[b] ? zn : lo[b];
        const v8 move = y[b] - zn;
        dz[b] = zn - z[b];
        mv += move * move;
        rs += move * dz[b];
        z[b] = zn;
      }
      ++steps;
      done = hsum(mv) <= move_threshold;
      const bool restart = hsum(rs) > 0.f;
      float t_new = 0.5f + std::sqrt(0.25f + t * t);
      const float beta = (restart || done) ? 0.f : (t - 1.f) / t_new;
      t = restart ? 1.f : t_new;
      for (int b = 0; b < NB; ++b) y[b] = z[b] + beta * dz[b];
    }
    matvec(z, g);
    v8 ob{}, pe{};
    for (int b = 0; b < NB; ++b) {
      g[b] -= c[b];
      ob += z[b] * (g[b] - c[b]);
      const v8 off = z[b] - cen[b];
      pe += pen[b] * off * off;
    }
    s.objective[r] = std::max(hsum(ob) + sq_total, 0.f);
    s.penalty[r] = hsum(pe);
    s.pg0_sq[r] = pg0;
    std::memcpy(s.z + r * d, z, d * sizeof(float));
    s.steps[r] = steps;
  }
}

class NnmfSolveRowsOp : public OpKernel {
 public:
  explicit NnmfSolveRowsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& features = ctx->input(0);
    const Tensor& splits = ctx->input(1);
    const Tensor& current = ctx->input(4);
    const int64_t rows = current.dim_size(0);
    const int d = int(current.dim_size(1));
    const int nb = int(features.dim_size(1) / 8);
    OP_REQUIRES(ctx, features.dim_size(1) == 8 * ((d + 7) / 8) && nb >= 1 && nb <= 8,
                absl::InvalidArgumentError("features must be padded to the multiple of 8 above d <= 64"));
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
    Shared s{features.flat<float>().data(), splits.flat<int64_t>().data(), ctx->input(2).flat<int32_t>().data(),
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
    const int64_t nnz = s.splits[rows] - s.splits[0];
    const int64_t cost = 2 * (rows ? nnz / rows : 0) * d * d + 40 * d * d;
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    Shard(workers->num_threads, workers->workers, rows, cost, [&](int64_t a, int64_t b) { fn(s, a, b); });
  }
};

REGISTER_KERNEL_BUILDER(Name("NnmfSolveRows").Device(DEVICE_CPU), NnmfSolveRowsOp);
