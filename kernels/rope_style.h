// How a rotary embedding pairs the elements of a head (shared by the backends and the models).
#ifndef KVSERVE_KERNELS_ROPE_STYLE_H_
#define KVSERVE_KERNELS_ROPE_STYLE_H_

namespace kvserve::kernels {

// Which elements of a head form pair i: adjacent (2i, 2i + 1), as Llama, Mistral and llama2.c
// (GGUF's "norm" rope), or the two halves (i, i + head_dim / 2), as Qwen2, Qwen3 and Phi-3
// (GPT-NeoX's layout).
enum class RopeStyle { kAdjacentPairs, kNeox };

}  // namespace kvserve::kernels

#endif  // KVSERVE_KERNELS_ROPE_STYLE_H_
