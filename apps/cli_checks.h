// Checks of numeric command-line options, with messages that name the bound. CLI11's own
// (CLI::PositiveNumber, CLI::Range) let NaN through (every comparison with it is false) and print
// an unbounded side as a 300-digit number.
#pragma once

#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#include <fmt/format.h>

namespace ringattn::apps {

// A number in [lo, hi] (finite). Text that is not a number is left to the option's conversion,
// which reports it.
inline CLI::Validator number_in(double lo, double hi = std::numeric_limits<double>::infinity()) {
  const std::string want = std::isinf(hi) ? fmt::format("a number >= {}", lo)
                                          : fmt::format("a number from {} to {}", lo, hi);
  return CLI::Validator(
      [lo, hi, want](std::string& text) -> std::string {
        char* end = nullptr;
        const double x = std::strtod(text.c_str(), &end);
        if (end == text.c_str() || *end != '\0') return {};
        if (std::isfinite(x) && x >= lo && x <= hi) return {};
        return fmt::format("{} is not {}", text, want);
      },
      want);
}

// An integer >= 1 (counts, lengths).
inline CLI::Validator positive_count() {
  return number_in(1);
}

}  // namespace ringattn::apps
