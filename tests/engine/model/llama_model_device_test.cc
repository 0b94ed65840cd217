// The forward pass on a backend whose memory is not the host's: weights uploaded once, the KV
// pool's blocks in the backend's memory, each step's integers, block tables and pool arrays
// uploaded, logits copied back. The backend is the CPU-emulated device of
// tests/engine/testing/emulated_device_backend.h (device memory the host cannot touch, every
// pointer checked), so the logits must be bitwise those of the CPU path, step by step, for a
// batch mixing prompts, chunked prompts and decodes, in each token-writable KV format.
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "engine/kv/block_pool.h"
#include "engine/kv/sequence_kv.h"
#include "engine/model/llama_model.h"
#include "engine/model/model.h"
#include "gtest/gtest.h"
#include "kernels/kv_format.h"
#include "tests/engine/testing/emulated_device_backend.h"

namespace kvserve::engine {
namespace {

using kernels::KvFormat;
using testing::EmulatedDeviceBackend;

std::string Stories() { return std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf"; }

int32_t Argmax(const float* row, int vocab) {
  return static_cast<int32_t>(std::max_element(row, row + vocab) - row);
}

// One side of the comparison: a model, its pool and three sequences.
struct Side {
  Side(const std::string& path, kernels::Backend* backend, KvFormat format) {
    auto m = LoadModel(path);
    EXPECT_TRUE(m.ok()) << m.status();
    loaded = std::move(*m);
    model = std::make_unique<LlamaModel>(*loaded, nullptr, backend);
    pool = std::make_unique<BlockPool>(model->KvGeometryFor(16), 8 << 20, backend);
    auto l = pool->RegisterUniformLayout(format);
    EXPECT_TRUE(l.ok()) << l.status();
    layout = *l;
    for (auto& s : seqs) s = std::make_unique<SequenceKv>(pool.get(), layout);
  }
  std::unique_ptr<LoadedModel> loaded;
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<BlockPool> pool;
  LayoutId layout = 0;
  std::unique_ptr<SequenceKv> seqs[3];
};

// Fills `b` for this step on `side` (reserving the slots first).
struct Planned {
  int32_t seq, token, pos;
  bool logits;
};
void Build(Side& side, const std::vector<Planned>& plan, ForwardBatch& b) {
  b.Clear();
  for (const Planned& p : plan) {
    SequenceKv& kv = *side.seqs[p.seq];
    ASSERT_TRUE(kv.Reserve(p.pos + 1).ok());
  }
  for (const auto& s : side.seqs) b.block_tables.push_back(s->block_table().data());
  for (const Planned& p : plan) b.Add(p.token, p.pos, p.seq, p.pos, p.logits);
}

class DeviceForwardTest : public ::testing::TestWithParam<KvFormat> {};

TEST_P(DeviceForwardTest, LogitsAreBitwiseTheCpuPathsStepByStep) {
  const KvFormat format = GetParam();
  EmulatedDeviceBackend device;
  Side cpu(Stories(), nullptr, format);
  Side dev(Stories(), &device, format);
  ASSERT_FALSE(dev.pool->host_memory());
  const int vocab = cpu.model->config().vocab_size;

  // Step 0: sequence 0's 21-token prompt and sequence 1's 6-token prompt. Then, each step, both
  // decode; from step 2 on, sequence 2's 37-token prompt arrives in chunks of 16 and then decodes.
  std::vector<int32_t> next(3, 0), len(3, 0);
  auto prompt = [](int s, int i) { return i == 0 ? 1 : 20 + (31 * i + 7 * s) % 450; };
  const int prompt_len[3] = {21, 6, 37};
  for (int step = 0; step < 10; ++step) {
    std::vector<Planned> plan;
    for (int s = 0; s < 3; ++s) {
      if (s == 2 && step < 2) continue;
      if (len[s] < prompt_len[s]) {
        const int chunk = s == 2 ? 16 : prompt_len[s];
        const int end = std::min(prompt_len[s], len[s] + chunk);
        for (int i = len[s]; i < end; ++i) plan.push_back({s, prompt(s, i), i, i == end - 1});
        len[s] = end;
      } else {
        plan.push_back({s, next[s], len[s], true});
        ++len[s];
      }
    }
    ForwardBatch bc, bd;
    Build(cpu, plan, bc);
    Build(dev, plan, bd);
    const size_t rows = bc.logits_rows.size();
    std::vector<float> want(rows * vocab), got(rows * vocab, -1.0f);
    ASSERT_TRUE(cpu.model->Forward(bc, *cpu.pool, want.data()).ok());
    const int64_t calls = device.op_calls();
    const absl::Status st = dev.model->Forward(bd, *dev.pool, got.data());
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_GT(device.op_calls(), calls);
    ASSERT_TRUE(got == want) << "step " << step << ": device logits differ from the CPU's";
    // The next token of every sequence whose row was returned: greedy on the CPU's logits.
    for (size_t r = 0; r < rows; ++r) {
      const int32_t s = bc.seq[bc.logits_rows[r]];
      if (len[s] >= prompt_len[s]) next[s] = Argmax(&want[r * vocab], vocab);
    }
  }
  // The KV blocks live in the device's memory, counted by the pool.
  EXPECT_GT(dev.pool->allocated_bytes(), 0);
  EXPECT_EQ(dev.pool->allocated_bytes(), cpu.pool->allocated_bytes());
  EXPECT_GE(device.live_bytes(), dev.pool->allocated_bytes());
}

INSTANTIATE_TEST_SUITE_P(Formats, DeviceForwardTest,
                         // The formats written token by token (the others are written whole,
                         // through demotion, which runs on the host).
                         ::testing::Values(KvFormat::kFp32, KvFormat::kFp16, KvFormat::kBf16),
                         [](const auto& info) {
                           return std::string(kernels::KvFormatName(info.param));
                         });

TEST(DeviceForwardTest, WeightsAndBlocksAreDeviceMemoryAndFreedWithTheirOwners) {
  EmulatedDeviceBackend device;
  {
    Side dev(Stories(), &device, KvFormat::kFp16);
    const int64_t after_load = device.live_bytes();
    // Every matrix and vector of the model was uploaded (260K parameters of F32: ~1 MB).
    EXPECT_GT(after_load, 900'000);
    ASSERT_TRUE(dev.seqs[0]->Reserve(40).ok());
    EXPECT_EQ(device.live_bytes(), after_load + dev.pool->allocated_bytes());
    EXPECT_EQ(dev.pool->allocated_bytes(), 3 * dev.pool->layout(dev.layout).block_bytes);
  }
  EXPECT_EQ(device.live_bytes(), 0) << "device memory left allocated";
}

TEST(DeviceForwardTest, AHostPoolOnADeviceBackendIsRefused) {
  EmulatedDeviceBackend device;
  auto loaded = LoadModel(Stories());
  ASSERT_TRUE(loaded.ok());
  LlamaModel model(**loaded, nullptr, &device);
  BlockPool host_pool(model.KvGeometryFor(16), 1 << 20);
  auto layout = host_pool.RegisterUniformLayout(KvFormat::kFp32);
  ASSERT_TRUE(layout.ok());
  SequenceKv kv(&host_pool, *layout);
  ASSERT_TRUE(kv.Reserve(1).ok());
  ForwardBatch b;
  b.block_tables.push_back(kv.block_table().data());
  b.Add(1, 0, 0, 0, true);
  std::vector<float> logits(static_cast<size_t>(model.config().vocab_size));
  const absl::Status st = model.Forward(b, host_pool, logits.data());
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_NE(st.message().find("emulated-device"), std::string::npos) << st;
}

TEST(DeviceForwardTest, AttentionScoresAreRefusedOnADevice) {
  EmulatedDeviceBackend device;
  Side dev(Stories(), &device, KvFormat::kFp32);
  ASSERT_TRUE(dev.seqs[0]->Reserve(1).ok());
  ForwardBatch b;
  b.block_tables.push_back(dev.seqs[0]->block_table().data());
  b.Add(1, 0, 0, 0, true);
  std::vector<float> scores(16);
  b.seq_scores.push_back(scores.data());
  std::vector<float> logits(static_cast<size_t>(dev.model->config().vocab_size));
  const absl::Status st = dev.model->Forward(b, *dev.pool, logits.data());
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_NE(st.message().find("token eviction"), std::string::npos) << st;
}

}  // namespace
}  // namespace kvserve::engine
