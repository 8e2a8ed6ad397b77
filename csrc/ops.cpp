// Every op schema of retinaface_ext, in one place. The kernels register their
// implementations with TORCH_LIBRARY_IMPL in their own files.
#include <Python.h>
#include <torch/library.h>

#include "deform_conv/deform_conv.h"

TORCH_LIBRARY(retinaface_ext, m) {
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
  m.def(
      "box_vote(Tensor boxes, Tensor scores, Tensor landmarks, Tensor idxs, float iou_threshold) -> (Tensor boxes, "
      "Tensor scores, Tensor landmarks, Tensor idxs)");
  m.def(
      "match(Tensor truths, Tensor labels, Tensor landmarks, Tensor num_truths, Tensor priors, "
      "float threshold, float[] variances) -> (Tensor loc_t, Tensor conf_t, Tensor landm_t)");
  m.def(
      "decode_detections(Tensor loc, Tensor conf, Tensor landm, Tensor priors, float[] variances, "
      "float score_threshold) -> (Tensor boxes, Tensor scores, Tensor landmarks, "
      "Tensor image_index, Tensor prior_index)");
  m.def(
      "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor? mask, Tensor? bias, "
      "int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w) -> Tensor");
  m.def(
      "deform_conv2d_backward(Tensor grad_out, Tensor input, Tensor weight, Tensor offset, "
      "Tensor? mask, Tensor? bias, int stride_h, int stride_w, int pad_h, int pad_w, "
      "int dilation_h, int dilation_w) -> (Tensor grad_input, Tensor grad_weight, "
      "Tensor grad_offset, Tensor grad_mask, Tensor grad_bias)");
  m.def(
      "detect_faces(Tensor loc, Tensor logits, Tensor landm, Tensor priors, Tensor? inside, Tensor? factor, "
      "SymInt canvas_height, SymInt canvas_width, float[] variances, float score_threshold, int top_k, "
      "float nms_threshold, int keep_top_k) -> (Tensor boxes, Tensor scores, Tensor landmarks, Tensor counts)");
  m.def("image_planes(Tensor image, float[] mean) -> Tensor");
}

// Not part of the API: hooks for the tests, in a namespace of their own.
TORCH_LIBRARY(retinaface_ext_testing, m) {
  // Elements of deform_conv2d's column buffer (0: the backend's default); returns the
  // previous setting. A process-wide knob, for tests of the multi-chunk path.
  m.def("set_deform_conv_column_budget(int elements) -> int", &rfe::set_column_budget);
}

// _C is imported as a Python module only so that loading it runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
