/* The model-state snapshot's flat lists of dict entries, made and compared in one C loop each.
 *
 * featcheck.capture snapshots every module's __dict__ and registries (_parameters, _buffers,
 * _modules) before the forward and checks after it that every dict is the same dict holding the
 * same entries, by identity and in order (see featcheck/_state.py, whose _Flat this serves). In
 * Python that is several map() passes over a few thousand entries, about 0.3 ms per capture of
 * torchvision's mobilenet_v3_small; here one pass, reading each dict once. The buffers' values,
 * which the snapshot copies and compares bitwise, are copied and compared here too where they are
 * contiguous CPU tensors (gather, same_bytes). Optional, like featcheck._fast: without it _state
 * does the same with Python loops and torch kernels, with the same answers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* entries(dicts) -> (lens, keys, values): each dict's length, and every entry's key and value in
 * iteration order, all dicts' entries one after the other. */
static PyObject *entries(PyObject *self, PyObject *arg) {
    PyObject *dicts = PySequence_Fast(arg, "entries: expected a list of dicts");
    if (dicts == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(dicts), total = 0;
    PyObject **items = PySequence_Fast_ITEMS(dicts);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyDict_Check(items[i])) {
            PyErr_Format(PyExc_TypeError, "entries: expected a list of dicts, item %zd is %.100s", i, Py_TYPE(items[i])->tp_name);
            Py_DECREF(dicts);
            return NULL;
        }
        total += PyDict_GET_SIZE(items[i]);
    }
    PyObject *lens = PyList_New(n), *keys = PyList_New(total), *values = PyList_New(total);
    if (lens == NULL || keys == NULL || values == NULL) goto fail;
    Py_ssize_t j = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *d = items[i], *k, *v;
        Py_ssize_t pos = 0, len = PyDict_GET_SIZE(d);
        PyObject *l = PyLong_FromSsize_t(len);
        if (l == NULL) goto fail;
        PyList_SET_ITEM(lens, i, l);
        while (PyDict_Next(d, &pos, &k, &v)) {
            if (j >= total) break; /* cannot happen: nothing runs Python code during the loop */
            Py_INCREF(k);
            Py_INCREF(v);
            PyList_SET_ITEM(keys, j, k);
            PyList_SET_ITEM(values, j, v);
            j++;
        }
    }
    if (j != total) {
        PyErr_SetString(PyExc_RuntimeError, "entries: a dict changed size while it was read");
        goto fail;
    }
    Py_DECREF(dicts);
    return Py_BuildValue("(NNN)", lens, keys, values);
fail:
    Py_DECREF(dicts);
    Py_XDECREF(lens);
    Py_XDECREF(keys);
    Py_XDECREF(values);
    return NULL;
}

/* same(dicts, saved, lens, keys, values) -> bool: is dicts[i] saved[i] for every i, holding
 * lens[i] entries whose keys equal and whose values are (by identity) keys[j] and values[j], in
 * order? Keys are compared by identity first, then by value (module attribute names are interned
 * strings: equal ones are almost always the same object). */
static PyObject *same(PyObject *self, PyObject *args) {
    PyObject *dicts, *saved, *lens, *keys, *values;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!:same", &PyList_Type, &dicts, &PyList_Type, &saved, &PyList_Type, &lens,
                          &PyList_Type, &keys, &PyList_Type, &values))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(saved), total = PyList_GET_SIZE(keys);
    if (PyList_GET_SIZE(lens) != n || PyList_GET_SIZE(values) != total) {
        PyErr_SetString(PyExc_ValueError, "same: saved, lens, keys and values do not belong together");
        return NULL;
    }
    if (PyList_GET_SIZE(dicts) != n) Py_RETURN_FALSE;
    Py_ssize_t j = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *d = PyList_GET_ITEM(dicts, i), *k, *v;
        if (d != PyList_GET_ITEM(saved, i) || !PyDict_Check(d)) Py_RETURN_FALSE;
        Py_ssize_t len = PyLong_AsSsize_t(PyList_GET_ITEM(lens, i));
        if (len == -1 && PyErr_Occurred()) return NULL;
        if (PyDict_GET_SIZE(d) != len || j + len > total) Py_RETURN_FALSE;
        Py_ssize_t pos = 0, end = j + len;
        while (PyDict_Next(d, &pos, &k, &v)) {
            if (j >= end) Py_RETURN_FALSE; /* more entries than it had (a key's __eq__ changed it) */
            PyObject *k0 = PyList_GET_ITEM(keys, j), *v0 = PyList_GET_ITEM(values, j);
            j++;
            if (v != v0) Py_RETURN_FALSE;
            if (k == k0) continue;
            int eq;
            if (PyUnicode_CheckExact(k) && PyUnicode_CheckExact(k0)) {
                eq = PyUnicode_Compare(k, k0) == 0;
            } else { /* a key that is not a str: compared as Python compares it (list ==) */
                Py_INCREF(k);
                Py_INCREF(k0);
                Py_INCREF(d);
                eq = PyObject_RichCompareBool(k, k0, Py_EQ);
                Py_DECREF(k);
                Py_DECREF(k0);
                Py_DECREF(d);
                if (eq > 0 && PyDict_GET_SIZE(d) != len) eq = 0; /* its __eq__ changed the dict */
            }
            if (eq < 0 || PyErr_Occurred()) return NULL;
            if (!eq) Py_RETURN_FALSE;
        }
        if (j != end) Py_RETURN_FALSE;
    }
    if (j != total) Py_RETURN_FALSE;
    Py_RETURN_TRUE;
}

/* Addresses and sizes as two lists of ints: checked, and read into plain arrays. */
static int read_spans(PyObject *ptrs, PyObject *sizes, Py_ssize_t *n, size_t *total) {
    if (!PyList_Check(ptrs) || !PyList_Check(sizes) || PyList_GET_SIZE(ptrs) != PyList_GET_SIZE(sizes)) {
        PyErr_SetString(PyExc_TypeError, "expected two lists of ints of the same length (data addresses and sizes)");
        return -1;
    }
    *n = PyList_GET_SIZE(ptrs);
    *total = 0;
    for (Py_ssize_t i = 0; i < *n; i++) {
        Py_ssize_t size = PyLong_AsSsize_t(PyList_GET_ITEM(sizes, i));
        if (size == -1 && PyErr_Occurred()) return -1;
        unsigned long long address = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(ptrs, i));
        if (address == (unsigned long long)-1 && PyErr_Occurred()) return -1;
        if (size < 0 || (address == 0 && size > 0)) {
            PyErr_Format(PyExc_ValueError, "span %zd: expected a data address and a size >= 0, got %llu and %zd", i, address, size);
            return -1;
        }
        *total += (size_t)size;
    }
    return 0;
}

/* gather(ptrs, sizes) -> bytes: the bytes at each data address (torch tensors' data_ptr(), of
 * contiguous CPU tensors the caller keeps alive, sizes their nbytes), one after the other. The
 * snapshot's copy of the buffers' values: one call instead of a cat or stack per dtype. */
static PyObject *gather(PyObject *self, PyObject *args) {
    PyObject *ptrs, *sizes;
    Py_ssize_t n;
    size_t total;
    if (!PyArg_ParseTuple(args, "OO:gather", &ptrs, &sizes) || read_spans(ptrs, sizes, &n, &total) < 0) return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out == NULL) return NULL;
    char *dst = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        size_t size = (size_t)PyLong_AsSsize_t(PyList_GET_ITEM(sizes, i));
        if (size) memcpy(dst, (const void *)(uintptr_t)PyLong_AsUnsignedLongLong(PyList_GET_ITEM(ptrs, i)), size);
        dst += size;
    }
    return out;
}

/* same_bytes(ptrs, sizes, saved) -> bool: do the bytes at the addresses equal saved (gather's
 * answer for spans of these sizes)? */
static PyObject *same_bytes(PyObject *self, PyObject *args) {
    PyObject *ptrs, *sizes;
    Py_buffer saved;
    Py_ssize_t n;
    size_t total;
    if (!PyArg_ParseTuple(args, "OOy*:same_bytes", &ptrs, &sizes, &saved)) return NULL;
    if (read_spans(ptrs, sizes, &n, &total) < 0) {
        PyBuffer_Release(&saved);
        return NULL;
    }
    int same = total == (size_t)saved.len;
    const char *src = (const char *)saved.buf;
    for (Py_ssize_t i = 0; same && i < n; i++) {
        size_t size = (size_t)PyLong_AsSsize_t(PyList_GET_ITEM(sizes, i));
        if (size) same = memcmp((const void *)(uintptr_t)PyLong_AsUnsignedLongLong(PyList_GET_ITEM(ptrs, i)), src, size) == 0;
        src += size;
    }
    PyBuffer_Release(&saved);
    return PyBool_FromLong(same);
}

static PyMethodDef methods[] = {
    {"gather", gather, METH_VARARGS, "The bytes at each data address, one after the other."},
    {"same_bytes", same_bytes, METH_VARARGS, "Do the bytes at the data addresses equal the saved ones?"},
    {"entries", entries, METH_O, "Each dict's length, and all their keys and values in order, as three lists."},
    {"same", same, METH_VARARGS, "Are these the saved dicts holding the saved entries, by identity and in order?"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_snap", NULL, -1, methods};

PyMODINIT_FUNC PyInit__snap(void) { return PyModule_Create(&module); }
