#include "engine/eval/perplexity.h"

#include <fstream>
#include <sstream>

#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

TEST(PerplexityTest, SplitDocumentsStripsLeadingWhitespaceAndDropsEmpty) {
  const auto docs =
      SplitDocuments("\n A b.\n<|endoftext|>\nC d.\n<|endoftext|>\n \n", "<|endoftext|>");
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[0], "A b.\n");
  EXPECT_EQ(docs[1], "C d.\n");
}

// ../shared/eval/README.md: stories260K with FP32 KV, each story capped at 512 tokens (BOS
// included): perplexity 3.4830 over 73,668 predicted tokens (mean NLL 1.24790 nats), computed by
// an independent float32 implementation.
TEST(PerplexityTest, Stories260KMatchesTheReferenceFigure) {
  std::ifstream in(std::string(KVSERVE_EVAL_DIR) + "/tinystories_valid_a.txt");
  ASSERT_TRUE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  LocalModelOptions o;
  o.model_path = std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf";
  auto lm = LocalModel::Open(o);
  ASSERT_TRUE(lm.ok()) << lm.status();
  PerplexityOptions po;
  po.max_tokens = 512;
  auto r = EvaluatePerplexity(**lm, ss.str(), po);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->documents, 210);
  EXPECT_EQ(r->predicted_tokens, 73668);
  EXPECT_NEAR(r->mean_nll(), 1.24790, 5e-5);
  EXPECT_NEAR(r->perplexity(), 3.4830, 5e-4);
  EXPECT_EQ((*lm)->kv_pool().used_blocks(), 0);
}

// The even and odd halves partition the documents: their counts, predicted tokens, per-document
// NLLs and total NLL add up to the full run's, document by document in order.
TEST(PerplexityTest, EvenAndOddHalvesPartitionTheDocuments) {
  std::ifstream in(std::string(KVSERVE_EVAL_DIR) + "/tinystories_valid_a.txt");
  ASSERT_TRUE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  LocalModelOptions o;
  o.model_path = std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf";
  auto lm = LocalModel::Open(o);
  ASSERT_TRUE(lm.ok()) << lm.status();
  PerplexityOptions po;
  po.max_tokens = 64;
  po.max_documents = 0;
  auto all = EvaluatePerplexity(**lm, ss.str(), po);
  po.subset = PerplexityOptions::Subset::kEven;
  auto even = EvaluatePerplexity(**lm, ss.str(), po);
  po.subset = PerplexityOptions::Subset::kOdd;
  auto odd = EvaluatePerplexity(**lm, ss.str(), po);
  ASSERT_TRUE(all.ok() && even.ok() && odd.ok());
  EXPECT_EQ(even->documents, 105);
  EXPECT_EQ(odd->documents, 105);
  EXPECT_EQ(even->predicted_tokens + odd->predicted_tokens, all->predicted_tokens);
  EXPECT_NEAR(even->total_nll + odd->total_nll, all->total_nll, 1e-6 * all->total_nll);
  for (size_t i = 0; i < all->document_nll.size(); ++i) {
    const auto& half = i % 2 == 0 ? even->document_nll : odd->document_nll;
    EXPECT_NEAR(all->document_nll[i], half[i / 2], 1e-9) << "document " << i;
  }
}

}  // namespace
}  // namespace kvserve::engine
