// A 3x3 convolution (stride 1, padding 1, NHWC input, float32) as Winograd F(2x2, 3x3), an XLA:CPU FFI handler.
//
// y[b, i, j, o] = sum_{c, di, dj} x[b, i + di - 1, j + dj - 1, c] w[di, dj, c, o], zero outside the image.
// Each 2x2 output tile reads a 4x4 input patch d: V = B^T d B (16 values per channel), then 16 products
// M[k] (tiles, O) = V[k] (tiles, C) U[k] (C, O) with the transformed kernel U = G w G^T (computed by the caller,
// loop-invariant in a sampler), then y_tile = A^T M A: 16 multiply-adds per 4 outputs and channel pair instead of
// 36 (Lavin & Gray 2016). Tiles go in blocks of kTiles so a block's V and M stay in L2; blocks are shared out over
// XLA's intra-op thread pool. The vector width follows the compiler's target (-march=native): 16 floats with
// AVX-512, else 8 (AVX2, or NEON pairs through GCC vector extensions).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

#if defined(__AVX512F__)
constexpr int VW = 16;
#else
constexpr int VW = 8;
#endif
typedef float vec __attribute__((vector_size(VW * 4)));
typedef float vecu __attribute__((vector_size(VW * 4), aligned(4)));

static inline vec load(const float* p) { return *reinterpret_cast<const vecu*>(p); }
static inline void store(float* p, vec v) { *reinterpret_cast<vecu*>(p) = v; }
#if defined(__AVX512F__)
#include <immintrin.h>
static inline vec bcast(float s) { return (vec)_mm512_set1_ps(s); }
#elif defined(__AVX__)
#include <immintrin.h>
static inline vec bcast(float s) { return (vec)_mm256_set1_ps(s); }
#else
static inline vec bcast(float s) { return s - (vec){}; }  // GCC broadcasts the scalar operand
#endif

namespace {

// Tiles per block (a multiple of both micro-kernel heights), and the micro-kernel's rows: 2 MR accumulators plus
// 3 operands fill AVX-512's 32 vector registers with MR = 12 and AVX2's 16 with MR = 6 (measured on the 2-core CPU:
// 36 tiles beat 30, 48 and 96; 12 rows beat 6 and 8 with AVX-512).
constexpr int kTiles = 36;
constexpr int MRB = VW == 16 ? 12 : 6;

struct Shape {
  int64_t B, H, W, C, O, TH, TW, ntiles;
};

// Cm[MR x 2 VW] = A[MR x K] (row stride lda) Bm[K x 2 VW] (row stride ldb); Cm's row stride ldc. Two named
// accumulator arrays (not acc[MR][NV]) so GCC keeps all 2 MR of them in registers.
template <int MR>
static inline void micro2(const float* A, int64_t lda, const float* Bm, int64_t ldb, int64_t K, float* Cm,
                          int64_t ldc) {
  vec c0[MR], c1[MR];
  for (int i = 0; i < MR; ++i) c0[i] = c1[i] = bcast(0.f);
  for (int64_t k = 0; k < K; ++k) {
    vec b0 = load(Bm + k * ldb), b1 = load(Bm + k * ldb + VW);
    for (int i = 0; i < MR; ++i) {
      vec a = bcast(A[i * lda + k]);
      c0[i] += a * b0;
      c1[i] += a * b1;
    }
  }
  for (int i = 0; i < MR; ++i) {
    store(Cm + i * ldc, c0[i]);
    store(Cm + i * ldc + VW, c1[i]);
  }
}

// The same for one vector of columns (O's last VW when O is an odd number of vectors).
template <int MR>
static inline void micro1(const float* A, int64_t lda, const float* Bm, int64_t ldb, int64_t K, float* Cm,
                          int64_t ldc) {
  vec c0[MR];
  for (int i = 0; i < MR; ++i) c0[i] = bcast(0.f);
  for (int64_t k = 0; k < K; ++k) {
    vec b0 = load(Bm + k * ldb);
    for (int i = 0; i < MR; ++i) c0[i] += bcast(A[i * lda + k]) * b0;
  }
  for (int i = 0; i < MR; ++i) store(Cm + i * ldc, c0[i]);
}

template <int NV, int MR>
static inline void micro(const float* A, int64_t lda, const float* Bm, int64_t ldb, int64_t K, float* Cm,
                         int64_t ldc) {
  if constexpr (NV == 2)
    micro2<MR>(A, lda, Bm, ldb, K, Cm, ldc);
  else
    micro1<MR>(A, lda, Bm, ldb, K, Cm, ldc);
}

template <int NV>
static inline void gemm_columns(const float* A, const float* Bm, float* Cm, int64_t M, int64_t K, int64_t N,
                                int64_t j) {
  int64_t i = 0;
  for (; i + MRB <= M; i += MRB) micro<NV, MRB>(A + i * K, K, Bm + j, N, K, Cm + i * N + j, N);
  for (; i < M; ++i) micro<NV, 1>(A + i * K, K, Bm + j, N, K, Cm + i * N + j, N);
}

// Cm[M x N] = A[M x K] Bm[K x N], row-major and dense, N a multiple of VW.
static void gemm(const float* A, const float* Bm, float* Cm, int64_t M, int64_t K, int64_t N) {
  int64_t j = 0;
  for (; j + 2 * VW <= N; j += 2 * VW) gemm_columns<2>(A, Bm, Cm, M, K, N, j);
  for (; j < N; j += VW) gemm_columns<1>(A, Bm, Cm, M, K, N, j);
}

// One block of tiles [t0, t0 + nt): input transform, 16 products, output transform.
static void run_block(const Shape& s, const float* x, const float* u, float* y, int64_t t0, int64_t nt,
                      float* V, float* M) {
  const int64_t C = s.C, O = s.O;
  // V[k][t][c] = (B^T d B)[k] for the 4x4 input patch d of tile t.
  for (int64_t t = 0; t < nt; ++t) {
    int64_t g = t0 + t, b = g / (s.TH * s.TW), r = g % (s.TH * s.TW), ty = r / s.TW, tx = r % s.TW;
    int64_t y0 = 2 * ty - 1, x0 = 2 * tx - 1;
    const float* rows[4];
    bool okr[4], okc[4];
    for (int i = 0; i < 4; ++i) {
      okr[i] = y0 + i >= 0 && y0 + i < s.H;
      okc[i] = x0 + i >= 0 && x0 + i < s.W;
      rows[i] = x + ((b * s.H + (okr[i] ? y0 + i : 0)) * s.W) * C;
    }
    for (int64_t c = 0; c < C; c += VW) {
      vec d[4][4];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) d[i][j] = okr[i] && okc[j] ? load(rows[i] + (x0 + j) * C + c) : bcast(0.f);
      vec e[4][4];  // B^T d: rows
      for (int j = 0; j < 4; ++j) {
        e[0][j] = d[0][j] - d[2][j];
        e[1][j] = d[1][j] + d[2][j];
        e[2][j] = d[2][j] - d[1][j];
        e[3][j] = d[1][j] - d[3][j];
      }
      for (int i = 0; i < 4; ++i) {  // (B^T d) B: columns
        float* base = V + (i * 4) * nt * C + t * C + c;
        store(base, e[i][0] - e[i][2]);
        store(base + nt * C, e[i][1] + e[i][2]);
        store(base + 2 * nt * C, e[i][2] - e[i][1]);
        store(base + 3 * nt * C, e[i][1] - e[i][3]);
      }
    }
  }
  for (int k = 0; k < 16; ++k) gemm(V + k * nt * C, u + k * C * O, M + k * nt * O, nt, C, O);
  // Y = A^T m A, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]].
  for (int64_t t = 0; t < nt; ++t) {
    int64_t g = t0 + t, b = g / (s.TH * s.TW), r = g % (s.TH * s.TW), ty = r / s.TW, tx = r % s.TW;
    float* out = y + ((b * s.H + 2 * ty) * s.W + 2 * tx) * O;
    for (int64_t o = 0; o < O; o += VW) {
      vec m[4][4];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) m[i][j] = load(M + (i * 4 + j) * nt * O + t * O + o);
      vec a[2][4];
      for (int j = 0; j < 4; ++j) {
        a[0][j] = m[0][j] + m[1][j] + m[2][j];
        a[1][j] = m[1][j] - m[2][j] - m[3][j];
      }
      for (int i = 0; i < 2; ++i) {
        store(out + i * s.W * O + o, a[i][0] + a[i][1] + a[i][2]);
        store(out + i * s.W * O + O + o, a[i][1] - a[i][2] - a[i][3]);
      }
    }
  }
}

struct Job {
  Shape s;
  const float *x, *u;
  float* y;
  int64_t nblocks;
  std::atomic<int64_t> next{0}, done{0};
};

static void work(Job* job) {
  std::vector<float> V(16 * kTiles * job->s.C), M(16 * kTiles * job->s.O);
  for (;;) {
    int64_t blk = job->next.fetch_add(1);
    if (blk >= job->nblocks) return;
    int64_t t0 = blk * kTiles, nt = std::min<int64_t>(kTiles, job->s.ntiles - t0);
    run_block(job->s, job->x, job->u, job->y, t0, nt, V.data(), M.data());
    job->done.fetch_add(1, std::memory_order_release);
  }
}

}  // namespace

static ffi::Error Winograd3x3Impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> u,
                                  ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions(), ud = u.dimensions();
  if (xd.size() != 4 || ud.size() != 3 || ud[0] != 16 || ud[1] != xd[3])
    return ffi::Error::InvalidArgument("winograd3x3: expects x (B, H, W, C) and u (16, C, O)");
  Shape s{xd[0], xd[1], xd[2], xd[3], ud[2], xd[1] / 2, xd[2] / 2, 0};
  if (s.H % 2 || s.W % 2 || s.C % VW || s.O % VW)
    return ffi::Error::InvalidArgument("winograd3x3: H, W must be even and C, O multiples of the vector width");
  s.ntiles = s.B * s.TH * s.TW;
  auto job = std::make_shared<Job>();
  job->s = s;
  job->x = x.typed_data();
  job->u = u.typed_data();
  job->y = y->typed_data();
  job->nblocks = (s.ntiles + kTiles - 1) / kTiles;
  // The caller works too and only waits for blocks already taken, so a busy pool cannot stall it; helpers that
  // start late find no block left (job is shared so it outlives this call for them).
  int64_t helpers = std::min<int64_t>(pool.num_threads(), job->nblocks) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([job] { work(job.get()); });
  work(job.get());
  while (job->done.load(std::memory_order_acquire) < job->nblocks) std::this_thread::yield();
  return ffi::Error::Success();
}

// Floats per vector in this build: C and O must be multiples of it.
extern "C" int jaxdiff_vector_width() { return VW; }

XLA_FFI_DEFINE_HANDLER_SYMBOL(Winograd3x3, Winograd3x3Impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
