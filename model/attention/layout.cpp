#include "model/attention/layout.h"

#include "core/error.h"

namespace ringattn {

std::string_view layout_name(RingLayout layout) {
  switch (layout) {
    case RingLayout::Contiguous:
      return "contiguous";
    case RingLayout::Zigzag:
      return "zigzag";
    case RingLayout::Striped:
      return "striped";
  }
  return "?";
}

RingLayout parse_layout(std::string_view name) {
  for (RingLayout l : {RingLayout::Contiguous, RingLayout::Zigzag, RingLayout::Striped})
    if (layout_name(l) == name) return l;
  RA_FAIL("unknown ring layout '{}': expected contiguous, zigzag or striped", name);
}

void check_layout_split(RingLayout layout, int64_t seq_len, int ranks) {
  RA_CHECK(ranks >= 1, "the ring needs at least one rank, got {}", ranks);
  RA_CHECK(seq_len >= 1, "sequence length must be positive, got {}", seq_len);
  const int64_t parts = layout == RingLayout::Zigzag ? 2 * int64_t(ranks) : ranks;
  RA_CHECK(seq_len % parts == 0,
           "sequence length {} cannot be split by the {} layout over {} rank{}: it must be a "
           "multiple of {}",
           seq_len, layout_name(layout), ranks, ranks == 1 ? "" : "s", parts);
}

std::vector<int64_t> layout_positions(RingLayout layout, int64_t seq_len, int ranks, int rank) {
  check_layout_split(layout, seq_len, ranks);
  RA_CHECK(rank >= 0 && rank < ranks, "rank {} out of range for {} ranks", rank, ranks);
  const int64_t local = seq_len / ranks;
  std::vector<int64_t> pos(static_cast<size_t>(local));
  switch (layout) {
    case RingLayout::Contiguous:
      for (int64_t i = 0; i < local; ++i) pos[i] = rank * local + i;
      break;
    case RingLayout::Striped:
      for (int64_t i = 0; i < local; ++i) pos[i] = i * ranks + rank;
      break;
    case RingLayout::Zigzag: {
      const int64_t c = seq_len / (2 * ranks);
      for (int64_t i = 0; i < c; ++i) {
        pos[i] = rank * c + i;
        pos[c + i] = (2 * int64_t(ranks) - 1 - rank) * c + i;
      }
      break;
    }
  }
  return pos;
}

}  // namespace ringattn
