#pragma once
// Per-element box math shared by the CPU loops and the CUDA kernels. Every expression
// keeps the operation order of the PyTorch references (and of Pytorch_Retinaface), so
// that results round the same way.
#include "common/host_device.h"

namespace rfe {

// IoU of two x1y1x2y2 boxes whose areas are given, with torchvision's rounding:
// inter = max(0, min(x2) - max(x1)) * max(0, min(y2) - max(y1)),
// iou = inter / (area_a + area_b - inter).
template <typename T>
RFE_HOST_DEVICE inline T box_iou(T ax1, T ay1, T ax2, T ay2, T area_a, T bx1, T by1, T bx2, T by2, T area_b) {
  const T w = max_of(min_of(ax2, bx2) - max_of(ax1, bx1), T(0));
  const T h = max_of(min_of(ay2, by2) - max_of(ay1, by1), T(0));
  const T inter = mul_rn(w, h);
  return inter / (area_a + area_b - inter);
}

// (x2 - x1) * (y2 - y1), as torchvision's box_area and the seed's jaccard compute it.
template <typename T>
RFE_HOST_DEVICE inline T plain_area(T x1, T y1, T x2, T y2) {
  return mul_rn(x2 - x1, y2 - y1);
}

// A prior (cx, cy, w, h) in point form (x1, y1, x2, y2): centre -/+ half size.
template <typename T>
RFE_HOST_DEVICE inline void prior_corners(const T* prior, T* corners) {
  corners[0] = prior[0] - prior[2] / T(2);
  corners[1] = prior[1] - prior[3] / T(2);
  corners[2] = prior[0] + prior[2] / T(2);
  corners[3] = prior[1] + prior[3] / T(2);
}

// encode, centre part: ((x1 + x2) / 2 - cx) / (v0 * w), likewise for y.
template <typename T>
RFE_HOST_DEVICE inline void encode_centre(const T* box, const T* prior, T v0, T* out) {
  out[0] = ((box[0] + box[2]) / T(2) - prior[0]) / mul_rn(v0, prior[2]);
  out[1] = ((box[1] + box[3]) / T(2) - prior[1]) / mul_rn(v0, prior[3]);
}

// encode, size part before the log: (x2 - x1) / w, (y2 - y1) / h.
template <typename T>
RFE_HOST_DEVICE inline void encode_size_ratio(const T* box, const T* prior, T* out) {
  out[0] = (box[2] - box[0]) / prior[2];
  out[1] = (box[3] - box[1]) / prior[3];
}

// encode_landm: each point (x - cx) / (v0 * w), (y - cy) / (v0 * h), i.e.
// (points[k] - origin[k]) / scale[k] for the 10 coordinates with this frame.
template <typename T>
RFE_HOST_DEVICE inline void landmark_frame(const T* prior, T v0, T* origin, T* scale) {
  const T sx = mul_rn(v0, prior[2]), sy = mul_rn(v0, prior[3]);
  for (int k = 0; k < 5; ++k) {
    origin[2 * k] = prior[0];
    origin[2 * k + 1] = prior[1];
    scale[2 * k] = sx;
    scale[2 * k + 1] = sy;
  }
}

// One landmark coordinate in its prior's frame.
template <typename T>
RFE_HOST_DEVICE inline T encode_coordinate(T value, T origin, T scale) {
  return (value - origin) / scale;
}

template <typename T>
RFE_HOST_DEVICE inline void encode_landmarks(const T* points, const T* prior, T v0, T* out) {
  T origin[10], scale[10];
  landmark_frame(prior, v0, origin, scale);
  for (int k = 0; k < 10; ++k) out[k] = encode_coordinate(points[k], origin[k], scale[k]);
}

// decode: centre = c + l * v0 * s, size = s * exp(l * v1); then x1 = cx - w / 2, x2 = x1 + w.
template <typename T, typename Exp>
RFE_HOST_DEVICE inline void decode_box(const T* loc, const T* prior, T v0, T v1, Exp exp_fn, T* out) {
  const T cx = prior[0] + mul_rn(mul_rn(loc[0], v0), prior[2]);
  const T cy = prior[1] + mul_rn(mul_rn(loc[1], v0), prior[3]);
  const T w = mul_rn(prior[2], exp_fn(mul_rn(loc[2], v1)));
  const T h = mul_rn(prior[3], exp_fn(mul_rn(loc[3], v1)));
  out[0] = cx - w / T(2);
  out[1] = cy - h / T(2);
  out[2] = w + out[0];
  out[3] = h + out[1];
}

// decode_landm: each point c + l * v0 * s.
template <typename T>
RFE_HOST_DEVICE inline void decode_landmarks(const T* landm, const T* prior, T v0, T* out) {
  for (int k = 0; k < 5; ++k) {
    out[2 * k] = prior[0] + mul_rn(mul_rn(landm[2 * k], v0), prior[2]);
    out[2 * k + 1] = prior[1] + mul_rn(mul_rn(landm[2 * k + 1], v0), prior[3]);
  }
}

}  // namespace rfe
