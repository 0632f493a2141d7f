// The bundled q8_0 GGUFs (no ../shared needed): finite logits, argmax mostly agreeing with golden.
#include <catch2/catch.hpp>
#include <cmath>

#include "engine/golden_check.hpp"
#include "support/fixtures.hpp"
#include "tandem/formats/safetensors.hpp"

using namespace tandem;

TEST_CASE("bundled q8_0 GGUFs run and stay close to golden", "[engine][quant]") {
  for (const char* name : {"qwen3moe", "deepseekv3"}) {
    const std::string dir = test::data_dir() + "/tiny-" + name;
    auto engine = test::load_for_test(dir + "/" + name + "-q8_0.gguf");
    const auto r = test::compare_with_golden(*engine, dir + "/golden.safetensors");
    WARN(name << " q8_0: worst max|d|/max|golden| = " << r.worst_relative << ", argmax mismatches "
              << r.argmax_mismatches << "/" << r.positions);
    CHECK(r.prompts == 5);
    CHECK(std::isfinite(r.worst_relative));
    // Quantisation flips experts on random weights (fixtures README), so only a loose bound.
    CHECK(r.worst_relative < 0.5);
  }
}
