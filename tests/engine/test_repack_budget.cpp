// The repacked weights' memory guard (repack_budget): under kRepackMemoryShare of the machine's memory
// everything is repacked; over it the int8 copies go first, then the strips; forced, or with the
// memory unknown, nothing is refused. (Engine::load takes its answer; the int8 branch needs a CPU
// with AMX to arise there, hence this test of the rule itself.)
#include <catch2/catch.hpp>

#include "tandem/engine/repack_budget.hpp"

using namespace tandem;

TEST_CASE("repack budget: int8 copies dropped first, then the strips, each with a warning that says so",
          "[engine][repack]") {
  constexpr double GiB = 1 << 30, memory = 100 * GiB, share = kRepackMemoryShare * memory;
  SECTION("within the share: strips and int8 copies, no warning") {
    for (double with : {0.0, 10 * GiB, share}) {  // the share itself is allowed
      const RepackBudget b = repack_budget(with, with / 2, memory, false);
      CHECK(b.choice == RepackChoice::strips_and_int8);
      CHECK(b.warning.empty());
    }
  }
  SECTION("over with the int8 copies, within without them: strips only") {
    const RepackBudget b = repack_budget(60 * GiB, 30 * GiB, memory, false);
    CHECK(b.choice == RepackChoice::strips_only);
    CHECK(b.warning.find("without int8 copies") != std::string::npos);
    CHECK(b.warning.find("60.0 GiB") != std::string::npos);
    CHECK(b.warning.find("30.0 GiB") != std::string::npos);
    CHECK(b.warning.find("45 %") != std::string::npos);
    CHECK(b.warning.find("100.0 GiB") != std::string::npos);
  }
  SECTION("over even without them, or no int8 copies to drop: nothing repacked") {
    for (auto [with, strips] : {std::pair{60 * GiB, 50 * GiB}, std::pair{50 * GiB, 50 * GiB}}) {
      const RepackBudget b = repack_budget(with, strips, memory, false);
      CHECK(b.choice == RepackChoice::none);
      CHECK(b.warning.find("not repacked") != std::string::npos);
      CHECK(b.warning.find("50.0 GiB") != std::string::npos);
      CHECK(b.warning.find("TANDEM_CPU_REPACK=1") != std::string::npos);
    }
  }
  SECTION("forced, or the machine's memory unknown: everything") {
    CHECK(repack_budget(500 * GiB, 400 * GiB, memory, true).choice == RepackChoice::strips_and_int8);
    CHECK(repack_budget(500 * GiB, 400 * GiB, 0, false).choice == RepackChoice::strips_and_int8);
    CHECK(repack_budget(500 * GiB, 400 * GiB, -1, false).warning.empty());
  }
  SECTION("repack_fits, the test the engine asks first: the share itself fits, a byte more does not") {
    CHECK(repack_fits(share, memory, false));
    CHECK_FALSE(repack_fits(share + 1, memory, false));
    CHECK(repack_fits(share + 1, memory, true));
    CHECK(repack_fits(share + 1, 0, false));
  }
}
