/* One-pass per-channel statistics of float32 data: min, max, sum, sum of squares, non-zero count.
 *
 * featcheck reduces every hooked layer's output inside the forward hook. Four separate torch
 * reductions plus an exact zero count read each activation five times; this reads it once.
 * Non-finite values are not treated specially, and neither is overflow: the AVX2 path keeps
 * float32 partial sums (double accumulators measured 30-40% slower), each lane of which holds at
 * most 512 values before it is flushed to double, so they cannot overflow while every |value| is
 * below 2^58 (512 * 2^116 < 2^128). Above that they may, but an overflowed float32 sum is +-inf or
 * NaN and stays so in the double totals: the caller recomputes exactly every channel whose sum
 * or sum of squares is not finite, and so cannot miss it. (Nor can squares that underflow float32
 * be detected here: the caller recomputes channels whose largest |value| is tiny too.) The GIL is
 * released, so callers may split the channels across threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
/* -DFC_PORTABLE builds the plain C paths only, as on other processors (to test them on x86) */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(FC_PORTABLE)
#include <immintrin.h>
#define FC_X86 1
#endif

/* Channel c of a C-contiguous [A, C, B] array is A rows of B floats, row a at (a * C + c) * B. */

typedef struct { float mn, mx; double s, q, nz; } stats;

/* Below this ratio of variance to mean square the float32 sum of squares loses too many digits
 * (_stats._ILL_CONDITIONED). */
#define FAST_ILL_CONDITIONED 1e-2

static void row_scalar(const float *p, Py_ssize_t length, stats *st) {
    for (Py_ssize_t i = 0; i < length; i++) {
        float v = p[i];
        st->mn = v < st->mn ? v : st->mn;
        st->mx = v > st->mx ? v : st->mx;
        st->s += v;
        st->q += (double)v * v;
        st->nz += (v != 0.0f);
    }
}

#ifdef FC_X86
__attribute__((target("avx2,fma")))
static double hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128d a = _mm_add_pd(_mm_cvtps_pd(lo), _mm_cvtps_pd(_mm_movehl_ps(lo, lo)));
    __m128d b = _mm_add_pd(_mm_cvtps_pd(hi), _mm_cvtps_pd(_mm_movehl_ps(hi, hi)));
    a = _mm_add_pd(a, b);
    return _mm_cvtsd_f64(_mm_add_sd(a, _mm_unpackhi_pd(a, a)));
}

/* float32 partial sums in 8 lanes, flushed to double every 4096 values, so long rows keep their
 * precision (float32 holds the non-zero counts exactly well past 4096 per lane) */
__attribute__((target("avx2,fma")))
static void row_avx2(const float *p, Py_ssize_t length, stats *st) {
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
    __m256 mn0 = _mm256_set1_ps(st->mn), mn1 = mn0, mx0 = _mm256_set1_ps(st->mx), mx1 = mx0;
    Py_ssize_t i = 0;
    while (i + 16 <= length) {
        Py_ssize_t end = i + 4096 < length ? i + 4096 : length;
        __m256 s0 = zero, s1 = zero, q0 = zero, q1 = zero, n0 = zero, n1 = zero;
        for (; i + 16 <= end; i += 16) {
            __m256 a = _mm256_loadu_ps(p + i), b = _mm256_loadu_ps(p + i + 8);
            mn0 = _mm256_min_ps(mn0, a); mn1 = _mm256_min_ps(mn1, b);
            mx0 = _mm256_max_ps(mx0, a); mx1 = _mm256_max_ps(mx1, b);
            s0 = _mm256_add_ps(s0, a); s1 = _mm256_add_ps(s1, b);
            q0 = _mm256_fmadd_ps(a, a, q0); q1 = _mm256_fmadd_ps(b, b, q1);
            n0 = _mm256_add_ps(n0, _mm256_and_ps(_mm256_cmp_ps(a, zero, _CMP_NEQ_UQ), one));
            n1 = _mm256_add_ps(n1, _mm256_and_ps(_mm256_cmp_ps(b, zero, _CMP_NEQ_UQ), one));
        }
        st->s += hsum(_mm256_add_ps(s0, s1));
        st->q += hsum(_mm256_add_ps(q0, q1));
        st->nz += hsum(_mm256_add_ps(n0, n1));
    }
    float mnv[8], mxv[8];
    _mm256_storeu_ps(mnv, _mm256_min_ps(mn0, mn1));
    _mm256_storeu_ps(mxv, _mm256_max_ps(mx0, mx1));
    for (int k = 0; k < 8; k++) {
        st->mn = mnv[k] < st->mn ? mnv[k] : st->mn;
        st->mx = mxv[k] > st->mx ? mxv[k] : st->mx;
    }
    row_scalar(p + i, length - i, st);
}

/* Rows shorter than this are reduced a channel at a time (see chan_avx2); longer ones a row at a
 * time in memory order (row_avx2). */
#define SHORT_ROW 256

/* One channel's A rows of B values (row a at p + a * stride; B < SHORT_ROW) into st, with the
 * eight-lane accumulators kept across its rows: row by row, each row of a 7 x 7 or 14 x 14 map
 * paid three horizontal sums and the lanes' min and max folded to scalars for its 49 or 196 values,
 * which made those maps' pass 2-3x slower per value (10-22 GB/s against 30-40 for long rows, in
 * cache) than long rows'. The partial float32 sums are flushed to double every 4096 values, as
 * row_avx2's are; a row's last B % 8 values go to the double sums directly. */
__attribute__((target("avx2,fma")))
static void chan_avx2(const float *p, Py_ssize_t a_n, Py_ssize_t stride, Py_ssize_t b_n, stats *st) {
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
    __m256 mn = _mm256_set1_ps(st->mn), mx = _mm256_set1_ps(st->mx);
    __m256 s0 = zero, s1 = zero, q0 = zero, q1 = zero, n0 = zero, n1 = zero;
    Py_ssize_t pending = 0, wide = b_n & ~(Py_ssize_t)7;
    for (Py_ssize_t a = 0; a < a_n; a++) {
        const float *r = p + a * stride;
        Py_ssize_t i = 0;
        for (; i + 16 <= wide; i += 16) {
            __m256 u = _mm256_loadu_ps(r + i), v = _mm256_loadu_ps(r + i + 8);
            mn = _mm256_min_ps(mn, _mm256_min_ps(u, v));
            mx = _mm256_max_ps(mx, _mm256_max_ps(u, v));
            s0 = _mm256_add_ps(s0, u); s1 = _mm256_add_ps(s1, v);
            q0 = _mm256_fmadd_ps(u, u, q0); q1 = _mm256_fmadd_ps(v, v, q1);
            n0 = _mm256_add_ps(n0, _mm256_and_ps(_mm256_cmp_ps(u, zero, _CMP_NEQ_UQ), one));
            n1 = _mm256_add_ps(n1, _mm256_and_ps(_mm256_cmp_ps(v, zero, _CMP_NEQ_UQ), one));
        }
        if (i < wide) {
            __m256 u = _mm256_loadu_ps(r + i);
            mn = _mm256_min_ps(mn, u); mx = _mm256_max_ps(mx, u);
            s0 = _mm256_add_ps(s0, u); q0 = _mm256_fmadd_ps(u, u, q0);
            n0 = _mm256_add_ps(n0, _mm256_and_ps(_mm256_cmp_ps(u, zero, _CMP_NEQ_UQ), one));
        }
        row_scalar(r + wide, b_n - wide, st);  /* the row's last values */
        pending += wide;
        if (pending >= 4096 || a == a_n - 1) {
            st->s += hsum(_mm256_add_ps(s0, s1));
            st->q += hsum(_mm256_add_ps(q0, q1));
            st->nz += hsum(_mm256_add_ps(n0, n1));
            s0 = s1 = q0 = q1 = n0 = n1 = zero;
            pending = 0;
        }
    }
    float mnv[8], mxv[8];
    _mm256_storeu_ps(mnv, mn);
    _mm256_storeu_ps(mxv, mx);
    for (int k = 0; k < 8; k++) {
        st->mn = mnv[k] < st->mn ? mnv[k] : st->mn;
        st->mx = mxv[k] > st->mx ? mxv[k] : st->mx;
    }
}
#endif

/* The rendering sample's positions within a row of B values: K int64 offsets, each checked to lie
 * in [0, B). Returns K, or -1 with an exception set. */
static Py_ssize_t read_offsets(const Py_buffer *offsets, Py_ssize_t b_n) {
    if (offsets->len % (Py_ssize_t)sizeof(int64_t) != 0) {
        PyErr_SetString(PyExc_ValueError, "expected the sample's offsets as int64 values");
        return -1;
    }
    Py_ssize_t k_n = offsets->len / (Py_ssize_t)sizeof(int64_t);
    const int64_t *off = (const int64_t *)offsets->buf;
    for (Py_ssize_t k = 0; k < k_n; k++)
        if (off[k] < 0 || off[k] >= b_n) {
            PyErr_Format(PyExc_ValueError, "sample offset %lld lies outside a row of %zd values", (long long)off[k], b_n);
            return -1;
        }
    return k_n;
}

/* Row c of the first sample (a = 0) at the offsets, into sample row c (K floats). */
static inline void take_row(const float *p, const int64_t *off, Py_ssize_t k_n, float *s) {
    for (Py_ssize_t k = 0; k < k_n; k++) s[k] = p[off[k]];
}

/* The pass of chanstats and chanfast over channels c0..c1-1 into acc, copying the rendering sample
 * (sample[c, k] = x[0, c, off[k]], k < k_n) from each row of the first sample as it goes. */
static void stats_pass(const float *x, Py_ssize_t a_n, Py_ssize_t c_n, Py_ssize_t b_n, Py_ssize_t c0, Py_ssize_t c1,
                       stats *acc, float *smp, const int64_t *off, Py_ssize_t k_n) {
#ifdef FC_X86
    int wide = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    for (Py_ssize_t c = c0; c < c1; c++)
        acc[c - c0] = (stats){INFINITY, -INFINITY, 0.0, 0.0, 0.0};
#ifdef FC_X86
    if (wide && b_n >= 8 && b_n < SHORT_ROW) {  /* short rows: a channel at a time (see chan_avx2) */
        for (Py_ssize_t c = c0; c < c1; c++) {
            chan_avx2(x + c * b_n, a_n, c_n * b_n, b_n, &acc[c - c0]);
            if (k_n) take_row(x + c * b_n, off, k_n, smp + c * k_n);
        }
        return;
    }
#endif
    /* memory order (sample outer, channel inner): the hardware prefetcher sees one stream */
    for (Py_ssize_t a = 0; a < a_n; a++) {
        for (Py_ssize_t c = c0; c < c1; c++) {
            const float *p = x + (a * c_n + c) * b_n;
#ifdef FC_X86
            if (wide) row_avx2(p, b_n, &acc[c - c0]);
            else
#endif
            row_scalar(p, b_n, &acc[c - c0]);
            if (a == 0 && k_n) take_row(p, off, k_n, smp + c * k_n);
        }
    }
}

/* The arguments chanstats and chanfast share, (data, A, C, B, out, c0, c1[, sample, offsets]),
 * parsed and checked: data holds A x C x B floats, out `rows` x C doubles, 0 <= c0 <= c1 <= C, and
 * a sample (given with its offsets, or neither) C x K floats for K offsets within a row. The
 * sizes are compared by division, so that no product of bogus ones overflows past the check. */
typedef struct { Py_buffer data, out, sample, offsets; Py_ssize_t a_n, c_n, b_n, c0, c1, k_n; } pass_args;

static void release_pass(pass_args *p) {
    PyBuffer_Release(&p->data);
    PyBuffer_Release(&p->out);
    if (p->sample.obj != NULL) PyBuffer_Release(&p->sample);
    if (p->offsets.obj != NULL) PyBuffer_Release(&p->offsets);
}

/* 0, or -1 with an exception set and nothing held */
static int parse_pass(PyObject *args, const char *name, Py_ssize_t rows, pass_args *p) {
    memset(p, 0, sizeof *p);
    if (!PyArg_ParseTuple(args, "y*nnnw*nn|w*y*", &p->data, &p->a_n, &p->c_n, &p->b_n, &p->out, &p->c0, &p->c1,
                          &p->sample, &p->offsets))
        return -1;
    if (p->a_n < 1 || p->c_n < 1 || p->b_n < 1 || p->c0 < 0 || p->c1 > p->c_n || p->c0 > p->c1 ||
        p->data.len / (Py_ssize_t)sizeof(float) / p->a_n / p->c_n < p->b_n ||
        p->out.len / (Py_ssize_t)sizeof(double) / rows < p->c_n || (p->sample.obj != NULL) != (p->offsets.obj != NULL)) {
        PyErr_Format(PyExc_ValueError, "%s: buffer sizes do not match A, C, B", name);
        release_pass(p);
        return -1;
    }
    if (p->sample.obj != NULL) {
        p->k_n = read_offsets(&p->offsets, p->b_n);
        if (p->k_n >= 0 && p->sample.len / (Py_ssize_t)sizeof(float) / p->c_n < p->k_n)
            PyErr_Format(PyExc_ValueError, "%s: the sample buffer holds fewer than C x K floats", name);
        if (PyErr_Occurred()) {
            release_pass(p);
            return -1;
        }
    }
    return 0;
}

/* chanstats(data, A, C, B, out, c0, c1[, sample, offsets]): for channels c0 <= c < c1 of a
 * C-contiguous float32 [A, C, B] buffer, writes min, max, sum, sum of squares and the non-zero
 * count to out, a writable float64 buffer of 5 x C (row-major). With sample (a writable float32
 * buffer of C x K) and offsets (K int64 positions within a row), also copies the rendering sample
 * of those channels: sample[c, k] = data[0, c, offsets[k]], taken from each row of the first
 * sample while the pass has it in cache. A separate cut of a large map's sample reads it again
 * from memory, strided: measured as much time as this whole pass. */
static PyObject *chanstats(PyObject *self, PyObject *args) {
    pass_args p;
    if (parse_pass(args, "chanstats", 5, &p) < 0) return NULL;
    stats *acc = PyMem_RawMalloc((size_t)(p.c1 - p.c0 + 1) * sizeof(stats));
    if (acc == NULL) {
        release_pass(&p);
        return PyErr_NoMemory();
    }
    const float *x = (const float *)p.data.buf;
    double *o = (double *)p.out.buf;
    Py_ssize_t c_n = p.c_n;
    Py_BEGIN_ALLOW_THREADS
    stats_pass(x, p.a_n, c_n, p.b_n, p.c0, p.c1, acc, (float *)p.sample.buf, (const int64_t *)p.offsets.buf, p.k_n);
    for (Py_ssize_t c = p.c0; c < p.c1; c++) {
        stats st = acc[c - p.c0];
        o[c] = st.mn; o[c_n + c] = st.mx; o[2 * c_n + c] = st.s; o[3 * c_n + c] = st.q; o[4 * c_n + c] = st.nz;
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(acc);
    release_pass(&p);
    Py_RETURN_NONE;
}

/* chanexact(data, A, C, B, out, lo, hi, bounded, idx): the exact block of channels of a
 * C-contiguous float32 [A, C, B] buffer, in the row order of featcheck._stats.ROWS (finite count,
 * mean, sd, min, max, zeros, non-finite, at lower bound, at upper bound), written to the columns
 * of out, a writable float64 buffer of 9 x C. idx is None for every channel, or a buffer of int64
 * channel indices (only those columns are written). Used for small maps, where per-call overhead
 * dominates, and for the channels the fast kernel cannot get right.
 *
 * Sums are kept in double: every float32 value, its square and the sum of up to 2^60 of them are
 * finite normal doubles (|x| < 2^128, squares < 2^256; the smallest square, 2^-298, is far above
 * double's normal range), so nothing overflows or underflows. One pass gives the sum and the sum
 * of squares; the variance from them, q/n - mean^2, carries an absolute error of about
 * n * 2^-53 * q/n, so a channel whose variance is below n * 2^-33 times its mean square (relative
 * error above 2^-20) is recomputed from deviations in a second pass. A non-finite value makes the
 * sums non-finite (finite ones cannot overflow): such a channel is recomputed with non-finite
 * values counted and left out. Bound counts compare the float32 values with the float32-rounded
 * thresholds lo and hi (as torch compares a float32 tensor with a number); NaN counts at neither. */
typedef struct { double n, s, q, z, lo, hi, d, mean, sd; float mn, mx; } exact_acc;

/* First-pass results of a block of up to EXACT_BLOCK consecutive channels, one array per
 * statistic, on the stack: the finishing pass then reads four channels per vector, and no
 * accumulators are allocated per call (a malloc and its initialisation cost as much as reducing
 * a small map). */
#define EXACT_BLOCK 64
typedef struct { double s[EXACT_BLOCK], q[EXACT_BLOCK], z[EXACT_BLOCK], lo[EXACT_BLOCK], hi[EXACT_BLOCK];
                 float mn[EXACT_BLOCK], mx[EXACT_BLOCK]; } exact_first;

/* One channel's first pass: rows a = 0..A-1 of B values, at p + a * stride. */
#ifdef FC_X86
/* Eight lanes of first-pass accumulators: float32 min and max, double sums of values and squares
 * (s0/q0 for lanes 0-3, s1/q1 for lanes 4-7), int32 counts of zeros and of values at each bound
 * (fewer than 2^31 values per lane). Shared by the two AVX2 loops below, which differ only in
 * what a lane is: eight positions of one channel, or one position of eight channels. */
typedef struct { __m256 mn, mx; __m256d s0, s1, q0, q1; __m256i z, cl, ch; } lanes8;
typedef struct { double s[8], q[8]; float mn[8], mx[8]; int32_t z[8], lo[8], hi[8]; } lanes8_out;

#define FC_AVX2_INLINE static inline __attribute__((target("avx2,fma"), always_inline))

FC_AVX2_INLINE void lanes8_init(lanes8 *l) {
    l->mn = _mm256_set1_ps(INFINITY); l->mx = _mm256_set1_ps(-INFINITY);
    l->s0 = l->s1 = l->q0 = l->q1 = _mm256_setzero_pd();
    l->z = l->cl = l->ch = _mm256_setzero_si256();
}

FC_AVX2_INLINE void lanes8_add(lanes8 *l, __m256 v, __m256 vtl, __m256 vth, int bounded) {
    __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    l->s0 = _mm256_add_pd(l->s0, lo); l->s1 = _mm256_add_pd(l->s1, hi);
    l->q0 = _mm256_fmadd_pd(lo, lo, l->q0); l->q1 = _mm256_fmadd_pd(hi, hi, l->q1);
    l->mn = _mm256_min_ps(l->mn, v); l->mx = _mm256_max_ps(l->mx, v);
    /* a true comparison is all ones, -1 as an integer: subtracting it counts */
    l->z = _mm256_sub_epi32(l->z, _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_EQ_OQ)));
    if (bounded) {
        l->cl = _mm256_sub_epi32(l->cl, _mm256_castps_si256(_mm256_cmp_ps(v, vtl, _CMP_LE_OQ)));
        l->ch = _mm256_sub_epi32(l->ch, _mm256_castps_si256(_mm256_cmp_ps(v, vth, _CMP_GE_OQ)));
    }
}

FC_AVX2_INLINE void lanes8_store(const lanes8 *l, lanes8_out *o) {
    _mm256_storeu_pd(o->s, l->s0); _mm256_storeu_pd(o->s + 4, l->s1);
    _mm256_storeu_pd(o->q, l->q0); _mm256_storeu_pd(o->q + 4, l->q1);
    _mm256_storeu_ps(o->mn, l->mn); _mm256_storeu_ps(o->mx, l->mx);
    _mm256_storeu_si256((__m256i *)o->z, l->z);
    _mm256_storeu_si256((__m256i *)o->lo, l->cl);
    _mm256_storeu_si256((__m256i *)o->hi, l->ch);
}

/* One channel, 8 values at a time, the lanes kept across the channel's rows: the lanes into o,
 * the sums and counts of the rows' tails (fewer than 8 values each) into t's s, q, mn, mx, z,
 * lo, hi. Needs rows of at least 8 values and fewer than 2^33 values in all (the lane counts). */
FC_AVX2_INLINE void exact_lanes_avx2(const float *p, Py_ssize_t rows, Py_ssize_t stride, Py_ssize_t length,
                                     lanes8_out *o, exact_acc *t, float tl, float th, int bounded) {
    const __m256 vtl = _mm256_set1_ps(tl), vth = _mm256_set1_ps(th);
    lanes8 l;
    lanes8_init(&l);
    double ts = 0.0, tq = 0.0;
    float tmn = INFINITY, tmx = -INFINITY;
    Py_ssize_t tz = 0, tcl = 0, tch = 0;
    for (Py_ssize_t a = 0; a < rows; a++) {
        const float *r = p + a * stride;
        Py_ssize_t i = 0;
        for (; i + 8 <= length; i += 8)
            lanes8_add(&l, _mm256_loadu_ps(r + i), vtl, vth, bounded);
        for (; i < length; i++) {  /* the row's tail */
            float v = r[i];
            ts += v; tq += (double)v * v;
            tmn = v < tmn ? v : tmn; tmx = v > tmx ? v : tmx;
            tz += (v == 0.0f);
            if (bounded) { tcl += (v <= tl); tch += (v >= th); }
        }
    }
    lanes8_store(&l, o);
    t->s = ts; t->q = tq; t->mn = tmn; t->mx = tmx;
    t->z = (double)tz; t->lo = (double)tcl; t->hi = (double)tch;
}

/* One channel, its lanes then added up. Returns 0 when it did nothing (rows of fewer than 8
 * values or a channel too long for the lane counts). */
__attribute__((target("avx2,fma")))
static int exact_channel_avx2(const float *p, Py_ssize_t rows, Py_ssize_t stride, Py_ssize_t length,
                              exact_acc *st, float tl, float th, int bounded) {
    if (length < 8 || (double)rows * (double)length >= 0x1p33) return 0;
    lanes8_out o;
    exact_acc t;
    exact_lanes_avx2(p, rows, stride, length, &o, &t, tl, th, bounded);
    double ts = t.s, tq = t.q, tz = t.z, tcl = t.lo, tch = t.hi;
    float tmn = t.mn, tmx = t.mx;
    for (int k = 0; k < 8; k++) {
        /* a NaN leaves a lane's min or max undefined: the sums are NaN too, and the channel is
         * recomputed by the careful passes */
        ts += o.s[k]; tq += o.q[k];
        tmn = o.mn[k] < tmn ? o.mn[k] : tmn;
        tmx = o.mx[k] > tmx ? o.mx[k] : tmx;
        tz += o.z[k]; tcl += o.lo[k]; tch += o.hi[k];  /* integers below 2^53: exact in double */
    }
    st->s = ts; st->q = tq; st->mn = tmn; st->mx = tmx;
    st->z = tz; st->lo = tcl; st->hi = tch;
    return 1;
}

/* Four channels c..c+3 as exact_channel_avx2 does them, their lanes then added up four channels
 * per vector (a 4 x 4 transpose), in exact_channel_avx2's order: the same results, without its
 * scalar loop over lanes, which took most of the time on rows of 8-32 values. Fills f's entries
 * j..j+3. Same conditions as exact_lanes_avx2. */
FC_AVX2_INLINE void exact_quad_avx2(const float *x, Py_ssize_t a_n, Py_ssize_t c_n, Py_ssize_t b_n, Py_ssize_t c,
                                    exact_first *f, Py_ssize_t j, float tl, float th, int bounded) {
    lanes8_out o[4];
    exact_acc t[4];
    for (int i = 0; i < 4; i++)
        exact_lanes_avx2(x + (c + i) * b_n, a_n, c_n * b_n, b_n, &o[i], &t[i], tl, th, bounded);
    /* doubles: lanes 4h..4h+3 of the four channels, transposed so that vector k holds lane 4h+k */
#define FC_SUM_LANES(field, dst) { \
        __m256d acc = _mm256_setr_pd(t[0].field, t[1].field, t[2].field, t[3].field); \
        for (int h = 0; h < 8; h += 4) { \
            __m256d r0 = _mm256_loadu_pd(o[0].field + h), r1 = _mm256_loadu_pd(o[1].field + h); \
            __m256d r2 = _mm256_loadu_pd(o[2].field + h), r3 = _mm256_loadu_pd(o[3].field + h); \
            __m256d u0 = _mm256_unpacklo_pd(r0, r1), u1 = _mm256_unpackhi_pd(r0, r1); \
            __m256d u2 = _mm256_unpacklo_pd(r2, r3), u3 = _mm256_unpackhi_pd(r2, r3); \
            acc = _mm256_add_pd(acc, _mm256_permute2f128_pd(u0, u2, 0x20)); \
            acc = _mm256_add_pd(acc, _mm256_permute2f128_pd(u1, u3, 0x20)); \
            acc = _mm256_add_pd(acc, _mm256_permute2f128_pd(u0, u2, 0x31)); \
            acc = _mm256_add_pd(acc, _mm256_permute2f128_pd(u1, u3, 0x31)); \
        } \
        _mm256_storeu_pd((dst) + j, acc); }
    FC_SUM_LANES(s, f->s)
    FC_SUM_LANES(q, f->q)
#undef FC_SUM_LANES
    /* 32-bit lanes: a 4 x 4 transpose in each half, so that v[k] holds lane k in its low half and
     * lane k + 4 in its high half */
#define FC_TRANSPOSE(field, v) { \
        __m256 r0 = _mm256_loadu_ps((const float *)o[0].field), r1 = _mm256_loadu_ps((const float *)o[1].field); \
        __m256 r2 = _mm256_loadu_ps((const float *)o[2].field), r3 = _mm256_loadu_ps((const float *)o[3].field); \
        __m256 u0 = _mm256_unpacklo_ps(r0, r1), u1 = _mm256_unpackhi_ps(r0, r1); \
        __m256 u2 = _mm256_unpacklo_ps(r2, r3), u3 = _mm256_unpackhi_ps(r2, r3); \
        v[0] = _mm256_shuffle_ps(u0, u2, 0x44); v[1] = _mm256_shuffle_ps(u0, u2, 0xEE); \
        v[2] = _mm256_shuffle_ps(u1, u3, 0x44); v[3] = _mm256_shuffle_ps(u1, u3, 0xEE); }
    __m256 v[4];
    /* min(a, b) is a < b ? a : b and max(a, b) a > b ? a : b, as in exact_channel_avx2, lane 0 first */
#define FC_EXTREME(field, op, dst) { \
        FC_TRANSPOSE(field, v) \
        __m128 acc = _mm_setr_ps(t[0].field, t[1].field, t[2].field, t[3].field); \
        for (int k = 0; k < 4; k++) acc = op(_mm256_castps256_ps128(v[k]), acc); \
        for (int k = 0; k < 4; k++) acc = op(_mm256_extractf128_ps(v[k], 1), acc); \
        _mm_storeu_ps((dst) + j, acc); }
    FC_EXTREME(mn, _mm_min_ps, f->mn)
    FC_EXTREME(mx, _mm_max_ps, f->mx)
#undef FC_EXTREME
#define FC_COUNT(field, dst) { \
        FC_TRANSPOSE(field, v) \
        __m256d acc = _mm256_setr_pd(t[0].field, t[1].field, t[2].field, t[3].field); \
        for (int k = 0; k < 4; k++) { \
            __m256i w = _mm256_castps_si256(v[k]); \
            acc = _mm256_add_pd(acc, _mm256_cvtepi32_pd(_mm256_castsi256_si128(w))); \
            acc = _mm256_add_pd(acc, _mm256_cvtepi32_pd(_mm256_extracti128_si256(w, 1))); \
        } \
        _mm256_storeu_pd((dst) + j, acc); }
    FC_COUNT(z, f->z)
    FC_COUNT(lo, f->lo)
    FC_COUNT(hi, f->hi)
#undef FC_COUNT
#undef FC_TRANSPOSE
}

/* Eight channels c0..c0+7 at once, one per lane, for rows shorter than 8 values (where a channel at
 * a time would spend its time on bookkeeping, not values): lane j reads channel c0 + j's values,
 * B floats apart, with a gather (B == 1: one plain load; B == 4: four loads and a transpose). The
 * values of a lane are added in the same order either way. Fills f's entries j0..j0+7. */
FC_AVX2_INLINE void exact_group_avx2(const float *x, Py_ssize_t a_n, Py_ssize_t c_n, Py_ssize_t b_n, Py_ssize_t c0,
                                     exact_first *f, Py_ssize_t j0, float tl, float th, int bounded) {
    const __m256 vtl = _mm256_set1_ps(tl), vth = _mm256_set1_ps(th);
    const __m256i lanes = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)b_n));
    lanes8 l;
    lanes8_init(&l);
    for (Py_ssize_t a = 0; a < a_n; a++) {
        const float *r = x + (a * c_n + c0) * b_n;
        if (b_n == 4) {  /* 32 contiguous values, transposed in registers: cheaper than four gathers */
            __m256 r0 = _mm256_loadu_ps(r), r1 = _mm256_loadu_ps(r + 8);
            __m256 r2 = _mm256_loadu_ps(r + 16), r3 = _mm256_loadu_ps(r + 24);
            /* channels 0|4, 1|5, 2|6, 3|7 in the two halves, then a 4 x 4 transpose in each half */
            __m256 p0 = _mm256_permute2f128_ps(r0, r2, 0x20), p1 = _mm256_permute2f128_ps(r0, r2, 0x31);
            __m256 p2 = _mm256_permute2f128_ps(r1, r3, 0x20), p3 = _mm256_permute2f128_ps(r1, r3, 0x31);
            __m256 t0 = _mm256_unpacklo_ps(p0, p1), t1 = _mm256_unpackhi_ps(p0, p1);
            __m256 t2 = _mm256_unpacklo_ps(p2, p3), t3 = _mm256_unpackhi_ps(p2, p3);
            lanes8_add(&l, _mm256_shuffle_ps(t0, t2, 0x44), vtl, vth, bounded);
            lanes8_add(&l, _mm256_shuffle_ps(t0, t2, 0xEE), vtl, vth, bounded);
            lanes8_add(&l, _mm256_shuffle_ps(t1, t3, 0x44), vtl, vth, bounded);
            lanes8_add(&l, _mm256_shuffle_ps(t1, t3, 0xEE), vtl, vth, bounded);
        } else {
            for (Py_ssize_t i = 0; i < b_n; i++)
                lanes8_add(&l, b_n == 1 ? _mm256_loadu_ps(r) : _mm256_i32gather_ps(r + i, lanes, 4), vtl, vth, bounded);
        }
    }
    _mm256_storeu_pd(f->s + j0, l.s0); _mm256_storeu_pd(f->s + j0 + 4, l.s1);
    _mm256_storeu_pd(f->q + j0, l.q0); _mm256_storeu_pd(f->q + j0 + 4, l.q1);
    _mm256_storeu_ps(f->mn + j0, l.mn); _mm256_storeu_ps(f->mx + j0, l.mx);
#define FC_COUNTS(dst, v) \
    _mm256_storeu_pd((dst) + j0, _mm256_cvtepi32_pd(_mm256_castsi256_si128(v))); \
    _mm256_storeu_pd((dst) + j0 + 4, _mm256_cvtepi32_pd(_mm256_extracti128_si256((v), 1)));
    FC_COUNTS(f->z, l.z)
    FC_COUNTS(f->lo, l.cl)
    FC_COUNTS(f->hi, l.ch)
#undef FC_COUNTS
}
#endif

static int exact_wide = -1;

static void exact_channel(const float *p, Py_ssize_t rows, Py_ssize_t stride, Py_ssize_t length,
                          exact_acc *st, float tl, float th, int bounded) {
#ifdef FC_X86
    if (exact_wide && exact_channel_avx2(p, rows, stride, length, st, tl, th, bounded)) return;
#endif
    double s0 = 0.0, s1 = 0.0, q0 = 0.0, q1 = 0.0;
    float mn = INFINITY, mx = -INFINITY;
    Py_ssize_t z = 0, cl = 0, ch = 0;
    for (Py_ssize_t a = 0; a < rows; a++) {
        const float *r = p + a * stride;
        Py_ssize_t i = 0;
        for (; i + 2 <= length; i += 2) {  /* two chains: the adds' latency bounds the loop */
            float u = r[i], v = r[i + 1];
            s0 += u; s1 += v;
            q0 += (double)u * u; q1 += (double)v * v;
            mn = u < mn ? u : mn; mn = v < mn ? v : mn;
            mx = u > mx ? u : mx; mx = v > mx ? v : mx;
            z += (u == 0.0f) + (v == 0.0f);
            if (bounded) { cl += (u <= tl) + (v <= tl); ch += (u >= th) + (v >= th); }
        }
        for (; i < length; i++) {
            float u = r[i];
            s0 += u; q0 += (double)u * u;
            mn = u < mn ? u : mn; mx = u > mx ? u : mx;
            z += (u == 0.0f);
            if (bounded) { cl += (u <= tl); ch += (u >= th); }
        }
    }
    st->s = s0 + s1; st->q = q0 + q1; st->mn = mn; st->mx = mx;
    st->z = (double)z; st->lo = (double)cl; st->hi = (double)ch;
}

/* the careful passes for a channel with non-finite values */
static void finite_row(const float *p, Py_ssize_t length, exact_acc *st) {
    for (Py_ssize_t i = 0; i < length; i++) {
        float v = p[i];
        if (!isfinite(v)) continue;
        st->n += 1.0; st->s += v;
        st->mn = v < st->mn ? v : st->mn;
        st->mx = v > st->mx ? v : st->mx;
    }
}

static void deviation_row(const float *p, Py_ssize_t length, exact_acc *st, double mean) {
    for (Py_ssize_t i = 0; i < length; i++) {
        float v = p[i];
        if (!isfinite(v)) continue;
        double d = (double)v - mean;
        st->d += d;
        st->q += d * d;
    }
}

/* mean * mean kept apart from the subtraction that follows it: a compiler allowed to contract the
 * two into one fused multiply-add (GCC does by default where FMA is enabled, as it is for the
 * AVX2 functions) would round once instead of twice, and the vector and scalar finishing passes
 * would disagree in the last bit. */
#ifdef FC_X86
#define FC_UNFUSED(v) __asm__("" : "+x"(v))
#else
#define FC_UNFUSED(v) ((void)0)
#endif

/* The second half of a channel's statistics, after its first pass filled st (n = A * B): the
 * careful passes where the sums are not finite or the variance is ill-conditioned, the mean
 * kept within [min, max], and the variance in st->sd. */
static void exact_finish(const float *x, Py_ssize_t a_n, Py_ssize_t c_n, Py_ssize_t b_n, Py_ssize_t c,
                         exact_acc *st, double inv_total) {
    int finite = isfinite(st->s) && isfinite(st->q);
    double mm, n = st->n, meansq = st->q * inv_total, mean = st->s * inv_total;
    mm = mean * mean;
    FC_UNFUSED(mm);
    double var = meansq - mm;
    if (!finite) {  /* count the finite values, then their sum, min and max */
        st->n = 0.0; st->s = 0.0; st->mn = INFINITY; st->mx = -INFINITY;
        for (Py_ssize_t a = 0; a < a_n; a++) finite_row(x + (a * c_n + c) * b_n, b_n, st);
        n = st->n;
        mean = n > 0 ? st->s / n : 0.0;
    }
    if (n > 0 && st->mn == st->mx) {
        var = 0.0;
    } else if (n > 0 && (!finite || !(var > n * 0x1p-33 * meansq))) {
        st->d = 0.0; st->q = 0.0;
        for (Py_ssize_t a = 0; a < a_n; a++) deviation_row(x + (a * c_n + c) * b_n, b_n, st, mean);
        var = (st->q - st->d * st->d / n) / n;
    }
    if (n > 0) {
        if (mean < st->mn) mean = st->mn;
        if (mean > st->mx) mean = st->mx;
    }
    st->n = n;
    st->mean = n > 0 ? mean : 0.0;
    st->sd = n > 0 && var > 0 ? var : 0.0;
}

/* Column c of out (rows C doubles apart) from a finished channel, in the order of ROWS. */
static void exact_put(double *o, Py_ssize_t c_n, Py_ssize_t c, const exact_acc *st, double total) {
    o[c] = st->n; o[c_n + c] = st->mean; o[2 * c_n + c] = sqrt(st->sd);
    o[3 * c_n + c] = st->mn; o[4 * c_n + c] = st->mx; o[5 * c_n + c] = st->z;
    o[6 * c_n + c] = total - st->n; o[7 * c_n + c] = st->lo; o[8 * c_n + c] = st->hi;
}

/* Channel j of a block (channel c of x): finished one at a time and written to out. */
static void exact_finish_one(const float *x, Py_ssize_t a_n, Py_ssize_t c_n, Py_ssize_t b_n, Py_ssize_t c,
                             const exact_first *f, Py_ssize_t j, double *o, double total, double inv_total) {
    exact_acc st = {total, f->s[j], f->q[j], f->z[j], f->lo[j], f->hi[j], 0.0, 0.0, 0.0, f->mn[j], f->mx[j]};
    exact_finish(x, a_n, c_n, b_n, c, &st, inv_total);
    exact_put(o, c_n, c, &st, total);
}

#ifdef FC_X86
/* Channels j..j+3 of a block (c = c0 + j..) finished in one vector each, the same arithmetic as
 * exact_finish for channels whose sums are finite and whose variance is well-conditioned or zero
 * (constant): rows 0-4 of out (n, mean, sd, min, max), four channels per store. Returns the mask
 * of the other channels, which the caller redoes with exact_finish_one, outside the AVX2
 * functions (called from inside one, the plain function made a [2, 240, 1, 1] map of
 * ill-conditioned channels ten times slower: 46 against 4.3 us). */
FC_AVX2_INLINE int exact_finish4_avx2(Py_ssize_t c_n, Py_ssize_t c0, const exact_first *f, Py_ssize_t j, double *o,
                                      double total, double inv_total) {
    const __m256d n = _mm256_set1_pd(total), inv = _mm256_set1_pd(inv_total), zero = _mm256_setzero_pd();
    const __m256d inf = _mm256_set1_pd(INFINITY), absmask = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fffffffffffffffLL));
    __m256d s = _mm256_loadu_pd(f->s + j), q = _mm256_loadu_pd(f->q + j);
    __m256d mn = _mm256_cvtps_pd(_mm_loadu_ps(f->mn + j)), mx = _mm256_cvtps_pd(_mm_loadu_ps(f->mx + j));
    __m256d mean = _mm256_mul_pd(s, inv), meansq = _mm256_mul_pd(q, inv), mm = _mm256_mul_pd(mean, mean);
    FC_UNFUSED(mm);
    __m256d var = _mm256_sub_pd(meansq, mm);
    __m256d finite = _mm256_and_pd(_mm256_cmp_pd(_mm256_and_pd(s, absmask), inf, _CMP_LT_OQ),
                                   _mm256_cmp_pd(_mm256_and_pd(q, absmask), inf, _CMP_LT_OQ));
    __m256d constant = _mm256_cmp_pd(mn, mx, _CMP_EQ_OQ);
    __m256d good = _mm256_cmp_pd(var, _mm256_mul_pd(_mm256_mul_pd(n, _mm256_set1_pd(0x1p-33)), meansq), _CMP_GT_OQ);
    int easy = _mm256_movemask_pd(_mm256_and_pd(finite, _mm256_or_pd(constant, good)));
    var = _mm256_andnot_pd(constant, var);
    /* max(mn, mean) is mn > mean ? mn : mean, as exact_finish's "if (mean < mn) mean = mn" */
    mean = _mm256_min_pd(mx, _mm256_max_pd(mn, mean));
    __m256d sd = _mm256_sqrt_pd(_mm256_and_pd(var, _mm256_cmp_pd(var, zero, _CMP_GT_OQ)));
    double *p = o + c0 + j;
    _mm256_storeu_pd(p, n);
    _mm256_storeu_pd(p + c_n, mean);
    _mm256_storeu_pd(p + 2 * c_n, sd);
    _mm256_storeu_pd(p + 3 * c_n, mn);
    _mm256_storeu_pd(p + 4 * c_n, mx);
    return ~easy & 0xF;
}

/* The first pass of channels c0..c0+m-1 into f as far as the AVX2 loops take it (eight channels
 * at a time for rows under 8 values, four otherwise); returns how many channels they did. The
 * loops are here rather than in the caller: calls between AVX2 and plain functions are not
 * inlined, and each clears the vector registers' upper halves. */
__attribute__((target("avx2,fma")))
static Py_ssize_t exact_first_avx2(const float *x, Py_ssize_t a_n, Py_ssize_t c_n, Py_ssize_t b_n, Py_ssize_t c0,
                                   Py_ssize_t m, exact_first *f, float tl, float th, int bounded) {
    double total = (double)a_n * (double)b_n;
    Py_ssize_t j = 0;
    if (b_n < 8 && total < 0x1p31)
        for (; j + 8 <= m; j += 8) exact_group_avx2(x, a_n, c_n, b_n, c0 + j, f, j, tl, th, bounded);
    else if (b_n >= 8 && total < 0x1p33)
        for (; j + 4 <= m; j += 4) exact_quad_avx2(x, a_n, c_n, b_n, c0 + j, f, j, tl, th, bounded);
    return j;
}

/* Channels 0..m-1 of a block (m a multiple of 4) finished by exact_finish4_avx2 and written to
 * out: rows 0-4 first, then rows 5-8 (zeros, non-finite count 0, bound counts). Out's rows lie C
 * doubles apart, often a multiple of 4 KiB: then all nine map to the same set of the L1 cache,
 * which holds eight lines, and stores to the nine at once evicted each other (C = 512, 1024 and
 * 2048 took 2-3x as long as their neighbours). Returns the mask of channels left to
 * exact_finish_one, which rewrites all nine rows. */
__attribute__((target("avx2,fma")))
static uint64_t exact_finish_avx2(Py_ssize_t c_n, Py_ssize_t c0, const exact_first *f, Py_ssize_t m, double *o,
                                  double total, double inv_total) {
    uint64_t redo = 0;
    for (Py_ssize_t j = 0; j < m; j += 4)
        redo |= (uint64_t)exact_finish4_avx2(c_n, c0, f, j, o, total, inv_total) << j;
    double *p = o + 5 * c_n + c0;
    for (Py_ssize_t j = 0; j < m; j += 4) {
        _mm256_storeu_pd(p + j, _mm256_loadu_pd(f->z + j));
        _mm256_storeu_pd(p + c_n + j, _mm256_setzero_pd());  /* total - n, n = total */
        _mm256_storeu_pd(p + 2 * c_n + j, _mm256_loadu_pd(f->lo + j));
        _mm256_storeu_pd(p + 3 * c_n + j, _mm256_loadu_pd(f->hi + j));
    }
    return redo;
}
#endif

/* Channels c0..c0+m-1 of x (m <= EXACT_BLOCK): first pass into a block, then finished. */
static void exact_block(const float *x, Py_ssize_t a_n, Py_ssize_t c_n, Py_ssize_t b_n, Py_ssize_t c0,
                        Py_ssize_t m, double *o, float tl, float th, int bounded, double total, double inv_total) {
    exact_first f;
    Py_ssize_t j = 0;
#ifdef FC_X86
    if (exact_wide) j = exact_first_avx2(x, a_n, c_n, b_n, c0, m, &f, tl, th, bounded);
#endif
    for (; j < m; j++) {  /* channel by channel: per-row bookkeeping would cost more than small rows' values */
        exact_acc st;
        exact_channel(x + (c0 + j) * b_n, a_n, c_n * b_n, b_n, &st, tl, th, bounded);
        f.s[j] = st.s; f.q[j] = st.q; f.z[j] = st.z; f.lo[j] = st.lo; f.hi[j] = st.hi;
        f.mn[j] = st.mn; f.mx[j] = st.mx;
    }
    Py_ssize_t vec = 0;
    uint64_t redo = 0;
#ifdef FC_X86
    if (exact_wide) {
        vec = m & ~(Py_ssize_t)3;
        redo = exact_finish_avx2(c_n, c0, &f, vec, o, total, inv_total);
    }
#endif
    for (j = 0; redo != 0 && j < vec; j++)
        if (redo >> j & 1) exact_finish_one(x, a_n, c_n, b_n, c0 + j, &f, j, o, total, inv_total);
    for (j = vec; j < m; j++) exact_finish_one(x, a_n, c_n, b_n, c0 + j, &f, j, o, total, inv_total);
}

#define FAST_GROUP 8

/* Channel c of x recomputed by the exact kernel, its column of out rewritten. */
static void exact_one(const float *x, Py_ssize_t a_n, Py_ssize_t c_n, Py_ssize_t b_n, Py_ssize_t c, double *o,
                      float tl, float th, int bounded, double total, double inv_total) {
    exact_acc st;
    exact_channel(x + c * b_n, a_n, c_n * b_n, b_n, &st, tl, th, bounded);
    st.n = total;
    exact_finish(x, a_n, c_n, b_n, c, &st, inv_total);
    exact_put(o, c_n, c, &st, total);
}

/* The fast path's block of channels c0..c1-1 (see chanfast), from chanstats' pass: the statistics
 * one-pass arithmetic gets right, and the exact kernel for the channels it cannot (every channel
 * of a group of FAST_GROUP when they are most of it). */
static void fast_finish(const float *x, Py_ssize_t a_n, Py_ssize_t c_n, Py_ssize_t b_n, Py_ssize_t c0, Py_ssize_t c1,
                        const stats *acc, unsigned char *redo, double *o) {
    double total = (double)a_n * (double)b_n, inv_total = 1.0 / total;
    for (Py_ssize_t c = c0; c < c1; c++) {
        stats st = acc[c - c0];
        double mean = st.s / total, meansq = st.q / total, mm = mean * mean;
        FC_UNFUSED(mm);
        double var = meansq - mm;
        int constant = st.mn == st.mx;
        /* a sum of squares that is not finite (non-finite values, or float32 sums that
         * overflowed), a variance too small next to the mean square for sum-of-squares
         * arithmetic, or squares that may have underflowed float32 */
        int r = !isfinite(st.q) || (!constant && (var < FAST_ILL_CONDITIONED * meansq || meansq < 0x1p-100));
        redo[c - c0] = (unsigned char)r;
        if (!r) mean = mean < st.mn ? st.mn : mean > st.mx ? st.mx : mean;  /* rounding kept within [min, max] */
        o[c] = total; o[c_n + c] = mean; o[2 * c_n + c] = constant ? 0.0 : sqrt(var > 0.0 ? var : 0.0);
        o[3 * c_n + c] = st.mn; o[4 * c_n + c] = st.mx; o[5 * c_n + c] = total - st.nz;
        o[6 * c_n + c] = 0.0; o[7 * c_n + c] = 0.0; o[8 * c_n + c] = 0.0;
    }
    /* Decided per group of FAST_GROUP channels at fixed positions (multiples of FAST_GROUP), so
     * that a channel's numbers do not depend on how the caller split the channels across threads
     * (it splits at such multiples): a group whose channels mostly need it is recomputed whole
     * (gathering most channels would cost more than it saves), otherwise channel by channel. */
    for (Py_ssize_t b0 = c0 - c0 % FAST_GROUP; b0 < c1; b0 += FAST_GROUP) {
        Py_ssize_t lo = b0 > c0 ? b0 : c0, hi = b0 + FAST_GROUP < c1 ? b0 + FAST_GROUP : c1, n_redo = 0;
        for (Py_ssize_t c = lo; c < hi; c++) n_redo += redo[c - c0];
        if (n_redo * 2 > hi - lo) {
            exact_block(x, a_n, c_n, b_n, lo, hi - lo, o, 0.0f, 0.0f, 0, total, inv_total);
            continue;
        }
        for (Py_ssize_t c = lo; n_redo && c < hi; c++) {
            if (!redo[c - c0]) continue;
            exact_one(x, a_n, c_n, b_n, c, o, 0.0f, 0.0f, 0, total, inv_total);
            n_redo--;
        }
    }
}

/* chanfast(data, A, C, B, out, c0, c1[, sample, offsets]): the whole statistics block (the nine
 * rows of ROWS, out a writable float64 buffer of 9 x C) of channels c0 <= c < c1 of a C-contiguous
 * float32 [A, C, B] buffer, without bound counts (rows 7 and 8 are 0): chanstats' pass (and its
 * copy of the rendering sample), finished here, the channels its arithmetic cannot get right
 * recomputed by the exact kernel. What _stats.reduce_fast computed from chanstats' answer with a
 * dozen numpy calls and a call of the exact kernel, which cost as much as the pass on maps of up
 * to a few MiB, and 10 ms per resnet50 capture (batch 8, 224 x 224). */
static PyObject *chanfast(PyObject *self, PyObject *args) {
    pass_args p;
    if (parse_pass(args, "chanfast", 9, &p) < 0) return NULL;
    stats *acc = PyMem_RawMalloc((size_t)(p.c1 - p.c0 + 1) * sizeof(stats));
    unsigned char *redo = PyMem_RawMalloc((size_t)(p.c1 - p.c0 + 1));
    if (acc == NULL || redo == NULL) {
        PyMem_RawFree(acc);
        PyMem_RawFree(redo);
        release_pass(&p);
        return PyErr_NoMemory();
    }
#ifdef FC_X86
    if (exact_wide < 0) exact_wide = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    exact_wide = 0;
#endif
    const float *x = (const float *)p.data.buf;
    Py_BEGIN_ALLOW_THREADS
    stats_pass(x, p.a_n, p.c_n, p.b_n, p.c0, p.c1, acc, (float *)p.sample.buf, (const int64_t *)p.offsets.buf, p.k_n);
    fast_finish(x, p.a_n, p.c_n, p.b_n, p.c0, p.c1, acc, redo, (double *)p.out.buf);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(acc);
    PyMem_RawFree(redo);
    release_pass(&p);
    Py_RETURN_NONE;
}

/* Maps of fewer values are reduced without releasing the GIL (larger ones release it): releasing
 * and taking it back costs more than the work it would let other threads overlap. */
#define EXACT_NOGIL (1 << 16)

/* The block of channels of x (see chanexact); data is the buffer x lies in (NULL when the caller
 * vouches for an address), released here with out and idx. */
static PyObject *exact_core(const float *x, Py_buffer *data, Py_ssize_t a_n, Py_ssize_t c_n, Py_ssize_t b_n,
                            Py_buffer out, double lo, double hi, int bounded, PyObject *idx_obj) {
    Py_buffer idx = {0};
    int have_idx = idx_obj != Py_None;
    if (have_idx && PyObject_GetBuffer(idx_obj, &idx, PyBUF_SIMPLE) < 0) {
        if (data) PyBuffer_Release(data);
        PyBuffer_Release(&out);
        return NULL;
    }
    Py_ssize_t k_n = have_idx ? idx.len / (Py_ssize_t)sizeof(int64_t) : c_n;
    const int64_t *ix = have_idx ? (const int64_t *)idx.buf : NULL;
    int bad = a_n < 1 || c_n < 1 || b_n < 1 ||
              (data != NULL && data->len / (Py_ssize_t)sizeof(float) / a_n / c_n < b_n) ||
              out.len < 9 * c_n * (Py_ssize_t)sizeof(double);
    for (Py_ssize_t k = 0; !bad && k < (have_idx ? k_n : 0); k++)
        bad = ix[k] < 0 || ix[k] >= c_n;
    if (bad) {
        if (data) PyBuffer_Release(data);
        PyBuffer_Release(&out);
        if (have_idx) PyBuffer_Release(&idx);
        PyErr_SetString(PyExc_ValueError, "chanexact: buffer sizes or indices do not match A, C, B");
        return NULL;
    }
    double *o = (double *)out.buf;
    float tl = (float)lo, th = (float)hi;
    double total = (double)a_n * (double)b_n, inv_total = 1.0 / total;
#ifdef FC_X86
    if (exact_wide < 0) exact_wide = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    exact_wide = 0;
#endif
    PyThreadState *saved = (double)k_n * total >= EXACT_NOGIL ? PyEval_SaveThread() : NULL;
    if (have_idx) {  /* a few scattered channels (those the fast kernel cannot get right) */
        for (Py_ssize_t k = 0; k < k_n; k++) exact_one(x, a_n, c_n, b_n, ix[k], o, tl, th, bounded, total, inv_total);
    } else {
        for (Py_ssize_t c0 = 0; c0 < c_n; c0 += EXACT_BLOCK)
            exact_block(x, a_n, c_n, b_n, c0, c_n - c0 < EXACT_BLOCK ? c_n - c0 : EXACT_BLOCK, o, tl, th, bounded,
                        total, inv_total);
    }
    if (saved) PyEval_RestoreThread(saved);
    if (data) PyBuffer_Release(data);
    PyBuffer_Release(&out);
    if (have_idx) PyBuffer_Release(&idx);
    Py_RETURN_NONE;
}

static PyObject *chanexact(PyObject *self, PyObject *args) {
    Py_buffer data, out;
    Py_ssize_t a_n, c_n, b_n;
    double lo, hi;
    int bounded;
    PyObject *idx_obj;
    if (!PyArg_ParseTuple(args, "y*nnnw*ddpO", &data, &a_n, &c_n, &b_n, &out, &lo, &hi, &bounded, &idx_obj))
        return NULL;
    return exact_core((const float *)data.buf, &data, a_n, c_n, b_n, out, lo, hi, bounded, idx_obj);
}

/* The leading int arguments of the address-taking functions (a data address, then sizes): read
 * into out, which gets n values. Returns 0, or -1 with an exception set. */
static int read_ints(PyObject *const *args, Py_ssize_t n, unsigned long long *address, Py_ssize_t *out) {
    *address = PyLong_AsUnsignedLongLong(args[0]);
    if (*address == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = PyLong_AsSsize_t(args[i + 1]);
        if (out[i] == -1 && PyErr_Occurred()) return -1;
    }
    return 0;
}

/* chanexact_ptr(address, shape, cdim, out, lo, hi, bounded): chanexact of the C-contiguous
 * float32 data at address (a torch tensor's data_ptr(): the caller guarantees dtype, layout and
 * contiguity, and keeps the tensor alive) of the given shape, channels on dimension cdim (-1:
 * the whole tensor is one channel). Saves the caller the [A, C, B] view and the numpy array
 * (about 3 us of Python per call, as much as reducing a small map). Called once per record, so
 * its arguments are read directly (METH_FASTCALL, a tuple's items) rather than parsed. */
static PyObject *chanexact_ptr(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_Format(PyExc_TypeError, "chanexact_ptr: expected 7 arguments (address, shape, cdim, out, lo, hi, bounded), got %zd", nargs);
        return NULL;
    }
    if (!PyLong_Check(args[0]) || !PyLong_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "chanexact_ptr: address and cdim must be ints");
        return NULL;
    }
    unsigned long long address = PyLong_AsUnsignedLongLong(args[0]);
    if (address == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    Py_ssize_t cdim = PyLong_AsSsize_t(args[2]);
    if (cdim == -1 && PyErr_Occurred()) return NULL;
    double lo = PyFloat_AsDouble(args[4]);
    if (lo == -1.0 && PyErr_Occurred()) return NULL;
    double hi = PyFloat_AsDouble(args[5]);
    if (hi == -1.0 && PyErr_Occurred()) return NULL;
    int bounded = PyObject_IsTrue(args[6]);
    if (bounded < 0) return NULL;
    PyObject *dims = PyTuple_Check(args[1]) ? (Py_INCREF(args[1]), args[1])
                                            : PySequence_Fast(args[1], "chanexact_ptr: shape must be a sequence of ints");
    if (dims == NULL) return NULL;
    Py_ssize_t ndim = PySequence_Fast_GET_SIZE(dims), a_n = 1, c_n = 1, b_n = 1;
    int ok = address != 0 && cdim >= -1 && cdim < (ndim > 0 ? ndim : 1);
    for (Py_ssize_t d = 0; ok && d < ndim; d++) {
        Py_ssize_t n = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(dims, d));
        if (n < 0) { ok = 0; break; }
        if (cdim < 0 || d < cdim) a_n *= n;
        else if (d == cdim) c_n = n;
        else b_n *= n;
    }
    Py_DECREF(dims);
    if (!ok) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "chanexact_ptr: expected a data address, a shape of sizes >= 0 and a channel dimension within its rank");
        return NULL;
    }
    Py_buffer ob;
    if (PyObject_GetBuffer(args[3], &ob, PyBUF_WRITABLE) < 0) return NULL;
    return exact_core((const float *)(uintptr_t)address, NULL, a_n, c_n, b_n, ob, lo, hi, bounded, Py_None);
}

/* bytes_at(address, nbytes) -> bytearray: a copy of nbytes bytes of the data at address (a torch
 * tensor's data_ptr(), which the caller keeps alive and vouches holds that many bytes). A hook's
 * copy of a small map's first sample: one call, which allocates and copies, instead of the several
 * torch calls (about 4 us) of slicing and cloning it, or a numpy array made and then filled. */
static PyObject *bytes_at(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "bytes_at(address, nbytes): expected 2 arguments");
        return NULL;
    }
    unsigned long long address;
    Py_ssize_t n;
    if (read_ints(args, 1, &address, &n) < 0) return NULL;
    if (n < 0 || (address == 0 && n > 0)) {
        PyErr_Format(PyExc_ValueError, "bytes_at: expected a data address and a size >= 0, got %llu and %zd", address, n);
        return NULL;
    }
    return PyByteArray_FromStringAndSize(n ? (const char *)(uintptr_t)address : NULL, n);
}

/* rows_at(address, C, B, offsets) -> bytearray: the rendering sample of the C-contiguous float32
 * map at address (a torch tensor's data_ptr(), which the caller keeps alive and vouches holds at
 * least C x B values: its first sample, C channels of B values each), at K offsets within each
 * channel's B values: C x K floats, channel after channel. A subsampled first sample in one call,
 * for maps that do not take chanstats (whose pass copies it itself). */
static PyObject *rows_at(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "rows_at(address, C, B, offsets): expected 4 arguments");
        return NULL;
    }
    unsigned long long address;
    Py_ssize_t sizes[2];
    if (read_ints(args, 2, &address, sizes) < 0) return NULL;
    Py_ssize_t c_n = sizes[0], b_n = sizes[1];
    if (address == 0 || c_n < 0 || b_n < 1) {
        PyErr_Format(PyExc_ValueError, "rows_at: expected a data address, C >= 0 and B >= 1, got %llu, %zd and %zd", address, c_n, b_n);
        return NULL;
    }
    Py_buffer offsets;
    if (PyObject_GetBuffer(args[3], &offsets, PyBUF_SIMPLE) < 0) return NULL;
    Py_ssize_t k_n = read_offsets(&offsets, b_n);
    if (k_n > 0 && c_n > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(float) / k_n) {
        PyErr_Format(PyExc_ValueError, "rows_at: a sample of %zd x %zd floats is too large", c_n, k_n);
        k_n = -1;
    }
    PyObject *out = k_n < 0 ? NULL : PyByteArray_FromStringAndSize(NULL, c_n * k_n * (Py_ssize_t)sizeof(float));
    if (out != NULL) {
        const float *x = (const float *)(uintptr_t)address;
        float *s = (float *)PyByteArray_AS_STRING(out);
        for (Py_ssize_t c = 0; c < c_n; c++) take_row(x + c * b_n, (const int64_t *)offsets.buf, k_n, s + c * k_n);
    }
    PyBuffer_Release(&offsets);
    return out;
}

/* chanmerge(total, block): merges one [9, C] float64 statistics block into another, in place
 * (rows n, mean, sd, min, max, zeros, nonfinite, at_lower, at_upper; see _stats.ROWS): Chan et
 * al.'s parallel update, computed as _stats.Accumulator's merge computes it for two blocks (the
 * means and spreads scaled by a power of two at least as large as all of them, so that no square
 * overflows). Under `watch` every forward's block is merged at commit into the record's total
 * with one call, so that the block's buffer is reused: a block kept per forward is fresh memory,
 * and its page faults cost more than reducing a small map. */
static PyObject *chanmerge(PyObject *self, PyObject *args) {
    Py_buffer tb, bb;
    if (!PyArg_ParseTuple(args, "w*y*", &tb, &bb)) return NULL;
    if (tb.len != bb.len || tb.len % (9 * (Py_ssize_t)sizeof(double)) != 0) {
        PyBuffer_Release(&tb);
        PyBuffer_Release(&bb);
        PyErr_SetString(PyExc_ValueError, "chanmerge: expected two [9, C] float64 blocks of the same size");
        return NULL;
    }
    Py_ssize_t c_n = tb.len / (9 * (Py_ssize_t)sizeof(double));
    double *t = (double *)tb.buf;
    const double *b = (const double *)bb.buf;
    for (Py_ssize_t c = 0; c < c_n; c++) {
        double na = t[c], nb = b[c], ma = t[c_n + c], mb = b[c_n + c], sa = t[2 * c_n + c], sb = b[2 * c_n + c];
        double n = na + nb;
        double wa = n > 0 ? na / n : 0.0, wb = n > 0 ? nb / n : 0.0;
        double big = fabs(ma) > fabs(mb) ? fabs(ma) : fabs(mb);
        double spread = sa > sb ? sa : sb;
        double largest = big > spread ? big : spread;
        double k = 1.0;
        /* The scale matters only where a square could overflow or underflow: between 2^-300 and
         * 2^300 none does, scaling by a power of two is exact, and the result is the scaled one
         * (frexp and ldexp per channel were most of the merge's cost). Only a spread below
         * 2^-537 next to such a mean underflows here and not there: no data has one, since its
         * values would differ by far less than their own precision. */
        if (!(largest < 0x1p300 && (largest > 0x1p-300 || largest == 0.0))) {
            int e;
            frexp(largest, &e);
            k = ldexp(1.0, e < -1022 ? -1022 : e > 1022 ? 1022 : e);
        }
        double xa = ma / k, xb = mb / k;
        double mean = wa * xa + wb * xb;
        double da = xa - mean, db = xb - mean, ya = sa / k, yb = sb / k;
        double var = wa * (ya * ya + da * da) + wb * (yb * yb + db * db);
        double lo = na > 0 ? ma : INFINITY, hi = na > 0 ? ma : -INFINITY;
        if (nb > 0) { lo = mb < lo ? mb : lo; hi = mb > hi ? mb : hi; }
        mean *= k;
        t[c] = n;
        t[c_n + c] = n > 0 ? (mean < lo ? lo : mean > hi ? hi : mean) : 0.0;
        t[2 * c_n + c] = sqrt(var) * k;
        t[3 * c_n + c] = b[3 * c_n + c] < t[3 * c_n + c] ? b[3 * c_n + c] : t[3 * c_n + c];
        t[4 * c_n + c] = b[4 * c_n + c] > t[4 * c_n + c] ? b[4 * c_n + c] : t[4 * c_n + c];
        for (int r = 5; r < 9; r++) t[r * c_n + c] += b[r * c_n + c];
    }
    PyBuffer_Release(&tb);
    PyBuffer_Release(&bb);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"chanexact_ptr", (PyCFunction)(void (*)(void))chanexact_ptr, METH_FASTCALL, "chanexact of C-contiguous float32 data at an address, with channels on one dimension."},
    {"chanmerge", chanmerge, METH_VARARGS, "Merge one [9, C] float64 statistics block into another, in place."},
    {"bytes_at", (PyCFunction)(void (*)(void))bytes_at, METH_FASTCALL, "A bytearray copy of nbytes bytes at a data address."},
    {"rows_at", (PyCFunction)(void (*)(void))rows_at, METH_FASTCALL, "A first sample's values at offsets within each channel, as a bytearray."},
    {"chanstats", chanstats, METH_VARARGS, "Per-channel min, max, sum, sum of squares and non-zero count."},
    {"chanfast", chanfast, METH_VARARGS, "The statistics block of channels of float32 data from one pass, exact where it must be."},
    {"chanexact", chanexact, METH_VARARGS, "Exact per-channel statistics block of float32 data."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fast", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fast(void) { return PyModule_Create(&module); }
