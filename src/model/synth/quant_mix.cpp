// Stored types per tensor, following llama-quantize's choices for each recipe.
#include <cstdio>

#include "tandem/model/synth.hpp"

namespace tandem {
namespace {

// llama.cpp's "more bits" layers: the first and last eighth, and every third layer between.
bool uses_more_bits(int64_t layer, int64_t layers) {
  return layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;
}

int64_t layer_of(const std::string& name) {
  long long layer = -1;
  if (std::sscanf(name.c_str(), "blk.%lld.", &layer) != 1) return -1;
  return layer;
}

bool contains(const std::string& name, const char* part) { return name.find(part) != std::string::npos; }

// Rows that are not whole 256-value super-blocks cannot hold a K-quant or IQ4_XS.
DType fallback_for_row(DType t, int64_t row_elems) {
  if (row_elems % 256 == 0) return t;
  switch (t) {
    case DType::q4_k: return DType::q5_0;
    case DType::q5_k: return DType::q5_1;
    case DType::q6_k: return DType::q8_0;
    case DType::iq4_xs: return DType::iq4_nl;
    default: return t;
  }
}

}  // namespace

DType synth_matrix_type(SynthQuant quant, const std::string& name, int64_t layers, int64_t experts,
                        int64_t row_elems) {
  // Q4_K_M and Q5_K_M share their rules (Q6_K where more bits pay, Q8_0 for 8-expert models' k/v);
  // they differ in the base type.
  DType t = DType::q4_k;
  switch (quant) {
    case SynthQuant::q8_0: return DType::q8_0;
    case SynthQuant::bf16: return DType::bf16;
    case SynthQuant::iq4_xs: return fallback_for_row(DType::iq4_xs, row_elems);
    case SynthQuant::q5_k_m: t = DType::q5_k; break;
    case SynthQuant::q4_k_m: break;
  }
  const int64_t layer = layer_of(name);
  if (name == "output.weight") {
    t = DType::q6_k;
  } else if (contains(name, "attn_v.weight") || contains(name, "attn_kv_b.weight")) {
    // MLA's kv_b holds the values' projection: llama.cpp counts it with attn_v.
    if (experts == 8 && contains(name, "attn_v.weight")) t = DType::q8_0;
    else if (uses_more_bits(layer, layers)) t = DType::q6_k;
  } else if (contains(name, "attn_k.weight")) {
    if (experts == 8) t = DType::q8_0;
  } else if (contains(name, "ffn_down")) {  // dense, routed (_exps) and shared (_shexp) alike
    if (uses_more_bits(layer, layers)) t = DType::q6_k;
  } else if (contains(name, "attn_output.weight")) {
    if (experts == 8) t = DType::q5_k;
  }
  return fallback_for_row(t, row_elems);
}

}  // namespace tandem
