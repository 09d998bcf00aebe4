// Kernels for MindSpore's CPU backend where its own are slow, as AOT custom ops that
// pipeline/model/cpu_kernels.py builds, checks and hands to the graphs. Each computes what the
// reference computes, in float32, in one pass where MindSpore takes several kernels:
// - ExactGelu: x * 0.5 * (1 + erf(x / sqrt(2))). MindSpore's CPU GELU evaluates erf one value at
//   a time (about 9 ms for 1.15M values on two threads, measured); glibc's vector maths library
//   (libmvec) has a vectorised erff, about 1 ms for the same values on one thread.
// - RmsNorm: weight * (x * rsqrt(mean(x^2) + eps)) over the last axis, Qwen2's order. MindSpore
//   runs it as five kernels (square, mean, add, rsqrt, two products); a prefill row's thirteen
//   norms took 24 ms that way, 4.7 ms so (measured).
#include <cmath>
#include <cstdint>
#include <cstring>

// glibc declares erff's vector variants only under -ffast-math, which would also loosen the rest
// of the arithmetic (and switch the process to flush denormals to zero); declared here alone,
// nothing else changes.
extern "C" float erff(float) __attribute__((simd("notinbranch")));

namespace {

bool all_float32(int nparam, const char **dtypes) {
  for (int i = 0; i < nparam; ++i) {
    if (std::strcmp(dtypes[i], "float32") != 0) return false;
  }
  return true;
}

int64_t elements(int ndims, const int64_t *shape, int from, int to) {
  int64_t n = 1;
  for (int i = from; i < to && i < ndims; ++i) n *= shape[i];
  return n;
}

// One build for any x86-64 CPU: the loader picks the widest of these the machine has.
__attribute__((target_clones("avx512f", "avx2", "default")))
void exact_gelu(const float *x, float *y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    y[i] = v * 0.5f * (1.0f + erff(v * 0.70710678118654752440f));
  }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void rms_norm(const float *x, const float *weight, float eps, float *y, int64_t rows, int64_t width) {
  for (int64_t r = 0; r < rows; ++r) {
    const float *row = x + r * width;
    float *out = y + r * width;
    float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
    for (int64_t i = 0; i < width; ++i) squares += row[i] * row[i];
    const float scale = 1.0f / std::sqrt(squares / static_cast<float>(width) + eps);
#pragma omp simd
    for (int64_t i = 0; i < width; ++i) out[i] = weight[i] * (row[i] * scale);
  }
}

}  // namespace

// MindSpore's AOT interface: params holds the inputs then the output; shapes[i] has ndims[i]
// sizes. A non-zero return makes MindSpore raise (only float32 is built for).

// (x) -> GELU(x)
extern "C" int ExactGelu(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                         void *, void *) {
  if (nparam != 2 || !all_float32(nparam, dtypes)) return 1;
  exact_gelu(static_cast<const float *>(params[0]), static_cast<float *>(params[1]),
             elements(ndims[0], shapes[0], 0, ndims[0]));
  return 0;
}

// (x [..., width], weight [width], eps [1]) -> the norm of x's last axis, scaled.
extern "C" int RmsNorm(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                       void *, void *) {
  if (nparam != 4 || !all_float32(nparam, dtypes) || ndims[0] < 1) return 1;
  const int64_t width = shapes[0][ndims[0] - 1];
  if (elements(ndims[1], shapes[1], 0, ndims[1]) != width) return 1;
  rms_norm(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
           *static_cast<const float *>(params[2]), static_cast<float *>(params[3]),
           elements(ndims[0], shapes[0], 0, ndims[0] - 1), width);
  return 0;
}
