// LoadedModel::PreparedWeights: the backend-prepared copy of a model's weights, prepared once and
// shared, with the file's copy of every repacked matrix released (weights held once).
#include <cstdlib>
#include <memory>
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
  // The prepared bytes: host memory (AllocateHugeAligned) or the backend's (Backend::Free).
  void* storage = nullptr;
  size_t host_bytes = 0;                          // the host allocation's size
  kernels::Backend* device_backend = nullptr;     // frees storage when not host memory
  std::unique_ptr<HugePageCollapser> huge_pages;  // host storage, once written

  ~Prepared() {
    huge_pages.reset();  // stops before the memory goes
    if (device_backend != nullptr) {
      device_backend->Free(storage);
    } else {
      FreeHugeAligned(storage, host_bytes);
    }
  }
};

LoadedModel::~LoadedModel() = default;

void LoadedModel::WaitForHugePages() const {
  {
    absl::MutexLock lock(&prepared_mu_);
    for (const std::shared_ptr<Prepared>& p : prepared_) {
      if (p->huge_pages != nullptr) p->huge_pages->Wait();
    }
  }
  WaitForFileHugePages();
}

void LoadedModel::UploadToDevice(kernels::Backend* backend, Prepared& prepared) const {
  // Every tensor the forward pass reads goes into one allocation of the backend's memory: the
  // matrices (prepared by the backend where it repacks them, else copied as they are in the
  // file), the norms, biases and rope factors. The host copies stay (they are the file's bytes).
  ModelWeights& w = prepared.weights;
  const ModelConfig& c = config_;
  const int64_t q_dim = int64_t{c.num_heads} * c.head_dim;
  struct Vector {
    const float** p;
    int64_t floats;
  };
  std::vector<Vector> vectors;
  std::vector<kernels::WeightView*> matrices;
  for (LayerWeights& lw : w.layers) {
    for (kernels::WeightView* m :
         {&lw.wq, &lw.wk, &lw.wv, &lw.wo, &lw.w_gate, &lw.w_down, &lw.w_up}) {
      matrices.push_back(m);
    }
    vectors.push_back({&lw.attn_norm, c.dim});
    vectors.push_back({&lw.ffn_norm, c.dim});
    vectors.push_back({&lw.bq, q_dim});
    vectors.push_back({&lw.bk, c.kv_dim()});
    vectors.push_back({&lw.bv, c.kv_dim()});
    vectors.push_back({&lw.q_norm, c.head_dim});
    vectors.push_back({&lw.k_norm, c.head_dim});
  }
  vectors.push_back({&w.final_norm, c.dim});
  vectors.push_back({&w.rope_freq_factors, c.head_dim / 2});
  const bool tied = w.output.data == w.token_embedding.data;
  matrices.push_back(&w.token_embedding);
  if (!tied) matrices.push_back(&w.output);
  auto round = [](int64_t b) { return (b + 255) / 256 * 256; };
  int64_t bytes = 0;
  std::vector<int64_t> data_at, panels_at, vector_at;
  for (const kernels::WeightView* m : matrices) {
    KVSERVE_CHECK(m->data != nullptr)
        << path_ << ": a matrix has no file copy left to upload to " << backend->name();
    data_at.push_back(bytes);
    bytes += round(kernels::WeightRowBytes(m->dtype, m->cols) * m->rows);
    panels_at.push_back(bytes);
    bytes += round(backend->PreparedWeightBytes(*m));
  }
  for (const Vector& v : vectors) {
    vector_at.push_back(bytes);
    if (*v.p != nullptr) bytes += round(v.floats * static_cast<int64_t>(sizeof(float)));
  }
  prepared.storage = backend->Alloc(bytes);
  prepared.device_backend = backend;
  KVSERVE_CHECK(prepared.storage != nullptr)
      << "backend " << backend->name() << ": cannot allocate " << bytes
      << " bytes of device memory for the weights of " << path_;
  auto* base = static_cast<uint8_t*>(prepared.storage);
  for (size_t i = 0; i < matrices.size(); ++i) {
    kernels::WeightView* m = matrices[i];
    // A host backend's panels (if another runner prepared them) mean nothing here.
    m->panels = nullptr;
    if (backend->PreparedWeightBytes(*m) > 0) backend->PrepareWeight(m, base + panels_at[i]);
    backend->CopyIn(base + data_at[i], m->data,
                    kernels::WeightRowBytes(m->dtype, m->cols) * m->rows);
    m->data = base + data_at[i];
  }
  if (tied) {
    w.output.data = w.token_embedding.data;
    w.output.panels = w.token_embedding.panels;
  }
  for (size_t i = 0; i < vectors.size(); ++i) {
    const Vector& v = vectors[i];
    if (*v.p == nullptr) continue;
    backend->CopyIn(base + vector_at[i], *v.p, v.floats * static_cast<int64_t>(sizeof(float)));
    *v.p = reinterpret_cast<const float*>(base + vector_at[i]);
  }
}

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
  if (!backend->host_memory()) {
    UploadToDevice(backend, *prepared);
    prepared_.push_back(prepared);
    return std::shared_ptr<const ModelWeights>(prepared, &prepared->weights);
  }
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
  // Host memory (a device backend returned above) in whole huge pages.
  const size_t host_bytes = RoundUpToHugePages(static_cast<size_t>(bytes));
  if (bytes > 0) {
    prepared->storage = AllocateHugeAligned(host_bytes);
    prepared->host_bytes = host_bytes;
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
    if (!(tied && m == &w.output)) {
      ReleaseFileBytes(source, source_bytes);
      m->data = nullptr;
      sources_released_ = true;
    }
  }
  if (tied && w.output.panels != nullptr) {
    const void* source = w.output.data;
    w.token_embedding.panels = w.output.panels;
    ReleaseFileBytes(source,
                     kernels::WeightRowBytes(w.output.dtype, w.output.cols) * w.output.rows);
    w.output.data = nullptr;
    w.token_embedding.data = nullptr;
    sources_released_ = true;
  }
  weights_ = w;  // weights() now shows what is left: the prepared views
  // Both copies are final now: into huge pages in the background (engine/common/huge_pages.h).
  if (prepared->storage != nullptr) {
    prepared->huge_pages = std::make_unique<HugePageCollapser>(prepared->storage, host_bytes);
  }
  StartFileHugePages();
  prepared_.push_back(prepared);
  return std::shared_ptr<const ModelWeights>(prepared, &prepared->weights);
}

}  // namespace kvserve::engine
