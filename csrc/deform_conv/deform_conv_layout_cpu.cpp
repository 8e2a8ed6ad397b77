#include "deform_conv/deform_conv_layout_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

namespace rfe {

// One image row per task.
at::Tensor bordered_channels_last(const at::Tensor& input_) {
  const at::Tensor input = input_.contiguous();
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  at::Tensor bordered = at::empty({N, H + 2, W + 2, C}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_bordered", [&] {
    const scalar_t* from = input.data_ptr<scalar_t>();
    scalar_t* to = bordered.data_ptr<scalar_t>();
    const int64_t row = (W + 2) * C;
    at::parallel_for(0, N * (H + 2), 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / (H + 2), y = r % (H + 2) - 1;
        scalar_t* line = to + r * row;
        if (y < 0 || y >= H) {
          std::fill_n(line, row, scalar_t(0));
          continue;
        }
        std::fill_n(line, C, scalar_t(0));
        std::fill_n(line + (W + 1) * C, C, scalar_t(0));
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* source = from + ((n * C + c) * H + y) * W;
          for (int64_t x = 0; x < W; ++x) line[(x + 1) * C + c] = source[x];
        }
      }
    });
  });
  return bordered;
}

// One image row per task.
at::Tensor unbordered_sum(const at::Tensor& parts, const DeformShape& s) {
  const int64_t P = parts.size(1), C = s.C, H = s.H, W = s.W;
  at::Tensor out = at::empty({s.N, C, H, W}, parts.options());
  AT_DISPATCH_FLOATING_TYPES(parts.scalar_type(), "deform_conv2d_unbordered", [&] {
    const scalar_t* from = parts.data_ptr<scalar_t>();
    scalar_t* to = out.data_ptr<scalar_t>();
    const int64_t image = (H + 2) * (W + 2) * C;
    at::parallel_for(0, s.N * H, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / H, y = r % H;
        const scalar_t* line = from + n * P * image + ((y + 1) * (W + 2) + 1) * C;
        for (int64_t c = 0; c < C; ++c) {
          scalar_t* target = to + ((n * C + c) * H + y) * W;
          for (int64_t x = 0; x < W; ++x) {
            scalar_t sum = line[x * C + c];
            for (int64_t q = 1; q < P; ++q) sum += line[q * image + x * C + c];
            target[x] = sum;
          }
        }
      }
    });
  });
  return out;
}

at::Tensor images_contiguous(const at::Tensor& t) {
  return t.size(0) > 0 && t[0].is_contiguous() ? t : t.contiguous();
}

}  // namespace rfe
