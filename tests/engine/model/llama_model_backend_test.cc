// LlamaModel runs every op through its kernels::Backend: a backend that counts calls (and
// forwards them to the CPU backend) sees each op of every layer, and the logits are bitwise those
// of the default backend; a backend whose memory is not host memory is refused.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/kv/sequence_kv.h"
#include "engine/model/llama_model.h"
#include "engine/runtime/local_model.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"

namespace kvserve::engine {
namespace {

using kernels::AttentionBatch;
using kernels::ExecContext;
using kernels::KvWrite;
using kernels::PagedKvLayerView;
using kernels::WeightView;

// Forwards to the CPU backend and counts the calls of each op.
class CountingBackend : public kernels::Backend {
 public:
  explicit CountingBackend(bool host_memory = true) : host_memory_(host_memory) {}

  std::map<std::string, int> calls;

  std::string_view name() const override { return "counting"; }
  bool host_memory() const override { return host_memory_; }
  void* Alloc(int64_t bytes) override { return cpu_.Alloc(bytes); }
  void Free(void* p) override { cpu_.Free(p); }
  void CopyIn(void* d, const void* s, int64_t b) override { cpu_.CopyIn(d, s, b); }
  void CopyOut(void* d, const void* s, int64_t b) override { cpu_.CopyOut(d, s, b); }
  bool Synchronize(std::string* e) override { return cpu_.Synchronize(e); }
  bool SupportsWeight(kernels::DType t) const override { return true; }
  bool SupportsKvRead(kernels::KvFormat f) const override { return true; }
  bool SupportsKvWrite(kernels::KvFormat f) const override { return true; }
  int64_t PreparedWeightBytes(const WeightView& w) const override {
    return cpu_.PreparedWeightBytes(w);
  }
  void PrepareWeight(WeightView* w, void* storage) const override {
    cpu_.PrepareWeight(w, storage);
  }
  std::string prepared_weight_layout() const override { return cpu_.prepared_weight_layout(); }
  void MatMul(const float* x, int64_t n, const WeightView& w, float* y,
              const ExecContext& ctx) override {
    ++calls["MatMul"];
    cpu_.MatMul(x, n, w, y, ctx);
  }
  void EmbeddingGather(const WeightView& table, const int32_t* ids, int64_t n, float* out,
                       const ExecContext& ctx) override {
    ++calls["EmbeddingGather"];
    cpu_.EmbeddingGather(table, ids, n, out, ctx);
  }
  void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out,
               const ExecContext& ctx) override {
    ++calls["RmsNorm"];
    cpu_.RmsNorm(x, weight, n, dim, eps, out, ctx);
  }
  void RopeTable(const int32_t* positions, int64_t n, const kernels::RopeParams& rope,
                 float* cos_sin, const ExecContext& ctx) override {
    ++calls["RopeTable"];
    cpu_.RopeTable(positions, n, rope, cos_sin, ctx);
  }
  void Rope(float* x, const float* cos_sin, int64_t n, int num_heads, int head_dim,
            kernels::RopeStyle style, const ExecContext& ctx) override {
    ++calls["Rope"];
    cpu_.Rope(x, cos_sin, n, num_heads, head_dim, style, ctx);
  }
  void SwiGlu(const float* gate, const float* up, int64_t n, float* out,
              const ExecContext& ctx) override {
    ++calls["SwiGlu"];
    cpu_.SwiGlu(gate, up, n, out, ctx);
  }
  void Add(float* x, const float* y, int64_t n, const ExecContext& ctx) override {
    ++calls["Add"];
    cpu_.Add(x, y, n, ctx);
  }
  void AddBias(float* x, const float* bias, int64_t n, int64_t cols,
               const ExecContext& ctx) override {
    ++calls["AddBias"];
    cpu_.AddBias(x, bias, n, cols, ctx);
  }
  bool WriteKv(const KvWrite& w, const PagedKvLayerView& cache, const ExecContext& ctx) override {
    ++calls["WriteKv"];
    return cpu_.WriteKv(w, cache, ctx);
  }
  void PagedAttention(const AttentionBatch& batch, const PagedKvLayerView& cache,
                      const ExecContext& ctx) override {
    ++calls["PagedAttention"];
    cpu_.PagedAttention(batch, cache, ctx);
  }

 private:
  bool host_memory_;
  kernels::cpu::CpuBackend cpu_;
};

std::unique_ptr<LocalModel> OpenStories() {
  LocalModelOptions o;
  o.num_threads = 1;
  o.model_path = std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf";
  auto lm = LocalModel::Open(o);
  EXPECT_TRUE(lm.ok()) << lm.status();
  return lm.ok() ? std::move(*lm) : nullptr;
}

// A prompt of `n` tokens as one batch into a fresh sequence; logits of its last token.
std::vector<float> LastLogits(LocalModel& lm, LlamaModel& model, int n) {
  SequenceKv kv(&lm.kv_pool(), lm.kv_layout());
  EXPECT_TRUE(kv.Reserve(n).ok());
  ForwardBatch b;
  b.block_tables.push_back(kv.block_table().data());
  for (int p = 0; p < n; ++p) b.Add(p == 0 ? 1 : 10 + 7 * p % 400, p, 0, p, p == n - 1);
  std::vector<float> logits(static_cast<size_t>(lm.config().vocab_size));
  EXPECT_TRUE(model.Forward(b, lm.kv_pool(), logits.data()).ok());
  return logits;
}

TEST(LlamaModelBackendTest, EveryOpGoesThroughTheBackendAndLogitsAreUnchanged) {
  std::unique_ptr<LocalModel> lm = OpenStories();
  ASSERT_NE(lm, nullptr);
  EXPECT_EQ(lm->model().backend(), kernels::DefaultCpuBackend());
  CountingBackend counting;
  LlamaModel model(lm->loaded(), nullptr, &counting);
  EXPECT_EQ(model.backend(), &counting);
  const int n = 9;
  const std::vector<float> want = LastLogits(*lm, lm->model(), n);
  const std::vector<float> got = LastLogits(*lm, model, n);
  EXPECT_TRUE(got == want) << "logits differ from the default CPU backend's";
  const int layers = lm->config().num_layers;
  EXPECT_EQ(counting.calls["EmbeddingGather"], 1);
  EXPECT_EQ(counting.calls["RopeTable"], 1);
  EXPECT_EQ(counting.calls["MatMul"], 7 * layers + 1);   // + the classifier
  EXPECT_EQ(counting.calls["RmsNorm"], 2 * layers + 1);  // + the final norm of one row
  EXPECT_EQ(counting.calls["Rope"], 2 * layers);
  EXPECT_EQ(counting.calls["WriteKv"], layers);
  EXPECT_EQ(counting.calls["PagedAttention"], layers);
  EXPECT_EQ(counting.calls["Add"], 2 * layers);
  EXPECT_EQ(counting.calls["SwiGlu"], layers);
}

TEST(LlamaModelBackendTest, RefusesABackendWithoutHostMemory) {
  std::unique_ptr<LocalModel> lm = OpenStories();
  ASSERT_NE(lm, nullptr);
  CountingBackend device_like(/*host_memory=*/false);
  LlamaModel model(lm->loaded(), nullptr, &device_like);
  SequenceKv kv(&lm->kv_pool(), lm->kv_layout());
  ASSERT_TRUE(kv.Reserve(1).ok());
  ForwardBatch b;
  b.block_tables.push_back(kv.block_table().data());
  b.Add(1, 0, 0, 0, true);
  std::vector<float> logits(static_cast<size_t>(lm->config().vocab_size));
  const absl::Status st = model.Forward(b, lm->kv_pool(), logits.data());
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_NE(st.message().find("counting"), std::string::npos) << st;
  EXPECT_EQ(device_like.calls["MatMul"], 0);
}

}  // namespace
}  // namespace kvserve::engine
