/* Attention of a few queries per row over that row's blocks in the paged KV pool, on the CPU.
 *
 * Decode steps and draft verification have 1-16 queries a row; reading each row's keys and values
 * straight from its blocks (one pass, online softmax) avoids gathering them into a padded batch
 * first, and int8 keys and values are dequantized as they are read, so a step reads a quarter of
 * the bytes. Built by engine/paged_attention.py with the machine's C compiler; kv_cache.py falls
 * back to gather + scaled_dot_product_attention without it.
 *
 * q, out: (B, H, T, D) float32, contiguous.  k, v: one layer of the pool, (n_blocks, bs, Hkv, D)
 * float32 or int8 (then k_scale, v_scale: (n_blocks, bs, Hkv)).  tables: (B, max_blocks).
 * positions: (B, T), the query positions; a row's first n_real[b] queries are real, the rest are
 * padding and get zeros.  window > 0 limits a query at p to keys in (p - window, p].
 */
#include <math.h>
#include <stdint.h>

#define MAX_HEAD_DIM 256
#define MAX_BLOCK 256

void paged_attention(const float *q, const void *k, const void *v, const float *k_scale, const float *v_scale,
                     const int64_t *tables, int64_t max_blocks, const int64_t *positions, const int64_t *n_real,
                     float *out, int64_t B, int64_t H, int64_t Hkv, int64_t T, int64_t D, int64_t bs,
                     int64_t window, int64_t n_threads)
{
    const int64_t group = H / Hkv;
    const float scale = 1.0f / sqrtf((float)D);
    const int int8 = k_scale != 0;
#pragma omp parallel for collapse(2) schedule(dynamic) num_threads(n_threads)
    for (int64_t b = 0; b < B; b++) {
        for (int64_t h = 0; h < H; h++) {
            const int64_t g = h / group;
            for (int64_t t = 0; t < T; t++) {
                float *o = out + ((b * H + h) * T + t) * D;
                if (t >= n_real[b]) {
                    for (int64_t d = 0; d < D; d++) o[d] = 0.0f;
                    continue;
                }
                const float *qv = q + ((b * H + h) * T + t) * D;
                const int64_t p = positions[b * T + t];
                const int64_t start = (window > 0 && p - window + 1 > 0) ? p - window + 1 : 0;
                float acc[MAX_HEAD_DIM], scores[MAX_BLOCK];
                for (int64_t d = 0; d < D; d++) acc[d] = 0.0f;
                float m = -1e30f, l = 0.0f;  /* not -INFINITY: built with -ffast-math */
                for (int64_t j = start; j <= p;) {
                    const int64_t block = tables[b * max_blocks + j / bs], first = j % bs;
                    const int64_t n = (bs - first < p - j + 1) ? bs - first : p - j + 1;
                    float top = -1e30f;
                    for (int64_t i = 0; i < n; i++) {
                        const int64_t row = (block * bs + first + i) * Hkv + g;
                        float dot = 0.0f;
                        if (int8) {
                            const int8_t *kr = (const int8_t *)k + row * D;
#pragma omp simd reduction(+:dot)
                            for (int64_t d = 0; d < D; d++) dot += qv[d] * (float)kr[d];
                            dot *= k_scale[row];
                        } else {
                            const float *kr = (const float *)k + row * D;
#pragma omp simd reduction(+:dot)
                            for (int64_t d = 0; d < D; d++) dot += qv[d] * kr[d];
                        }
                        scores[i] = dot * scale;
                        if (scores[i] > top) top = scores[i];
                    }
                    if (top > m) {  /* rescale what was summed under the old maximum */
                        const float c = expf(m - top);
                        l *= c;
                        for (int64_t d = 0; d < D; d++) acc[d] *= c;
                        m = top;
                    }
#pragma omp simd
                    for (int64_t i = 0; i < n; i++) scores[i] = expf(scores[i] - m);
                    for (int64_t i = 0; i < n; i++) {
                        const int64_t row = (block * bs + first + i) * Hkv + g;
                        float w = scores[i];
                        l += w;
                        if (int8) {
                            const int8_t *vr = (const int8_t *)v + row * D;
                            w *= v_scale[row];
#pragma omp simd
                            for (int64_t d = 0; d < D; d++) acc[d] += w * (float)vr[d];
                        } else {
                            const float *vr = (const float *)v + row * D;
#pragma omp simd
                            for (int64_t d = 0; d < D; d++) acc[d] += w * vr[d];
                        }
                    }
                    j += n;
                }
                const float inv = 1.0f / l;
                for (int64_t d = 0; d < D; d++) o[d] = acc[d] * inv;
            }
        }
    }
}
