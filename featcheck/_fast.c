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

static PyMethodDef methods[] = {
    {"chanstats", chanstats, METH_VARARGS, "Per-channel min, max, sum, sum of squares and non-zero count."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fast", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fast(void) { return PyModule_Create(&module); }
