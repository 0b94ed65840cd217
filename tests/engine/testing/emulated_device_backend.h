// A device backend emulated on the CPU, for testing what the engine does with a backend whose
// memory is not the host's (Backend::host_memory() false) on machines without a GPU.
//
// Its "device memory" is one reserved address range that the host cannot touch: the pages are
// PROT_NONE except while one of the backend's own calls runs. So host code that dereferences a
// device address (a block's bytes, a weight, an activation) outside the backend crashes the test
// at once, and every pointer an op receives is checked to be device memory (block tables, pool
// arrays, weights, activations) or, for CopyIn/CopyOut sources and destinations, host memory.
// The ops themselves are the CPU backend's (weights prepared into panels as the CPU prepares
// them), so results are bitwise the CPU's.
//
// Thread-safety: one caller at a time (the engine thread); ops run single-threaded.
#ifndef KVSERVE_TESTS_ENGINE_TESTING_EMULATED_DEVICE_BACKEND_H_
#define KVSERVE_TESTS_ENGINE_TESTING_EMULATED_DEVICE_BACKEND_H_

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"

namespace kvserve::testing {

class EmulatedDeviceBackend final : public kernels::Backend {
 public:
  static constexpr size_t kArenaBytes = size_t{1} << 30;  // reserved, not committed

  EmulatedDeviceBackend() {
    void* p =
        mmap(nullptr, kArenaBytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) std::abort();
    arena_ = static_cast<uint8_t*>(p);
  }
  ~EmulatedDeviceBackend() override { munmap(arena_, kArenaBytes); }
  EmulatedDeviceBackend(const EmulatedDeviceBackend&) = delete;
  EmulatedDeviceBackend& operator=(const EmulatedDeviceBackend&) = delete;

  // Bytes allocated and not freed, and the number of op calls, for assertions.
  int64_t live_bytes() const { return live_bytes_; }
  int64_t op_calls() const { return op_calls_; }
  // When set, Alloc fails once live_bytes() would exceed it.
  void set_capacity(int64_t bytes) { capacity_ = bytes; }

  std::string_view name() const override { return "emulated-device"; }
  bool host_memory() const override { return false; }
  void* Alloc(int64_t bytes) override {
    const size_t size = (static_cast<size_t>(std::max<int64_t>(bytes, 1)) + 255) / 256 * 256;
    if (capacity_ > 0 && live_bytes_ + static_cast<int64_t>(size) > capacity_) return nullptr;
    if (used_ + size > kArenaBytes) return nullptr;
    uint8_t* p = arena_ + used_;
    used_ += size;
    sizes_[p] = size;
    live_bytes_ += static_cast<int64_t>(size);
    return p;
  }
  void Free(void* p) override {
    if (p == nullptr) return;
    auto it = sizes_.find(static_cast<uint8_t*>(p));
    ASSERT_NE(it, sizes_.end()) << "Free of an address this backend did not allocate";
    live_bytes_ -= static_cast<int64_t>(it->second);
    sizes_.erase(it);  // the range is not reused: a late access still lands in the arena
  }
  void CopyIn(void* dst, const void* host_src, int64_t bytes) override {
    if (bytes <= 0) return;
    Device(dst, bytes, "CopyIn destination");
    Host(host_src, "CopyIn source");
    Open open(this);
    std::memcpy(dst, host_src, static_cast<size_t>(bytes));
  }
  void CopyOut(void* host_dst, const void* src, int64_t bytes) override {
    if (bytes <= 0) return;
    Device(src, bytes, "CopyOut source");
    Host(host_dst, "CopyOut destination");
    Open open(this);
    std::memcpy(host_dst, src, static_cast<size_t>(bytes));
  }
  bool Synchronize(std::string* error) override { return true; }
  int64_t FreeMemoryBytes() const override { return capacity_ > 0 ? capacity_ - live_bytes_ : -1; }

  bool SupportsWeight(kernels::DType t) const override { return !kernels::IsQuantized(t); }
  bool SupportsKvRead(kernels::KvFormat f) const override {
    return f != kernels::KvFormat::kLowrank;
  }
  bool SupportsKvWrite(kernels::KvFormat f) const override {
    return kernels::KvFormatTokenWritable(f);
  }
  int64_t PreparedWeightBytes(const kernels::WeightView& w) const override {
    return cpu_.PreparedWeightBytes(w);
  }
  void PrepareWeight(kernels::WeightView* w, void* storage) const override {
    Host(w->data, "PrepareWeight source");
    auto* self = const_cast<EmulatedDeviceBackend*>(this);
    self->Device(storage, cpu_.PreparedWeightBytes(*w), "PrepareWeight storage");
    Open open(self);
    cpu_.PrepareWeight(w, storage);
  }
  std::string prepared_weight_layout() const override { return "emulated-device"; }

  void MatMul(const float* x, int64_t n, const kernels::WeightView& w, float* y,
              const kernels::ExecContext& ctx) override {
    Device(x, "MatMul x");
    Device(y, "MatMul y");
    Weight(w, "MatMul");
    Open open(this);
    cpu_.MatMul(x, n, w, y, Serial(ctx));
  }
  void EmbeddingGather(const kernels::WeightView& table, const int32_t* ids, int64_t n, float* out,
                       const kernels::ExecContext& ctx) override {
    Weight(table, "EmbeddingGather");
    Device(ids, "EmbeddingGather ids");
    Device(out, "EmbeddingGather out");
    Open open(this);
    cpu_.EmbeddingGather(table, ids, n, out, Serial(ctx));
  }
  void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out,
               const kernels::ExecContext& ctx) override {
    Device(x, "RmsNorm x");
    Device(weight, "RmsNorm weight");
    Device(out, "RmsNorm out");
    Open open(this);
    cpu_.RmsNorm(x, weight, n, dim, eps, out, Serial(ctx));
  }
  void RopeTable(const int32_t* positions, int64_t n, const kernels::RopeParams& rope,
                 float* cos_sin, const kernels::ExecContext& ctx) override {
    Device(positions, "RopeTable positions");
    Device(cos_sin, "RopeTable cos_sin");
    if (rope.freq_factors != nullptr) Device(rope.freq_factors, "RopeTable freq_factors");
    Open open(this);
    cpu_.RopeTable(positions, n, rope, cos_sin, Serial(ctx));
  }
  void Rope(float* x, const float* cos_sin, int64_t n, int num_heads, int head_dim,
            kernels::RopeStyle style, const kernels::ExecContext& ctx) override {
    Device(x, "Rope x");
    Device(cos_sin, "Rope cos_sin");
    Open open(this);
    cpu_.Rope(x, cos_sin, n, num_heads, head_dim, style, Serial(ctx));
  }
  void SwiGlu(const float* gate, const float* up, int64_t n, float* out,
              const kernels::ExecContext& ctx) override {
    Device(gate, "SwiGlu gate");
    Device(up, "SwiGlu up");
    Device(out, "SwiGlu out");
    Open open(this);
    cpu_.SwiGlu(gate, up, n, out, Serial(ctx));
  }
  void Add(float* x, const float* y, int64_t n, const kernels::ExecContext& ctx) override {
    Device(x, "Add x");
    Device(y, "Add y");
    Open open(this);
    cpu_.Add(x, y, n, Serial(ctx));
  }
  void AddBias(float* x, const float* bias, int64_t n, int64_t cols,
               const kernels::ExecContext& ctx) override {
    Device(x, "AddBias x");
    Device(bias, "AddBias bias");
    Open open(this);
    cpu_.AddBias(x, bias, n, cols, Serial(ctx));
  }
  // As the CUDA backend: rows of blocks in formats that are not written token by token are left
  // untouched (the engine encodes those blocks whole through ConvertKvRegions).
  bool WriteKv(const kernels::KvWrite& w, const kernels::PagedKvLayerView& cache,
               const kernels::ExecContext& ctx) override {
    Device(w.k, "WriteKv k");
    Device(w.v, "WriteKv v");
    Device(w.slot_block, "WriteKv slot_block");
    Device(w.slot_offset, "WriteKv slot_offset");
    View(cache, "WriteKv");
    Open open(this);
    const int64_t row = int64_t{cache.shape.num_kv_heads} * cache.shape.head_dim;
    std::vector<float> k, v;
    std::vector<int32_t> blocks, offsets;
    for (int64_t t = 0; t < w.num_tokens; ++t) {
      const int32_t phys = w.slot_block[t];
      if (!kernels::KvFormatTokenWritable(cache.regions[cache.block_layout[phys]].format)) continue;
      k.insert(k.end(), w.k + t * row, w.k + (t + 1) * row);
      v.insert(v.end(), w.v + t * row, w.v + (t + 1) * row);
      blocks.push_back(phys);
      offsets.push_back(w.slot_offset[t]);
    }
    const kernels::KvWrite kept{k.data(), v.data(), static_cast<int64_t>(blocks.size()),
                                blocks.data(), offsets.data()};
    return cpu_.WriteKv(kept, cache, Serial(ctx));
  }
  bool SupportsKvConvert(kernels::KvFormat dst) const override {
    return dst != kernels::KvFormat::kLowrank;
  }
  bool ConvertKvRegions(kernels::KvFormat src_format, const uint8_t* const* src,
                        kernels::KvFormat dst_format, uint8_t* const* dst, kernels::KvRole role,
                        const kernels::KvRegionShape& shape, int tokens, int64_t count,
                        const kernels::ExecContext& ctx) override {
    Host(src, "ConvertKvRegions src array");
    Host(dst, "ConvertKvRegions dst array");
    const int64_t src_bytes = kernels::KvRegionBytes(src_format, role, shape);
    const int64_t dst_bytes = kernels::KvRegionBytes(dst_format, role, shape);
    for (int64_t r = 0; r < count; ++r) {
      Device(src[r], src_bytes, "ConvertKvRegions source region");
      Device(dst[r], dst_bytes, "ConvertKvRegions destination region");
    }
    ++convert_calls_;
    Open open(this);
    return cpu_.ConvertKvRegions(src_format, src, dst_format, dst, role, shape, tokens, count,
                                 Serial(ctx));
  }
  int64_t convert_calls() const { return convert_calls_; }
  void PagedAttention(const kernels::AttentionBatch& batch, const kernels::PagedKvLayerView& cache,
                      const kernels::ExecContext& ctx) override {
    Device(batch.q, "PagedAttention q");
    Device(batch.out, "PagedAttention out");
    Device(batch.token_seq, "PagedAttention token_seq");
    Device(batch.token_kv_len, "PagedAttention token_kv_len");
    Device(batch.seq_block_tables, "PagedAttention seq_block_tables");
    EXPECT_EQ(batch.seq_scores, nullptr) << "PagedAttention: scores on a device";
    EXPECT_GT(batch.max_kv_len, 0) << "PagedAttention: max_kv_len (a host value) not set";
    View(cache, "PagedAttention");
    Open open(this);
    for (int64_t t = 0; t < batch.num_tokens; ++t) {
      EXPECT_LE(batch.token_kv_len[t], batch.max_kv_len) << "PagedAttention: max_kv_len too small";
    }
    cpu_.PagedAttention(batch, cache, Serial(ctx));
  }

 private:
  // Opens the arena to the host for the scope of one op.
  class Open {
   public:
    explicit Open(EmulatedDeviceBackend* b) : b_(b) {
      ++b_->op_calls_;
      if (b_->used_ > 0) mprotect(b_->arena_, Pages(b_->used_), PROT_READ | PROT_WRITE);
    }
    ~Open() {
      if (b_->used_ > 0) mprotect(b_->arena_, Pages(b_->used_), PROT_NONE);
    }
    Open(const Open&) = delete;
    Open& operator=(const Open&) = delete;

   private:
    static size_t Pages(size_t n) { return (n + 4095) / 4096 * 4096; }
    EmulatedDeviceBackend* b_;
  };

  static kernels::ExecContext Serial(const kernels::ExecContext& ctx) {
    kernels::ExecContext c = ctx;
    c.pool = nullptr;
    return c;
  }
  bool InArena(const void* p) const {
    const auto* b = static_cast<const uint8_t*>(p);
    return b >= arena_ && b < arena_ + used_;
  }
  void Device(const void* p, const char* what) const { Device(p, 1, what); }
  void Device(const void* p, int64_t bytes, const char* what) const {
    EXPECT_NE(p, nullptr) << what << ": null";
    EXPECT_TRUE(InArena(p) && InArena(static_cast<const uint8_t*>(p) + bytes - 1))
        << what << ": not device memory";
  }
  void Host(const void* p, const char* what) const {
    EXPECT_FALSE(p == nullptr || InArena(p)) << what << ": not host memory";
  }
  void Weight(const kernels::WeightView& w, const char* what) const {
    if (w.data != nullptr) Device(w.data, what);
    if (w.panels != nullptr) Device(w.panels, what);
    EXPECT_TRUE(w.data != nullptr || w.panels != nullptr) << what << ": weight without bytes";
  }
  void View(const kernels::PagedKvLayerView& v, const char* what) const {
    Device(v.block_data, what);
    Device(v.block_layout, what);
    Device(v.regions, what);
  }

  kernels::cpu::CpuBackend cpu_;
  uint8_t* arena_ = nullptr;
  size_t used_ = 0;
  std::map<uint8_t*, size_t> sizes_;
  int64_t live_bytes_ = 0;
  int64_t capacity_ = 0;
  int64_t op_calls_ = 0;
  int64_t convert_calls_ = 0;
};

}  // namespace kvserve::testing

#endif  // KVSERVE_TESTS_ENGINE_TESTING_EMULATED_DEVICE_BACKEND_H_
