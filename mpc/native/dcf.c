/* DCF key generation and evaluation with AES-NI: the same construction, PRG and array
 * layouts as mpc/fss.py (which is the reference; mpc/native_dcf.py checks the two agree
 * bit for bit when it loads this library).
 *
 * PRG block j of seed s: AES_K(s ^ c_j) ^ s ^ c_j, c_j = (j + 1, 0x5A5A5A5A5A5A5A5A) as two
 * little-endian words; blocks 0 and 1 are the left and right child seeds (control bit =
 * lowest bit of word 0, then cleared), block 2 (and 3 when p = 2) the payloads.
 * Evaluation expands only the child it descends to: 2 AES blocks per level instead of 3-4.
 * Keys are processed in groups so that independent AES chains overlap in the pipeline.
 */
#include <stdint.h>
#include <string.h>
#include <wmmintrin.h>
#include <emmintrin.h>

typedef uint64_t u64;
#define GROUP 32

static __m128i RK[11];
static int ready = 0;

static __m128i expand_step(__m128i key, __m128i assist) {
    assist = _mm_shuffle_epi32(assist, 0xff);
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    return _mm_xor_si128(key, assist);
}

void dcf_set_key(const uint8_t *key16) {
    RK[0] = _mm_loadu_si128((const __m128i *)key16);
#define STEP(i, rcon) RK[i] = expand_step(RK[i - 1], _mm_aeskeygenassist_si128(RK[i - 1], rcon))
    STEP(1, 0x01); STEP(2, 0x02); STEP(3, 0x04); STEP(4, 0x08); STEP(5, 0x10);
    STEP(6, 0x20); STEP(7, 0x40); STEP(8, 0x80); STEP(9, 0x1b); STEP(10, 0x36);
#undef STEP
    ready = 1;
}

static inline __m128i constant(int j) {
    return _mm_set_epi64x((long long)0x5A5A5A5A5A5A5A5AULL, (long long)(j + 1));
}

/* Matyas-Meyer-Oseas on a group of blocks in place: x <- AES(x) ^ x. */
static inline void mmo(__m128i *x, int count) {
    __m128i y[4 * GROUP];
    for (int k = 0; k < count; k++) y[k] = _mm_xor_si128(x[k], RK[0]);
    for (int r = 1; r < 10; r++)
        for (int k = 0; k < count; k++) y[k] = _mm_aesenc_si128(y[k], RK[r]);
    for (int k = 0; k < count; k++) x[k] = _mm_xor_si128(_mm_aesenclast_si128(y[k], RK[10]), x[k]);
}

static inline u64 lo(__m128i v) { return (u64)_mm_cvtsi128_si64(v); }
static inline u64 hi(__m128i v) { return (u64)_mm_cvtsi128_si64(_mm_unpackhi_epi64(v, v)); }
static inline __m128i pack(u64 l, u64 h) { return _mm_set_epi64x((long long)h, (long long)l); }
/* branch-free selects (the bits are secret-dependent and unpredictable) */
static inline u64 sel(u64 m, u64 a, u64 b) { return (a & m) | (b & ~m); }       /* m ? a : b */
static inline __m128i selv(__m128i m, __m128i a, __m128i b) {
    return _mm_or_si128(_mm_and_si128(m, a), _mm_andnot_si128(m, b));
}

static inline __attribute__((always_inline)) void eval_impl(
        int party, int n, const int p, long long N, const u64 *root, const u64 *s_cw,
        const u64 *v_cw, const uint8_t *t_cw, const u64 *final, const u64 *y, u64 *out) {
    const __m128i clear = pack(~1ULL, ~0ULL);
    for (long long g0 = 0; g0 < N; g0 += GROUP) {
        int cnt = (int)(N - g0 < GROUP ? N - g0 : GROUP);
        __m128i s[GROUP], blk[2 * GROUP];
        u64 t[GROUP], v[GROUP][2], yy[GROUP];
        for (int k = 0; k < cnt; k++) {
            s[k] = _mm_loadu_si128((const __m128i *)(root + 2 * (g0 + k)));
            t[k] = (u64)party;
            v[k][0] = v[k][1] = 0;
            yy[k] = y[g0 + k];
        }
        for (int i = 0; i < n; i++) {
            int shift = n - 1 - i;
            for (int k = 0; k < cnt; k++) {
                int bit = (int)((yy[k] >> shift) & 1);
                blk[2 * k] = _mm_xor_si128(s[k], constant(bit));
                blk[2 * k + 1] = _mm_xor_si128(s[k], constant(p == 1 ? 2 : 2 + bit));
            }
            mmo(blk, 2 * cnt);
            for (int k = 0; k < cnt; k++) {
                long long key = g0 + k;
                u64 bit = (yy[k] >> shift) & 1;
                u64 m = 0 - t[k];
                __m128i child = blk[2 * k];
                u64 tnew = lo(child) & 1;
                child = _mm_and_si128(child, clear);
                __m128i scw = _mm_loadu_si128((const __m128i *)(s_cw + 2 * ((u64)i * N + key)));
                s[k] = _mm_xor_si128(child, _mm_and_si128(scw, _mm_set1_epi64x((long long)m)));
                u64 tc = t_cw[(u64)i * N + key];
                tnew ^= t[k] & (tc >> bit) & 1;
                const u64 *vc = v_cw + p * ((u64)i * N + key);
                u64 vb[2];
                _mm_storeu_si128((__m128i *)vb, blk[2 * k + 1]);
                if (p == 1) {
                    v[k][0] += vb[bit] + (m & vc[0]);
                } else {
                    v[k][0] += vb[0] + (m & vc[0]);
                    v[k][1] += vb[1] + (m & vc[1]);
                }
                t[k] = tnew;
            }
        }
        for (int k = 0; k < cnt; k++) {
            long long key = g0 + k;
            u64 m = 0 - t[k];
            u64 words[2] = {lo(s[k]), hi(s[k])};
            for (int j = 0; j < p; j++) {
                u64 r = v[k][j] + words[j] + (m & final[p * key + j]);
                out[p * (g0 + k) + j] = party == 0 ? r : 0 - r;
            }
        }
    }
}

/* out[N*p] = party's shares of f(y) for N keys; arrays laid out as in fss.py. */
int dcf_eval(int party, int n, int p, long long N, const u64 *root, const u64 *s_cw,
             const u64 *v_cw, const uint8_t *t_cw, const u64 *final, const u64 *y, u64 *out) {
    if (!ready || p < 1 || p > 2 || n < 1 || n > 64) return -1;
    if (p == 1) eval_impl(party, n, 1, N, root, s_cw, v_cw, t_cw, final, y, out);
    else eval_impl(party, n, 2, N, root, s_cw, v_cw, t_cw, final, y, out);
    return 0;
}

static inline __attribute__((always_inline)) void gen_impl(
        int n, const int p, long long N, const u64 *alpha, const u64 *beta, const u64 *s0,
        const u64 *s1, u64 *s_cw, u64 *v_cw, uint8_t *t_cw, u64 *final) {
    const int nb = 2 + (p == 2 ? 2 : 1);       /* PRG blocks per seed */
    const __m128i clear = pack(~1ULL, ~0ULL);
    for (long long g0 = 0; g0 < N; g0 += GROUP) {
        int cnt = (int)(N - g0 < GROUP ? N - g0 : GROUP);
        __m128i s[2][GROUP], blk[4 * GROUP];
        u64 t[2][GROUP], va[GROUP][2];
        for (int k = 0; k < cnt; k++) {
            s[0][k] = _mm_loadu_si128((const __m128i *)(s0 + 2 * (g0 + k)));
            s[1][k] = _mm_loadu_si128((const __m128i *)(s1 + 2 * (g0 + k)));
            t[0][k] = 0; t[1][k] = 1;
            va[k][0] = va[k][1] = 0;
        }
        for (int i = 0; i < n; i++) {
            int shift = n - 1 - i;
            __m128i out[2][GROUP][4];
            for (int b = 0; b < 2; b++) {
                for (int k = 0; k < cnt; k++)
                    for (int j = 0; j < nb; j++)
                        blk[nb * k + j] = _mm_xor_si128(s[b][k], constant(j));
                mmo(blk, nb * cnt);
                for (int k = 0; k < cnt; k++)
                    for (int j = 0; j < nb; j++) out[b][k][j] = blk[nb * k + j];
            }
            for (int k = 0; k < cnt; k++) {
                long long key = g0 + k;
                u64 bit = (alpha[key] >> shift) & 1, bm = 0 - bit;
                __m128i bv = _mm_set1_epi64x((long long)bm);
                u64 tL[2], tR[2], vL[2][2], vR[2][2];
                __m128i sL[2], sR[2];
                for (int b = 0; b < 2; b++) {
                    tL[b] = lo(out[b][k][0]) & 1;
                    tR[b] = lo(out[b][k][1]) & 1;
                    sL[b] = _mm_and_si128(out[b][k][0], clear);
                    sR[b] = _mm_and_si128(out[b][k][1], clear);
                    if (p == 1) {
                        vL[b][0] = lo(out[b][k][2]);
                        vR[b][0] = hi(out[b][k][2]);
                    } else {
                        vL[b][0] = lo(out[b][k][2]); vL[b][1] = hi(out[b][k][2]);
                        vR[b][0] = lo(out[b][k][3]); vR[b][1] = hi(out[b][k][3]);
                    }
                }
                u64 sign = 1 - 2 * t[1][k];
                __m128i scw = _mm_xor_si128(selv(bv, sL[0], sR[0]), selv(bv, sL[1], sR[1]));
                u64 *vc = v_cw + p * ((u64)i * N + key);
                for (int j = 0; j < p; j++) {
                    u64 lose0 = sel(bm, vL[0][j], vR[0][j]), lose1 = sel(bm, vL[1][j], vR[1][j]);
                    u64 keep0 = sel(bm, vR[0][j], vL[0][j]), keep1 = sel(bm, vR[1][j], vL[1][j]);
                    u64 w = sign * (lose1 - lose0 - va[k][j]) + (bm & (sign * beta[p * key + j]));
                    va[k][j] = va[k][j] - keep1 + keep0 + sign * w;
                    vc[j] = w;
                }
                u64 tl = tL[0] ^ tL[1] ^ bit ^ 1, tr = tR[0] ^ tR[1] ^ bit;
                u64 tkeep = sel(bm, tr, tl);
                for (int b = 0; b < 2; b++) {
                    __m128i keep = selv(bv, sR[b], sL[b]);
                    u64 m = 0 - t[b][k];
                    s[b][k] = _mm_xor_si128(keep, _mm_and_si128(scw, _mm_set1_epi64x((long long)m)));
                    t[b][k] = sel(bm, tR[b], tL[b]) ^ (t[b][k] & tkeep);
                }
                _mm_storeu_si128((__m128i *)(s_cw + 2 * ((u64)i * N + key)), scw);
                t_cw[(u64)i * N + key] = (uint8_t)(tl | (tr << 1));
            }
        }
        for (int k = 0; k < cnt; k++) {
            long long key = g0 + k;
            u64 sign = 1 - 2 * t[1][k];
            u64 w0[2] = {lo(s[0][k]), hi(s[0][k])}, w1[2] = {lo(s[1][k]), hi(s[1][k])};
            for (int j = 0; j < p; j++)
                final[p * key + j] = sign * (w1[j] - w0[j] - va[k][j]);
        }
    }
}

/* Correction words for N keys; outputs laid out as in fss.gen (level-major, stride N). */
int dcf_gen(int n, int p, long long N, const u64 *alpha, const u64 *beta, const u64 *s0,
            const u64 *s1, u64 *s_cw, u64 *v_cw, uint8_t *t_cw, u64 *final) {
    if (!ready || p < 1 || p > 2 || n < 1 || n > 64) return -1;
    if (p == 1) gen_impl(n, 1, N, alpha, beta, s0, s1, s_cw, v_cw, t_cw, final);
    else gen_impl(n, 2, N, alpha, beta, s0, s1, s_cw, v_cw, t_cw, final);
    return 0;
}
