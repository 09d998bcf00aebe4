// Kernels for MindSpore's CPU backend where its own are slow, as AOT custom ops that
// pipeline/model/cpu_kernels.py builds, checks and hands to the graphs. Each computes what the
// reference computes, in float32, in one pass where MindSpore takes several kernels:
// - ExactGelu: x * 0.5 * (1 + erf(x / sqrt(2))). MindSpore's CPU GELU evaluates erf one value at
//   a time (about 9 ms for 1.15M values on two threads, measured); glibc's vector maths library
//   (libmvec) has a vectorised erff, about 1 ms for the same values on one thread.
// - RmsNorm: weight * (x * rsqrt(mean(x^2) + eps)) over the last axis, Qwen2's order. MindSpore
//   runs it as five kernels (square, mean, add, rsqrt, two products); a prefill row's thirteen
//   norms took 24 ms that way, 4.7 ms so (measured).
// - LayerNorm: (x - mean) / sqrt(var + eps) * weight + bias over the last axis, the encoder's norm.
//   MindSpore's CPU LayerNorm took about 1 ms for one encoder row's [1500, 192] (seven of them a
//   row: 12% of an encode call, measured), one pass a row here.
// - Rotary: (x * cos + rotate_half(x) * sin) * scale, the rotary embedding of queries and keys
//   (scale: the attention's, folded into the queries of prefill). MindSpore runs it as a product
//   with a rotation matrix, two multiplications, an addition and a scaling: five passes.
// - SiluProduct: silu(gate) * up, the decoder MLP's elementwise part: two kernels in MindSpore
//   (SiLU, then the product), one pass here (six prefill layers 10 ms against 3.3, measured).
// - StepAttention: a decode step's attention, each slot over the positions it has filled, where
//   MindSpore's graph reads every slot's whole span through four kernels (product, mask add,
//   softmax, product): the slots of a real mix fill a third of theirs (measured on the bench).
// - WriteRows: dst[rows[j]] = values[j], in place in dst (a graph's state: the caches, the
//   staging caches, the audio arena). MindSpore's CPU ScatterUpdate copies at about 1.9 GB/s (an
//   insert's twelve slot writes of 1.7 MB: 10-11 ms, measured), a memcpy a row here (2 ms).
// - GreedyChoice: greedy decoding's next token, the first largest logit after the repetition
//   penalty, and its raw log-softmax, in two passes a row; MindSpore takes six kernels (maximum,
//   subtraction, exponent, sum, logarithm, argmax) and four more for the penalty (0.6 ms of a
//   bench decode step's 13 without, measured).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include <unistd.h>

// glibc declares erff's vector variants only under -ffast-math, which would also loosen the rest
// of the arithmetic (and switch the process to flush denormals to zero); declared here alone,
// nothing else changes.
extern "C" float erff(float) __attribute__((simd("notinbranch")));
extern "C" float expf(float) __attribute__((simd("notinbranch")));

namespace {

// The call has len(kinds) parameters, each of its kind: 'f' float32, 'i' int32.
bool kinds_are(int nparam, const char **dtypes, const char *kinds) {
  if (nparam != static_cast<int>(std::strlen(kinds))) return false;
  for (int i = 0; i < nparam; ++i) {
    if (std::strcmp(dtypes[i], kinds[i] == 'f' ? "float32" : "int32") != 0) return false;
  }
  return true;
}

bool same_shape(const int *ndims, int64_t *const *shapes, int a, int b) {
  if (ndims[a] != ndims[b]) return false;
  for (int i = 0; i < ndims[a]; ++i) {
    if (shapes[a][i] != shapes[b][i]) return false;
  }
  return true;
}

// A threads input [1] int32 -> its count, or 0 where it is out of range.
int threads_of(const void *param) {
  const int threads = *static_cast<const int32_t *>(param);
  return threads >= 1 && threads <= 1024 ? threads : 0;
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

// The mean first, then the variance of the deviations from it (as torch computes them; a single
// pass of sums and sums of squares loses digits on rows far from zero).
__attribute__((target_clones("avx512f", "avx2", "default")))
void layer_norm(const float *x, const float *weight, const float *bias, float eps, float *y, int64_t rows,
                int64_t width) {
  for (int64_t r = 0; r < rows; ++r) {
    const float *row = x + r * width;
    float *out = y + r * width;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < width; ++i) sum += row[i];
    const float mean = sum / static_cast<float>(width);
    float spread = 0.0f;
#pragma omp simd reduction(+ : spread)
    for (int64_t i = 0; i < width; ++i) spread += (row[i] - mean) * (row[i] - mean);
    const float scale = 1.0f / std::sqrt(spread / static_cast<float>(width) + eps);
#pragma omp simd
    for (int64_t i = 0; i < width; ++i) out[i] = (row[i] - mean) * scale * weight[i] + bias[i];
  }
}

// x [tokens, heads, d], cos and sin [tokens, d] (every head of a token turns alike).
__attribute__((target_clones("avx512f", "avx2", "default")))
void rotary(const float *x, const float *cos, const float *sin, float scale, float *y, int64_t tokens,
            int64_t heads, int64_t d) {
  const int64_t half = d / 2;
  for (int64_t t = 0; t < tokens; ++t) {
    const float *c = cos + t * d, *s = sin + t * d;
    for (int64_t h = 0; h < heads; ++h) {
      const float *in = x + (t * heads + h) * d;
      float *out = y + (t * heads + h) * d;
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) out[i] = (in[i] * c[i] + -in[i + half] * s[i]) * scale;
#pragma omp simd
      for (int64_t i = half; i < d; ++i) out[i] = (in[i] * c[i] + in[i - half] * s[i]) * scale;
    }
  }
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void silu_product(const float *gate, const float *up, float *y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    y[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

// s[0 .. length) -> its softmax, less the maximum first (as MindSpore's and torch's).
__attribute__((target_clones("avx512f", "avx2", "default")))
void softmax(float *s, int64_t length) {
  float top = s[0];
#pragma omp simd reduction(max : top)
  for (int64_t t = 1; t < length; ++t) top = s[t] > top ? s[t] : top;
  float total = 0.0f;
#pragma omp simd reduction(+ : total)
  for (int64_t t = 0; t < length; ++t) {
    s[t] = expf(s[t] - top);
    total += s[t];
  }
#pragma omp simd
  for (int64_t t = 0; t < length; ++t) s[t] = s[t] / total;
}

// One (slot, key/value head): its query heads (groups of d values) against keys and values
// [length, d], as the graph computes it: scores q.k * scale, softmax (less the maximum),
// probabilities times values. Any d; attend_vectors below is the fast form for multiples of 16.
// scores: room for groups * length floats.
__attribute__((target_clones("avx512f", "avx2", "default")))
void attend(const float *q, const float *k, const float *v, int64_t length, int64_t groups, int64_t d,
            float scale, float *scores, float *out) {
  for (int64_t j = 0; j < groups; ++j) {
    float *s = scores + j * length;
    for (int64_t t = 0; t < length; ++t) {
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int64_t i = 0; i < d; ++i) dot += q[j * d + i] * k[t * d + i];
      s[t] = dot * scale;
    }
    softmax(s, length);
    float *o = out + j * d;
    std::memset(o, 0, sizeof(float) * d);
    for (int64_t t = 0; t < length; ++t) {
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) o[i] += s[t] * v[t * d + i];
    }
  }
}

// 16 floats: one AVX-512 register, two AVX2 or four SSE ones, as the clone's target has.
// aligned(4): loads and stores of any float address.
typedef float v16 __attribute__((vector_size(64), aligned(4)));

__attribute__((always_inline)) inline float sum_lanes(const v16 &x) {
  typedef float v8 __attribute__((vector_size(32)));
  typedef float v4 __attribute__((vector_size(16)));
  const v8 a = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7) +
               __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
  const v4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

// attend() for d = 16 * CHUNKS, with a query head and the output it sums in registers (unrolled
// loops): the same arithmetic in another order of additions (1.3x attend's speed at d = 64).
template <int CHUNKS>
__attribute__((target_clones("avx512f", "avx2", "default")))
void attend_vectors(const float *q, const float *k, const float *v, int64_t length, int64_t groups,
                    float scale, float *scores, float *out) {
  constexpr int64_t d = CHUNKS * 16;
  for (int64_t j = 0; j < groups; ++j) {
    v16 query[CHUNKS];
#pragma GCC unroll 16
    for (int c = 0; c < CHUNKS; ++c) query[c] = *reinterpret_cast<const v16 *>(q + j * d + c * 16);
    float *s = scores + j * length;
    for (int64_t t = 0; t < length; ++t) {
      const float *key = k + t * d;
      v16 acc = query[0] * *reinterpret_cast<const v16 *>(key);
#pragma GCC unroll 16
      for (int c = 1; c < CHUNKS; ++c) acc += query[c] * *reinterpret_cast<const v16 *>(key + c * 16);
      s[t] = sum_lanes(acc) * scale;
    }
    softmax(s, length);
    v16 acc[CHUNKS] = {};
    for (int64_t t = 0; t < length; ++t) {
      const float *value = v + t * d;
#pragma GCC unroll 16
      for (int c = 0; c < CHUNKS; ++c) acc[c] += s[t] * *reinterpret_cast<const v16 *>(value + c * 16);
    }
#pragma GCC unroll 16
    for (int c = 0; c < CHUNKS; ++c) *reinterpret_cast<v16 *>(out + j * d + c * 16) = acc[c];
  }
}

// A logit under the repetition penalty (transformers' order): divided by it when positive,
// multiplied when negative, where the row's sequence holds the id.
__attribute__((always_inline)) inline float penalised(float x, float present, float penalty) {
  return present > 0.0f ? (x < 0.0f ? x * penalty : x / penalty) : x;
}

// One row of logits x [vocab] (presence and penalty as penalised() reads them; penalty 1: none)
// -> out[0] the first index of the largest penalised logit, as a float (exact below 2^24), out[1]
// the raw log-softmax there: (x - max) - log(sum(exp(x - max))), as the graph computes it.
__attribute__((target_clones("avx512f", "avx2", "default")))
void greedy_row(const float *x, const float *presence, float penalty, int64_t vocab, float *out) {
  float top = x[0];
#pragma omp simd reduction(max : top)
  for (int64_t i = 1; i < vocab; ++i) top = x[i] > top ? x[i] : top;
  float total = 0.0f;
#pragma omp simd reduction(+ : total)
  for (int64_t i = 0; i < vocab; ++i) total += expf(x[i] - top);
  float best_score = top;
  if (penalty != 1.0f) {
    best_score = penalised(x[0], presence[0], penalty);
#pragma omp simd reduction(max : best_score)
    for (int64_t i = 1; i < vocab; ++i) {
      const float s = penalised(x[i], presence[i], penalty);
      best_score = s > best_score ? s : best_score;
    }
  }
  // The first index that has it: sixteen at a time, then one.
  int64_t best = 0;
  for (; best + 16 <= vocab; best += 16) {
    int found = 0;
#pragma omp simd reduction(| : found)
    for (int64_t i = best; i < best + 16; ++i) {
      found |= (penalty != 1.0f ? penalised(x[i], presence[i], penalty) : x[i]) == best_score;
    }
    if (found) break;
  }
  while (best < vocab - 1 && (penalty != 1.0f ? penalised(x[best], presence[best], penalty) : x[best]) != best_score) {
    ++best;
  }
  out[0] = static_cast<float>(best);
  out[1] = (x[best] - top) - std::log(total);
}

// Threads that wait blocked between calls: a spinning one would take a core from MindSpore's
// kernels, which run between these calls (measured: libgomp's default spinning made a decode
// step twice as slow). Started on first use, more when a call asks for more, in the process that
// uses them (a forked child starts its own).
class Helpers {
 public:
  // work() on this thread and on count - 1 helpers; returns when every one has returned.
  void run(const std::function<void()> &work, int count) {
    std::lock_guard<std::mutex> one_call(calls_);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      while (static_cast<int>(started_) < count - 1) {
        const int index = started_++;
        std::thread([this, index] { serve(index); }).detach();
      }
      task_ = &work;
      wanted_ = count - 1;
      running_ = wanted_;
      ++generation_;
    }
    wake_.notify_all();
    work();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return running_ == 0; });
  }

 private:
  void serve(int index) {
    std::unique_lock<std::mutex> lock(mutex_);
    uint64_t seen = generation_ - 1;  // started by run(), to serve the call it is in
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (index >= wanted_) continue;
      const std::function<void()> *task = task_;
      lock.unlock();
      (*task)();
      lock.lock();
      if (--running_ == 0) done_.notify_one();
    }
  }

  std::mutex calls_, mutex_;
  std::condition_variable wake_, done_;
  const std::function<void()> *task_ = nullptr;
  uint64_t generation_ = 0;
  int started_ = 0, wanted_ = 0, running_ = 0;
};

Helpers &helpers() {
  static std::mutex creating;
  static Helpers *pool = nullptr;
  static pid_t owner = 0;
  std::lock_guard<std::mutex> lock(creating);
  if (pool == nullptr || owner != getpid()) {
    pool = new Helpers();  // never freed: its detached threads wait on it until the process ends
    owner = getpid();
  }
  return *pool;
}

// Every (slot, key/value head) of a step, shared among threads. A slot at the scratch position
// (span - 1) is idle: zeros, which nothing reads, instead of a pass over its whole span.
void step_attention(const float *q, const float *keys, const float *values, const int32_t *positions,
                    float scale, float *out, int64_t slots, int64_t kv, int64_t groups, int64_t span,
                    int64_t d, int threads) {
  std::atomic<int64_t> next{0};
  auto work = [&] {
    std::vector<float> scores(groups * span);
    for (int64_t block; (block = next.fetch_add(1)) < slots * kv;) {
      const int64_t position = positions[block / kv];
      const float *qb = q + block * groups * d, *kb = keys + block * span * d, *vb = values + block * span * d;
      float *o = out + block * groups * d;
      const int64_t length = position + 1;
      if (position < 0 || position >= span - 1) {
        std::memset(o, 0, sizeof(float) * groups * d);
      } else if (d == 16) {
        attend_vectors<1>(qb, kb, vb, length, groups, scale, scores.data(), o);
      } else if (d == 32) {
        attend_vectors<2>(qb, kb, vb, length, groups, scale, scores.data(), o);
      } else if (d == 48) {
        attend_vectors<3>(qb, kb, vb, length, groups, scale, scores.data(), o);
      } else if (d == 64) {
        attend_vectors<4>(qb, kb, vb, length, groups, scale, scores.data(), o);
      } else if (d == 128) {
        attend_vectors<8>(qb, kb, vb, length, groups, scale, scores.data(), o);
      } else {
        attend(qb, kb, vb, length, groups, d, scale, scores.data(), o);
      }
    }
  };
  helpers().run(work, threads);
}

// Attention of packed rows (the encoder's clips, prefill's prompts) over the keys each query may
// see, where MindSpore's graph computes every score of the row and masks most of them away (a
// real mix uses about 40% of them). Blocks of QUERIES consecutive queries: their scores over the
// span of keys any of them sees, as register tiles against keys transposed (the form of a
// matrix product, not a dot product per pair), hidden keys then dropped exactly as the additive
// mask drops them; probabilities times values as tiles too. The loops over a tile's rows and
// chunks are unrolled (GCC unroll) so that the tile stays in registers: without, GCC at -O2 kept it
// in memory and the kernel took twice as long.
constexpr int QUERIES = 8;

// Whether any of m[0 .. 16) is 0 (visible).
__attribute__((always_inline)) inline bool any_visible(const float *m) {
  int found = 0;
#pragma omp simd reduction(| : found)
  for (int j = 0; j < 16; ++j) found |= m[j] == 0.0f;
  return found != 0;
}

// keys [length rows of d, k_stride apart] -> transposed [d, stride] (stride >= length, a multiple
// of 16, zero-padded).
void transpose_keys(const float *k, int64_t k_stride, int64_t length, int64_t d, int64_t stride, float *out) {
  for (int64_t i = 0; i < d; ++i) {
    float *row = out + i * stride;
    for (int64_t t = 0; t < length; ++t) row[t] = k[t * k_stride + i];
    for (int64_t t = length; t < stride; ++t) row[t] = 0.0f;
  }
}

// One block of n <= QUERIES queries q [n rows of d, q_stride apart] against the keys kt
// (transposed, [d, stride]) and values v [length rows of d, v_stride apart] in [lo, hi); masks:
// each query's mask row (0 where visible). -> out rows (out_stride apart). scores: QUERIES *
// stride floats.
template <int CHUNKS>
__attribute__((target_clones("avx512f", "avx2", "default")))
void attend_block(const float *q, int64_t q_stride, int n, const float *kt, int64_t stride, const float *v,
                  int64_t v_stride, const float *const *masks, int64_t lo, int64_t hi, float *scores, float *out,
                  int64_t out_stride) {
  constexpr int64_t d = CHUNKS * 16;
  const int64_t first = lo & ~int64_t{15};
  float block[d * QUERIES];  // the queries transposed: [d][QUERIES], missing ones zero
  for (int64_t i = 0; i < d; ++i) {
#pragma GCC unroll 16
    for (int r = 0; r < QUERIES; ++r) block[i * QUERIES + r] = r < n ? q[r * q_stride + i] : 0.0f;
  }
  for (int64_t c = first; c < hi; c += 16) {
    v16 acc[QUERIES] = {};
    for (int64_t i = 0; i < d; ++i) {
      const v16 key = *reinterpret_cast<const v16 *>(kt + i * stride + c);
#pragma GCC unroll 16
      for (int r = 0; r < QUERIES; ++r) acc[r] += block[i * QUERIES + r] * key;
    }
#pragma GCC unroll 16
    for (int r = 0; r < QUERIES; ++r) *reinterpret_cast<v16 *>(scores + r * stride + c) = acc[r];
  }
  for (int r = 0; r < n; ++r) {
    float *s = scores + r * stride;
    const float *mask = masks[r];
#pragma omp simd
    for (int64_t t = lo; t < hi; ++t) s[t] = mask[t] == 0.0f ? s[t] : -INFINITY;  // exp gives 0
    softmax(s + lo, hi - lo);
  }
  for (int r = n; r < (n + 3) / 4 * 4; ++r) std::fill(scores + r * stride + lo, scores + r * stride + hi, 0.0f);
  for (int r0 = 0; r0 < n; r0 += 4) {
    v16 acc[4][CHUNKS] = {};
    for (int64_t t = lo; t < hi; ++t) {
      v16 value[CHUNKS];
#pragma GCC unroll 16
      for (int c = 0; c < CHUNKS; ++c) value[c] = *reinterpret_cast<const v16 *>(v + t * v_stride + c * 16);
#pragma GCC unroll 16
      for (int r = 0; r < 4; ++r) {
        const float p = scores[(r0 + r) * stride + t];
#pragma GCC unroll 16
        for (int c = 0; c < CHUNKS; ++c) acc[r][c] += p * value[c];
      }
    }
    for (int r = 0; r < 4 && r0 + r < n; ++r) {
#pragma GCC unroll 16
      for (int c = 0; c < CHUNKS; ++c) *reinterpret_cast<v16 *>(out + (r0 + r) * out_stride + c * 16) = acc[r][c];
    }
  }
}

using BlockFunction = void (*)(const float *, int64_t, int, const float *, int64_t, const float *, int64_t,
                               const float *const *, int64_t, int64_t, float *, float *, int64_t);

// q [b, queries, heads, d] (query head h uses key/value head h / (heads / kv)), keys and values
// [b, length, kv, d], mask [b, queries, length] additive (0 or MASKED) -> out [b, queries, heads,
// d]: the layout the projections write and the output projection reads, so the graph transposes
// nothing. queries = length where every token is a query; fewer where only some are (prefill's
// last layer).
void masked_attention(const float *q, const float *keys, const float *values, const float *mask, float *out,
                      int64_t b, int64_t queries, int64_t length, int64_t heads, int64_t kv, int64_t d, int threads,
                      BlockFunction block_function) {
  const int64_t stride = (length + 15) / 16 * 16, groups = heads / kv;
  // Each mask row's first and last visible key, and the keys transposed, once for every head.
  std::vector<int64_t> first(b * queries), last(b * queries);
  std::vector<float> transposed(b * kv * d * stride);
  std::atomic<int64_t> next{0};
  helpers().run([&] {
    for (int64_t item; (item = next.fetch_add(1)) < b * kv + b;) {
      if (item < b * kv) {  // row item / kv, key/value head item % kv
        transpose_keys(keys + ((item / kv) * length * kv + item % kv) * d, kv * d, length, d, stride,
                       transposed.data() + item * d * stride);
        continue;
      }
      const int64_t row = item - b * kv;
      for (int64_t i = 0; i < queries; ++i) {
        const float *m = mask + (row * queries + i) * length;
        int64_t lo = 0, hi = length;
        while (lo + 16 <= length && !any_visible(m + lo)) lo += 16;  // sixteen at a time, then one
        while (lo < length && m[lo] != 0.0f) ++lo;
        while (hi - 16 >= lo && !any_visible(m + hi - 16)) hi -= 16;
        while (hi > lo && m[hi - 1] != 0.0f) --hi;
        first[row * queries + i] = lo;
        last[row * queries + i] = hi;
      }
    }
  }, threads);
  const int64_t blocks_per_head = (queries + QUERIES - 1) / QUERIES;
  next = 0;
  helpers().run([&] {
    std::vector<float> scores(QUERIES * stride);
    for (int64_t item; (item = next.fetch_add(1)) < b * heads * blocks_per_head;) {
      const int64_t row = item / (heads * blocks_per_head), h = item / blocks_per_head % heads;
      const int64_t i0 = item % blocks_per_head * QUERIES, pair = row * kv + h / groups;
      const int n = static_cast<int>(std::min<int64_t>(QUERIES, queries - i0));
      const float *masks[QUERIES];
      int64_t lo = length, hi = 0;
      for (int r = 0; r < n; ++r) {
        masks[r] = mask + (row * queries + i0 + r) * length;
        lo = std::min(lo, first[row * queries + i0 + r]);
        hi = std::max(hi, last[row * queries + i0 + r]);
      }
      const int64_t at = ((row * queries + i0) * heads + h) * d;
      block_function(q + at, heads * d, n, transposed.data() + pair * d * stride, stride,
                     values + (row * length * kv + h / groups) * d, kv * d, masks, lo, hi, scores.data(),
                     out + at, heads * d);
    }
  }, threads);
}

}  // namespace

// MindSpore's AOT interface: params holds the inputs then the output; shapes[i] has ndims[i]
// sizes. A non-zero return makes MindSpore raise (float32 data only; positions and threads int32).

// (x) -> GELU(x)
extern "C" int ExactGelu(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                         void *, void *) {
  if (!kinds_are(nparam, dtypes, "ff")) return 1;
  exact_gelu(static_cast<const float *>(params[0]), static_cast<float *>(params[1]),
             elements(ndims[0], shapes[0], 0, ndims[0]));
  return 0;
}

// (gate, up of one shape) -> silu(gate) * up.
extern "C" int SiluProduct(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                           void *, void *) {
  if (!kinds_are(nparam, dtypes, "fff") || !same_shape(ndims, shapes, 0, 1)) return 1;
  silu_product(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
               static_cast<float *>(params[2]), elements(ndims[0], shapes[0], 0, ndims[0]));
  return 0;
}

// (x [..., width], weight [width], eps [1]) -> the norm of x's last axis, scaled.
extern "C" int RmsNorm(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                       void *, void *) {
  if (!kinds_are(nparam, dtypes, "ffff") || ndims[0] < 1) return 1;
  const int64_t width = shapes[0][ndims[0] - 1];
  if (elements(ndims[1], shapes[1], 0, ndims[1]) != width) return 1;
  rms_norm(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
           *static_cast<const float *>(params[2]), static_cast<float *>(params[3]),
           elements(ndims[0], shapes[0], 0, ndims[0] - 1), width);
  return 0;
}

// (x [..., width], weight [width], bias [width], eps [1]) -> the layer norm of x's last axis.
extern "C" int LayerNorm(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                         void *, void *) {
  if (!kinds_are(nparam, dtypes, "fffff") || ndims[0] < 1) return 1;
  const int64_t width = shapes[0][ndims[0] - 1];
  if (elements(ndims[1], shapes[1], 0, ndims[1]) != width || elements(ndims[2], shapes[2], 0, ndims[2]) != width) {
    return 1;
  }
  layer_norm(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
             static_cast<const float *>(params[2]), *static_cast<const float *>(params[3]),
             static_cast<float *>(params[4]), elements(ndims[0], shapes[0], 0, ndims[0] - 1), width);
  return 0;
}

// (x [tokens, ..., d], cos [tokens, ..., d] and sin alike, one row of d per token, scale [1]) ->
// x's rotary embedding, times scale; d even.
extern "C" int Rotary(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                      void *, void *) {
  if (!kinds_are(nparam, dtypes, "fffff") || ndims[0] < 2 || !same_shape(ndims, shapes, 1, 2)) return 1;
  const int64_t d = shapes[0][ndims[0] - 1], values = elements(ndims[0], shapes[0], 0, ndims[0]);
  const int64_t angles = elements(ndims[1], shapes[1], 0, ndims[1]);
  if (d % 2 != 0 || shapes[1][ndims[1] - 1] != d || angles == 0 || values % angles != 0) return 1;
  rotary(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
         static_cast<const float *>(params[2]), *static_cast<const float *>(params[3]),
         static_cast<float *>(params[4]), angles / d, values / angles, d);
  return 0;
}

// (dst [R, ...] float32, rows [n] int32, values [n, ...] float32: each row of dst's shape after
// its first axis) -> rows, a copy, after dst[rows[j]] = values[j] in order (a repeated row ends
// with its last values). Writes into dst, which MindSpore hands over as the graph state's own
// memory on its CPU backend (tests/model/test_cpu_kernels.py holds it to that): the graph sees a
// read of dst and keeps the call through its output. A row outside dst changes nothing and fails.
extern "C" int WriteRows(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                         void *, void *) {
  if (!kinds_are(nparam, dtypes, "fifi") || ndims[0] < 1 || ndims[1] != 1 || ndims[2] != ndims[0]) return 1;
  const int64_t n = shapes[1][0], total = shapes[0][0], width = elements(ndims[0], shapes[0], 1, ndims[0]);
  if (shapes[2][0] != n || elements(ndims[2], shapes[2], 1, ndims[2]) != width) return 1;
  const int32_t *rows = static_cast<const int32_t *>(params[1]);
  for (int64_t j = 0; j < n; ++j) {
    if (rows[j] < 0 || rows[j] >= total) return 1;
  }
  float *dst = static_cast<float *>(params[0]);
  const float *values = static_cast<const float *>(params[2]);
  for (int64_t j = 0; j < n; ++j) std::memcpy(dst + rows[j] * width, values + j * width, sizeof(float) * width);
  std::memcpy(params[3], rows, sizeof(int32_t) * n);
  return 0;
}

// (logits [n, V] float32, presence [n, V] float32, penalty [n, 1] or [1] float32, threads [1]
// int32) -> [n, 2] float32: each row's greedy token (as a float) and its raw log-probability
// (greedy_row), rows shared among that many threads. A penalty of 1 reads no presence.
extern "C" int GreedyChoice(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                            void *, void *) {
  if (!kinds_are(nparam, dtypes, "fffif") || ndims[0] != 2 || !same_shape(ndims, shapes, 0, 1)) return 1;
  const int64_t n = shapes[0][0], vocab = shapes[0][1], penalties = elements(ndims[2], shapes[2], 0, ndims[2]);
  const int threads = threads_of(params[3]);
  if (vocab < 1 || (penalties != n && penalties != 1) || threads == 0 || vocab > (int64_t{1} << 24)) return 1;
  const float *logits = static_cast<const float *>(params[0]), *presence = static_cast<const float *>(params[1]);
  const float *penalty = static_cast<const float *>(params[2]);
  float *out = static_cast<float *>(params[4]);
  std::atomic<int64_t> next{0};
  helpers().run([&] {
    for (int64_t row; (row = next.fetch_add(1)) < n;) {
      greedy_row(logits + row * vocab, presence + row * vocab, penalty[penalties == 1 ? 0 : row], vocab,
                 out + row * 2);
    }
  }, std::min<int64_t>(threads, n));
  return 0;
}

// (q [n, kv, g, d], keys [n, kv, span, d], values [n, kv, span, d], positions [n] int32, scale [1],
// threads [1] int32) -> [n, kv, g, d]: softmax(q k^T * scale) v over positions 0 .. positions[slot]
// of each slot, on that many threads.
extern "C" int StepAttention(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                             void *, void *) {
  if (!kinds_are(nparam, dtypes, "fffifif") || ndims[0] != 4 || ndims[1] != 4 || ndims[3] != 1) return 1;
  const int64_t n = shapes[0][0], kv = shapes[0][1], groups = shapes[0][2], d = shapes[0][3];
  if (shapes[1][0] != n || shapes[1][1] != kv || shapes[1][3] != d || shapes[3][0] != n) return 1;
  const int threads = threads_of(params[5]);
  if (!same_shape(ndims, shapes, 1, 2) || threads == 0) return 1;
  step_attention(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                 static_cast<const float *>(params[2]), static_cast<const int32_t *>(params[3]),
                 *static_cast<const float *>(params[4]), static_cast<float *>(params[6]), n, kv, groups,
                 shapes[1][2], d, threads);
  return 0;
}

// (q [b, queries, heads, d], keys [b, length, kv, d], values [b, length, kv, d], mask [b, queries,
// length] float32, 0 where a query sees a key and MASKED elsewhere, every query seeing at least
// one; threads [1] int32) -> [b, queries, heads, d]: softmax(q k^T + mask) v, q scaled already,
// query head h against key/value head h / (heads / kv); queries <= length, each with its mask row.
// d: a multiple of 16 up to 128.
extern "C" int MaskedAttention(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                               void *, void *) {
  if (!kinds_are(nparam, dtypes, "ffffif") || ndims[0] != 4 || ndims[1] != 4 || ndims[3] != 3) return 1;
  const int64_t b = shapes[1][0], length = shapes[1][1], kv = shapes[1][2], d = shapes[1][3];
  const int64_t queries = shapes[0][1], heads = shapes[0][2];
  if (shapes[0][0] != b || queries > length || shapes[0][3] != d || kv == 0 || heads % kv != 0) return 1;
  if (shapes[3][0] != b || shapes[3][1] != queries || shapes[3][2] != length) return 1;
  const int threads = threads_of(params[4]);
  if (!same_shape(ndims, shapes, 1, 2) || threads == 0) return 1;
  BlockFunction block = d == 16 ? attend_block<1> : d == 32 ? attend_block<2> : d == 48 ? attend_block<3>
                      : d == 64 ? attend_block<4> : d == 128 ? attend_block<8> : nullptr;
  if (block == nullptr) return 1;
  masked_attention(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                   static_cast<const float *>(params[2]), static_cast<const float *>(params[3]),
                   static_cast<float *>(params[5]), b, queries, length, heads, kv, d, threads, block);
  return 0;
}
