// LoadedModel::PreparedWeights: the backend-prepared copy of a model's weights, prepared once and
// shared, with the file's copy of every repacked matrix released (weights held once).
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "engine/common/huge_pages.h"
#include "engine/common/status_macros.h"
#include "engine/model/model.h"
#include "kernels/backend.h"
#include "kernels/weight_formats.h"

namespace kvserve::engine {

struct LoadedModel::Prepared {
  std::string layout;
  ModelWeights weights;
  // The prepared bytes: host memory (std::free) or the backend's (Backend::Free).
  void* storage = nullptr;
  kernels::Backend* device_backend = nullptr;  // frees storage when not host memory

  ~Prepared() {
    if (device_backend != nullptr) {
      device_backend->Free(storage);
    } else {
      std::free(storage);
    }
  }
};

LoadedModel::~LoadedModel() = default;

std::shared_ptr<const ModelWeights> LoadedModel::PreparedWeights(kernels::Backend* backend) const {
  const std::string layout = backend->prepared_weight_layout();
  absl::MutexLock lock(&prepared_mu_);
  for (const std::shared_ptr<Prepared>& p : prepared_) {
    if (p->layout == layout) return std::shared_ptr<const ModelWeights>(p, &p->weights);
  }
  KVSERVE_CHECK(!sources_released_)
      << path_ << ": the weights were prepared for backend layout '" << prepared_.front()->layout
      << "' and the file's copy released; preparing them for '" << layout
      << "' needs the model loaded again";
  auto prepared = std::make_shared<Prepared>();
  prepared->layout = layout;
  prepared->weights = weights_;
  ModelWeights& w = prepared->weights;
  std::vector<kernels::WeightView*> matrices;
  for (LayerWeights& lw : w.layers) {
    for (kernels::WeightView* m :
         {&lw.wq, &lw.wk, &lw.wv, &lw.wo, &lw.w_gate, &lw.w_down, &lw.w_up}) {
      matrices.push_back(m);
    }
  }
  matrices.push_back(&w.output);
  // One allocation (64-byte rounding keeps each matrix's prepared copy on its own cache lines).
  std::vector<int64_t> offsets;
  int64_t bytes = 0;
  for (const kernels::WeightView* m : matrices) {
    offsets.push_back(bytes);
    bytes += (backend->PreparedWeightBytes(*m) + 63) / 64 * 64;
  }
  const bool host = backend->host_memory();
  if (bytes > 0) {
    // Not zeroed: PrepareWeight writes every byte it uses.
    // Host memory in whole huge pages (engine/common/huge_pages.h).
    const size_t host_bytes = RoundUpToHugePages(static_cast<size_t>(bytes));
    prepared->storage =
        host ? std::aligned_alloc(kHugePageBytes, host_bytes) : backend->Alloc(bytes);
    if (!host) prepared->device_backend = backend;
    if (host && prepared->storage != nullptr) AdviseHugePages(prepared->storage, host_bytes);
    KVSERVE_CHECK(prepared->storage != nullptr)
        << "backend " << backend->name() << ": cannot allocate " << bytes
        << " bytes for the prepared weights of " << path_;
  }
  auto* base = static_cast<uint8_t*>(prepared->storage);
  const bool tied = w.output.data == w.token_embedding.data;
  for (size_t i = 0; i < matrices.size(); ++i) {
    kernels::WeightView* m = matrices[i];
    const int64_t size = backend->PreparedWeightBytes(*m);
    if (size == 0) continue;  // used in place
    const void* source = m->data;
    const int64_t source_bytes = kernels::WeightRowBytes(m->dtype, m->cols) * m->rows;
    backend->PrepareWeight(m, base + offsets[i]);
    // Released at once (the peak stays near one copy), except the tied embedding table, which
    // the embedding gather reads until it reads the panels.
    if (host && !(tied && m == &w.output)) {
      ReleaseFileBytes(source, source_bytes);
      m->data = nullptr;
      sources_released_ = true;
    }
  }
  if (host && tied && w.output.panels != nullptr) {
    const void* source = w.output.data;
    w.token_embedding.panels = w.output.panels;
    ReleaseFileBytes(source,
                     kernels::WeightRowBytes(w.output.dtype, w.output.cols) * w.output.rows);
    w.output.data = nullptr;
    w.token_embedding.data = nullptr;
    sources_released_ = true;
  }
  if (host) weights_ = w;  // weights() now shows what is left: the prepared views
  prepared_.push_back(prepared);
  return std::shared_ptr<const ModelWeights>(prepared, &prepared->weights);
}

}  // namespace kvserve::engine
