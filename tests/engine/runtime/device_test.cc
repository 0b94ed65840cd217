// engine.device: a LocalModel (and the engine built on one) on a device backend. The device is
// the CPU-emulated one of tests/engine/testing/emulated_device_backend.h, registered under the
// name "emulated-device": the host cannot touch its memory outside its calls, so a generation that
// completes and equals the CPU's shows that the whole serving path (scheduler, prefix reuse,
// preemption, sampling) keeps block bytes and activations on the device. What the device does
// not run (lowrank keys, token eviction, quantized weights) is refused at open with an error naming
// the key or the tensor type.
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "engine/runtime/engine.h"
#include "engine/runtime/local_model.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/engine/testing/emulated_device_backend.h"

namespace kvserve::engine {
namespace {

using ::testing::HasSubstr;

constexpr char kDevice[] = "emulated-device";
// Device memory of the emulated device: enough for stories260K's weights and a small pool.
constexpr int64_t kDeviceBytes = 48 << 20;

void RegisterEmulatedDevice() {
  static const bool registered = kernels::RegisterBackend(kDevice, [](std::string*) {
    auto b = std::make_unique<testing::EmulatedDeviceBackend>();
    b->set_capacity(kDeviceBytes);
    return std::unique_ptr<kernels::Backend>(std::move(b));
  });
  (void)registered;
}

LocalModelOptions Stories(const std::string& device) {
  RegisterEmulatedDevice();
  LocalModelOptions o;
  o.model_path = std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf";
  o.num_threads = 1;
  o.device = device;
  return o;
}

std::vector<GenerationRequest> Prompts(const LocalModel& lm) {
  std::vector<GenerationRequest> rs;
  // A shared preamble of several blocks (prefix reuse), then different endings.
  const std::string preamble =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
      "park with her friends. One day, ";
  for (const char* p : {"she saw a big dog.", "the sun was hot and", "her mom said", "Tom came"}) {
    GenerationRequest r;
    r.prompt = lm.tokenizer().Encode(preamble + p, true);
    r.max_tokens = 40;
    r.sampling.temperature = 0;
    rs.push_back(r);
  }
  // One sampled request: the sampler runs on the host from the copied-back logits.
  rs.back().sampling.temperature = 0.8f;
  rs.back().sampling.seed = 7;
  return rs;
}

std::vector<std::vector<int32_t>> GenerateAll(LocalModel& lm) {
  auto results = lm.generator().Run(Prompts(lm));
  EXPECT_TRUE(results.ok()) << std::string(results.status().message());
  std::vector<std::vector<int32_t>> tokens;
  if (results.ok()) {
    for (const GenerationResult& r : *results) tokens.push_back(r.tokens);
  }
  return tokens;
}

// A KV configuration: the cold format, per-layer overrides, and the window kept hot.
struct KvCase {
  const char* name;
  kernels::KvFormat format;
  std::map<int, kernels::KvFormat> layers;
  int32_t recent_window = 0;
  int32_t sink_tokens = 0;
};

void PrintTo(const KvCase& kv, std::ostream* os) { *os << kv.name; }

LocalModelOptions WithKv(LocalModelOptions o, const KvCase& kv) {
  o.kv_format = kv.format;
  o.kv_layer_formats = kv.layers;
  o.kv_recent_window = kv.recent_window;
  o.kv_sink_tokens = kv.sink_tokens;
  return o;
}

class DeviceGenerationTest : public ::testing::TestWithParam<KvCase> {};

// The device encodes the formats written whole (a prefill's full blocks, and demotion out of the
// window) with ConvertKvRegions: the same bytes as the host, so the same tokens.
TEST_P(DeviceGenerationTest, GenerationOnTheDeviceEqualsTheCpus) {
  const KvCase& kv = GetParam();
  auto cpu = LocalModel::Open(WithKv(Stories("cpu"), kv));
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  auto dev = LocalModel::Open(WithKv(Stories(kDevice), kv));
  ASSERT_TRUE(dev.ok()) << dev.status();
  EXPECT_EQ((*dev)->backend()->name(), kDevice);
  EXPECT_FALSE((*dev)->kv_pool().host_memory());
  const auto want = GenerateAll(**cpu);
  ASSERT_EQ(want.size(), 4u);
  EXPECT_EQ(GenerateAll(**dev), want);
  // Again: what the prefix cache holds (full cold blocks) is reused from device blocks, as much
  // as on the host.
  EXPECT_EQ(GenerateAll(**cpu), want);
  EXPECT_EQ(GenerateAll(**dev), want);
  EXPECT_EQ((*dev)->generator().cached_prompt_tokens(), (*cpu)->generator().cached_prompt_tokens());
  if (kv.sink_tokens == 0) EXPECT_GT((*dev)->generator().cached_prompt_tokens(), 0);
  const auto* device = dynamic_cast<const testing::EmulatedDeviceBackend*>((*dev)->backend());
  ASSERT_NE(device, nullptr);
  if (kernels::KvFormatTokenWritable(kv.format) && kv.layers.empty()) {
    EXPECT_EQ(device->convert_calls(), 0);
  } else {
    EXPECT_GT(device->convert_calls(), 0) << "no block was encoded whole on the device";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Kv, DeviceGenerationTest,
    ::testing::Values(KvCase{"fp16", kernels::KvFormat::kFp16, {}},
                      KvCase{"int8", kernels::KvFormat::kInt8, {}},
                      KvCase{"int4_window", kernels::KvFormat::kInt4, {}, 32, 4},
                      KvCase{"mixed_layers",
                             kernels::KvFormat::kFp8,
                             {{0, kernels::KvFormat::kFp16}, {3, kernels::KvFormat::kNvfp4}},
                             16,
                             0}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(DeviceTest, ThePublishedContinuationComesFromTheDevice) {
  auto dev = LocalModel::Open(Stories(kDevice));
  ASSERT_TRUE(dev.ok()) << dev.status();
  // From ../shared/models/README.md.
  GenerationRequest r;
  r.prompt = (*dev)->tokenizer().Encode("Once upon a time", true);
  r.max_tokens = 30;
  r.sampling.temperature = 0;
  auto one = (*dev)->generator().Run({r});
  ASSERT_TRUE(one.ok());
  EXPECT_EQ((*dev)->tokenizer().Decode((*one)[0].tokens),
            ", there was a little girl named Lily. She loved to play outside in the park. One "
            "day,");
}

TEST(DeviceTest, PreemptionOnATightDevicePoolKeepsTheOutput) {
  LocalModelOptions c = Stories("cpu");
  auto cpu = LocalModel::Open(c);
  ASSERT_TRUE(cpu.ok());
  LocalModelOptions o = Stories(kDevice);
  // Each request needs 6 blocks (about 50 prompt and 40 generated tokens): with room for 10, the
  // four preempt one another.
  o.kv_budget_bytes = 10 * (*cpu)->kv_pool().layout((*cpu)->kv_layout()).block_bytes;
  o.prefix_cache = false;
  auto dev = LocalModel::Open(o);
  ASSERT_TRUE(dev.ok()) << dev.status();
  const auto want = GenerateAll(**cpu);
  EXPECT_EQ(GenerateAll(**dev), want);
  EXPECT_GT((*dev)->generator().preemptions(), 0);
}

TEST(DeviceTest, AZeroBudgetTakesAShareOfTheDevicesFreeMemory) {
  LocalModelOptions o = Stories(kDevice);
  o.kv_budget_bytes = 0;
  o.device_memory_fraction = 0.5;
  auto dev = LocalModel::Open(o);
  ASSERT_TRUE(dev.ok()) << dev.status();
  const int64_t budget = (*dev)->kv_pool().budget_bytes();
  // Half of what the 48 MiB device had left after the weights (about 1 MB of them).
  EXPECT_GT(budget, kDeviceBytes / 2 - (2 << 20));
  EXPECT_LT(budget, kDeviceBytes / 2);
  o.device = "cpu";
  auto cpu = LocalModel::Open(o);
  EXPECT_EQ(cpu.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(cpu.status().message(), HasSubstr("devices only"));
}

TEST(DeviceTest, WhatTheDeviceDoesNotRunIsRefusedAtOpen) {
  LocalModelOptions o = Stories("tpu");
  auto st = LocalModel::Open(o).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("engine.device: unknown device \"tpu\""));
  EXPECT_THAT(st.message(), HasSubstr("cpu"));

  o = Stories(kDevice);
  o.kv_format = kernels::KvFormat::kLowrank;
  st = LocalModel::Open(o).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()),
              HasSubstr("kv_cache.format: engine.device \"emulated-device\" cannot store "
                        "lowrank blocks"));

  o = Stories(kDevice);
  o.kv_layer_formats = {{2, kernels::KvFormat::kLowrank}};
  st = LocalModel::Open(o).status();
  EXPECT_THAT(std::string(st.message()), HasSubstr("kv_cache.layer_formats (layer 2)"));

  o = Stories(kDevice);
  o.model_path = std::string(KVSERVE_MODELS_DIR) + "/arch/dev-smol-llama-Q8_0.gguf";
  st = LocalModel::Open(o).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("has no matrix kernels for Q8_0 weights"));
}

TEST(DeviceTest, TheEngineRefusesTokenEvictionOnADevice) {
  EngineOptions e;
  e.model = Stories(kDevice);
  e.token_eviction.policy = "sliding_window";
  e.token_eviction.budget_tokens = 64;
  auto refused = Engine::Create(e);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("token_eviction.policy"));

  e.token_eviction = TokenEvictionConfig();
  auto engine = Engine::Create(e);
  ASSERT_TRUE(engine.ok()) << engine.status();
  EngineRequest r;
  r.prompt = (*engine)->tokenizer().Encode("Once upon a time", true);
  r.max_tokens = 8;
  r.token_eviction.policy = "sliding_window";
  r.token_eviction.budget_tokens = 64;
  auto stream = (*engine)->Submit(r);
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(stream.status().message(), HasSubstr("does not evict tokens"));
  r.token_eviction = {};
  r.sampling.temperature = 0;
  stream = (*engine)->Submit(r);
  ASSERT_TRUE(stream.ok()) << stream.status();
}

}  // namespace
}  // namespace kvserve::engine
