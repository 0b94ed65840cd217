// A text corpus as documents: the evaluation and calibration texts are documents separated by a
// marker such as "<|endoftext|>". Used by perplexity scoring (engine/eval/perplexity.h) and by the
// lowrank key calibration a model runs at start-up (engine/runtime/lowrank_calibration.h).
#ifndef KVSERVE_ENGINE_COMMON_DOCUMENTS_H_
#define KVSERVE_ENGINE_COMMON_DOCUMENTS_H_

#include <string_view>
#include <vector>

namespace kvserve::engine {

// Splits `text` on `separator` (the whole text is one document when it is empty), strips each
// document's leading spaces, carriage returns and newlines, and drops the empty ones. The views
// point into `text`.
std::vector<std::string_view> SplitDocuments(std::string_view text, std::string_view separator);

}  // namespace kvserve::engine

#endif  // KVSERVE_ENGINE_COMMON_DOCUMENTS_H_
