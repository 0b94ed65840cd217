// Backend conformance, in the manner of ggml's test-backend-ops: every op of kernels::Backend over
// a sweep of shapes and formats (weight types, KV formats),
//   1. on the CPU backend, against a plain scalar reference written here (float64), so that with
//      only the CPU present the test still checks something real; and
//   2. on every other backend of the registry that can run here, against the CPU backend's
//      result, with a tolerance per op and format. A backend that cannot run (no device) is
//      reported and skipped.
// Inputs go through the backend's own memory (Alloc / CopyIn / CopyOut), so a device backend
// runs the same code path as the CPU. docs/backends.md describes the suite.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/kv_quantize.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/dtype.h"
#include "kernels/kv_format.h"
#include "kernels/weight_formats.h"
#include "tests/kernels/kv_quant_reference.h"

#if defined(KVSERVE_HAVE_CUDA)
#include "kernels/cuda/cuda_backend.h"
#else
#include "kernels/cpu/cpu_backend.h"
#endif

namespace kvserve::kernels {
namespace {

#if defined(KVSERVE_HAVE_CUDA)
// Built into the GPU test binary: "cuda" joins the registry (unavailable without a device).
const bool kCudaRegistered = (cuda::RegisterCudaBackend(), true);
#else
// Without a device backend, a second CPU backend stands in as a peer, so that the comparison
// against the CPU (uploads, pointer arrays, tolerances) runs on every machine.
const bool kTwinRegistered = RegisterBackend(
    "cpu-twin", [](std::string*) { return std::unique_ptr<Backend>(new cpu::CpuBackend); });
#endif

constexpr double kUnit = 1.0 / (1 << 24);  // float's unit roundoff

const DType kWeightTypes[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ4_0, DType::kQ4_1,
                              DType::kQ5_0, DType::kQ5_1, DType::kQ8_0, DType::kQ2_K, DType::kQ3_K,
                              DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};
// lowrank keys need a per-layer basis and are covered by kv_lowrank_test.cc.
const KvFormat kKvFormats[] = {KvFormat::kFp32, KvFormat::kFp16, KvFormat::kBf16,  KvFormat::kFp8,
                               KvFormat::kInt8, KvFormat::kInt4, KvFormat::kNvfp4, KvFormat::kInt2};

// ---- Running ops on any backend ------------------------------------------------------------

// Backend memory owned for one run: host vectors copied in, outputs copied out.
class Scope {
 public:
  explicit Scope(Backend* b) : b_(b) {}
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;
  ~Scope() {
    for (void* p : ptrs_) b_->Free(p);
  }

  void* New(int64_t bytes) {
    void* p = b_->Alloc(std::max<int64_t>(bytes, 1));
    EXPECT_NE(p, nullptr) << b_->name() << ": Alloc(" << bytes << ")";
    ptrs_.push_back(p);
    return p;
  }
  template <typename T>
  T* Put(const std::vector<T>& host) {
    const int64_t bytes = static_cast<int64_t>(host.size() * sizeof(T));
    auto* p = static_cast<T*>(New(bytes));
    if (bytes > 0) b_->CopyIn(p, host.data(), bytes);
    return p;
  }
  template <typename T>
  std::vector<T> Get(const T* p, size_t n) {
    std::string error;
    EXPECT_TRUE(b_->Synchronize(&error)) << b_->name() << ": " << error;
    std::vector<T> host(n);
    if (n > 0) b_->CopyOut(host.data(), p, static_cast<int64_t>(n * sizeof(T)));
    return host;
  }
  Backend* backend() const { return b_; }

 private:
  Backend* b_;
  std::vector<void*> ptrs_;
};

// The backends of the registry other than the CPU that can run here.
struct Peer {
  std::string name;
  std::unique_ptr<Backend> backend;
};
std::vector<Peer> Peers() {
  std::vector<Peer> peers;
  for (const std::string& name : BackendNames()) {
    if (name == "cpu") continue;
    std::string error;
    std::unique_ptr<Backend> b = CreateBackend(name, &error);
    if (b == nullptr) {
      std::printf("[ SKIPPED  ] backend %s: %s\n", name.c_str(), error.c_str());
      continue;
    }
    peers.push_back(Peer{name, std::move(b)});
  }
  return peers;
}

struct Cpu {
  std::unique_ptr<Backend> backend;
  Cpu() {
    std::string error;
    backend = CreateBackend("cpu", &error);
    EXPECT_NE(backend, nullptr) << error;
  }
};

// |got[i] - want[i]| <= tol[i] for every i (a single tol is broadcast).
void ExpectNear(const std::vector<float>& got, const std::vector<double>& want,
                const std::vector<double>& tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double t = tol.size() == 1 ? tol[0] : tol[i];
    if (!(std::fabs(got[i] - want[i]) <= t)) {
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << ", expected " << want[i]
                    << " +- " << t;
      if (++bad >= 5) return;
    }
  }
}
std::vector<double> ToDouble(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// ---- Weights ------------------------------------------------------------------------------------

struct HostWeight {
  DType dtype = DType::kF32;
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> bytes;
  std::vector<float> values;  // [rows, cols] what the stored elements mean (reference dequant)
};

HostWeight RandomWeight(std::mt19937& rng, DType t, int64_t rows, int64_t cols) {
  std::normal_distribution<float> n01(0.0f, 0.5f);
  HostWeight w{t, rows, cols, {}, {}};
  const int64_t row_bytes = WeightRowBytes(t, cols);
  w.bytes.resize(static_cast<size_t>(rows * row_bytes));
  w.values.resize(static_cast<size_t>(rows * cols));
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (float& x : row) x = n01(rng);
    uint8_t* dst = w.bytes.data() + r * row_bytes;
    if (t == DType::kF32) {
      std::memcpy(dst, row.data(), row.size() * 4);
    } else if (t == DType::kF16 || t == DType::kBF16) {
      for (int64_t c = 0; c < cols; ++c) {
        const uint16_t h = t == DType::kF16 ? FloatToFp16(row[c]) : FloatToBf16(row[c]);
        std::memcpy(dst + 2 * c, &h, 2);
      }
    } else {
      QuantizeRow(t, row.data(), cols, dst);
    }
    DequantizeRow(t, dst, cols, w.values.data() + r * cols);
  }
  return w;
}

WeightView Upload(Scope& s, const HostWeight& w) {
  return WeightView{w.dtype, s.Put(w.bytes), w.rows, w.cols};
}

// ---- MatMul ---------------------------------------------------------------------------------

struct MatMulCase {
  DType dtype;
  int64_t n, rows, cols;
  bool prepared;
  std::string Name() const {
    return std::string(DTypeName(dtype)) + " n=" + std::to_string(n) +
           " rows=" + std::to_string(rows) + " cols=" + std::to_string(cols) +
           (prepared ? " prepared" : "");
  }
};

std::vector<float> RunMatMul(Backend* b, const MatMulCase& c, const HostWeight& w,
                             const std::vector<float>& x, ThreadPool* pool) {
  Scope s(b);
  WeightView wv = Upload(s, w);
  if (c.prepared) {
    const int64_t bytes = b->PreparedWeightBytes(wv);
    if (bytes > 0) b->PrepareWeight(&wv, s.New(bytes));
  }
  float* y = s.Put(std::vector<float>(static_cast<size_t>(c.n * c.rows), -1.0f));
  b->MatMul(s.Put(x), c.n, wv, y, ExecContext{pool});
  return s.Get(y, static_cast<size_t>(c.n * c.rows));
}

std::vector<MatMulCase> MatMulCases() {
  std::vector<MatMulCase> cases;
  for (DType t : kWeightTypes) {
    const int64_t bs = DTypeBlockSize(t);
    for (int64_t cols : {std::max<int64_t>(bs, 64), 2 * std::max<int64_t>(bs, 128)}) {
      for (int64_t n : {1, 3, 17}) {
        for (int64_t rows : {1, 7, 33}) {
          for (bool prepared : {false, true}) cases.push_back({t, n, rows, cols, prepared});
        }
      }
    }
  }
  return cases;
}

// Error bound of one output against the float64 product of the stored values: dense types sum
// in float (a few units per term); quantized types round the activations to 8 bits per block
// (half a step of the block's largest |x| / 127, plus the FP16 block scales).
std::vector<double> MatMulTolerance(const MatMulCase& c, const HostWeight& w,
                                    const std::vector<float>& x) {
  std::vector<double> tol(static_cast<size_t>(c.n * c.rows));
  const int64_t bs = IsQuantized(c.dtype) ? DTypeBlockSize(c.dtype) : c.cols;
  for (int64_t i = 0; i < c.n; ++i) {
    for (int64_t r = 0; r < c.rows; ++r) {
      double t = 0.0;
      for (int64_t b0 = 0; b0 < c.cols; b0 += bs) {
        double amax = 0.0;
        for (int64_t j = b0; j < b0 + bs; ++j)
          amax = std::max(amax, std::fabs(double{x[i * c.cols + j]}));
        for (int64_t j = b0; j < b0 + bs; ++j) {
          const double wx = std::fabs(w.values[r * c.cols + j] * double{x[i * c.cols + j]});
          t += IsQuantized(c.dtype)
                   ? std::fabs(w.values[r * c.cols + j]) * (amax / 254.0) + 1e-3 * wx
                   : 2.0 * (c.cols + 2) * kUnit * wx;
        }
      }
      tol[i * c.rows + r] = t + 1e-6;
    }
  }
  return tol;
}

TEST(BackendConformanceTest, MatMul) {
  Cpu cpu;
  std::vector<Peer> peers = Peers();
  ThreadPool pool(3);
  std::mt19937 rng(1);
  for (const MatMulCase& c : MatMulCases()) {
    SCOPED_TRACE(c.Name());
    const HostWeight w = RandomWeight(rng, c.dtype, c.rows, c.cols);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(c.n * c.cols));
    for (float& v : x) v = u(rng);
    std::vector<double> ref(static_cast<size_t>(c.n * c.rows), 0.0);
    for (int64_t i = 0; i < c.n; ++i) {
      for (int64_t r = 0; r < c.rows; ++r) {
        for (int64_t j = 0; j < c.cols; ++j) {
          ref[i * c.rows + r] += double{w.values[r * c.cols + j]} * x[i * c.cols + j];
        }
      }
    }
    const std::vector<double> tol = MatMulTolerance(c, w, x);
    const std::vector<float> got = RunMatMul(cpu.backend.get(), c, w, x, nullptr);
    ExpectNear(got, ref, tol, "cpu vs reference");
    // Threads change nothing; a prepared (or quantized) weight gives each row alone exactly what
    // it gets in the batch.
    EXPECT_EQ(RunMatMul(cpu.backend.get(), c, w, x, &pool), got) << "cpu with a thread pool";
    if (c.prepared || IsQuantized(c.dtype)) {
      MatMulCase one = c;
      one.n = 1;
      const std::vector<float> last(x.end() - c.cols, x.end());
      const std::vector<float> alone = RunMatMul(cpu.backend.get(), one, w, last, nullptr);
      EXPECT_TRUE(std::equal(alone.begin(), alone.end(), got.end() - c.rows)) << "batch invariance";
    }
    for (Peer& p : peers) {
      if (!p.backend->SupportsWeight(c.dtype)) continue;
      // Devices may round activations to the weight's 16-bit type (tensor cores).
      std::vector<double> ptol = tol;
      for (double& t : ptol) t *= 2.0;
      if (c.dtype == DType::kF16 || c.dtype == DType::kBF16) {
        for (int64_t i = 0; i < c.n; ++i) {
          for (int64_t r = 0; r < c.rows; ++r) {
            double mag = 0.0;
            for (int64_t j = 0; j < c.cols; ++j) {
              mag += std::fabs(w.values[r * c.cols + j] * double{x[i * c.cols + j]});
            }
            ptol[i * c.rows + r] += mag * (c.dtype == DType::kF16 ? 1.0 / 1024 : 1.0 / 128);
          }
        }
      }
      ExpectNear(RunMatMul(p.backend.get(), c, w, x, nullptr), ToDouble(got), ptol,
                 p.name + " vs cpu");
    }
  }
}

// ---- EmbeddingGather --------------------------------------------------------------------------

TEST(BackendConformanceTest, EmbeddingGather) {
  Cpu cpu;
  std::vector<Peer> peers = Peers();
  std::mt19937 rng(2);
  for (DType t : kWeightTypes) {
    for (int64_t dim : {int64_t{256}, int64_t{512}}) {
      SCOPED_TRACE(std::string(DTypeName(t)) + " dim=" + std::to_string(dim));
      const int64_t vocab = 11;
      const HostWeight w = RandomWeight(rng, t, vocab, dim);
      const std::vector<int32_t> ids = {3, 0, 10, 3, 7};
      const int64_t n = static_cast<int64_t>(ids.size());
      auto run = [&](Backend* b) {
        Scope s(b);
        float* out = s.Put(std::vector<float>(static_cast<size_t>(n * dim), -1.0f));
        b->EmbeddingGather(Upload(s, w), s.Put(ids), n, out, ExecContext{});
        return s.Get(out, static_cast<size_t>(n * dim));
      };
      std::vector<double> ref;
      for (int32_t id : ids)
        ref.insert(ref.end(), w.values.begin() + id * dim, w.values.begin() + (id + 1) * dim);
      const std::vector<float> got = run(cpu.backend.get());
      ExpectNear(got, ref, {0.0}, "cpu vs reference");
      for (Peer& p : peers) {
        if (p.backend->SupportsWeight(t)) {
          ExpectNear(run(p.backend.get()), ToDouble(got), {1e-6}, p.name + " vs cpu");
        }
      }
    }
  }
}

// ---- Element-wise and row ops ------------------------------------------------------------------

TEST(BackendConformanceTest, RmsNorm) {
  Cpu cpu;
  std::vector<Peer> peers = Peers();
  std::mt19937 rng(3);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  for (int64_t n : {1, 4}) {
    for (int64_t dim : {8, 64, 288, 1000}) {
      for (float eps : {1e-5f, 1e-6f}) {
        SCOPED_TRACE("n=" + std::to_string(n) + " dim=" + std::to_string(dim));
        std::vector<float> x(static_cast<size_t>(n * dim)), wt(static_cast<size_t>(dim));
        for (float& v : x) v = 3.0f * n01(rng);
        for (float& v : wt) v = n01(rng);
        auto run = [&](Backend* b, bool in_place) {
          Scope s(b);
          float* xd = s.Put(x);
          float* out = in_place ? xd : s.Put(std::vector<float>(x.size(), -1.0f));
          b->RmsNorm(xd, s.Put(wt), n, dim, eps, out, ExecContext{});
          return s.Get(out, x.size());
        };
        std::vector<double> ref(x.size()), tol(x.size());
        for (int64_t t = 0; t < n; ++t) {
          double ss = 0.0;
          for (int64_t d = 0; d < dim; ++d) ss += double{x[t * dim + d]} * x[t * dim + d];
          const double inv = 1.0 / std::sqrt(ss / dim + eps);
          for (int64_t d = 0; d < dim; ++d) {
            ref[t * dim + d] = x[t * dim + d] * inv * wt[d];
            tol[t * dim + d] = (dim + 8) * kUnit * std::fabs(ref[t * dim + d]) + 1e-30;
          }
        }
        const std::vector<float> got = run(cpu.backend.get(), false);
        ExpectNear(got, ref, tol, "cpu vs reference");
        EXPECT_EQ(run(cpu.backend.get(), true), got) << "in place";
        for (Peer& p : peers) {
          std::vector<double> ptol = tol;
          for (double& v : ptol) v = 4.0 * v + 1e-6;
          ExpectNear(run(p.backend.get(), false), ToDouble(got), ptol, p.name + " vs cpu");
        }
      }
    }
  }
}

TEST(BackendConformanceTest, RopeTableAndRope) {
  Cpu cpu;
  std::vector<Peer> peers = Peers();
  std::mt19937 rng(4);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::uniform_int_distribution<int32_t> pos_dist(0, 8191);
  for (RopeStyle style : {RopeStyle::kAdjacentPairs, RopeStyle::kNeox}) {
    const bool neox = style == RopeStyle::kNeox;
    for (int head_dim : {8, 64, 128}) {
      for (int heads : {1, 4}) {
        for (float freq_scale : {1.0f, 0.25f}) {
          for (bool factors : {false, true}) {
            // Frequency factors come with Phi-3's magnitude scaling in this case.
            const float attn_factor = factors ? 1.1902f : 1.0f;
            SCOPED_TRACE(std::string(neox ? "neox" : "adjacent") + " head_dim=" +
                         std::to_string(head_dim) + " heads=" + std::to_string(heads) +
                         " scale=" + std::to_string(freq_scale) + (factors ? " factors" : ""));
            const int64_t n = 5;
            const int pairs = head_dim / 2;
            std::vector<int32_t> pos(n);
            for (int32_t& p : pos) p = pos_dist(rng);
            pos[0] = 0;
            std::vector<float> ff(static_cast<size_t>(pairs));
            for (float& f : ff) f = 1.0f + 7.0f * std::fabs(n01(rng));
            std::vector<float> x(static_cast<size_t>(n * heads * head_dim));
            for (float& v : x) v = n01(rng);
            auto run = [&](Backend* b, std::vector<float>* table) {
              Scope s(b);
              RopeParams rp{head_dim, 500000.0f, freq_scale, factors ? s.Put(ff) : nullptr,
                            attn_factor};
              float* cs = s.Put(std::vector<float>(static_cast<size_t>(n * pairs * 2), -9.0f));
              b->RopeTable(s.Put(pos), n, rp, cs, ExecContext{});
              float* xd = s.Put(x);
              b->Rope(xd, cs, n, heads, head_dim, style, ExecContext{});
              *table = s.Get(cs, static_cast<size_t>(n * pairs * 2));
              return s.Get(xd, x.size());
            };
            std::vector<double> ref_cs(static_cast<size_t>(n * pairs * 2)), ref(x.size()),
                tol(x.size());
            for (int64_t t = 0; t < n; ++t) {
              for (int i = 0; i < pairs; ++i) {
                double inv = std::pow(500000.0, -2.0 * i / head_dim) * freq_scale;
                if (factors) inv /= ff[i];
                const double angle = pos[t] * inv;
                const double c = std::cos(angle) * attn_factor;
                const double sn = std::sin(angle) * attn_factor;
                ref_cs[(t * pairs + i) * 2] = c;
                ref_cs[(t * pairs + i) * 2 + 1] = sn;
                for (int h = 0; h < heads; ++h) {
                  const int64_t base = (t * heads + h) * head_dim;
                  const int64_t o0 = base + (neox ? i : 2 * i);
                  const int64_t o1 = base + (neox ? i + pairs : 2 * i + 1);
                  const double a = x[o0], bb = x[o1];
                  ref[o0] = a * c - bb * sn;
                  ref[o1] = a * sn + bb * c;
                  tol[o0] = tol[o1] =
                      8 * kUnit * attn_factor * (std::fabs(a) + std::fabs(bb)) + 1e-30;
                }
              }
            }
            std::vector<float> table;
            const std::vector<float> got = run(cpu.backend.get(), &table);
            ExpectNear(table, ref_cs, {2 * kUnit * attn_factor + 1e-12}, "cpu table vs reference");
            ExpectNear(got, ref, tol, "cpu vs reference");
            for (Peer& p : peers) {
              std::vector<float> ptable;
              std::vector<double> ptol = tol;
              for (double& v : ptol) v = 2.0 * v + 1e-6;
              ExpectNear(run(p.backend.get(), &ptable), ToDouble(got), ptol, p.name + " vs cpu");
              ExpectNear(ptable, ToDouble(table), {1e-6}, p.name + " table vs cpu");
            }
          }
        }
      }
    }
  }
}

TEST(BackendConformanceTest, AddBias) {
  Cpu cpu;
  std::vector<Peer> peers = Peers();
  std::mt19937 rng(6);
  std::normal_distribution<float> n01(0.0f, 2.0f);
  for (int64_t cols : {1, 13, 256}) {
    for (int64_t n : {1, 5}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " cols=" + std::to_string(cols));
      std::vector<float> x(static_cast<size_t>(n * cols)), bias(static_cast<size_t>(cols));
      for (float& v : x) v = n01(rng);
      for (float& v : bias) v = n01(rng);
      auto run = [&](Backend* b) {
        Scope s(b);
        float* xd = s.Put(x);
        b->AddBias(xd, s.Put(bias), n, cols, ExecContext{});
        return s.Get(xd, x.size());
      };
      // One rounding of an exact sum: the nearest float of (double) x + bias.
      std::vector<double> ref(x.size());
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t c = 0; c < cols; ++c) {
          ref[t * cols + c] = static_cast<float>(static_cast<double>(x[t * cols + c]) + bias[c]);
        }
      }
      const std::vector<float> got = run(cpu.backend.get());
      ExpectNear(got, ref, {0.0}, "cpu vs reference");
      for (Peer& p : peers) ExpectNear(run(p.backend.get()), ref, {0.0}, p.name + " vs reference");
    }
  }
}

TEST(BackendConformanceTest, SwiGluAndAdd) {
  Cpu cpu;
  std::vector<Peer> peers = Peers();
  std::mt19937 rng(5);
  std::normal_distribution<float> n01(0.0f, 3.0f);
  for (int64_t n : {1, 7, 100, 1027}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    std::vector<float> g(static_cast<size_t>(n)), u(g.size());
    for (float& v : g) v = n01(rng);
    for (float& v : u) v = n01(rng);
    g[0] = -90.0f;  // silu of a large negative number: 0 without NaN
    auto run = [&](Backend* b, bool add) {
      Scope s(b);
      float* gd = s.Put(g);
      if (add) {
        b->Add(gd, s.Put(u), n, ExecContext{});
      } else {
        b->SwiGlu(gd, s.Put(u), n, gd, ExecContext{});
      }
      return s.Get(gd, g.size());
    };
    std::vector<double> ref_swiglu(g.size()), tol(g.size()), ref_add(g.size());
    for (size_t i = 0; i < g.size(); ++i) {
      ref_swiglu[i] = g[i] / (1.0 + std::exp(-double{g[i]})) * u[i];
      tol[i] = 8 * kUnit * std::fabs(ref_swiglu[i]) + 1e-30;
      ref_add[i] = g[i] + u[i];  // float addition, exactly as the op does it
      ref_add[i] = static_cast<float>(ref_add[i]);
    }
    const std::vector<float> swiglu = run(cpu.backend.get(), false);
    const std::vector<float> add = run(cpu.backend.get(), true);
    ExpectNear(swiglu, ref_swiglu, tol, "cpu swiglu vs reference");
    ExpectNear(add, ref_add, {0.0}, "cpu add vs reference");
    for (Peer& p : peers) {
      std::vector<double> ptol = tol;
      for (double& v : ptol) v = 4.0 * v + 1e-6;
      ExpectNear(run(p.backend.get(), false), ToDouble(swiglu), ptol, p.name + " swiglu vs cpu");
      ExpectNear(run(p.backend.get(), true), ToDouble(add), {0.0}, p.name + " add vs cpu");
    }
  }
}

// ---- Paged KV: a pool of blocks, one layer ------------------------------------------------------

// Block b of layout L holds its layer's K at regions[L].k_offset and V at regions[L].v_offset;
// layout L is formats[L].
struct HostPool {
  KvRegionShape shape;
  std::vector<KvLayerRegion> regions;
  std::vector<uint16_t> layout;
  int64_t block_bytes = 0;
  std::vector<uint8_t> bytes;  // [num_blocks, block_bytes]

  HostPool(int num_blocks, KvRegionShape s, const std::vector<KvFormat>& formats) : shape(s) {
    for (KvFormat f : formats) {
      KvLayerRegion r;
      r.format = f;
      r.k_offset = 0;
      r.v_offset = static_cast<uint32_t>(KvRegionBytes(f, KvRole::kKey, s));
      regions.push_back(r);
      block_bytes =
          std::max<int64_t>(block_bytes, r.v_offset + KvRegionBytes(f, KvRole::kValue, s));
    }
    block_bytes = (block_bytes + 63) / 64 * 64;
    bytes.assign(static_cast<size_t>(num_blocks * block_bytes), 0);
    layout.assign(static_cast<size_t>(num_blocks), 0);
  }
  int num_blocks() const { return static_cast<int>(layout.size()); }
  uint8_t* block(int b) { return bytes.data() + b * block_bytes; }
  const KvLayerRegion& region(int b) const { return regions[layout[b]]; }
  testing::RefRegion Ref(int b, KvRole role) const {
    const KvLayerRegion& r = region(b);
    return testing::RefRegion(
        r.format, role,
        bytes.data() + b * block_bytes + (role == KvRole::kKey ? r.k_offset : r.v_offset), shape);
  }
};

// The pool in a backend's memory: its bytes, a device array of block pointers, the layouts.
struct PoolOnBackend {
  uint8_t* bytes = nullptr;
  PagedKvLayerView view;
};
PoolOnBackend Upload(Scope& s, const HostPool& p) {
  PoolOnBackend out;
  out.bytes = s.Put(p.bytes);
  std::vector<uint8_t*> ptrs;
  for (int b = 0; b < p.num_blocks(); ++b) ptrs.push_back(out.bytes + b * p.block_bytes);
  out.view.block_data = s.Put(ptrs);
  out.view.block_layout = s.Put(p.layout);
  out.view.regions = s.Put(p.regions);
  out.view.shape = p.shape;
  return out;
}

// What a format may lose against the input, relative to the largest |value| of the head's rows
// in the block (scales are per block, channel, row or group of 32 or 16).
double FormatTolerance(KvFormat f) {
  switch (f) {
    case KvFormat::kFp32:
      return 0.0;
    case KvFormat::kFp16:
      return 1.0 / 1024;
    case KvFormat::kBf16:
      return 1.0 / 128;
    case KvFormat::kFp8:
      return 0.15;
    case KvFormat::kInt8:
      return 0.03;
    case KvFormat::kInt4:
      return 0.2;
    case KvFormat::kNvfp4:
      return 0.3;
    case KvFormat::kInt2:
      return 0.6;
    case KvFormat::kLowrank:
      break;
  }
  return 1.0;
}

TEST(BackendConformanceTest, WriteKv) {
  Cpu cpu;
  std::vector<Peer> peers = Peers();
  std::mt19937 rng(6);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  for (KvFormat f : kKvFormats) {
    for (int hd : {8, 64, 128}) {
      SCOPED_TRACE(std::string(KvFormatName(f)) + " head_dim=" + std::to_string(hd));
      const KvRegionShape shape{16, 2, hd};
      const int blocks = 6;
      HostPool pool(blocks, shape, {f});
      // Token-writable formats: single tokens in scattered slots; the others: whole blocks, one
      // run of block_size tokens each (blocks 1 and 4).
      std::vector<int32_t> slot_block, slot_offset;
      if (KvFormatTokenWritable(f)) {
        for (int t = 0; t < 40; ++t) {
          slot_block.push_back((t * 5) % blocks);
          slot_offset.push_back((t * 7) % shape.block_size);
        }
      } else {
        for (int b : {1, 4}) {
          for (int o = 0; o < shape.block_size; ++o) {
            slot_block.push_back(b);
            slot_offset.push_back(o);
          }
        }
      }
      const int64_t n = static_cast<int64_t>(slot_block.size());
      const int64_t row = int64_t{shape.num_kv_heads} * hd;
      std::vector<float> k(static_cast<size_t>(n * row)), v(k.size());
      for (float& x : k) x = 2.0f * n01(rng) + 0.5f;
      for (float& x : v) x = n01(rng);
      // Each slot's last writer wins (scattered writes may hit a slot twice).
      std::vector<int64_t> writer(static_cast<size_t>(blocks * shape.block_size), -1);
      for (int64_t t = 0; t < n; ++t) writer[slot_block[t] * shape.block_size + slot_offset[t]] = t;

      auto run = [&](Backend* b) {
        Scope s(b);
        PoolOnBackend dev = Upload(s, pool);
        const KvWrite w{s.Put(k), s.Put(v), n, s.Put(slot_block), s.Put(slot_offset)};
        EXPECT_TRUE(b->WriteKv(w, dev.view, ExecContext{})) << b->name();
        HostPool back = pool;
        back.bytes = s.Get(dev.bytes, pool.bytes.size());
        return back;
      };
      // Decoded values of every written slot, [slot][role][head][d].
      auto decode = [&](const HostPool& p) {
        std::vector<float> out;
        for (int64_t slot = 0; slot < static_cast<int64_t>(writer.size()); ++slot) {
          if (writer[slot] < 0) continue;
          const int b = static_cast<int>(slot / shape.block_size);
          const int o = static_cast<int>(slot % shape.block_size);
          for (KvRole role : {KvRole::kKey, KvRole::kValue}) {
            const testing::RefRegion r = p.Ref(b, role);
            for (int h = 0; h < shape.num_kv_heads; ++h) {
              for (int d = 0; d < hd; ++d) out.push_back(static_cast<float>(r.Value(h, o, d)));
            }
          }
        }
        return out;
      };
      std::vector<double> ref, tol;
      for (int64_t slot = 0; slot < static_cast<int64_t>(writer.size()); ++slot) {
        const int64_t t = writer[slot];
        if (t < 0) continue;
        const int b = static_cast<int>(slot / shape.block_size);
        for (const std::vector<float>* src : {&k, &v}) {
          for (int h = 0; h < shape.num_kv_heads; ++h) {
            // Largest |value| of this head over the tokens written into the block.
            double amax = 0.0;
            for (int64_t u = 0; u < n; ++u) {
              if (slot_block[u] != b) continue;
              for (int d = 0; d < hd; ++d) {
                amax = std::max(amax, std::fabs(double{(*src)[u * row + h * hd + d]}));
              }
            }
            for (int d = 0; d < hd; ++d) {
              const double x = (*src)[t * row + h * hd + d];
              ref.push_back(x);
              tol.push_back(KvFormatTokenWritable(f) ? FormatTolerance(f) * std::fabs(x) + 1e-7
                                                     : FormatTolerance(f) * amax);
            }
          }
        }
      }
      const std::vector<float> got = decode(run(cpu.backend.get()));
      ExpectNear(got, ref, tol, "cpu vs input");
      for (Peer& p : peers) {
        if (!p.backend->SupportsKvWrite(f)) continue;
        std::vector<double> ptol = ToDouble(got);
        for (double& x : ptol) x = 1e-6 * std::fabs(x) + 1e-7;
        ExpectNear(decode(run(p.backend.get())), ToDouble(got), ptol, p.name + " vs cpu");
      }
    }
  }
}

// ---- PagedAttention -------------------------------------------------------------------------

struct AttentionCase {
  int block_size = 16;
  int num_kv_heads = 2;
  int group = 2;
  int head_dim = 8;
  std::vector<KvFormat> formats;  // a random one per block
  bool scores = false;
  bool head_scores = false;  // per-KV-head rows (seq_score_head_stride)
  std::string Name() const {
    std::string f;
    for (KvFormat x : formats) f += std::string(KvFormatName(x)) + ",";
    return "bs=" + std::to_string(block_size) + " kv=" + std::to_string(num_kv_heads) +
           " G=" + std::to_string(group) + " hd=" + std::to_string(head_dim) + " formats=" + f +
           (scores ? (head_scores ? " head-scores" : " scores") : "");
  }
};

std::vector<AttentionCase> AttentionCases() {
  std::vector<AttentionCase> cases;
  for (KvFormat f : kKvFormats) {
    for (int hd : {8, 64, 128}) {
      AttentionCase c;
      c.head_dim = hd;
      c.formats = {f};
      c.group = hd == 64 ? 4 : 2;
      c.num_kv_heads = hd == 128 ? 1 : 2;
      cases.push_back(c);
    }
  }
  AttentionCase mixed;
  mixed.formats = {KvFormat::kFp16, KvFormat::kInt8, KvFormat::kInt4, KvFormat::kFp8,
                   KvFormat::kNvfp4};
  for (int hd : {8, 64}) {
    mixed.head_dim = hd;
    mixed.scores = false;
    cases.push_back(mixed);
    mixed.scores = true;
    mixed.head_scores = false;
    cases.push_back(mixed);
    mixed.head_scores = true;
    cases.push_back(mixed);
  }
  AttentionCase small_blocks = mixed;
  small_blocks.block_size = 4;
  small_blocks.group = 1;
  small_blocks.scores = false;
  cases.push_back(small_blocks);
  return cases;
}

struct AttentionResult {
  std::vector<float> out;
  std::vector<float> scores;
};

void CheckAttention(const AttentionCase& c, std::mt19937& rng, Backend* cpu,
                    std::vector<Peer>& peers, ThreadPool* threads) {
  SCOPED_TRACE(c.Name());
  const int bs = c.block_size, hkv = c.num_kv_heads, hd = c.head_dim;
  const int heads = hkv * c.group;
  const KvRegionShape shape{bs, hkv, hd};
  std::normal_distribution<float> n01(0.0f, 1.0f);
  // Three sequences (one long enough for many blocks), blocks shuffled over the pool.
  const std::vector<int> lens = {1 + static_cast<int>(rng() % 40),
                                 150 + static_cast<int>(rng() % 200),
                                 1 + static_cast<int>(rng() % 70)};
  int total = 0;
  for (int l : lens) total += (l + bs - 1) / bs;
  const int capacity = total + 3;
  std::vector<int32_t> ids(static_cast<size_t>(capacity));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  HostPool pool(capacity, shape, c.formats);
  std::vector<std::vector<int32_t>> tables(lens.size());
  int next = 0;
  for (size_t s = 0; s < lens.size(); ++s) {
    for (int b = 0; b * bs < lens[s]; ++b) tables[s].push_back(ids[next++]);
  }
  // Every block: key-like K (per-channel offsets) and random V, encoded whole on the host.
  const size_t region_floats = static_cast<size_t>(hkv) * bs * hd;
  for (int b = 0; b < capacity; ++b) {
    pool.layout[b] = static_cast<uint16_t>(rng() % c.formats.size());
    std::vector<float> k(region_floats), v(region_floats);
    for (size_t i = 0; i < region_floats; ++i) {
      k[i] = n01(rng) + 1.5f * static_cast<float>((i % hd) % 3);
      v[i] = n01(rng);
    }
    const KvLayerRegion& r = pool.region(b);
    ASSERT_TRUE(cpu::QuantizeKvRegion(r.format, KvRole::kKey, k.data(), shape, bs,
                                      pool.block(b) + r.k_offset));
    ASSERT_TRUE(cpu::QuantizeKvRegion(r.format, KvRole::kValue, v.data(), shape, bs,
                                      pool.block(b) + r.v_offset));
  }
  // Query tokens: each sequence's last token (decode) and a few earlier ones (prefill).
  std::vector<int32_t> token_seq, token_kv_len;
  for (int s = 0; s < static_cast<int>(lens.size()); ++s) {
    for (int i = 0; i < 3; ++i) {
      token_seq.push_back(s);
      token_kv_len.push_back(i == 0 ? lens[s] : 1 + static_cast<int>(rng() % lens[s]));
    }
  }
  const int64_t n = static_cast<int64_t>(token_seq.size());
  std::vector<float> q(static_cast<size_t>(n * heads * hd));
  for (float& x : q) x = n01(rng);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // Scores: sequences 0 and 1 (sequence 2 has none), rows of stride `stride` per KV head.
  const int64_t stride = c.head_scores ? 512 : 0;
  const int64_t score_floats = (c.head_scores ? hkv : 1) * int64_t{512};
  const int max_kv_len = *std::max_element(token_kv_len.begin(), token_kv_len.end());

  auto run = [&](Backend* b, ThreadPool* pool_threads) {
    Scope s(b);
    PoolOnBackend dev = Upload(s, pool);
    std::vector<const int32_t*> table_ptrs;
    for (const auto& t : tables) table_ptrs.push_back(s.Put(t));
    AttentionBatch batch;
    batch.num_tokens = n;
    batch.num_heads = heads;
    batch.q = s.Put(q);
    float* out = s.Put(std::vector<float>(q.size(), -7.0f));
    batch.out = out;
    batch.token_seq = s.Put(token_seq);
    batch.token_kv_len = s.Put(token_kv_len);
    batch.seq_block_tables = s.Put(table_ptrs);
    batch.scale = scale;
    batch.max_kv_len = max_kv_len;
    float* scores = nullptr;
    if (c.scores) {
      scores = s.Put(std::vector<float>(static_cast<size_t>(2 * score_floats), 0.0f));
      batch.seq_scores = s.Put(std::vector<float*>{scores, scores + score_floats, nullptr});
      if (c.head_scores)
        batch.seq_score_head_stride = s.Put(std::vector<int64_t>{stride, stride, 0});
    }
    b->PagedAttention(batch, dev.view, ExecContext{pool_threads});
    AttentionResult r;
    r.out = s.Get(out, q.size());
    if (c.scores) r.scores = s.Get(scores, static_cast<size_t>(2 * score_floats));
    return r;
  };

  // The float64 reference over the values the blocks store (the independent reader).
  std::vector<double> ref(q.size()), tol(q.size());
  std::vector<double> ref_scores(c.scores ? static_cast<size_t>(2 * score_floats) : 0, 0.0);
  for (int64_t t = 0; t < n; ++t) {
    const int kv_len = token_kv_len[t];
    const std::vector<int32_t>& table = tables[token_seq[t]];
    for (int h = 0; h < heads; ++h) {
      const int g = h / c.group;
      const float* qh = q.data() + (t * heads + h) * hd;
      std::vector<double> sc(static_cast<size_t>(kv_len), 0.0);
      double mag = 0.0, vmag = 0.0;
      for (int j = 0; j < kv_len; ++j) {
        const testing::RefRegion kr = pool.Ref(table[j / bs], KvRole::kKey);
        const testing::RefRegion vr = pool.Ref(table[j / bs], KvRole::kValue);
        double m = 0.0;
        for (int d = 0; d < hd; ++d) {
          const double kd = kr.Value(g, j % bs, d);
          sc[j] += qh[d] * kd;
          m += std::fabs(qh[d]) *
               (std::fabs(kd) + 40 * std::fabs(kr.Step(g, j % bs, d)) + std::fabs(kr.Center(g, d)));
          vmag = std::max(
              vmag, std::fabs(vr.Value(g, j % bs, d)) + 40 * std::fabs(vr.Step(g, j % bs, d)));
        }
        sc[j] *= scale;
        mag = std::max(mag, m * scale);
      }
      const double mx = *std::max_element(sc.begin(), sc.end());
      double l = 0.0;
      for (double& x : sc) l += (x = std::exp(x - mx));
      const double e_s = (hd + 8) * kUnit * mag;
      const double tl = vmag * (2.0 * std::expm1(2.0 * e_s) + (2.0 * kv_len + 64) * kUnit) + 1e-7;
      for (int d = 0; d < hd; ++d) {
        double acc = 0.0;
        for (int j = 0; j < kv_len; ++j) {
          acc += sc[j] * pool.Ref(table[j / bs], KvRole::kValue).Value(g, j % bs, d);
        }
        ref[(t * heads + h) * hd + d] = acc / l;
        tol[(t * heads + h) * hd + d] = tl;
      }
      const int s = token_seq[t];
      if (c.scores && s < 2) {
        const int64_t row = s * score_floats + (c.head_scores ? g * stride : 0);
        for (int j = 0; j < kv_len; ++j) ref_scores[row + j] += sc[j] / l;
      }
    }
  }
  const AttentionResult got = run(cpu, nullptr);
  ExpectNear(got.out, ref, tol, "cpu vs reference");
  if (c.scores) ExpectNear(got.scores, ref_scores, {1e-5}, "cpu scores vs reference");
  // Threads split tokens, never a token's sum: the output is the same.
  EXPECT_EQ(run(cpu, threads).out, got.out) << "cpu with a thread pool";
  for (Peer& p : peers) {
    bool supported = true;
    for (KvFormat f : c.formats) supported = supported && p.backend->SupportsKvRead(f);
    if (!supported) continue;
    std::vector<double> ptol = tol;
    for (double& x : ptol) x = 4.0 * x + 1e-5;
    const AttentionResult pr = run(p.backend.get(), nullptr);
    ExpectNear(pr.out, ToDouble(got.out), ptol, p.name + " vs cpu");
    if (c.scores) {
      std::vector<double> stol = ToDouble(got.scores);
      for (double& x : stol) x = 1e-5 * std::fabs(x) + 1e-5;
      ExpectNear(pr.scores, ToDouble(got.scores), stol, p.name + " scores vs cpu");
    }
  }
}

TEST(BackendConformanceTest, PagedAttention) {
  Cpu cpu;
  std::vector<Peer> peers = Peers();
  ThreadPool threads(3);
  std::mt19937 rng(7);
  for (const AttentionCase& c : AttentionCases()) {
    CheckAttention(c, rng, cpu.backend.get(), peers, &threads);
    if (HasFatalFailure()) return;
  }
}

// ---- Registry ---------------------------------------------------------------------------------

// ---- ConvertKvRegions
// ----------------------------------------------------------------------------

// Whole regions from fp32 and fp16 into every format a backend converts to: the encoded regions
// must decode (DequantizeKvRegion, on the host) to exactly what the CPU encoder's bytes decode to.
void CheckConvert(Backend* b) {
  const KvRegionShape shape{16, 2, 64, 0};
  std::mt19937 rng(7);
  std::normal_distribution<float> n01(0.0f, 1.5f);
  const int64_t floats = int64_t{shape.num_kv_heads} * shape.block_size * shape.head_dim;
  constexpr int kRegions = 3;
  for (KvFormat src : {KvFormat::kFp32, KvFormat::kFp16}) {
    for (int fi = 0; fi < kNumKvFormats; ++fi) {
      const auto dst = static_cast<KvFormat>(fi);
      if (dst == KvFormat::kLowrank || !b->SupportsKvConvert(dst) ||
          !KvFormatSupports(dst, shape)) {
        continue;
      }
      for (KvRole role : {KvRole::kKey, KvRole::kValue}) {
        SCOPED_TRACE(std::string(b->name()) + ": " + std::string(KvFormatName(src)) + " -> " +
                     std::string(KvFormatName(dst)) + (role == KvRole::kKey ? " keys" : " values"));
        Scope s(b);
        const int64_t src_bytes = KvRegionBytes(src, role, shape);
        const int64_t dst_bytes = KvRegionBytes(dst, role, shape);
        std::vector<const uint8_t*> in;
        std::vector<uint8_t*> out;
        std::vector<std::vector<uint8_t>> want;
        for (int r = 0; r < kRegions; ++r) {
          std::vector<float> x(static_cast<size_t>(floats));
          for (float& v : x) v = n01(rng);
          std::vector<uint8_t> region(static_cast<size_t>(src_bytes));
          ASSERT_TRUE(
              cpu::QuantizeKvRegion(src, role, x.data(), shape, shape.block_size, region.data()));
          // What the CPU encodes from the floats the source region holds.
          std::vector<float> held(static_cast<size_t>(floats));
          cpu::DequantizeKvRegion(src, role, region.data(), shape, shape.block_size, held.data());
          std::vector<uint8_t> expect(static_cast<size_t>(dst_bytes));
          ASSERT_TRUE(cpu::QuantizeKvRegion(dst, role, held.data(), shape, shape.block_size,
                                            expect.data()));
          want.push_back(expect);
          in.push_back(s.Put(region));
          out.push_back(static_cast<uint8_t*>(s.New(dst_bytes)));
        }
        ASSERT_TRUE(b->ConvertKvRegions(src, in.data(), dst, out.data(), role, shape,
                                        shape.block_size, kRegions, ExecContext{}));
        for (int r = 0; r < kRegions; ++r) {
          const std::vector<uint8_t> got = s.Get(out[r], static_cast<size_t>(dst_bytes));
          std::vector<float> got_values(static_cast<size_t>(floats)),
              want_values(static_cast<size_t>(floats));
          cpu::DequantizeKvRegion(dst, role, got.data(), shape, shape.block_size,
                                  got_values.data());
          cpu::DequantizeKvRegion(dst, role, want[r].data(), shape, shape.block_size,
                                  want_values.data());
          ASSERT_EQ(std::memcmp(got_values.data(), want_values.data(), floats * sizeof(float)), 0)
              << "region " << r << " decodes differently";
        }
      }
    }
  }
  // A value no quantized format takes is refused.
  if (b->SupportsKvConvert(KvFormat::kInt8)) {
    Scope s(b);
    std::vector<float> x(static_cast<size_t>(floats), 1.0f);
    x[5] = std::nanf("");
    const auto* in = reinterpret_cast<const uint8_t*>(s.Put(x));
    uint8_t* out =
        static_cast<uint8_t*>(s.New(KvRegionBytes(KvFormat::kInt8, KvRole::kValue, shape)));
    EXPECT_FALSE(b->ConvertKvRegions(KvFormat::kFp32, &in, KvFormat::kInt8, &out, KvRole::kValue,
                                     shape, shape.block_size, 1, ExecContext{}));
  }
}

TEST(BackendConformanceTest, ConvertKvRegions) {
  Cpu cpu;
  ASSERT_NE(cpu.backend, nullptr);
  EXPECT_TRUE(cpu.backend->SupportsKvConvert(KvFormat::kInt4));
  CheckConvert(cpu.backend.get());
  for (Peer& p : Peers()) CheckConvert(p.backend.get());
}

TEST(BackendRegistryTest, CpuIsFirstAndAlwaysThere) {
  const std::vector<std::string> names = BackendNames();
  ASSERT_FALSE(names.empty());
  EXPECT_EQ(names[0], "cpu");
  std::string error;
  std::unique_ptr<Backend> b = CreateBackend("cpu", &error);
  ASSERT_NE(b, nullptr) << error;
  EXPECT_EQ(b->name(), "cpu");
  EXPECT_TRUE(b->host_memory());
  EXPECT_EQ(DefaultCpuBackend()->name(), "cpu");
  EXPECT_EQ(DefaultCpuBackend(), DefaultCpuBackend());
}

TEST(BackendRegistryTest, UnknownAndUnavailableBackendsSayWhy) {
  std::string error;
  EXPECT_EQ(CreateBackend("no-such-backend", &error), nullptr);
  EXPECT_NE(error.find("unknown backend \"no-such-backend\""), std::string::npos) << error;
  EXPECT_FALSE(RegisterBackend("cpu", [](std::string*) { return nullptr; }));
  ASSERT_TRUE(RegisterBackend("test-absent", [](std::string* why) -> std::unique_ptr<Backend> {
    *why = "no device";
    return nullptr;
  }));
  EXPECT_EQ(CreateBackend("test-absent", &error), nullptr);
  EXPECT_NE(error.find("no device"), std::string::npos) << error;
  const std::vector<std::string> names = BackendNames();
  EXPECT_EQ(names.back(), "test-absent");
}

}  // namespace
}  // namespace kvserve::kernels
