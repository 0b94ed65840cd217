// Token eviction (lossy): bounds the KV of one live sequence to a budget of token slots by
// choosing which cached slots to keep when the sequence outgrows it.
//
// Contract of a plan, for the caller (the engine, which owns the sequence's blocks):
//   1. Call Plan(num_slots, scores, budget_tokens) with the slots now cached. Nothing happens
//      while num_slots <= budget_tokens (plan.evict == false). To keep the cache within a hard
//      bound B including the n tokens a step is about to append, call it before appending with
//      budget_tokens = B - n (calling after appending lets the cache exceed B by n for a step).
//   2. Over budget, plan.keep lists the slots to keep, ascending, exactly
//      budget_tokens - slack_tokens of them. The caller compacts them to the front IN THIS
//      ORDER (slot keep[i] moves to slot i, in every layer and head; keep[i] >= i, so a forward
//      in-place copy is safe), frees the blocks past the new length, and carries every per-slot
//      side array along the same way: accumulated attention scores, and the tokens' original
//      positions (keys are stored after RoPE, so kept keys keep their positions; the query of
//      the next token uses the sequence's true position). CompactKept() below does it for a
//      vector.
//      Slots before the first dropped one do not move, so their blocks stay untouched. A block
//      that changes and is shared (pool ref count > 1: another sequence, or the prefix index)
//      must be copied first (copy-on-write). After an eviction the sequence's blocks no longer
//      hold a plain token prefix: do not insert them into the prefix index.
//   3. Accumulated scores: for policies with needs_attention_scores(), the attention kernel adds,
//      for every query token, its softmax weights (summed over layers and heads, or averaged:
//      any fixed non-negative reduction) to scores[slot]. A new slot starts at 0. The caller may
//      plan each layer (or layer and KV head) on its own from that unit's scores, and may
//      normalise them first (SequenceTokenEviction does both, per TokenEvictionOptions).
// Slack: evicting down to budget - slack instead of to the budget makes eviction run once every
// `slack` tokens (one block's worth: once per block) instead of at every token, and lets whole
// blocks be freed. Its cost: up to `slack` fewer tokens of context right after each eviction.
//
// Thread-safety: policies are immutable after creation; Plan may be called concurrently.
// Virtual calls: one per eviction event, never per slot.
#ifndef KVSERVE_ENGINE_KV_TOKEN_EVICTION_TOKEN_EVICTION_POLICY_H_
#define KVSERVE_ENGINE_KV_TOKEN_EVICTION_TOKEN_EVICTION_POLICY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace kvserve::engine {

// Which decisions policies that read attention (h2o, attention) make: one set of kept tokens
// for the whole sequence (scores summed over layers and heads), one per layer, or one per layer
// and KV head (as in H2O). Keys are cached after RoPE, so a slot may hold different tokens in
// different layers or heads; compaction moves each layer's (head's) rows by its own plan.
enum class TokenEvictionGranularity { kSequence, kLayer, kHead };
// What an accumulated score is compared by: the plain sum of the attention a slot received
// (kNone, H2O), or that sum divided by the number of queries that have attended it (kAge):
// without it older tokens win merely by having been visible for longer.
enum class TokenScoreNormalization { kNone, kAge };

// Options shared by the token eviction policies; each reads only the fields it documents.
struct TokenEvictionOptions {
  int32_t sink_tokens = 4;     // sliding_window, h2o: first slots always kept (attention sinks)
  int32_t recent_window = -1;  // h2o: newest slots always kept; < 0 means half of what the
                               // budget keeps beyond the sinks
  int32_t slack_tokens = 0;    // evict down to budget - slack (e.g. block_size); all policies
  // h2o, attention (applied by SequenceTokenEviction, which owns the scores):
  TokenEvictionGranularity granularity = TokenEvictionGranularity::kHead;
  TokenScoreNormalization score_normalization = TokenScoreNormalization::kAge;
};

// YAML / flag names: "sequence", "layer", "head"; "none", "age". InvalidArgument otherwise.
absl::StatusOr<TokenEvictionGranularity> ParseTokenEvictionGranularity(absl::string_view name);
absl::StatusOr<TokenScoreNormalization> ParseTokenScoreNormalization(absl::string_view name);

struct TokenEvictionPlan {
  bool evict = false;         // false: the sequence is within budget; keep every slot
  std::vector<int32_t> keep;  // slots to keep, strictly ascending (when evict)
};

class TokenEvictionPolicy {
 public:
  explicit TokenEvictionPolicy(const TokenEvictionOptions& options) : options_(options) {}
  virtual ~TokenEvictionPolicy() = default;

  virtual absl::string_view name() const = 0;
  // Whether Plan() reads per-slot accumulated attention scores.
  virtual bool needs_attention_scores() const = 0;

  // See the file comment. `scores` has num_slots entries when needs_attention_scores(), and is
  // ignored (may be empty) otherwise. InvalidArgument for budget_tokens < 1, a budget that
  // leaves nothing after slack (or after the policy's fixed parts, e.g. sinks), scores of the
  // wrong length, or non-finite scores.
  absl::StatusOr<TokenEvictionPlan> Plan(int32_t num_slots, absl::Span<const float> scores,
                                         int32_t budget_tokens) const;

  const TokenEvictionOptions& options() const { return options_; }

 protected:
  // False for `none`: never evicts, whatever the budget.
  virtual bool evicts() const { return true; }
  // Appends exactly `target` distinct slots in [0, num_slots) to *keep, in any order.
  // REQUIRES: 0 < target < num_slots; scores validated as above.
  virtual absl::Status SelectKept(int32_t num_slots, absl::Span<const float> scores, int32_t target,
                                  std::vector<int32_t>* keep) const = 0;

 private:
  TokenEvictionOptions options_;
};

inline constexpr char kDefaultTokenEvictionPolicy[] = "none";

// Creates a policy by name: none, sliding_window, h2o, attention. InvalidArgument listing the
// known names for an unknown one, or naming the option when options are invalid (negative
// sink_tokens or slack_tokens, recent_window < -1).
absl::StatusOr<std::unique_ptr<TokenEvictionPolicy>> CreateTokenEvictionPolicy(
    absl::string_view name, const TokenEvictionOptions& options = {});

// Registered names, sorted.
std::vector<std::string> TokenEvictionPolicyNames();

using TokenEvictionPolicyFactory =
    std::function<std::unique_ptr<TokenEvictionPolicy>(const TokenEvictionOptions& options)>;
// Adds a policy (options are validated before its factory runs). AlreadyExists for a taken name.
// Thread-safe.
absl::Status RegisterTokenEvictionPolicy(absl::string_view name,
                                         TokenEvictionPolicyFactory factory);

// Moves values[keep[i]] to values[i] and truncates to keep.size().
// REQUIRES: keep strictly ascending, every entry < values->size().
template <typename T>
void CompactKept(absl::Span<const int32_t> keep, std::vector<T>* values) {
  for (size_t i = 0; i < keep.size(); ++i) (*values)[i] = std::move((*values)[keep[i]]);
  values->resize(keep.size());
}

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_KV_TOKEN_EVICTION_TOKEN_EVICTION_POLICY_H_
