// The paged, batched forward pass against a plain double-precision reference, and batch
// invariance: a sequence's logits do not depend on what else is in the batch or how its prompt
// is chunked.
#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>

#include "engine/kv/sequence_kv.h"
#include "engine/runtime/local_model.h"
#include "gtest/gtest.h"
#include "tests/engine/testing/reference_llama.h"

namespace kvserve::engine {
namespace {

std::unique_ptr<LocalModel> Open(const std::string& model, const std::string& tokenizer = "",
                                 kernels::KvFormat f = kernels::KvFormat::kFp32,
                                 int block_size = 16, int threads = 0) {
  LocalModelOptions o;
  o.num_threads = threads;
  o.model_path = std::string(KVSERVE_MODELS_DIR) + "/" + model;
  if (!tokenizer.empty()) o.tokenizer_path = std::string(KVSERVE_MODELS_DIR) + "/" + tokenizer;
  o.kv_format = f;
  o.block_size = block_size;
  auto lm = LocalModel::Open(o);
  EXPECT_TRUE(lm.ok()) << lm.status();
  return lm.ok() ? std::move(*lm) : nullptr;
}

std::vector<int32_t> RandomTokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t{1};
  while (static_cast<int>(t.size()) < n) t.push_back(3 + rng() % (vocab - 3));
  return t;
}

// Runs each prompt's full sequence through the model (all positions' logits), either one prompt
// per Forward call, or all prompts in one batch, or in chunks of `chunk` tokens.
std::vector<std::vector<float>> AllLogits(LocalModel& lm,
                                          const std::vector<std::vector<int32_t>>& prompts,
                                          bool together, int chunk) {
  const int vocab = lm.config().vocab_size;
  std::vector<std::unique_ptr<SequenceKv>> kvs;
  for (size_t i = 0; i < prompts.size(); ++i) {
    kvs.push_back(std::make_unique<SequenceKv>(&lm.kv_pool(), lm.kv_layout()));
    EXPECT_TRUE(kvs.back()->Reserve(prompts[i].size()).ok());
  }
  std::vector<std::vector<float>> out(prompts.size());
  std::vector<size_t> done(prompts.size(), 0);
  bool more = true;
  while (more) {
    more = false;
    for (size_t i = 0; i < prompts.size(); ++i) {
      ForwardBatch b;
      std::vector<size_t> rows_of;
      for (size_t j = together ? 0 : i; j < (together ? prompts.size() : i + 1); ++j) {
        const int32_t seq = static_cast<int32_t>(b.block_tables.size());
        b.block_tables.push_back(kvs[j]->block_table().data());
        const size_t end = std::min(prompts[j].size(), done[j] + chunk);
        for (size_t p = done[j]; p < end; ++p) {
          b.Add(prompts[j][p], p, seq, p, true);
          rows_of.push_back(j);
        }
        done[j] = end;
      }
      std::vector<float> logits(b.logits_rows.size() * vocab);
      EXPECT_TRUE(lm.model().Forward(b, lm.kv_pool(), logits.data()).ok());
      for (size_t r = 0; r < rows_of.size(); ++r) {
        out[rows_of[r]].insert(out[rows_of[r]].end(), logits.begin() + r * vocab,
                               logits.begin() + (r + 1) * vocab);
      }
      for (size_t j = 0; j < prompts.size(); ++j) more |= done[j] < prompts[j].size();
      if (together) break;
    }
  }
  return out;
}

TEST(ForwardTest, MatchesPlainReferenceOnStories260K) {
  auto lm = Open("stories260K.gguf");
  ASSERT_NE(lm, nullptr);
  const auto tokens = RandomTokens(70, lm->config().vocab_size, 7);
  const auto ref = testing::ReferenceLogits(lm->loaded(), tokens);
  const auto got = AllLogits(*lm, {tokens}, false, 1000)[0];
  const int vocab = lm->config().vocab_size;
  double max_err = 0;
  for (size_t p = 0; p < tokens.size(); ++p) {
    for (int v = 0; v < vocab; ++v) {
      max_err = std::max(max_err, std::abs(got[p * vocab + v] - ref[p][v]));
    }
  }
  EXPECT_LT(max_err, 2e-3) << "max abs logit error vs float64 reference";
}

TEST(ForwardTest, MatchesPlainReferenceOnBabyLlama) {
  auto lm = Open("babyllama/model5000.bin", "babyllama/tok105.bin");
  ASSERT_NE(lm, nullptr);
  const auto tokens = RandomTokens(40, lm->config().vocab_size, 11);
  const auto ref = testing::ReferenceLogits(lm->loaded(), tokens);
  const auto got = AllLogits(*lm, {tokens}, false, 1000)[0];
  const int vocab = lm->config().vocab_size;
  double max_err = 0;
  for (size_t p = 0; p < tokens.size(); ++p) {
    for (int v = 0; v < vocab; ++v) {
      max_err = std::max(max_err, std::abs(got[p * vocab + v] - ref[p][v]));
    }
  }
  EXPECT_LT(max_err, 2e-3);
}

TEST(ForwardTest, GgufAndLlama2cCheckpointGiveTheSameLogits) {
  auto gguf = Open("stories260K.gguf");
  auto bin = Open("stories260K.bin", "tok512.bin");
  ASSERT_NE(gguf, nullptr);
  ASSERT_NE(bin, nullptr);
  const auto tokens = RandomTokens(50, 512, 3);
  const auto a = AllLogits(*gguf, {tokens}, false, 1000)[0];
  const auto b = AllLogits(*bin, {tokens}, false, 1000)[0];
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-4) << "at " << i;
}

TEST(ForwardTest, BatchOfSequencesEqualsEachAlone) {
  for (int block_size : {1, 5, 16}) {
    auto lm = Open("stories260K.gguf", "", kernels::KvFormat::kFp32, block_size);
    ASSERT_NE(lm, nullptr);
    std::vector<std::vector<int32_t>> prompts;
    for (int i = 0; i < 6; ++i) prompts.push_back(RandomTokens(5 + 13 * i, 512, 100 + i));
    const auto alone = AllLogits(*lm, prompts, false, 1000);
    const auto together = AllLogits(*lm, prompts, true, 1000);
    const auto chunked = AllLogits(*lm, prompts, false, 7);
    for (size_t i = 0; i < prompts.size(); ++i) {
      ASSERT_EQ(alone[i].size(), together[i].size());
      ASSERT_EQ(alone[i].size(), chunked[i].size());
      for (size_t j = 0; j < alone[i].size(); ++j) {
        ASSERT_NEAR(alone[i][j], together[i][j], 1e-4) << "seq " << i << " at " << j;
        ASSERT_NEAR(alone[i][j], chunked[i][j], 1e-4) << "seq " << i << " at " << j;
      }
    }
  }
}

// A batch of several sequences is split over the pool's threads by whole sequences (each thread
// runs its range through all layers); the logits must not depend on the number of threads, on
// whether the split happened (it does not when the sequences' tokens interleave), nor on chunking.
TEST(ForwardTest, SplitOverThreadsMatchesOneThread) {
  auto one = Open("stories260K.gguf", "", kernels::KvFormat::kFp32, 16, 1);
  auto three = Open("stories260K.gguf", "", kernels::KvFormat::kFp32, 16, 3);
  ASSERT_NE(one, nullptr);
  ASSERT_NE(three, nullptr);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 12; ++i) prompts.push_back(RandomTokens(20 + (i % 3), 512, 300 + i));
  for (int chunk : {1, 6, 1000}) {
    const auto a = AllLogits(*one, prompts, true, chunk);
    const auto b = AllLogits(*three, prompts, true, chunk);
    for (size_t i = 0; i < prompts.size(); ++i) {
      ASSERT_EQ(a[i].size(), b[i].size());
      for (size_t j = 0; j < a[i].size(); ++j) {
        ASSERT_NEAR(a[i][j], b[i][j], 1e-4) << "chunk " << chunk << " seq " << i << " at " << j;
      }
    }
  }
  // Logits rows in descending order (each range cannot take its own rows): same logits.
  {
    const int vocab = three->config().vocab_size;
    std::vector<std::unique_ptr<SequenceKv>> kvs;
    ForwardBatch b;
    for (size_t i = 0; i < prompts.size(); ++i) {
      kvs.push_back(std::make_unique<SequenceKv>(&three->kv_pool(), three->kv_layout()));
      ASSERT_TRUE(kvs.back()->Reserve(8).ok());
      b.block_tables.push_back(kvs.back()->block_table().data());
      for (int p = 0; p < 8; ++p) b.Add(prompts[i][p], p, i, p, false);
    }
    for (int32_t t = static_cast<int32_t>(b.num_tokens()) - 1; t >= 0; t -= 8) {
      b.logits_rows.push_back(t);
    }
    std::vector<float> logits(b.logits_rows.size() * vocab);
    ASSERT_TRUE(three->model().Forward(b, three->kv_pool(), logits.data()).ok());
    const auto ref = AllLogits(*one, prompts, true, 8);
    for (size_t r = 0; r < b.logits_rows.size(); ++r) {
      const size_t seq = prompts.size() - 1 - r;
      for (int v = 0; v < vocab; ++v) {
        ASSERT_NEAR(logits[r * vocab + v], ref[seq][7 * vocab + v], 1e-4) << "row " << r;
      }
    }
  }
  // Tokens of the sequences interleaved in the batch: no split point, same logits.
  const int vocab = three->config().vocab_size;
  std::vector<std::unique_ptr<SequenceKv>> kvs;
  ForwardBatch b;
  for (size_t i = 0; i < 4; ++i) {
    kvs.push_back(std::make_unique<SequenceKv>(&three->kv_pool(), three->kv_layout()));
    ASSERT_TRUE(kvs.back()->Reserve(prompts[i].size()).ok());
    b.block_tables.push_back(kvs.back()->block_table().data());
  }
  for (int p = 0; p < 20; ++p) {
    for (int i = 0; i < 4; ++i) b.Add(prompts[i][p], p, i, p, p == 19);
  }
  std::vector<float> logits(b.logits_rows.size() * vocab);
  ASSERT_TRUE(three->model().Forward(b, three->kv_pool(), logits.data()).ok());
  const auto ref = AllLogits(*one, {prompts[0], prompts[1], prompts[2], prompts[3]}, false, 1000);
  for (int i = 0; i < 4; ++i) {
    for (int v = 0; v < vocab; ++v) {
      ASSERT_NEAR(logits[i * vocab + v], ref[i][19 * vocab + v], 1e-4) << "seq " << i;
    }
  }
}

TEST(ForwardTest, HalfPrecisionKvStaysCloseToFp32) {
  auto f32 = Open("stories260K.gguf", "", kernels::KvFormat::kFp32);
  auto f16 = Open("stories260K.gguf", "", kernels::KvFormat::kFp16);
  auto b16 = Open("stories260K.gguf", "", kernels::KvFormat::kBf16);
  const auto tokens = RandomTokens(64, 512, 5);
  const auto a = AllLogits(*f32, {tokens}, false, 1000)[0];
  const auto h = AllLogits(*f16, {tokens}, false, 1000)[0];
  const auto b = AllLogits(*b16, {tokens}, false, 1000)[0];
  double eh = 0, eb = 0;
  int agree_h = 0, agree_b = 0;
  const int vocab = 512;
  for (size_t p = 0; p < tokens.size(); ++p) {
    auto argmax = [&](const std::vector<float>& l) {
      return std::max_element(l.begin() + p * vocab, l.begin() + (p + 1) * vocab) - l.begin();
    };
    agree_h += argmax(a) == argmax(h);
    agree_b += argmax(a) == argmax(b);
    for (int v = 0; v < vocab; ++v) {
      const size_t i = p * vocab + v;
      eh = std::max(eh, static_cast<double>(std::abs(a[i] - h[i])));
      eb = std::max(eb, static_cast<double>(std::abs(a[i] - b[i])));
    }
  }
  EXPECT_GT(eh, 0.0) << "FP16 KV should round something";
  EXPECT_LT(eh, eb) << "FP16 keeps 3 more mantissa bits than BF16";
  EXPECT_LT(eh, 0.05);
  EXPECT_LT(eb, 0.5);
  EXPECT_GE(agree_h, 62) << "of 64 greedy choices";
  EXPECT_GE(agree_b, 58) << "of 64 greedy choices";
}

TEST(ForwardTest, RejectsScoreArraysNotOnePerSequence) {
  auto lm = Open("stories260K.gguf");
  SequenceKv kv(&lm->kv_pool(), lm->kv_layout());
  ASSERT_TRUE(kv.Reserve(1).ok());
  ForwardBatch b;
  b.block_tables.push_back(kv.block_table().data());
  b.Add(5, 0, 0, 0, true);
  std::vector<float> scores(4, 0.0f);
  b.seq_scores = {scores.data(), scores.data()};  // two arrays, one sequence
  std::vector<float> logits(512);
  const absl::Status s = lm->model().Forward(b, lm->kv_pool(), logits.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

TEST(ForwardTest, RejectsTokenOutsideVocabulary) {
  auto lm = Open("stories260K.gguf");
  SequenceKv kv(&lm->kv_pool(), lm->kv_layout());
  ASSERT_TRUE(kv.Reserve(1).ok());
  ForwardBatch b;
  b.block_tables.push_back(kv.block_table().data());
  b.Add(512, 0, 0, 0, true);
  std::vector<float> logits(512);
  const absl::Status s = lm->model().Forward(b, lm->kv_pool(), logits.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("512"), std::string::npos) << s;
}

// Batch invariance, bitwise: a token's logits are the same floats whether its sequence runs
// alone or among 31 others, decoded token by token or prefilled in one chunk or in chunks of 7,
// on one thread or three, for the token-writable KV formats (fp32, fp16, bf16); on stories260K
// (head_dim 8, its own attention runner) and on the second model (head_dim 16, where the tokens of
// a prefill chunk share each block's decoding). This is what makes a request's greedy output
// independent of the server's load.
TEST(ForwardTest, TokenLogitsAreBitwiseTheSameInAnyBatch) {
  struct ModelCase {
    const char* model;
    const char* tokenizer;
    int vocab;
  };
  for (const ModelCase& mc : {ModelCase{"stories260K.gguf", "", 512},
                              ModelCase{"babyllama/model5000.bin", "babyllama/tok105.bin", 105}}) {
    std::vector<std::vector<int32_t>> prompts;
    for (int i = 0; i < 32; ++i) prompts.push_back(RandomTokens(30 + (i % 7), mc.vocab, 500 + i));
    for (auto f : {kernels::KvFormat::kFp32, kernels::KvFormat::kFp16, kernels::KvFormat::kBf16}) {
      auto one = Open(mc.model, mc.tokenizer, f, 16, 1);
      auto three = Open(mc.model, mc.tokenizer, f, 16, 3);
      ASSERT_NE(one, nullptr);
      ASSERT_NE(three, nullptr);
      const auto ref = AllLogits(*one, prompts, false, 1);
      struct Way {
        LocalModel* lm;
        bool together;
        int chunk;
      };
      for (const Way& way :
           {Way{one.get(), true, 1}, Way{one.get(), false, 1000}, Way{three.get(), true, 1},
            Way{three.get(), true, 7}, Way{three.get(), false, 1000}}) {
        const auto got = AllLogits(*way.lm, prompts, way.together, way.chunk);
        for (size_t i = 0; i < prompts.size(); ++i) {
          ASSERT_EQ(got[i].size(), ref[i].size());
          for (size_t j = 0; j < ref[i].size(); ++j) {
            ASSERT_EQ(got[i][j], ref[i][j])
                << mc.model << ", format " << static_cast<int>(f)
                << (way.lm == one.get() ? ", 1" : ", 3") << " thread(s), together " << way.together
                << ", chunk " << way.chunk << ": seq " << i << " at " << j;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvserve::engine
