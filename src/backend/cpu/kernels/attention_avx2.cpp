// attend_keys for the avx2 build (the body is attention_block_body.hpp, the same for every ISA).
#define TANDEM_ATTEND_LANES 8  // one ymm a vector
#include "backend/cpu/kernels/attention_block_body.hpp"

namespace tandem::kernels::avx2 {

void attend_keys(const AttendBlock& block) { attend_keys_body(block); }

}  // namespace tandem::kernels::avx2
