/* The int8 CPU kernels: a matmul over our stored int8 weights, and a whole decode forward in one call.
 *
 * Built by engine/kernels.py with the machine's C compiler (-O3 -march=native -ffp-contract=off
 * -fopenmp-simd -pthread) and called through ctypes; engine/quantize.py and engine/fast_decode.py fall back to
 * PyTorch without it, and the tests run both.
 *
 * int8 matmul (`int8_linear`): every input row x is quantized on the fly to int8 with its own scale
 * (sx = max|x| / 127, xq = round-half-even(x / sx)), multiplied exactly in int32 with the int8
 * weight rows, then y = (float(acc) * sx) * sw[n] (+ bias[n]). One scale per row keeps a row's
 * result independent of the other rows of a batch. The PyTorch fallback (engine/quantize.py) does
 * the same integer arithmetic with torch._int_mm and the same float epilogue in the same order
 * (FMA contraction is off), so the two agree bit for bit. AVX-512 VNNI multiplies unsigned by
 * signed bytes: xq + 128 goes in, and 128 * sum(w[n]) (precomputed) comes out.
 *
 * Decode forward (`decode_forward`): embedding, every block (norm, fused qkv, rotary positions,
 * K/V written into the cache, attention over the row's cached keys, output projection, norm,
 * MLP) and the head, for B rows of T new tokens each: no Python, one call per step. The KV cache is
 * described by strides, so the same code reads the engine's slot cache and a paged block pool:
 * position p of row b lives in block tables[b][p / block_tokens] at offset p % block_tokens.
 *
 * Paged attention (`paged_attention`): the decode forward's attention, exported alone for the
 * PyTorch forward's few-query steps (engine/kv_cache.py), so one C attention serves both.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__)  /* every level: _mm_pause below is SSE2's */
#include <immintrin.h>
#endif
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#define ALIGN 64
/* Weight rows ahead that a tile prefetches (two tiles). With short rows (the 0.5B shape's 896 inputs:
 * its up projection and head) a tile's four row streams interleave within a few KB and the hardware
 * prefetcher falls behind; this took one thread from 8.4 to 10 GB/s of int8 weights and from 14 to
 * 15.5 (up) and 16.6 to 22 (head shape) GB/s of int4 (measured on a loaded 2-core EPYC; no gain
 * from 16 or 32 rows). */
#define PREFETCH_ROWS 8

/* ---- the model, as pointers into the PyTorch tensors (engine/fast_decode.py builds these) ---- */
typedef struct {
    const int8_t *w;       /* (n, k) row-major */
    const float *scale;    /* (n,); int4: float16 group scales (`int4_linear` below) */
    const int32_t *wsum;   /* (n,) sum of each row's int8 weights */
    const float *bias;     /* (n,) or NULL */
    int64_t n, k;
    int64_t bits;          /* 0 or 8: the above; 4: int4 groups (w, scale as `int4_linear` below says) */
    const int8_t *packed;  /* int8: w again in panels for many rows (see `gemm_packed`), or NULL */
} qlinear;

typedef struct {
    const float *attn_norm_w, *attn_norm_b, *mlp_norm_w, *mlp_norm_b;  /* b: NULL for RMSNorm */
    qlinear qkv, out, up, down;
} layer_weights;

typedef struct {
    int64_t n_layer, n_embd, n_head, n_kv_head, head_dim, intermediate, vocab, block_size;
    int64_t rms_norm;       /* 0: LayerNorm, 1: RMSNorm */
    float norm_eps;
    int64_t activation;     /* 0 gelu_tanh, 1 gelu (erf), 2 silu, 3 relu */
    int64_t gated;          /* SwiGLU: up holds [gate | up] */
    int64_t sliding_window; /* 0: full attention */
    const int8_t *embed; const float *embed_scale;   /* (vocab, n_embd); NULL: the int4 head's rows (tied) */
    const int8_t *pos_embed; const float *pos_scale; /* (block_size, n_embd) or NULL */
    const float *rope_cos, *rope_sin;                /* (block_size, head_dim) or NULL */
    const float *norm_w, *norm_b;
    qlinear head;
    const layer_weights *layers;
} model_weights;

typedef struct {
    void *k, *v;                 /* layer 0's keys/values, float32 or int8 */
    float *k_scale, *v_scale;    /* int8: one scale per (token, head); else NULL */
    int64_t layer_stride, block_stride, token_stride, head_stride;            /* elements of k, v */
    int64_t s_layer_stride, s_block_stride, s_token_stride, s_head_stride;    /* elements of the scales */
    int64_t block_tokens, int8;
} kv_layout;

/* ---- scratch: grown, never shrunk; one per thread (a matmul's quantised rows on the caller,
 * attention's float keys and values on every thread of the pool) ---- */
static __thread void *scratch_buf = NULL;
static __thread size_t scratch_size = 0;

static void *scratch(size_t bytes) {
    if (bytes > scratch_size) {
        free(scratch_buf);
        scratch_size = (bytes + 4095) & ~(size_t)4095;
        scratch_buf = aligned_alloc(ALIGN, scratch_size);
    }
    return scratch_buf;
}

/* Where a decode step's time goes: the calling thread's CPU nanoseconds per phase, summed over calls while profiling is on. */
enum { P_EMBED, P_NORM, P_QKV, P_ROPE_STORE, P_ATTENTION, P_OUT, P_UP, P_ACT, P_DOWN, P_HEAD, P_N };
static uint64_t profile_cycles[P_N];
static int profiling = 0;

static inline uint64_t now(void) {  /* the calling thread's CPU time (ns): preemption is not counted */
    struct timespec ts;
    if (!profiling) return 0;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#define MARK(phase) do { if (profiling) { uint64_t t_ = now(); profile_cycles[phase] += t_ - t0; t0 = t_; } } while (0)

/* on: 1 starts (and zeroes) the counters, 0 stops; out (P_N) gets the cycles so far. */
void decode_profile(int64_t on, uint64_t *out) {
    if (out) memcpy(out, profile_cycles, sizeof profile_cycles);
    if (on && !profiling) memset(profile_cycles, 0, sizeof profile_cycles);
    profiling = (int)on;
}

static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/* ---- threads: a parallel-for that never waits for a thread that has not started ----
 *
 * OpenMP (and llama.cpp's pool) end every parallel region at a barrier that waits for every
 * thread. On a machine whose cores are shared with other work, a helper that is not scheduled
 * stalls that barrier for a time slice: measured here, two OpenMP threads made a decode step of
 * the 0.5B shape 10-15x slower than one. Here the calling thread and the helpers take chunks from
 * one counter; the caller waits only for chunks a helper has actually taken, so a helper that
 * never wakes costs nothing and the region runs at one thread's speed. The counter packs the
 * region's number, its chunk count and the next chunk into one word, so a late helper can never
 * take a chunk of a region that is over. */
#define SPIN_ROUNDS 20000
typedef void (*chunk_fn)(void *ctx, int64_t chunk);

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    _Atomic uint64_t ticket;     /* region (24 bits) | chunks (20 bits) | next chunk (20 bits) */
    _Atomic int64_t done;
    _Atomic int sleeping, helpers_wanted;
    _Atomic int resting;         /* set by pool_rest: no region follows soon, helpers sleep at once */
    int helpers;
    chunk_fn fn;
    void *ctx;
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

#define TICKET(region, n, next) (((uint64_t)(region) << 40) | ((uint64_t)(n) << 20) | (uint64_t)(next))
#define T_REGION(t) ((t) >> 40)
#define T_CHUNKS(t) (((t) >> 20) & 0xFFFFF)
#define T_NEXT(t) ((t) & 0xFFFFF)

static inline void cpu_relax(void) {
#if defined(__x86_64__)
    _mm_pause();
#endif
}

/* Take and run chunks of the current region until none is left; returns when the region is taken. */
static void take_chunks(uint64_t region) {
    uint64_t t = atomic_load(&pool.ticket);
    for (;;) {
        if (T_REGION(t) != region || T_NEXT(t) >= T_CHUNKS(t)) return;
        if (!atomic_compare_exchange_weak(&pool.ticket, &t, t + 1)) continue;
        pool.fn(pool.ctx, (int64_t)T_NEXT(t));  /* a claimed chunk keeps the region (and fn, ctx) alive */
        atomic_fetch_add(&pool.done, 1);
        t = atomic_load(&pool.ticket);
    }
}

static void *helper_main(void *arg) {
    const int id = (int)(intptr_t)arg;
    uint64_t seen = T_REGION(atomic_load(&pool.ticket));
    for (;;) {
        uint64_t region;
        int spins = 0;
        while ((region = T_REGION(atomic_load(&pool.ticket))) == seen) {
            if (++spins < SPIN_ROUNDS && !atomic_load(&pool.resting)) { cpu_relax(); continue; }
            pthread_mutex_lock(&pool.lock);
            atomic_fetch_add(&pool.sleeping, 1);
            while ((region = T_REGION(atomic_load(&pool.ticket))) == seen) pthread_cond_wait(&pool.wake, &pool.lock);
            atomic_fetch_sub(&pool.sleeping, 1);
            pthread_mutex_unlock(&pool.lock);
            break;
        }
        seen = region;
        if (id < atomic_load(&pool.helpers_wanted)) take_chunks(region);
    }
    return NULL;
}

/* fn(ctx, c) for c in 0..n_chunks-1 on the calling thread and up to n_threads - 1 helpers.
 * Called from one thread at a time (the engine's scheduler). */
static void parallel_for(int64_t n_chunks, chunk_fn fn, void *ctx, int64_t n_threads) {
    if (n_threads <= 1 || n_chunks <= 1 || n_chunks >= (1 << 20)) {
        for (int64_t c = 0; c < n_chunks; c++) fn(ctx, c);
        return;
    }
    while (pool.helpers < n_threads - 1 && pool.helpers < 63) {
        pthread_t th;
        if (pthread_create(&th, NULL, helper_main, (void *)(intptr_t)pool.helpers)) break;
        pthread_detach(th);
        pool.helpers++;
    }
    atomic_store(&pool.helpers_wanted, (int)(n_threads - 1));
    pool.fn = fn;
    pool.ctx = ctx;
    atomic_store(&pool.done, 0);
    atomic_store(&pool.resting, 0);
    const uint64_t region = (T_REGION(atomic_load(&pool.ticket)) + 1) & 0xFFFFFF;
    atomic_store(&pool.ticket, TICKET(region, n_chunks, 0));
    if (atomic_load(&pool.sleeping)) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
    take_chunks(region);
    for (int spins = 0; atomic_load(&pool.done) < n_chunks; spins++) {  /* only chunks a helper holds */
        if (spins < SPIN_ROUNDS) cpu_relax();
        else sched_yield();
    }
}

/* The caller's forward is over: helpers go to sleep now rather than spin SPIN_ROUNDS first. Between
 * the regions of one forward spinning pays (the next comes within microseconds); after it, the
 * engine runs Python for a while, and a spinning helper takes a core the HTTP event loop needs. */
void pool_rest(void) {
    atomic_store(&pool.resting, 1);
}

/* fn(ctx, m0, m1) over rows [0, M) in chunks of whole rows, on the threads where the rows hold
 * enough work (elements in all) to pay for waking them: a prompt's norms, KV stores and MLP
 * activation, which otherwise run on the caller while the helpers spin. */
typedef void (*rows_fn)(void *ctx, int64_t m0, int64_t m1);
typedef struct { rows_fn fn; void *ctx; int64_t M, per_chunk; } rows_job;

static void rows_chunk(void *ctx, int64_t c) {
    const rows_job *j = ctx;
    const int64_t m0 = c * j->per_chunk, m1 = m0 + j->per_chunk < j->M ? m0 + j->per_chunk : j->M;
    j->fn(j->ctx, m0, m1);
}

static void parallel_rows(int64_t M, int64_t work, rows_fn fn, void *ctx, int64_t n_threads) {
    if (n_threads <= 1 || M < 2 || work < (1 << 15)) { fn(ctx, 0, M); return; }
    const int64_t chunks = 4 * n_threads < M ? 4 * n_threads : M;
    rows_job job = {fn, ctx, M, (M + chunks - 1) / chunks};
    parallel_for((M + job.per_chunk - 1) / job.per_chunk, rows_chunk, &job, n_threads);
}

/* ---- activation quantization: the PyTorch fallback must match this exactly ---- */
/* One row's scale, int8 and int4 alike: max|x| / 127, at least 1e-12. */
static float row_scale(const float *r, int64_t K) {
    float amax = 0.0f;
    int64_t i = 0;
#if defined(__AVX512F__)
    __m512 m = _mm512_setzero_ps();  /* max is exact: any order gives the scalar loop's result */
    for (; i + 16 <= K; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(r + i)));
    amax = _mm512_reduce_max_ps(m);
#endif
    for (; i < K; i++) { float a = fabsf(r[i]); amax = a > amax ? a : amax; }
    const float s = amax / 127.0f;
    return s < 1e-12f ? 1e-12f : s;
}

#if defined(__AVX512F__)
/* The lanes of a loop's vector that hold elements when `left` of them remain (all 16, or the tail's). */
static inline __mmask16 lanes16(int64_t left) {
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
}

/* round-half-even(x / s) of 16 floats, as int32 (the division and rounding nearbyintf's, lane by lane) */
static inline __m512i round_div16(__m512 x, __m512 s) {
    return _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_div_ps(x, s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#endif

static void quantize_rows(const float *x, int64_t M, int64_t K, int64_t stride, uint8_t *xu, int64_t Kp, float *sx) {
    for (int64_t m = 0; m < M; m++) {
        const float *r = x + m * K;
        const float s = sx[m] = row_scale(r, K);
        uint8_t *o = xu + m * stride;
        int64_t i = 0;
#if defined(__AVX512F__)
        const __m512 sv = _mm512_set1_ps(s);
        const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127), offset = _mm512_set1_epi32(128);
        for (; i < K; i += 16) {
            const __mmask16 mask = lanes16(K - i);
            __m512i q = round_div16(_mm512_maskz_loadu_ps(mask, r + i), sv);
            q = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(q, lo), hi), offset);
            _mm_mask_storeu_epi8(o + i, mask, _mm512_cvtepi32_epi8(q));
        }
        i = K;
#endif
        for (; i < K; i++) {
            float q = nearbyintf(r[i] / s);
            q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
            o[i] = (uint8_t)((int)q + 128);
        }
        memset(o + K, 128, (size_t)(Kp - K));  /* zero, times zero-padded weights */
    }
}

/* Integer dot products of up to 4 activation rows with 4 weight rows, and the float epilogue:
 * y[m][j] = (float(sum xu[m] * w[j] - 128 * wsum[j]) * sx[m]) * scale[j] (+ bias[j]). */
static inline __attribute__((always_inline)) void tile_4x4_rows(const uint8_t *xu, int64_t xstride, const int64_t nm,
                                                                const qlinear *L, int64_t n, int64_t nj,
                                                                const float *sx, float *y, int64_t ystride) {
    const int8_t *w0 = L->w + n * L->k;
    const int64_t K = L->k;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    __m512i a[4][4];
    for (int m = 0; m < 4; m++) for (int j = 0; j < 4; j++) a[m][j] = _mm512_setzero_si512();
    for (int64_t k = 0; k < K; k += 64) {
        __mmask64 mask = K - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K - k)) - 1);
        __m512i w[4];
        for (int j = 0; j < 4; j++) {
            _mm_prefetch((const char *)(w0 + (j + PREFETCH_ROWS) * K + k), _MM_HINT_T0);
            w[j] = j < nj ? _mm512_maskz_loadu_epi8(mask, w0 + j * K + k) : _mm512_setzero_si512();
        }
        for (int m = 0; m < nm; m++) {
            __m512i x = _mm512_loadu_si512((const void *)(xu + m * xstride + k));
            for (int j = 0; j < 4; j++) a[m][j] = _mm512_dpbusd_epi32(a[m][j], x, w[j]);
        }
    }
    __mmask8 cols = (__mmask8)((1u << nj) - 1);
    __m128i wsum = _mm_maskz_loadu_epi32(cols, L->wsum + n);
    __m128 scale = _mm_maskz_loadu_ps(cols, L->scale + n);
    __m128 bias = L->bias ? _mm_maskz_loadu_ps(cols, L->bias + n) : _mm_setzero_ps();
    __m128i offset = _mm_slli_epi32(wsum, 7);  /* 128 * wsum */
    for (int m = 0; m < nm; m++) {
        /* the four rows' sums side by side: pairwise interleave and add, then fold the 128-bit lanes */
        __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[m][0], a[m][1]), _mm512_unpackhi_epi32(a[m][0], a[m][1]));
        __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[m][2], a[m][3]), _mm512_unpackhi_epi32(a[m][2], a[m][3]));
        __m512i s = _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
        __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
        __m128i sums = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        __m128 v = _mm_cvtepi32_ps(_mm_sub_epi32(sums, offset));
        v = _mm_mul_ps(v, _mm_set1_ps(sx[m]));
        v = _mm_mul_ps(v, scale);
        if (L->bias) v = _mm_add_ps(v, bias);
        _mm_mask_storeu_ps(y + m * ystride + n, cols, v);
    }
#else
    for (int m = 0; m < nm; m++)
        for (int j = 0; j < nj; j++) {
            const uint8_t *x = xu + m * xstride;
            const int8_t *w = w0 + j * K;
            int32_t acc = 0;
            for (int64_t k = 0; k < K; k++) acc += (int32_t)x[k] * (int32_t)w[k];
            float v = (float)(acc - 128 * L->wsum[n + j]);
            v = v * sx[m];
            v = v * L->scale[n + j];
            if (L->bias) v = v + L->bias[n + j];
            y[m * ystride + n + j] = v;
        }
#endif
}

/* tile_4x4_rows with the row count a constant, so that the compiler unrolls its loops over rows and
 * keeps the accumulators in registers (int8, 896 inputs: +8 % in one thread, measured). */
static void tile_4x4(const uint8_t *xu, int64_t xstride, int64_t nm, const qlinear *L, int64_t n, int64_t nj,
                     const float *sx, float *y, int64_t ystride) {
    switch (nm) {
    case 1: tile_4x4_rows(xu, xstride, 1, L, n, nj, sx, y, ystride); break;
    case 2: tile_4x4_rows(xu, xstride, 2, L, n, nj, sx, y, ystride); break;
    case 3: tile_4x4_rows(xu, xstride, 3, L, n, nj, sx, y, ystride); break;
    default: tile_4x4_rows(xu, xstride, 4, L, n, nj, sx, y, ystride); break;
    }
}

/* Output columns n0..n1 of every row: activation rows in tiles of 4 (kept in L1), the chunk's
 * weight rows (n1 - n0 of them, kept in L2) read once per tile. */
static void gemm_rows(const uint8_t *xu, int64_t xstride, const float *sx, int64_t M, const qlinear *L,
                      float *y, int64_t ystride, int64_t n0, int64_t n1) {
    for (int64_t m = 0; m < M; m += 4) {
        int64_t nm = M - m < 4 ? M - m : 4;
        for (int64_t n = n0; n < n1; n += 4)
            tile_4x4(xu + m * xstride, xstride, nm, L, n, n1 - n < 4 ? n1 - n : 4, sx + m, y + m * ystride, ystride);
    }
}

/* ---- many rows: weights packed in panels, no horizontal sums ----
 *
 * tile_4x4 sums each (row, output) dot product across a vector's lanes at the end: fine for a
 * decode step's few rows, which must read every weight once anyway, but for a prompt's rows the
 * folding cost as much as the multiplies (K is 192-1,024 here). With the weights packed as
 * panels of PANEL outputs, packed[(n / PANEL) * Kp * PANEL + (k / 4) * PANEL * 4 + (n % PANEL) * 4 + k % 4]
 * (engine/quantize.py Int8Linear.pack; zero past n, padded to whole tiles, and past k), one VNNI
 * instruction multiplies four inputs of a row, broadcast, by those four inputs' weights of PANEL
 * outputs, and each lane accumulates one output's dot product: the sums come out in place. A tile
 * is PACKED_ROWS rows by TILE_PANELS panels (24 accumulators of the 32 registers: 4 weight loads
 * and 6 broadcasts a 24 multiplies); rows past M are zero activations whose results are not
 * stored. The integer sums are exact, so the outputs equal tile_4x4's bit for bit (the same
 * float epilogue). */
#define PANEL 16
#define TILE_PANELS 4
#define PACKED_ROWS 6
#define PACKED_MIN_ROWS 8  /* fewer rows read the weights once through tile_4x4 */

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
static void gemm_packed(const uint8_t *xu, int64_t Kp, const float *sx, int64_t m_begin, int64_t M, const qlinear *L,
                        float *y, int64_t n0, int64_t n1) {
    for (int64_t m0 = m_begin; m0 < M; m0 += PACKED_ROWS) {
        const int64_t nm = M - m0 < PACKED_ROWS ? M - m0 : PACKED_ROWS;
        for (int64_t n = n0; n < n1; n += TILE_PANELS * PANEL) {
            const int8_t *p = L->packed + (n / PANEL) * Kp * PANEL;
            /* named accumulators: GCC kept an array of them on the stack, reloading each every multiply */
            __m512i a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33, a40, a41, a42, a43,
                a50, a51, a52, a53;
            a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = a20 = a21 = a22 = a23 = _mm512_setzero_si512();
            a30 = a31 = a32 = a33 = a40 = a41 = a42 = a43 = a50 = a51 = a52 = a53 = _mm512_setzero_si512();
            const uint8_t *x = xu + m0 * Kp;
            const int8_t *p0 = p, *p1 = p + Kp * PANEL, *p2 = p1 + Kp * PANEL, *p3 = p2 + Kp * PANEL;
            for (int64_t k = 0; k < Kp; k += 4) {
                const __m512i w0 = _mm512_loadu_si512((const void *)(p0 + k * PANEL));
                const __m512i w1 = _mm512_loadu_si512((const void *)(p1 + k * PANEL));
                const __m512i w2 = _mm512_loadu_si512((const void *)(p2 + k * PANEL));
                const __m512i w3 = _mm512_loadu_si512((const void *)(p3 + k * PANEL));
#define ROW(m) do { const __m512i b = _mm512_set1_epi32(*(const int32_t *)(x + m * Kp + k)); \
                    a##m##0 = _mm512_dpbusd_epi32(a##m##0, b, w0); a##m##1 = _mm512_dpbusd_epi32(a##m##1, b, w1); \
                    a##m##2 = _mm512_dpbusd_epi32(a##m##2, b, w2); a##m##3 = _mm512_dpbusd_epi32(a##m##3, b, w3); } while (0)
                ROW(0); ROW(1); ROW(2); ROW(3); ROW(4); ROW(5);
#undef ROW
            }
            const __m512i acc[PACKED_ROWS][TILE_PANELS] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}, {a20, a21, a22, a23},
                                                           {a30, a31, a32, a33}, {a40, a41, a42, a43}, {a50, a51, a52, a53}};
            for (int j = 0; j < TILE_PANELS; j++) {
                const int64_t nn = n + j * PANEL, cols = n1 - nn < PANEL ? n1 - nn : PANEL;
                if (cols <= 0) break;
                const __mmask16 mask = (__mmask16)((1u << cols) - 1);
                __m512i offset = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(mask, L->wsum + nn), 7);  /* 128 * wsum */
                __m512 scale = _mm512_maskz_loadu_ps(mask, L->scale + nn);
                __m512 bias = L->bias ? _mm512_maskz_loadu_ps(mask, L->bias + nn) : _mm512_setzero_ps();
                for (int m = 0; m < nm; m++) {
                    __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[m][j], offset));
                    v = _mm512_mul_ps(v, _mm512_set1_ps(sx[m0 + m]));
                    v = _mm512_mul_ps(v, scale);
                    if (L->bias) v = _mm512_add_ps(v, bias);
                    _mm512_mask_storeu_ps(y + (m0 + m) * L->n + nn, mask, v);
                }
            }
        }
    }
}
#endif

typedef struct {
    const uint8_t *xu;
    const float *sx;
    int64_t M, Kp, row_chunks;
    const qlinear *L;
    float *y;
} linear_job;

#define LINEAR_CHUNK 64        /* output rows a chunk */
#define LINEAR_ROW_CHUNK 48    /* input rows a chunk of a many-row product (whole PACKED_ROWS tiles) */

/* Chunk c: output rows [n0, n1) of the input rows of its row chunk (all rows when row_chunks is 1). */
static void linear_chunk(void *ctx, int64_t c) {
    const linear_job *j = ctx;
    const int64_t cc = c / j->row_chunks, rc = c % j->row_chunks;
    const int64_t n0 = cc * LINEAR_CHUNK, n1 = n0 + LINEAR_CHUNK < j->L->n ? n0 + LINEAR_CHUNK : j->L->n;
    const int64_t m0 = rc * LINEAR_ROW_CHUNK, m1 = j->row_chunks == 1 || m0 + LINEAR_ROW_CHUNK > j->M ? j->M : m0 + LINEAR_ROW_CHUNK;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    if (j->L->packed && j->M >= PACKED_MIN_ROWS) {
        gemm_packed(j->xu, j->Kp, j->sx, m0, m1, j->L, j->y, n0, n1);
        return;
    }
#endif
    gemm_rows(j->xu + m0 * j->Kp, j->Kp, j->sx + m0, m1 - m0, j->L, j->y + m0 * j->L->n, j->L->n, n0, n1);
}

/* y (M, n) = x (M, k) through the int8 linear; output rows split over threads when there is enough
 * work, and a many-row product's input rows too (a layer of 192 outputs is only three chunks). */
static void linear_int4(const float *x, int64_t M, const qlinear *L, float *y, int64_t n_threads);

static void linear(const float *x, int64_t M, const qlinear *L, float *y, int64_t n_threads) {
    if (L->bits == 4) { linear_int4(x, M, L, y, n_threads); return; }
    int64_t Kp = round_up(L->k, 64), Mp = round_up(M, PACKED_ROWS);  /* rows past M: zeros for gemm_packed */
    uint8_t *xu = scratch((size_t)(Mp * Kp + M * 4 + ALIGN));
    float *sx = (float *)(xu + round_up(Mp * Kp, ALIGN));
    quantize_rows(x, M, L->k, Kp, xu, Kp, sx);
    memset(xu + M * Kp, 128, (size_t)((Mp - M) * Kp));
    /* Below ~64K multiply-adds a second thread costs more than it brings (measured). */
    n_threads = M * L->n * L->k >= (1 << 16) ? n_threads : 1;
    const int64_t col_chunks = (L->n + LINEAR_CHUNK - 1) / LINEAR_CHUNK;
    const int64_t row_chunks = n_threads > 1 && M >= 2 * LINEAR_ROW_CHUNK ? (M + LINEAR_ROW_CHUNK - 1) / LINEAR_ROW_CHUNK : 1;
    linear_job job = {xu, sx, M, Kp, row_chunks, L, y};
    parallel_for(col_chunks * row_chunks, linear_chunk, &job, n_threads);
}

void int8_linear(const float *x, int64_t M, const qlinear *L, float *y, int64_t n_threads) {
    linear(x, M, L, y, n_threads);
}

/* ---- int4 weights (engine/quantize.py's Int4Linear; its PyTorch twin is int4_matmul) ----
 *
 * Weights: symmetric int4 in groups of 32 along the input, one float16 scale a group (widened to
 * float32, exactly, where it is used); the input is padded with zero weights to Kp = a multiple of
 * 128. Each group is 16 bytes, byte i holding u[i] | u[i + 16] << 4 with u = q + 8 (0..15). Scales
 * come tiled for the kernel: scale[(n / 4) * G * 4 + g * 4 + n % 4] (G = Kp / 32 groups; n padded to
 * a multiple of 4).
 * Activations: quantized per row as for int8 (sx = max|x| / 127, xq = round-half-even(x / sx)).
 * A group's dot is exact in int32: acc_g = sum u * xq - 8 * sum xq. The float epilogue, which
 * the PyTorch twin repeats step for step: p[g % 4] += float(acc_g) * scale_g over g in order,
 * then y = (((p0 + p1) + (p2 + p3)) * sx) (+ bias). VNNI multiplies the unsigned nibbles by the
 * signed activations, which are laid out per 128 inputs as the low halves of its four groups
 * (64 bytes) and then the high halves, to meet the nibbles as they unpack. */
/* IEEE half -> float, exact (every half is a float); F16C's conversion gives the same. */
static inline float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
    uint32_t bits;
    if (exponent == 0x1F) bits = sign | 0x7F800000u | (mantissa << 13);
    else if (exponent) bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    else {  /* zero or subnormal: mantissa * 2^-24 */
        float v = (float)mantissa * 0x1p-24f;
        return sign ? -v : v;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static void quantize_rows_int4(const float *x, int64_t M, int64_t K, int64_t Kp, int8_t *xq, int32_t *xsum8, float *sx) {
    const int64_t G = Kp / 32;
    for (int64_t m = 0; m < M; m++) {
        const float *r = x + m * K;
        const float s = sx[m] = row_scale(r, K);
        int8_t *o = xq + m * Kp;
        int32_t *xs = xsum8 + m * G * 4;
        for (int64_t g = 0; g < G; g++) {
            int8_t *lo = o + (g / 4) * 128 + (g % 4) * 16;
            int32_t sum = 0;
            for (int64_t i = 0; i < 32; i++) {
                int64_t k = g * 32 + i;
                float q = 0.0f;
                if (k < K) {
                    q = nearbyintf(r[k] / s);
                    q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
                }
                lo[i < 16 ? i : 64 + i - 16] = (int8_t)q;
                sum += (int32_t)q;
            }
            for (int j = 0; j < 4; j++) xs[g * 4 + j] = 8 * sum;
        }
    }
}

/* Up to 4 activation rows times the 4 weight rows n..n+3 (nj of them real). */
static inline __attribute__((always_inline)) void tile_int4_rows(const int8_t *xq, const int32_t *xsum8, const float *sx,
                                                                 const int64_t nm, const qlinear *L, int64_t n,
                                                                 int64_t nj, float *y, int64_t ystride) {
    const int64_t Kp = round_up(L->k, 128), G = Kp / 32, half = Kp / 2;
    const uint8_t *w0 = (const uint8_t *)L->w + n * half;
    const uint16_t *st = (const uint16_t *)L->scale + (n / 4) * G * 4;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    __m512 p[4];
    for (int m = 0; m < 4; m++) p[m] = _mm512_setzero_ps();
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    for (int64_t b = 0; b < Kp; b += 128) {
        __m512i lo[4], hi[4];
        for (int j = 0; j < 4; j++) {
            if (j < nj) {
                _mm_prefetch((const char *)(w0 + (j + PREFETCH_ROWS) * half + b / 2), _MM_HINT_T0);
                __m512i raw = _mm512_loadu_si512((const void *)(w0 + j * half + b / 2));
                lo[j] = _mm512_and_si512(raw, nibble);
                hi[j] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), nibble);
            } else {
                lo[j] = hi[j] = _mm512_setzero_si512();
            }
        }
        /* 4 groups x 4 weight rows */
        __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(st + (b / 32) * 4)));
        for (int m = 0; m < nm; m++) {
            __m512i xlo = _mm512_loadu_si512((const void *)(xq + m * Kp + b));
            __m512i xhi = _mm512_loadu_si512((const void *)(xq + m * Kp + b + 64));
            __m512i a[4];
            for (int j = 0; j < 4; j++)
                a[j] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[j], xlo), hi[j], xhi);
            /* 128-bit lane g holds group g's four partial sums per weight row: fold them into
             * [row 0, row 1, row 2, row 3] for each group, as tile_4x4 does */
            __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[0], a[1]), _mm512_unpackhi_epi32(a[0], a[1]));
            __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2], a[3]), _mm512_unpackhi_epi32(a[2], a[3]));
            __m512i s = _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
            s = _mm512_sub_epi32(s, _mm512_loadu_si512((const void *)(xsum8 + m * G * 4 + (b / 32) * 4)));
            p[m] = _mm512_add_ps(p[m], _mm512_mul_ps(_mm512_cvtepi32_ps(s), scale));
        }
    }
    __mmask8 cols = (__mmask8)((1u << nj) - 1);
    __m128 bias = L->bias ? _mm_maskz_loadu_ps(cols, L->bias + n) : _mm_setzero_ps();
    for (int m = 0; m < nm; m++) {
        __m128 g0 = _mm512_extractf32x4_ps(p[m], 0), g1 = _mm512_extractf32x4_ps(p[m], 1);
        __m128 g2 = _mm512_extractf32x4_ps(p[m], 2), g3 = _mm512_extractf32x4_ps(p[m], 3);
        __m128 v = _mm_add_ps(_mm_add_ps(g0, g1), _mm_add_ps(g2, g3));
        v = _mm_mul_ps(v, _mm_set1_ps(sx[m]));
        if (L->bias) v = _mm_add_ps(v, bias);
        _mm_mask_storeu_ps(y + m * ystride + n, cols, v);
    }
#else
    for (int m = 0; m < nm; m++)
        for (int j = 0; j < nj; j++) {
            float p[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (int64_t g = 0; g < G; g++) {
                const uint8_t *w = w0 + j * half + g * 16;
                const int8_t *xl = xq + m * Kp + (g / 4) * 128 + (g % 4) * 16, *xh = xl + 64;
                int32_t acc = 0;
                for (int i = 0; i < 16; i++) acc += (int32_t)(w[i] & 15) * xl[i] + (int32_t)(w[i] >> 4) * xh[i];
                acc -= xsum8[m * G * 4 + g * 4];
                p[g % 4] = p[g % 4] + (float)acc * half_to_float(st[g * 4 + j]);
            }
            float v = ((p[0] + p[1]) + (p[2] + p[3])) * sx[m];
            if (L->bias) v = v + L->bias[n + j];
            y[m * ystride + n + j] = v;
        }
#endif
}

/* tile_int4_rows with the row count a constant, as tile_4x4. */
static void tile_int4(const int8_t *xq, const int32_t *xsum8, const float *sx, int64_t nm, const qlinear *L,
                      int64_t n, int64_t nj, float *y, int64_t ystride) {
    switch (nm) {
    case 1: tile_int4_rows(xq, xsum8, sx, 1, L, n, nj, y, ystride); break;
    case 2: tile_int4_rows(xq, xsum8, sx, 2, L, n, nj, y, ystride); break;
    case 3: tile_int4_rows(xq, xsum8, sx, 3, L, n, nj, y, ystride); break;
    default: tile_int4_rows(xq, xsum8, sx, 4, L, n, nj, y, ystride); break;
    }
}

typedef struct {
    const int8_t *xq;
    const int32_t *xsum8;
    const float *sx;
    int64_t M;
    const qlinear *L;
    float *y;
} int4_job;

static void int4_chunk(void *ctx, int64_t c) {
    const int4_job *j = ctx;
    const int64_t G4 = round_up(j->L->k, 128) / 32 * 4;
    int64_t n0 = c * LINEAR_CHUNK, n1 = n0 + LINEAR_CHUNK < j->L->n ? n0 + LINEAR_CHUNK : j->L->n;
    for (int64_t m = 0; m < j->M; m += 4) {
        int64_t nm = j->M - m < 4 ? j->M - m : 4;
        int64_t Kp = round_up(j->L->k, 128);
        for (int64_t n = n0; n < n1; n += 4)
            tile_int4(j->xq + m * Kp, j->xsum8 + m * G4, j->sx + m, nm, j->L, n, n1 - n < 4 ? n1 - n : 4,
                      j->y + m * j->L->n, j->L->n);
    }
}

static void linear_int4(const float *x, int64_t M, const qlinear *L, float *y, int64_t n_threads) {
    const int64_t Kp = round_up(L->k, 128), G = Kp / 32;
    int8_t *xq = scratch((size_t)(M * Kp + M * G * 4 * 4 + M * 4 + 2 * ALIGN));
    int32_t *xsum8 = (int32_t *)(xq + round_up(M * Kp, ALIGN));
    float *sx = (float *)((char *)xsum8 + round_up(M * G * 4 * 4, ALIGN));
    quantize_rows_int4(x, M, L->k, Kp, xq, xsum8, sx);
    int4_job job = {xq, xsum8, sx, M, L, y};
    parallel_for((L->n + LINEAR_CHUNK - 1) / LINEAR_CHUNK, int4_chunk, &job,
                 M * L->n * L->k >= (1 << 17) ? n_threads : 1);
}

void int4_linear(const float *x, int64_t M, const qlinear *L, float *y, int64_t n_threads) {
    linear(x, M, L, y, n_threads);
}

/* Row r of an int4 layer's weights, dequantized into out (its first E inputs): the embedding of a
 * tied int4 head, as engine/quantize.py's Int4Embedding (one product a weight, the same floats). */
static void embed_int4_row(const qlinear *L, int64_t r, float *out, int64_t E) {
    const int64_t Kp = round_up(L->k, 128), G = Kp / 32;
    const uint8_t *w = (const uint8_t *)L->w + r * (Kp / 2);
    const uint16_t *st = (const uint16_t *)L->scale + (r / 4) * G * 4 + r % 4;
    for (int64_t e = 0; e < E; e++) {
        const int64_t g = e / 32, i = e % 32;
        const uint8_t byte = w[g * 16 + i % 16];
        const int q = (i < 16 ? byte & 15 : byte >> 4) - 8;
        out[e] = (float)q * half_to_float(st[g * 4]);
    }
}

/* ---- elementwise pieces ---- */
#if defined(__AVX512F__)
/* exp for x <= ~88 (Cephes' expf polynomial, ~2 ulp); inputs below -87.3 give ~0. */
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
    x = _mm512_min_ps(x, _mm512_set1_ps(88.3f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500E-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}
#endif

/* One chunk of n scores into the online softmax of one query and head: the running maximum m
 * rises to the chunk's (what acc, D floats, and the sum l hold so far rescaled), s becomes
 * exp(s - m), and l gains it. Whole vectors: a scalar pass over scores just stored as vectors
 * waits on each store (two thirds of a decode step's softmax). */
static inline void softmax_chunk(float *s, int64_t n, float *m, float *l, float *acc, int64_t D) {
    float top = *m;
#if defined(__AVX512F__)
    __m512 vt = _mm512_set1_ps(top);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = lanes16(n - i);
        vt = _mm512_max_ps(vt, _mm512_mask_loadu_ps(vt, k, s + i));
    }
    top = _mm512_reduce_max_ps(vt);
#else
    for (int64_t i = 0; i < n; i++) top = s[i] > top ? s[i] : top;
#endif
    if (top > *m) {  /* rescale what was summed under the old maximum */
        const float r = *m == -INFINITY ? 0.0f : expf(*m - top);
        *l *= r;
        for (int64_t d = 0; d < D; d++) acc[d] *= r;
        *m = top;
    }
#if defined(__AVX512F__)
    __m512 sum = _mm512_setzero_ps();
    const __m512 vtop = _mm512_set1_ps(top);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = lanes16(n - i);
        const __m512 e = _mm512_maskz_mov_ps(k, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + i), vtop)));
        _mm512_mask_storeu_ps(s + i, k, e);
        sum = _mm512_add_ps(sum, e);
    }
    *l += _mm512_reduce_add_ps(sum);
#else
    for (int64_t i = 0; i < n; i++) {
        s[i] = expf(s[i] - top);
        *l += s[i];
    }
#endif
}

/* act(x) in place; activation codes as in model_weights */
static void activate(float *x, int64_t n, int64_t activation) {
    if (activation == 3) { for (int64_t i = 0; i < n; i++) x[i] = x[i] > 0 ? x[i] : 0.0f; return; }
    if (activation == 1) { for (int64_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f)); return; }
    int64_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i), one = _mm512_set1_ps(1.0f);
        if (activation == 2) {  /* silu: x / (1 + exp(-x)) */
            v = _mm512_div_ps(v, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), v))));
        } else {  /* gelu_tanh: 0.5 x (1 + tanh(u)), tanh(u) = 1 - 2 / (1 + exp(2u)) */
            __m512 u = _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f),
                                     _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), v), _mm512_mul_ps(v, v), v));
            __m512 t = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f),
                                                        _mm512_add_ps(one, exp512(_mm512_add_ps(u, u)))));
            v = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v), _mm512_add_ps(one, t));
        }
        _mm512_storeu_ps(x + i, v);
    }
#endif
    for (; i < n; i++) {
        float v = x[i];
        if (activation == 2) x[i] = v / (1.0f + expf(-v));
        else x[i] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    }
}

static void norm_rows(const float *x, float *y, int64_t M, int64_t E, const float *w, const float *b, int rms, float eps) {
    for (int64_t m = 0; m < M; m++) {
        const float *r = x + m * E;
        float *o = y + m * E;
        if (rms) {
            float ss = 0.0f;
#pragma omp simd reduction(+:ss)
            for (int64_t i = 0; i < E; i++) ss += r[i] * r[i];
            float inv = 1.0f / sqrtf(ss / (float)E + eps);
            for (int64_t i = 0; i < E; i++) o[i] = r[i] * inv * w[i];
        } else {
            float sum = 0.0f;
#pragma omp simd reduction(+:sum)
            for (int64_t i = 0; i < E; i++) sum += r[i];
            float mean = sum / (float)E, var = 0.0f;
#pragma omp simd reduction(+:var)
            for (int64_t i = 0; i < E; i++) var += (r[i] - mean) * (r[i] - mean);
            float inv = 1.0f / sqrtf(var / (float)E + eps);
            for (int64_t i = 0; i < E; i++) o[i] = (r[i] - mean) * inv * w[i] + b[i];
        }
    }
}

/* Rotary positions, half-split layout: out[i] = x[i] cos[i] - x[i+h] sin[i], out[i+h] = x[i+h] cos[i+h] + x[i] sin[i+h]. */
static void rotate(float *x, const float *cos, const float *sin, int64_t D) {
    int64_t h = D / 2;
    for (int64_t i = 0; i < h; i++) {
        float a = x[i], b = x[i + h];
        x[i] = a * cos[i] - b * sin[i];
        x[i + h] = b * cos[i + h] + a * sin[i + h];
    }
}

/* ---- the KV cache ---- */
static inline int64_t kv_offset(const kv_layout *c, int64_t layer, int64_t block, int64_t off, int64_t head) {
    return layer * c->layer_stride + block * c->block_stride + off * c->token_stride + head * c->head_stride;
}

static inline int64_t scale_offset(const kv_layout *c, int64_t layer, int64_t block, int64_t off, int64_t head) {
    return layer * c->s_layer_stride + block * c->s_block_stride + off * c->s_token_stride + head * c->s_head_stride;
}

/* One head's key or value (D floats) into the cache; int8: scale = max(max|x|, 1e-8) / 127, as kv_cache.py. */
static void store_head(const kv_layout *c, void *base, float *scales, int64_t layer, int64_t block, int64_t off,
                       int64_t head, const float *x, int64_t D) {
    int64_t o = kv_offset(c, layer, block, off, head);
    if (!c->int8) { memcpy((float *)base + o, x, (size_t)D * sizeof(float)); return; }
    float amax = 0.0f;
    int64_t d = 0;
#if defined(__AVX512F__)
    __m512 m = _mm512_setzero_ps();
    for (; d + 16 <= D; d += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + d)));
    amax = _mm512_reduce_max_ps(m);
#endif
    for (; d < D; d++) { float a = fabsf(x[d]); amax = a > amax ? a : amax; }
    float s = (amax < 1e-8f ? 1e-8f : amax) / 127.0f;
    scales[scale_offset(c, layer, block, off, head)] = s;
    int8_t *dst = (int8_t *)base + o;
    d = 0;
#if defined(__AVX512F__)
    for (; d + 16 <= D; d += 16)
        _mm_storeu_si128((__m128i *)(dst + d), _mm512_cvtepi32_epi8(round_div16(_mm512_loadu_ps(x + d), _mm512_set1_ps(s))));
#endif
    for (; d < D; d++) dst[d] = (int8_t)nearbyintf(x[d] / s);
}

/* ---- paged attention: the decode step's, and the PyTorch forward's few-query steps' ---- */
#define ATT_MAX_HEADS 64    /* query heads one task attends at a time */
#define ATT_MAX_BLOCK 256   /* keys scored at a time */
#define ATT_MAX_ACC (ATT_MAX_HEADS * 256)

/* q . k and out += w * v for one key or value row, 16 at a time where AVX-512 is (GCC's own
 * vectorisation, without -ffast-math, made int8 attention 3x and fp32 1.4x slower). */
static inline float dot_f32(const float *q, const float *k, int64_t D) {
    int64_t d = 0;
    float dot = 0.0f;
#if defined(__AVX512F__)
    __m512 a = _mm512_setzero_ps();
    for (; d + 16 <= D; d += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), _mm512_loadu_ps(k + d), a);
    dot = _mm512_reduce_add_ps(a);
#endif
    for (; d < D; d++) dot += q[d] * k[d];
    return dot;
}

static inline void add_f32(float *out, float w, const float *v, int64_t D) {
    int64_t d = 0;
#if defined(__AVX512F__)
    const __m512 wv = _mm512_set1_ps(w);
    for (; d + 16 <= D; d += 16)
        _mm512_storeu_ps(out + d, _mm512_fmadd_ps(wv, _mm512_loadu_ps(v + d), _mm512_loadu_ps(out + d)));
#endif
    for (; d < D; d++) out[d] += w * v[d];
}

static inline float dot_int8(const float *q, const int8_t *k, int64_t D) {
    int64_t d = 0;
    float dot = 0.0f;
#if defined(__AVX512F__)
    __m512 a = _mm512_setzero_ps();
    for (; d + 16 <= D; d += 16)
        a = _mm512_fmadd_ps(_mm512_loadu_ps(q + d),
                            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(k + d)))), a);
    dot = _mm512_reduce_add_ps(a);
#endif
    for (; d < D; d++) dot += q[d] * (float)k[d];
    return dot;
}

static inline void add_int8(float *out, float w, const int8_t *v, int64_t D) {
    int64_t d = 0;
#if defined(__AVX512F__)
    const __m512 wv = _mm512_set1_ps(w);
    for (; d + 16 <= D; d += 16)
        _mm512_storeu_ps(out + d, _mm512_fmadd_ps(wv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                                       _mm_loadu_si128((const __m128i *)(v + d)))), _mm512_loadu_ps(out + d)));
#endif
    for (; d < D; d++) out[d] += w * (float)v[d];
}

/* One query at position p of one row, for heads [h0, h1), over keys [start, p] of the row's blocks
 * (online softmax, one pass). The heads are the inner loop so that each cached token's keys (and
 * then values) are read as one contiguous run: one head at a time strides across the pool and
 * cost 3x (the shipped model's shape, 32 rows x 300 positions x 6 heads: 2.0 vs 0.7 ms one
 * thread). Inlined with D a constant where it can be, so the inner loops unroll and the
 * accumulators stay in registers. */
static inline __attribute__((always_inline)) void attend_heads(
    const kv_layout *c, int64_t layer, const float *q, const int64_t *table, int64_t start, int64_t p, int64_t h0,
    int64_t h1, int64_t group, const int64_t D, float scale, float *out)
{
    float acc[ATT_MAX_ACC], scores[ATT_MAX_HEADS * ATT_MAX_BLOCK], m[ATT_MAX_HEADS], l[ATT_MAX_HEADS];
    const int64_t nh = h1 - h0, bt = c->block_tokens;
    for (int64_t x = 0; x < nh * D; x++) acc[x] = 0.0f;
    for (int64_t x = 0; x < nh; x++) { m[x] = -INFINITY; l[x] = 0.0f; }
    for (int64_t j0 = start; j0 <= p;) {
        /* Up to ATT_MAX_BLOCK keys at a time across the pool's blocks: the softmax's rescale and
         * exp run once per chunk, not once per 16-token pool block (1.07x the whole decode step at
         * batch 1 on the shipped model's shape). */
        const int64_t n = p - j0 + 1 < ATT_MAX_BLOCK ? p - j0 + 1 : ATT_MAX_BLOCK;
        for (int64_t i = 0; i < n; i++) {
            const int64_t j = j0 + i, block = table[j / bt], slot = j % bt;
            for (int64_t x = 0; x < nh; x++) {
                const int64_t g = (h0 + x) / group, o = kv_offset(c, layer, block, slot, g);
                const float *qv = q + (h0 + x) * D;
                float dot;
                if (c->int8) {
                    dot = dot_int8(qv, (const int8_t *)c->k + o, D) * c->k_scale[scale_offset(c, layer, block, slot, g)];
                } else {
                    dot = dot_f32(qv, (const float *)c->k + o, D);
                }
                scores[x * ATT_MAX_BLOCK + i] = dot * scale;
            }
        }
        for (int64_t x = 0; x < nh; x++) softmax_chunk(scores + x * ATT_MAX_BLOCK, n, m + x, l + x, acc + x * D, D);
        for (int64_t i = 0; i < n; i++) {
            const int64_t j = j0 + i, block = table[j / bt], slot = j % bt;
            for (int64_t x = 0; x < nh; x++) {
                const int64_t g = (h0 + x) / group, o = kv_offset(c, layer, block, slot, g);
                float w = scores[x * ATT_MAX_BLOCK + i], *ax = acc + x * D;
                if (c->int8) {
                    add_int8(ax, w * c->v_scale[scale_offset(c, layer, block, slot, g)], (const int8_t *)c->v + o, D);
                } else {
                    add_f32(ax, w, (const float *)c->v + o, D);
                }
            }
        }
        j0 += n;
    }
    for (int64_t x = 0; x < nh; x++) {
        const float inv = 1.0f / l[x];
        for (int64_t d = 0; d < D; d++) out[(h0 + x) * D + d] = acc[x * D + d] * inv;
    }
}

#if defined(__AVX512F__)
/* 16 keys' or values' elements as float32 (int8: converted, unscaled) */
static inline __attribute__((always_inline)) __m512 kv16(const void *base, int64_t o, const int int8) {
    return int8 ? _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)base + o))))
                : _mm512_loadu_ps((const float *)base + o);
}
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__AVX512BW__)
#define ATT_ONE_INT8 1
/* The lane sums of 8 vectors, in order, in one (integer adds: exact in any order). */
static inline __m256i sums8(const __m256i *v) {
    const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

/* One query at position p of one row over int8 keys and values [start, p], heads [h0, h1), D a
 * multiple of 32: a decode step's row. attend_heads converted every key to float32 for one query's
 * product with it (two thirds of the shipped model's 32-row step); here the query is quantised
 * instead, per head as llama.cpp does for its q8_0 keys (sq = max|q| / 127, round half even), and
 * VNNI multiplies it with the stored bytes exactly: dot = sq * sk * sum(q8 * k8). Values are summed
 * in float32, each value's scale folded into its softmax weight, into accumulators held in
 * registers for up to 16 vectors of heads at a time. */
static inline __attribute__((always_inline)) void attend_one_int8(
    const kv_layout *c, int64_t layer, const float *q, const int64_t *table, int64_t start, int64_t p, int64_t h0,
    int64_t h1, int64_t group, const int64_t D, float scale, float *out)
{
    int8_t q8[ATT_MAX_ACC] __attribute__((aligned(64)));
    float qscale[ATT_MAX_HEADS], scores[ATT_MAX_HEADS * ATT_MAX_BLOCK], m[ATT_MAX_HEADS], l[ATT_MAX_HEADS];
    float acc[ATT_MAX_ACC], ks[ATT_MAX_BLOCK], vs[ATT_MAX_BLOCK];  /* a key head's scales */
    int16_t w16[ATT_MAX_HEADS * (ATT_MAX_BLOCK + 16)] __attribute__((aligned(64)));  /* weights, int16 */
    float wscale[ATT_MAX_HEADS];
    int32_t qsum128[ATT_MAX_HEADS];
    int64_t off[ATT_MAX_BLOCK + 1], soff[ATT_MAX_BLOCK];
    const int64_t nh = h1 - h0, bt = c->block_tokens, nd32 = D / 32, w16_stride = ATT_MAX_BLOCK + 16;
    const int64_t heads_a_pass = 8 / nd32 > 0 ? 8 / nd32 : 1;  /* two accumulators per 32 values */
    for (int64_t x = 0; x < nh; x++) {
        const float *qv = q + (h0 + x) * D;
        __m512 mx = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; d += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(qv + d)));
        float sq = _mm512_reduce_max_ps(mx) / 127.0f;
        sq = sq < 1e-30f ? 1e-30f : sq;
        __m512i sum = _mm512_setzero_si512();
        for (int64_t d = 0; d < D; d += 16) {
            const __m512i r = round_div16(_mm512_loadu_ps(qv + d), _mm512_set1_ps(sq));
            sum = _mm512_add_epi32(sum, r);
            _mm_storeu_si128((__m128i *)(q8 + x * D + d), _mm512_cvtepi32_epi8(r));
        }
        qsum128[x] = 128 * _mm512_reduce_add_epi32(sum);  /* VNNI takes the keys as k + 128, unsigned */
        qscale[x] = sq * scale;
        m[x] = -INFINITY;
        l[x] = 0.0f;
    }
    for (int64_t x = 0; x < nh * D; x++) acc[x] = 0.0f;
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (int64_t j0 = start; j0 <= p;) {
        const int64_t n = p - j0 + 1 < ATT_MAX_BLOCK ? p - j0 + 1 : ATT_MAX_BLOCK;
        for (int64_t i = 0; i < n; i++) {
            const int64_t block = table[(j0 + i) / bt], slot = (j0 + i) % bt;
            off[i] = kv_offset(c, layer, block, slot, 0);
            soff[i] = scale_offset(c, layer, block, slot, 0);
        }
        off[n] = off[n - 1];  /* the partner of an odd chunk's last value (its weight is 0) */
        /* Every key's and value's lines in flight now (to L2: a chunk can outgrow L1): each head's
         * pass reads other lines of the same keys, and the blocks of a sequence's cached prefix lie
         * anywhere in the pool, where the hardware's prefetcher starts over at each one. */
        for (int64_t i = 0; i < n; i++)
            for (int64_t b = ((h0 / group) * c->head_stride) & ~63; b < ((h1 - 1) / group + 1) * c->head_stride; b += 64) {
                _mm_prefetch((const char *)c->k + off[i] + b, _MM_HINT_T1);
                _mm_prefetch((const char *)c->v + off[i] + b, _MM_HINT_T1);
            }
        for (int64_t x = 0, scales_of = -1; x < nh; x++) {  /* scores, 8 keys at a time */
            const int64_t g = (h0 + x) / group, ko = g * c->head_stride, so = g * c->s_head_stride;
            const int8_t *kx = (const int8_t *)c->k + ko, *qx = q8 + x * D;
            float *sx = scores + x * ATT_MAX_BLOCK;
            if (g != scales_of) {  /* the key head's scales side by side (loads in a row beat gathers) */
                for (int64_t i = 0; i < n; i++) {
                    ks[i] = c->k_scale[soff[i] + so];
                    vs[i] = c->v_scale[soff[i] + so];
                }
                scales_of = g;
            }
            for (int64_t i0 = 0; i0 < n; i0 += 8) {
                const int64_t nk = n - i0 < 8 ? n - i0 : 8;
                __m256i v[8];
                for (int u = 0; u < 8; u++) {
                    v[u] = _mm256_setzero_si256();
                    if (u < nk)
                        for (int64_t d = 0; d < nd32; d++)
                            v[u] = _mm256_dpbusd_epi32(v[u], _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(kx + off[i0 + u] + d * 32)), flip),
                                                       _mm256_loadu_si256((const __m256i *)(qx + d * 32)));
                }
                __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(sums8(v), _mm256_set1_epi32(qsum128[x])));
                f = _mm256_mul_ps(_mm256_mul_ps(f, _mm256_set1_ps(qscale[x])), _mm256_loadu_ps(ks + i0));
                _mm256_mask_storeu_ps(sx + i0, (__mmask8)((1u << nk) - 1), f);
            }
            softmax_chunk(sx, n, m + x, l + x, acc + x * D, D);
            /* The weights times each value's own scale, then as int16 of the chunk's largest
             * (32767: a step of 2^-15 of it, finer than the int8 values' own rounding), so VNNI
             * sums two tokens' weighted values a lane exactly in int32 (256 of 32767 x 127 fit). */
            __m512 top = _mm512_setzero_ps();
            for (int64_t i = 0; i < n; i += 16) {
                const __mmask16 k = lanes16(n - i);
                const __m512 w = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, sx + i), _mm512_maskz_loadu_ps(k, vs + i));
                _mm512_mask_storeu_ps(sx + i, k, w);
                top = _mm512_max_ps(top, w);
            }
            const float wmax = _mm512_reduce_max_ps(top);
            wscale[x] = wmax / 32767.0f;
            const __m512 to16 = _mm512_set1_ps(wmax > 0.0f ? 32767.0f / wmax : 0.0f);
            for (int64_t i = 0; i < n + 1; i += 16) {  /* lanes from n on are 0: an odd n's partner weighs nothing */
                const __mmask16 k = lanes16(n - i);
                _mm256_storeu_si256((__m256i *)(w16 + x * w16_stride + i),
                                    _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, sx + i), to16))));
            }
        }
        for (int64_t x0 = 0; x0 < nh; x0 += heads_a_pass) {  /* values: two tokens at a time, heads in a row */
            const int64_t x1 = x0 + heads_a_pass < nh ? x0 + heads_a_pass : nh, nv = (x1 - x0) * nd32;
            int64_t vo[8];  /* each 32 values' offset in a token's values */
            const int16_t *w[8];
            for (int64_t r = 0; r < nv; r++) {
                const int64_t x = x0 + r / nd32;
                vo[r] = ((h0 + x) / group) * c->head_stride + (r % nd32) * 32;
                w[r] = w16 + x * w16_stride;
            }
            /* a[2r] sums values 0-7 and 16-23 of its 32, a[2r + 1] 8-15 and 24-31 (the byte
             * interleave works within 128-bit lanes); acc keeps that order until the end. */
            __m512i a[16];
#pragma GCC unroll 16
            for (int r = 0; r < 16; r++) a[r] = _mm512_setzero_si512();
            for (int64_t i = 0; i < n; i += 2) {
                const int8_t *v0 = (const int8_t *)c->v + off[i], *v1 = (const int8_t *)c->v + off[i + 1];
#pragma GCC unroll 8
                for (int r = 0; r < 8; r++) {
                    if (r >= nv) break;
                    const __m256i a0 = _mm256_loadu_si256((const __m256i *)(v0 + vo[r]));
                    const __m256i a1 = _mm256_loadu_si256((const __m256i *)(v1 + vo[r]));
                    const __m512i pair = _mm512_set1_epi32(*(const int32_t *)(w[r] + i));
                    a[2 * r] = _mm512_dpwssd_epi32(a[2 * r], _mm512_cvtepi8_epi16(_mm256_unpacklo_epi8(a0, a1)), pair);
                    a[2 * r + 1] = _mm512_dpwssd_epi32(a[2 * r + 1], _mm512_cvtepi8_epi16(_mm256_unpackhi_epi8(a0, a1)), pair);
                }
            }
#pragma GCC unroll 8
            for (int r = 0; r < 8; r++) {
                if (r >= nv) break;
                const int64_t x = x0 + r / nd32;
                float *dst = acc + x * D + (r % nd32) * 32;
                const __m512 s = _mm512_set1_ps(wscale[x]);
                _mm512_storeu_ps(dst, _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[2 * r]), s, _mm512_loadu_ps(dst)));
                _mm512_storeu_ps(dst + 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[2 * r + 1]), s, _mm512_loadu_ps(dst + 16)));
            }
        }
        j0 += n;
    }
    for (int64_t x = 0; x < nh; x++) {
        const float inv = 1.0f / l[x];
        for (int64_t d = 0; d < D; d++) {
            const int64_t e = d % 32, from = d - e + (e >= 8 && e < 16 ? e + 8 : e >= 16 && e < 24 ? e - 8 : e);
            out[(h0 + x) * D + d] = acc[x * D + from] * inv;
        }
    }
}
#endif

#if defined(__AVX512F__)
#define ATT_GROUP 8         /* queries of one row that read each key and value once, together */
#define ATT_CHUNK 64        /* keys a group scores at a time (with their values: in L2) */
#define ATT_GROUP_ACC 2048  /* floats of one query's heads a group may hold (heads x D) */

/* The sums of 16 vectors' lanes, in order, in one vector: pairs interleaved and added, then
 * halves of 128-bit lanes, then the lanes themselves (30 shuffles and adds where 16 separate
 * horizontal sums took ~130). */
static inline __m512 sums16(const __m512 *v) {
    __m512 s[8], t[4];
    for (int i = 0; i < 8; i++)
        s[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++) {
        __m512d c = _mm512_castps_pd(s[2 * i]), d = _mm512_castps_pd(s[2 * i + 1]);
        t[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(c, d)), _mm512_castpd_ps(_mm512_unpackhi_pd(c, d)));
    }
    __m512 w01 = _mm512_add_ps(_mm512_shuffle_f32x4(t[0], t[1], _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_f32x4(t[0], t[1], _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 w23 = _mm512_add_ps(_mm512_shuffle_f32x4(t[2], t[3], _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_f32x4(t[2], t[3], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w01, w23, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(w01, w23, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* Up to ATT_GROUP queries of one row (query t at position ps[t], over keys [starts[t], ps[t]]),
 * heads [h0, h1), fp32 keys and values or int8 ones (dequantised a chunk at a time). attend_heads reads a query's whole history from the pool;
 * a row's draft or prompt tokens each read it again, from memory once it outgrows the caches
 * (two thirds of the shipped model's decode step at 10 rows x 7 tokens). Here each chunk of
 * ATT_CHUNK keys serves every query of the group while it is in cache. Per query and head: 16
 * keys' dot products summed together (sums16), the online softmax per chunk, and the values added
 * into accumulators held in registers, U keys at a time in U sets (one chain of dependent adds
 * would wait out each add's latency). */
static inline __attribute__((always_inline)) void attend_group(
    const kv_layout *c, int64_t layer, const float *q, int64_t q_stride, const int64_t *ps, const int64_t *starts,
    int64_t nq, const int64_t *table, int64_t h0, int64_t h1, int64_t group, const int64_t D, float scale,
    float *out, int64_t out_stride, const int int8)
{
    float acc[ATT_GROUP * ATT_GROUP_ACC], scores[ATT_MAX_HEADS * ATT_CHUNK], m[ATT_GROUP * ATT_MAX_HEADS];
    float l[ATT_GROUP * ATT_MAX_HEADS];
    int64_t off[ATT_CHUNK];
    const int64_t nh = h1 - h0, bt = c->block_tokens, nd = D / 16, U = 8 / nd;
    /* int8: each chunk's keys and values, times their scales, into float32 once for all the
     * group's queries (as the PyTorch forward dequantises them); converting them again for every
     * query and head took most of a prompt's attention */
    const int64_t g0 = h0 / group, gn = (h1 - 1) / group + 1 - g0;
    const void *kb = c->k, *vb = c->v;
    int64_t hs = c->head_stride;
    float *kf = NULL, *vf = NULL;
    if (int8) {
        kf = scratch((size_t)(2 * ATT_CHUNK * gn * D) * sizeof(float));
        vf = kf + ATT_CHUNK * gn * D;
        kb = kf, vb = vf, hs = D;
    }
    int64_t lo = starts[0], hi = ps[0];
    for (int64_t t = 1; t < nq; t++) {
        lo = starts[t] < lo ? starts[t] : lo;
        hi = ps[t] > hi ? ps[t] : hi;
    }
    for (int64_t x = 0; x < nq * nh * D; x++) acc[x] = 0.0f;
    for (int64_t x = 0; x < nq * nh; x++) { m[x] = -INFINITY; l[x] = 0.0f; }
    for (int64_t j0 = lo; j0 <= hi; j0 += ATT_CHUNK) {
        const int64_t n = hi - j0 + 1 < ATT_CHUNK ? hi - j0 + 1 : ATT_CHUNK;
        if (int8) {
            for (int64_t i = 0; i < n; i++) {
                const int64_t block = table[(j0 + i) / bt], slot = (j0 + i) % bt;
                for (int64_t g = g0; g < g0 + gn; g++) {
                    const int64_t o = kv_offset(c, layer, block, slot, g), so = scale_offset(c, layer, block, slot, g);
                    const __m512 ks = _mm512_set1_ps(c->k_scale[so]), vs = _mm512_set1_ps(c->v_scale[so]);
                    float *kd = kf + (i * gn + g - g0) * D, *vd = vf + (i * gn + g - g0) * D;
                    for (int64_t d = 0; d < D; d += 16) {
                        _mm512_storeu_ps(kd + d, _mm512_mul_ps(kv16(c->k, o + d, 1), ks));
                        _mm512_storeu_ps(vd + d, _mm512_mul_ps(kv16(c->v, o + d, 1), vs));
                    }
                }
                off[i] = (i * gn - g0) * D;
            }
        } else {
            for (int64_t i = 0; i < n; i++) off[i] = kv_offset(c, layer, table[(j0 + i) / bt], (j0 + i) % bt, 0);
        }
        for (int64_t t = 0; t < nq; t++) {
            const int64_t a = starts[t] > j0 ? starts[t] - j0 : 0, e = ps[t] - j0 + 1 < n ? ps[t] - j0 + 1 : n;
            if (a >= e) continue;
            const float *qt = q + t * q_stride;
            /* Scores of every head, 16 keys at a time: those keys' rows (every head side by side)
             * serve all heads while in L1; head by head over the chunk, each pass strode across
             * the pool (32 rows: 6.1 ms a step, a third of the bandwidth). */
            int64_t i = a;
            for (; i + 16 <= e; i += 16)
                for (int64_t x = 0; x < nh; x++) {
                    const float *qv = qt + (h0 + x) * D;
                    const int64_t g = (h0 + x) / group, ko = g * hs;
                    __m512 prod[16];
                    for (int u = 0; u < 16; u++) {
                        const int64_t o = ko + off[i + u];
                        __m512 p = _mm512_mul_ps(_mm512_loadu_ps(qv), kv16(kb, o, 0));
                        for (int64_t d = 1; d < nd; d++) p = _mm512_fmadd_ps(_mm512_loadu_ps(qv + d * 16), kv16(kb, o + d * 16, 0), p);
                        prod[u] = p;
                    }
                    _mm512_storeu_ps(scores + x * ATT_CHUNK + i, _mm512_mul_ps(sums16(prod), _mm512_set1_ps(scale)));
                }
            for (; i < e; i++)
                for (int64_t x = 0; x < nh; x++) {
                    const float *qv = qt + (h0 + x) * D;
                    const int64_t g = (h0 + x) / group, o = g * hs + off[i];
                    scores[x * ATT_CHUNK + i] = dot_f32(qv, (const float *)kb + o, D) * scale;
                }
            for (int64_t x = 0; x < nh; x++)  /* the online softmax, head by head */
                softmax_chunk(scores + x * ATT_CHUNK + a, e - a, m + t * nh + x, l + t * nh + x, acc + (t * nh + x) * D, D);
            for (int64_t i0 = a; i0 < e; i0 += 16) {  /* values, 16 keys at a time, every head */
                const int64_t i1 = i0 + 16 < e ? i0 + 16 : e;
                for (int64_t x = 0; x < nh; x++) {
                    const int64_t g = (h0 + x) / group, vo = g * hs;
                    const float *wv = scores + x * ATT_CHUNK;
                    float *ax = acc + (t * nh + x) * D;
                    __m512 sets[8];
                    for (int64_t r = 0; r < 8; r++) sets[r] = _mm512_setzero_ps();
                    for (i = i0; i + U <= i1; i += U)
                        for (int64_t u = 0; u < U; u++) {
                            const __m512 wu = _mm512_set1_ps(wv[i + u]);
                            for (int64_t d = 0; d < nd; d++)
                                sets[u * nd + d] = _mm512_fmadd_ps(wu, kv16(vb, vo + off[i + u] + d * 16, 0), sets[u * nd + d]);
                        }
                    for (; i < i1; i++) {
                        const __m512 wu = _mm512_set1_ps(wv[i]);
                        for (int64_t d = 0; d < nd; d++) sets[d] = _mm512_fmadd_ps(wu, kv16(vb, vo + off[i] + d * 16, 0), sets[d]);
                    }
                    for (int64_t d = 0; d < nd; d++) {
                        __m512 sum = _mm512_loadu_ps(ax + d * 16);
                        for (int64_t u = 0; u < U; u++) sum = _mm512_add_ps(sum, sets[u * nd + d]);
                        _mm512_storeu_ps(ax + d * 16, sum);
                    }
                }
            }
        }
    }
    for (int64_t t = 0; t < nq; t++)
        for (int64_t x = 0; x < nh; x++) {
            const float inv = 1.0f / l[t * nh + x];
            for (int64_t d = 0; d < D; d++) out[t * out_stride + (h0 + x) * D + d] = acc[(t * nh + x) * D + d] * inv;
        }
}
#endif

#define ATT_BLOCK_Q 16   /* a prompt's queries that attend together, one to a vector lane */
#define ATT_KCHUNK 64    /* keys of a chunk (with their values, in float32: L1) */

#if defined(__AVX512F__)
/* Up to ATT_BLOCK_Q queries of one row (a prompt's; query t at ps[t] over keys [starts[t], ps[t]]),
 * heads [h0, h1). attend_group sums each (query, key) product across a vector's lanes and folds the
 * lanes (sums16): for a prompt's many queries over few dimensions (D = 32) the folding and the
 * conversions cost more than the products. Here the queries are the lanes: the block's queries of
 * a head are transposed once (qT[d] = 16 queries' element d), so a key's scores for all of them are
 * D multiply-adds of its elements, broadcast; the online softmax runs lane by lane; values are
 * added the same way into transposed outputs, 16 dimensions at a time in registers. A chunk's keys
 * and values are read (int8: dequantised, as the PyTorch forward does) into float32 rows once for
 * the block. Lanes past nq compute and are not stored. */
static inline __attribute__((always_inline)) void attend_block(
    const kv_layout *c, int64_t layer, const float *q, int64_t q_stride, const int64_t *ps, const int64_t *starts,
    int64_t nq, const int64_t *table, int64_t h0, int64_t h1, int64_t group, const int64_t D, float scale,
    float *out, int64_t out_stride, const int int8)
{
    float *kf = scratch((size_t)(2 * ATT_KCHUNK * D + 2 * D * 16 + ATT_KCHUNK * 16) * sizeof(float));
    float *vf = kf + ATT_KCHUNK * D, *qT = vf + ATT_KCHUNK * D, *oT = qT + D * 16, *pw = oT + D * 16;
    const int64_t bt = c->block_tokens;
    int64_t lo = starts[0], hi = ps[0];
    int32_t pos[16], first[16];
    for (int64_t t = 0; t < 16; t++) {
        const int64_t u = t < nq ? t : nq - 1;  /* spare lanes repeat the last query */
        pos[t] = (int32_t)ps[u];
        first[t] = (int32_t)starts[u];
        lo = starts[u] < lo ? starts[u] : lo;
        hi = ps[u] > hi ? ps[u] : hi;
    }
    const __m512i qpos = _mm512_loadu_si512(pos), qfirst = _mm512_loadu_si512(first);
    const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
    for (int64_t h = h0; h < h1; h++) {
        const int64_t g = h / group;
        for (int64_t d = 0; d < D; d++)
            for (int64_t t = 0; t < 16; t++) qT[d * 16 + t] = q[(t < nq ? t : nq - 1) * q_stride + h * D + d] * scale;
        for (int64_t d = 0; d < D * 16; d++) oT[d] = 0.0f;
        __m512 m = neg_inf, l = _mm512_setzero_ps();
        for (int64_t j0 = lo; j0 <= hi; j0 += ATT_KCHUNK) {
            const int64_t n = hi - j0 + 1 < ATT_KCHUNK ? hi - j0 + 1 : ATT_KCHUNK;
            for (int64_t i = 0; i < n; i++) {
                const int64_t block = table[(j0 + i) / bt], slot = (j0 + i) % bt;
                const int64_t o = kv_offset(c, layer, block, slot, g);
                __m512 ks = _mm512_set1_ps(1.0f), vs = ks;
                if (int8) {
                    const int64_t so = scale_offset(c, layer, block, slot, g);
                    ks = _mm512_set1_ps(c->k_scale[so]);
                    vs = _mm512_set1_ps(c->v_scale[so]);
                }
                for (int64_t d = 0; d < D; d += 16) {
                    _mm512_storeu_ps(kf + i * D + d, _mm512_mul_ps(kv16(c->k, o + d, int8), ks));
                    _mm512_storeu_ps(vf + i * D + d, _mm512_mul_ps(kv16(c->v, o + d, int8), vs));
                }
            }
            __m512 top = m;
            for (int64_t i0 = 0; i0 < n; i0 += 8) {  /* scores, 8 keys at a time: 8 chains of multiply-adds */
                __m512 s[8];
                const float *kr[8];
#pragma GCC unroll 8
                for (int u = 0; u < 8; u++) {
                    s[u] = _mm512_setzero_ps();
                    kr[u] = kf + (i0 + u < n ? i0 + u : i0) * D;
                }
                for (int64_t d = 0; d < D; d++) {
                    const __m512 qd = _mm512_loadu_ps(qT + d * 16);
#pragma GCC unroll 8
                    for (int u = 0; u < 8; u++) s[u] = _mm512_fmadd_ps(_mm512_set1_ps(kr[u][d]), qd, s[u]);
                }
#pragma GCC unroll 8
                for (int u = 0; u < 8; u++) {
                    if (i0 + u >= n) break;
                    const __m512i j = _mm512_set1_epi32((int32_t)(j0 + i0 + u));
                    const __mmask16 outside = _mm512_cmpgt_epi32_mask(j, qpos) | _mm512_cmplt_epi32_mask(j, qfirst);
                    const __m512 v = _mm512_mask_blend_ps(outside, s[u], neg_inf);
                    _mm512_storeu_ps(pw + (i0 + u) * 16, v);
                    top = _mm512_max_ps(top, v);
                }
            }
            /* rescale what was summed under the old maximum (lanes still at -inf stay at zero) */
            const __mmask16 seen = _mm512_cmp_ps_mask(m, neg_inf, _CMP_NEQ_OQ);
            const __m512 r = _mm512_maskz_mov_ps(seen, exp512(_mm512_sub_ps(m, top)));
            m = top;
            const __mmask16 live = _mm512_cmp_ps_mask(m, neg_inf, _CMP_NEQ_OQ);
            __m512 sum = _mm512_setzero_ps();
            for (int64_t i = 0; i < n; i++) {
                const __m512 x = _mm512_loadu_ps(pw + i * 16);  /* a key outside a query's range weighs 0 */
                const __mmask16 in = live & _mm512_cmp_ps_mask(x, neg_inf, _CMP_NEQ_OQ);
                const __m512 w = _mm512_maskz_mov_ps(in, exp512(_mm512_sub_ps(x, m)));
                _mm512_storeu_ps(pw + i * 16, w);
                sum = _mm512_add_ps(sum, w);
            }
            l = _mm512_fmadd_ps(l, r, sum);
            for (int64_t d0 = 0; d0 < D; d0 += 16) {  /* values: 16 dimensions of every query at a time */
                __m512 a[16];
#pragma GCC unroll 16
                for (int e = 0; e < 16; e++) a[e] = _mm512_mul_ps(_mm512_loadu_ps(oT + (d0 + e) * 16), r);
                for (int64_t i = 0; i < n; i++) {
                    const __m512 w = _mm512_loadu_ps(pw + i * 16);
                    const float *v = vf + i * D + d0;
#pragma GCC unroll 16
                    for (int e = 0; e < 16; e++) a[e] = _mm512_fmadd_ps(_mm512_set1_ps(v[e]), w, a[e]);
                }
#pragma GCC unroll 16
                for (int e = 0; e < 16; e++) _mm512_storeu_ps(oT + (d0 + e) * 16, a[e]);
            }
        }
        float inv[16];
        _mm512_storeu_ps(inv, _mm512_div_ps(_mm512_set1_ps(1.0f), l));
        for (int64_t t = 0; t < nq; t++)
            for (int64_t d = 0; d < D; d++) out[t * out_stride + h * D + d] = oT[d * 16 + t] * inv[t];
    }
}
#endif

typedef struct {
    const kv_layout *c;
    int64_t layer, H, group, D, window, splits, per_split;
    const int64_t *positions, T, *n_real, *tables, max_blocks;
    const float *q;
    int64_t q_stride;
    float *out;
    int64_t groups;  /* > 0: tasks are (row, group of `per_group` queries, slice of heads) */
    int64_t per_group;  /* ATT_GROUP: attend_group (a step's drafts); ATT_BLOCK_Q: attend_block (prompts) */
} attention_job;

#if defined(__AVX512F__)
static void attention_group_chunk(void *ctx, int64_t task) {
    const attention_job *j = ctx;
    const int64_t H = j->H, D = j->D, group = j->group, s = task % j->splits, gi = (task / j->splits) % j->groups;
    const int64_t b = task / j->splits / j->groups, t0 = gi * j->per_group, i0 = b * j->T + t0;
    const int64_t h0 = (s * j->per_split) / group * group;
    const int64_t h1 = s == j->splits - 1 ? H : ((s + 1) * j->per_split) / group * group;
    const int64_t real = j->n_real ? j->n_real[b] : j->T;
    int64_t nq = j->T - t0 < j->per_group ? j->T - t0 : j->per_group, starts[ATT_BLOCK_Q];
    for (int64_t t = 0; t < nq; t++) {
        if (t0 + t >= real) {  /* padding: zeros */
            memset(j->out + (i0 + t) * H * D + h0 * D, 0, (size_t)((h1 - h0) * D) * sizeof(float));
            continue;
        }
        const int64_t p = j->positions[i0 + t];
        starts[t] = j->window > 0 && p - j->window + 1 > 0 ? p - j->window + 1 : 0;
    }
    nq = real - t0 < nq ? real - t0 : nq;
    if (nq <= 0) return;
    const int64_t *table = j->tables + b * j->max_blocks, *ps = j->positions + i0;
    const float *q = j->q + i0 * j->q_stride, scale = 1.0f / sqrtf((float)D);
    float *o = j->out + i0 * H * D;
#define GROUP(d, q8) do { \
        if (j->per_group == ATT_BLOCK_Q) attend_block(j->c, j->layer, q, j->q_stride, ps, starts, nq, table, h0, h1, group, d, scale, o, H * D, q8); \
        else attend_group(j->c, j->layer, q, j->q_stride, ps, starts, nq, table, h0, h1, group, d, scale, o, H * D, q8); } while (0)
    const int int8 = (int)j->c->int8;
    switch (D * 2 + int8) {  /* the head sizes of the families we load, by KV type: constants to inline */
    case 64: GROUP(32, 0); break;
    case 65: GROUP(32, 1); break;
    case 128: GROUP(64, 0); break;
    case 129: GROUP(64, 1); break;
    case 256: GROUP(128, 0); break;
    case 257: GROUP(128, 1); break;
    default: if (int8) GROUP(D, 1); else GROUP(D, 0);
    }
#undef GROUP
}
#endif

/* One query's slice of heads (whole groups of query heads that share a key head). */
static void attention_chunk(void *ctx, int64_t task) {
    const attention_job *j = ctx;
    const int64_t H = j->H, D = j->D, group = j->group, s = task % j->splits, i = task / j->splits;
    const int64_t b = i / j->T, t = i % j->T, p = j->positions[i];
    const int64_t h0 = (s * j->per_split) / group * group;
    const int64_t h1 = s == j->splits - 1 ? H : ((s + 1) * j->per_split) / group * group;
    float *o = j->out + i * H * D;
    if (j->n_real && t >= j->n_real[b]) { memset(o + h0 * D, 0, (size_t)((h1 - h0) * D) * sizeof(float)); return; }
    const int64_t start = j->window > 0 && p - j->window + 1 > 0 ? p - j->window + 1 : 0;
    const int64_t *table = j->tables + b * j->max_blocks;
    const float *q = j->q + i * j->q_stride, scale = 1.0f / sqrtf((float)D);
    for (int64_t a = h0; a < h1;) {  /* at most ATT_MAX_HEADS heads (and ATT_MAX_ACC floats) at a time */
        int64_t z = a + ATT_MAX_HEADS < h1 ? a + ATT_MAX_HEADS : h1;
        while ((z - a) * D > ATT_MAX_ACC && z - a > 1) z--;
#if defined(ATT_ONE_INT8)
        if (j->c->int8 && D % 32 == 0 && D <= 256) {  /* at most 16 vectors a head */
            switch (D) {
            case 32: attend_one_int8(j->c, j->layer, q, table, start, p, a, z, group, 32, scale, o); break;
            case 64: attend_one_int8(j->c, j->layer, q, table, start, p, a, z, group, 64, scale, o); break;
            default: attend_one_int8(j->c, j->layer, q, table, start, p, a, z, group, D, scale, o);
            }
            a = z;
            continue;
        }
#endif
        switch (D) {  /* the head sizes of the families we load */
        case 32: attend_heads(j->c, j->layer, q, table, start, p, a, z, group, 32, scale, o); break;
        case 64: attend_heads(j->c, j->layer, q, table, start, p, a, z, group, 64, scale, o); break;
        case 128: attend_heads(j->c, j->layer, q, table, start, p, a, z, group, 128, scale, o); break;
        default: attend_heads(j->c, j->layer, q, table, start, p, a, z, group, D, scale, o);
        }
        a = z;
    }
}

static void attention(const kv_layout *c, int64_t layer, const float *q, int64_t q_stride, const int64_t *positions,
                      int64_t B, int64_t T, const int64_t *n_real, const int64_t *tables, int64_t max_blocks,
                      int64_t H, int64_t Hkv, int64_t D, int64_t window, int64_t kv_max, float *out,
                      int64_t n_threads) {
    const int64_t M = B * T, group = H / Hkv;
    if (M * H * kv_max * D < (1 << 15)) n_threads = 1;
    /* Work items: (query, slice of heads); heads are split only as far as the threads need. */
    int64_t splits = 1;
#if defined(__AVX512F__)
    /* A head size of whole vectors, heads that fit: queries of a row in groups (a prompt's in blocks,
     * attend_block; a step's drafts, attend_group). Not int8 keys and values at one query a row,
     * which read no key twice: attention_chunk's attend_one_int8 meets them with VNNI. */
    if (D % 16 == 0 && D <= 128 && H * D <= ATT_GROUP_ACC && H <= ATT_MAX_HEADS && (!c->int8 || T > 1)) {
        const int64_t per_group = T > ATT_GROUP ? ATT_BLOCK_Q : ATT_GROUP, groups = (T + per_group - 1) / per_group;
        while (B * groups * splits < 4 * n_threads && splits * 2 <= Hkv) splits *= 2;
        attention_job job = {c, layer, H, group, D, window, splits, (H + splits - 1) / splits, positions, T, n_real,
                             tables, max_blocks, q, q_stride, out, groups, per_group};
        parallel_for(B * groups * splits, attention_group_chunk, &job, n_threads);
        return;
    }
#endif
    while (M * splits < 4 * n_threads && splits * 2 <= Hkv) splits *= 2;
    attention_job job = {c, layer, H, group, D, window, splits, (H + splits - 1) / splits, positions, T, n_real,
                         tables, max_blocks, q, q_stride, out, 0, 0};
    parallel_for(M * splits, attention_chunk, &job, n_threads);
}

/* Attention of B rows of T queries over one layer of the paged pool `c` (the keys and values of
 * this step already stored): q (B * T, H, D) float32, query i's head h at q + i * q_stride + h * D;
 * out (B * T, H, D). positions (B, T); a row's first n_real[b] queries are real (NULL: all), the
 * rest get zeros; window > 0 limits a query at p to keys in (p - window, p]. */
void paged_attention(const kv_layout *c, int64_t layer, const float *q, int64_t q_stride, const int64_t *positions,
                     int64_t B, int64_t T, const int64_t *n_real, const int64_t *tables, int64_t max_blocks,
                     int64_t H, int64_t Hkv, int64_t D, int64_t window, float *out, int64_t n_threads) {
    int64_t kv_max = 0;
    for (int64_t i = 0; i < B * T; i++) kv_max = positions[i] + 1 > kv_max ? positions[i] + 1 : kv_max;
    attention(c, layer, q, q_stride, positions, B, T, n_real, tables, max_blocks, H, Hkv, D, window, kv_max, out,
              n_threads);
}

/* ---- the forward ---- */
/* What a forward's row-parallel phases read (parallel_rows): the current layer's. */
typedef struct {
    const model_weights *mw;
    const kv_layout *c;
    const int64_t *positions, *n_real, *tables;
    int64_t T, max_blocks, layer;
    const float *norm_in, *norm_w, *norm_b;
    float *norm_out, *qkv, *mlp;
} forward_rows;

static void norm_chunk(void *ctx, int64_t m0, int64_t m1) {
    const forward_rows *f = ctx;
    const int64_t E = f->mw->n_embd;
    norm_rows(f->norm_in + m0 * E, f->norm_out + m0 * E, m1 - m0, E, f->norm_w, f->norm_b, (int)f->mw->rms_norm,
              f->mw->norm_eps);
}

/* Each row's queries and keys rotated (rope), its keys and values stored in the cache. */
static void store_chunk(void *ctx, int64_t m0, int64_t m1) {
    const forward_rows *f = ctx;
    const model_weights *mw = f->mw;
    const kv_layout *c = f->c;
    const int64_t H = mw->n_head, Hkv = mw->n_kv_head, D = mw->head_dim, qkv_n = (H + 2 * Hkv) * D, T = f->T;
    for (int64_t i = m0; i < m1; i++) {
        int64_t b = i / T, t = i % T, p = f->positions[i];
        float *row = f->qkv + i * qkv_n;
        if (mw->rope_cos)
            for (int64_t hd = 0; hd < H + Hkv; hd++)
                rotate(row + hd * D, mw->rope_cos + p * D, mw->rope_sin + p * D, D);
        if (f->n_real && t >= f->n_real[b]) continue;
        const int64_t *table = f->tables + b * f->max_blocks;
        int64_t block = table[p / c->block_tokens], off = p % c->block_tokens;
        for (int64_t g = 0; g < Hkv; g++) {
            store_head(c, c->k, c->k_scale, f->layer, block, off, g, row + (H + g) * D, D);
            store_head(c, c->v, c->v_scale, f->layer, block, off, g, row + (H + Hkv + g) * D, D);
        }
    }
}

/* The MLP's activation, gated: times the up half (rows packed to (M, I) after). */
static void act_chunk(void *ctx, int64_t m0, int64_t m1) {
    const forward_rows *f = ctx;
    const model_weights *mw = f->mw;
    const int64_t I = mw->intermediate, up_n = mw->layers[0].up.n;
    if (!mw->gated) { activate(f->mlp + m0 * I, (m1 - m0) * I, mw->activation); return; }
    for (int64_t i = m0; i < m1; i++) {
        float *r = f->mlp + i * up_n;
        activate(r, I, mw->activation);
        for (int64_t j = 0; j < I; j++) r[j] = r[j] * r[I + j];
    }
}

/* idx, positions: (B, T); n_real: (B,) real tokens of each row (the rest pad it: not stored, zero
 * attention) or NULL; tables: (B, max_blocks). logits: (B * T, vocab), or (B, vocab) with last_only
 * (each row's last real token). Returns 0, or -1 when a position is outside the model's range. */
int decode_forward(const model_weights *mw, const int64_t *idx, const int64_t *positions, int64_t B, int64_t T,
                   const int64_t *n_real, const kv_layout *c, const int64_t *tables, int64_t max_blocks,
                   float *logits, int64_t last_only, int64_t n_threads) {
    const int64_t M = B * T, E = mw->n_embd, H = mw->n_head, Hkv = mw->n_kv_head, D = mw->head_dim;
    const int64_t qkv_n = (H + 2 * Hkv) * D, up_n = mw->layers[0].up.n, I = mw->intermediate;
    int64_t kv_max = 0;
    for (int64_t i = 0; i < M; i++) {
        if (positions[i] < 0 || positions[i] >= mw->block_size || idx[i] < 0 || idx[i] >= mw->vocab) return -1;
        kv_max = positions[i] + 1 > kv_max ? positions[i] + 1 : kv_max;
    }
    /* activations of the step, one allocation kept across calls */
    static __thread float *work = NULL;
    static __thread size_t work_size = 0;
    size_t need = (size_t)(M * (2 * E + qkv_n + H * D + up_n) + 64);
    if (need > work_size) { free(work); work = aligned_alloc(ALIGN, round_up((int64_t)need * 4, 4096)); work_size = need; }
    float *x = work, *h = x + M * E, *qkv = h + M * E, *att = qkv + M * qkv_n, *mlp = att + M * H * D;
    forward_rows per_row = {mw, c, positions, n_real, tables, T, max_blocks, 0, x, NULL, NULL, h, qkv, mlp};
    uint64_t t0 = now();

    for (int64_t i = 0; i < M; i++) {
        if (mw->embed) {
            const int8_t *er = mw->embed + idx[i] * E;
            float es = mw->embed_scale[idx[i]];
            for (int64_t e = 0; e < E; e++) x[i * E + e] = (float)er[e] * es;
        } else {
            embed_int4_row(&mw->head, idx[i], x + i * E, E);
        }
        if (mw->pos_embed) {
            const int8_t *pr = mw->pos_embed + positions[i] * E;
            float ps = mw->pos_scale[positions[i]];
            for (int64_t e = 0; e < E; e++) x[i * E + e] = x[i * E + e] + (float)pr[e] * ps;
        }
    }
    MARK(P_EMBED);
    for (int64_t l = 0; l < mw->n_layer; l++) {
        const layer_weights *L = mw->layers + l;
        per_row.layer = l, per_row.norm_w = L->attn_norm_w, per_row.norm_b = L->attn_norm_b;
        parallel_rows(M, M * E, norm_chunk, &per_row, n_threads);
        MARK(P_NORM);
        linear(h, M, &L->qkv, qkv, n_threads);
        MARK(P_QKV);
        parallel_rows(M, M * qkv_n, store_chunk, &per_row, n_threads);
        MARK(P_ROPE_STORE);
        attention(c, l, qkv, qkv_n, positions, B, T, n_real, tables, max_blocks, H, Hkv, D, mw->sliding_window, kv_max,
                  att, n_threads);
        MARK(P_ATTENTION);
        linear(att, M, &L->out, h, n_threads);
        for (int64_t i = 0; i < M * E; i++) x[i] = x[i] + h[i];
        MARK(P_OUT);
        per_row.norm_w = L->mlp_norm_w, per_row.norm_b = L->mlp_norm_b;
        parallel_rows(M, M * E, norm_chunk, &per_row, n_threads);
        MARK(P_NORM);
        linear(h, M, &L->up, mlp, n_threads);
        MARK(P_UP);
        parallel_rows(M, M * I, act_chunk, &per_row, n_threads);
        if (mw->gated)
            for (int64_t i = 1; i < M; i++) memmove(mlp + i * I, mlp + i * up_n, (size_t)I * sizeof(float));
        MARK(P_ACT);
        linear(mlp, M, &L->down, h, n_threads);
        for (int64_t i = 0; i < M * E; i++) x[i] = x[i] + h[i];
        MARK(P_DOWN);
    }
    int64_t rows = M;
    if (last_only) {  /* each row's last real token */
        for (int64_t b = 0; b < B; b++) {
            int64_t t = (n_real ? n_real[b] : T) - 1;
            memmove(x + b * E, x + (b * T + t) * E, (size_t)E * sizeof(float));
        }
        rows = B;
    }
    norm_rows(x, h, rows, E, mw->norm_w, mw->norm_b, (int)mw->rms_norm, mw->norm_eps);
    MARK(P_NORM);
    linear(h, rows, &mw->head, logits, n_threads);
    MARK(P_HEAD);
    return 0;
}
