// attend_keys for the avx512 build (the body is attention_block_body.hpp, the same for every ISA).
#include "backend/cpu/kernels/attention_block_body.hpp"

namespace tandem::kernels::avx512 {

void attend_keys(const AttendBlock& block) { attend_keys_body(block); }

}  // namespace tandem::kernels::avx512
