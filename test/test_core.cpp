#include <catch2/catch.hpp>

#include "core/allocator.h"
#include "core/tensor.h"

using namespace ringattn;

TEST_CASE("tensor views share storage", "[core]") {
  Tensor t = Tensor::zeros({2, 3, 4}, DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = float(i);
  Tensor s = t.slice(1, 1, 2);
  CHECK(!s.is_contiguous());
  Tensor c = s.contiguous();
  REQUIRE(c.shape() == Shape{2, 2, 4});
  CHECK(c.data<float>()[0] == 4.0f);
  CHECK(c.data<float>()[8] == 16.0f);
}
