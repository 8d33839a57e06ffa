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
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define FC_X86 1
#endif

/* Channel c of a C-contiguous [A, C, B] array is A rows of B floats, row a at (a * C + c) * B. */

typedef struct { float mn, mx; double s, q, nz; } stats;

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
#endif

/* chanstats(data, A, C, B, out, c0, c1): for channels c0 <= c < c1 of a C-contiguous float32
 * [A, C, B] buffer, writes min, max, sum, sum of squares and the non-zero count to out, a
 * writable float64 buffer of 5 x C (row-major). */
static PyObject *chanstats(PyObject *self, PyObject *args) {
    Py_buffer data, out;
    Py_ssize_t a_n, c_n, b_n, c0, c1;
    if (!PyArg_ParseTuple(args, "y*nnnw*nn", &data, &a_n, &c_n, &b_n, &out, &c0, &c1))
        return NULL;
    if (a_n < 1 || c_n < 1 || b_n < 1 || c0 < 0 || c1 > c_n || c0 > c1 ||
        a_n * c_n * b_n * (Py_ssize_t)sizeof(float) > data.len ||
        out.len < 5 * c_n * (Py_ssize_t)sizeof(double)) {
        PyBuffer_Release(&data); PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "chanstats: buffer sizes do not match A, C, B");
        return NULL;
    }
    const float *x = (const float *)data.buf;
    double *o = (double *)out.buf;
    stats *acc = PyMem_RawMalloc((size_t)(c1 - c0 + 1) * sizeof(stats));
    if (acc == NULL) {
        PyBuffer_Release(&data); PyBuffer_Release(&out);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
#ifdef FC_X86
    int wide = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    for (Py_ssize_t c = c0; c < c1; c++)
        acc[c - c0] = (stats){INFINITY, -INFINITY, 0.0, 0.0, 0.0};
    /* memory order (sample outer, channel inner): the hardware prefetcher sees one stream */
    for (Py_ssize_t a = 0; a < a_n; a++) {
        for (Py_ssize_t c = c0; c < c1; c++) {
            const float *p = x + (a * c_n + c) * b_n;
#ifdef FC_X86
            if (wide) { row_avx2(p, b_n, &acc[c - c0]); continue; }
#endif
            row_scalar(p, b_n, &acc[c - c0]);
        }
    }
    for (Py_ssize_t c = c0; c < c1; c++) {
        stats st = acc[c - c0];
        o[c] = st.mn; o[c_n + c] = st.mx; o[2 * c_n + c] = st.s; o[3 * c_n + c] = st.q; o[4 * c_n + c] = st.nz;
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(acc);
    PyBuffer_Release(&data); PyBuffer_Release(&out);
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

/* One channel, 8 values at a time, the lanes kept across the channel's rows. Returns 0 when it
 * did nothing (rows of fewer than 8 values or a channel too long for the lane counts). */
__attribute__((target("avx2,fma")))
static int exact_channel_avx2(const float *p, Py_ssize_t rows, Py_ssize_t stride, Py_ssize_t length,
                              exact_acc *st, float tl, float th, int bounded) {
    if (length < 8 || (double)rows * (double)length >= 0x1p33) return 0;
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
    lanes8_out o;
    lanes8_store(&l, &o);
    for (int k = 0; k < 8; k++) {
        /* a NaN leaves a lane's min or max undefined: the sums are NaN too, and the channel is
         * recomputed by the careful passes */
        ts += o.s[k]; tq += o.q[k];
        tmn = o.mn[k] < tmn ? o.mn[k] : tmn;
        tmx = o.mx[k] > tmx ? o.mx[k] : tmx;
        tz += o.z[k]; tcl += o.lo[k]; tch += o.hi[k];
    }
    st->s = ts; st->q = tq; st->mn = tmn; st->mx = tmx;
    st->z = (double)tz; st->lo = (double)tcl; st->hi = (double)tch;
    return 1;
}

/* Eight channels c0..c0+7 at once, one per lane, for rows shorter than 8 values (where a channel at
 * a time would spend its time on bookkeeping, not values): lane j reads channel c0 + j's values,
 * B floats apart, with a gather (B == 1: one plain load). Fills acc[0..7]. */
__attribute__((target("avx2,fma")))
static void exact_group_avx2(const float *x, Py_ssize_t a_n, Py_ssize_t c_n, Py_ssize_t b_n, Py_ssize_t c0,
                             exact_acc *acc, float tl, float th, int bounded) {
    const __m256 vtl = _mm256_set1_ps(tl), vth = _mm256_set1_ps(th);
    const __m256i lanes = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)b_n));
    lanes8 l;
    lanes8_init(&l);
    for (Py_ssize_t a = 0; a < a_n; a++) {
        const float *r = x + (a * c_n + c0) * b_n;
        for (Py_ssize_t i = 0; i < b_n; i++)
            lanes8_add(&l, b_n == 1 ? _mm256_loadu_ps(r) : _mm256_i32gather_ps(r + i, lanes, 4), vtl, vth, bounded);
    }
    lanes8_out o;
    lanes8_store(&l, &o);
    for (int j = 0; j < 8; j++) {
        acc[j].s = o.s[j]; acc[j].q = o.q[j]; acc[j].mn = o.mn[j]; acc[j].mx = o.mx[j];
        acc[j].z = o.z[j]; acc[j].lo = o.lo[j]; acc[j].hi = o.hi[j];
    }
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
              (data != NULL && a_n * c_n * b_n * (Py_ssize_t)sizeof(float) > data->len) ||
              out.len < 9 * c_n * (Py_ssize_t)sizeof(double);
    for (Py_ssize_t k = 0; !bad && k < (have_idx ? k_n : 0); k++)
        bad = ix[k] < 0 || ix[k] >= c_n;
    exact_acc *acc = bad ? NULL : PyMem_RawMalloc((size_t)(k_n + 1) * sizeof(exact_acc));
    if (acc == NULL) {
        if (data) PyBuffer_Release(data);
        PyBuffer_Release(&out);
        if (have_idx) PyBuffer_Release(&idx);
        if (bad) { PyErr_SetString(PyExc_ValueError, "chanexact: buffer sizes or indices do not match A, C, B"); return NULL; }
        return PyErr_NoMemory();
    }
    double *o = (double *)out.buf;
    float tl = (float)lo, th = (float)hi;
    double total = (double)a_n * (double)b_n, inv_total = 1.0 / total;
#ifdef FC_X86
    if (exact_wide < 0) exact_wide = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    exact_wide = 0;
#endif
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < k_n; k++)
        acc[k] = (exact_acc){total, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, INFINITY, -INFINITY};
    Py_ssize_t grouped = 0;  /* channels already reduced eight at a time */
#ifdef FC_X86
    if (exact_wide && !have_idx && b_n < 8 && (double)a_n * (double)b_n < 0x1p31)
        for (; grouped + 8 <= k_n; grouped += 8)
            exact_group_avx2(x, a_n, c_n, b_n, grouped, &acc[grouped], tl, th, bounded);
#endif
    for (Py_ssize_t k = 0; k < k_n; k++) {
        exact_acc *st = &acc[k];
        Py_ssize_t c = have_idx ? ix[k] : k;
        /* channel by channel: per-row bookkeeping would cost more than small rows' values */
        if (k >= grouped) exact_channel(x + c * b_n, a_n, c_n * b_n, b_n, st, tl, th, bounded);
        int finite = isfinite(st->s) && isfinite(st->q);
        double n = st->n, meansq = st->q * inv_total, mean = st->s * inv_total, var = meansq - mean * mean;
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
        st->sd = n > 0 && var > 0 ? var : 0.0;  /* the variance; its root below */
    }
    /* in a loop of their own the square roots overlap; in the loop above each waited for the last */
    for (Py_ssize_t k = 0; k < k_n; k++)
        acc[k].sd = sqrt(acc[k].sd);
    /* row by row: the rows of out lie C doubles apart, often a multiple of 4 KiB, and a channel's
     * nine values written at once made every store alias the others (2-3x slower) */
#define EXACT_ROW(r, expr) for (Py_ssize_t k = 0; k < k_n; k++) o[(r) * c_n + (have_idx ? ix[k] : k)] = (expr);
    EXACT_ROW(0, acc[k].n)
    EXACT_ROW(1, acc[k].mean)
    EXACT_ROW(2, acc[k].sd)
    EXACT_ROW(3, acc[k].mn)
    EXACT_ROW(4, acc[k].mx)
    EXACT_ROW(5, acc[k].z)
    EXACT_ROW(6, total - acc[k].n)
    EXACT_ROW(7, acc[k].lo)
    EXACT_ROW(8, acc[k].hi)
#undef EXACT_ROW
    Py_END_ALLOW_THREADS
    PyMem_RawFree(acc);
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

/* chanexact_ptr(address, shape, cdim, out, lo, hi, bounded): chanexact of the C-contiguous
 * float32 data at address (a torch tensor's data_ptr(): the caller guarantees dtype, layout and
 * contiguity, and keeps the tensor alive) of the given shape, channels on dimension cdim (-1:
 * the whole tensor is one channel). Saves the caller the [A, C, B] view and the numpy array
 * (about 3 us of Python per call, as much as reducing a small map). */
static PyObject *chanexact_ptr(PyObject *self, PyObject *args) {
    unsigned long long address;
    PyObject *shape, *out;
    Py_ssize_t cdim;
    double lo, hi;
    int bounded;
    if (!PyArg_ParseTuple(args, "KOnOddp", &address, &shape, &cdim, &out, &lo, &hi, &bounded))
        return NULL;
    PyObject *dims = PySequence_Fast(shape, "chanexact_ptr: shape must be a sequence of ints");
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
    if (PyObject_GetBuffer(out, &ob, PyBUF_WRITABLE) < 0) return NULL;
    return exact_core((const float *)(uintptr_t)address, NULL, a_n, c_n, b_n, ob, lo, hi, bounded, Py_None);
}

/* copy_ptr(address, out): copies len(out) bytes from the data at address (a torch tensor's
 * data_ptr(), which the caller keeps alive and vouches holds that many bytes) into the writable
 * buffer out. A hook's copy of a small map's first sample: one call instead of the several torch
 * calls (about 4 us) of slicing and cloning it. */
static PyObject *copy_ptr(PyObject *self, PyObject *args) {
    unsigned long long address;
    Py_buffer out;
    if (!PyArg_ParseTuple(args, "Kw*", &address, &out)) return NULL;
    if (address == 0 && out.len > 0) {
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "copy_ptr: expected a data address, got 0");
        return NULL;
    }
    if (out.len > 0) memcpy(out.buf, (const void *)(uintptr_t)address, (size_t)out.len);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
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
        int e;
        frexp(big > spread ? big : spread, &e);
        double k = ldexp(1.0, e < -1022 ? -1022 : e > 1022 ? 1022 : e);
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
    {"chanexact_ptr", chanexact_ptr, METH_VARARGS, "chanexact of C-contiguous float32 data at an address, with channels on one dimension."},
    {"chanmerge", chanmerge, METH_VARARGS, "Merge one [9, C] float64 statistics block into another, in place."},
    {"copy_ptr", copy_ptr, METH_VARARGS, "Copy bytes from a data address into a writable buffer."},
    {"chanstats", chanstats, METH_VARARGS, "Per-channel min, max, sum, sum of squares and non-zero count."},
    {"chanexact", chanexact, METH_VARARGS, "Exact per-channel statistics block of float32 data."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fast", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fast(void) { return PyModule_Create(&module); }
