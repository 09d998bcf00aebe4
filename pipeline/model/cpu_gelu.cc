// Exact GELU, x * 0.5 * (1 + erf(x / sqrt(2))) as the reference computes it, for MindSpore's CPU
// backend: an AOT custom op that pipeline/model/cpu_gelu.py builds, checks and hands to the
// encoder. MindSpore's own CPU GELU evaluates erf one value at a time (about 9 ms for 1.15M values
// on two threads, measured); glibc's vector maths library (libmvec) has a vectorised erff, which
// takes about 1 ms for the same values on one thread.
#include <cstdint>
#include <cstring>

// glibc declares erff's vector variants only under -ffast-math, which would also loosen the rest
// of the arithmetic (and switch the process to flush denormals to zero); declared here alone,
// nothing else changes.
extern "C" float erff(float) __attribute__((simd("notinbranch")));

// One build for any x86-64 CPU: the loader picks the widest of these the machine has.
__attribute__((target_clones("avx512f", "avx2", "default")))
static void exact_gelu(const float *x, float *y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    y[i] = v * 0.5f * (1.0f + erff(v * 0.70710678118654752440f));
  }
}

// MindSpore's AOT interface: params holds the input then the output; shapes[i] has ndims[i] sizes.
// A non-zero return makes MindSpore raise (only float32 is built for).
extern "C" int ExactGelu(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                         void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 2 || std::strcmp(dtypes[0], "float32") != 0 || std::strcmp(dtypes[1], "float32") != 0) {
    return 1;
  }
  int64_t n = 1;
  for (int i = 0; i < ndims[0]; ++i) {
    n *= shapes[0][i];
  }
  exact_gelu(static_cast<const float *>(params[0]), static_cast<float *>(params[1]), n);
  return 0;
}
