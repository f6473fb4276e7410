/* gateway_pkg._native: the per-packet checksum sum in C, an optional speed-up.
 *
 * One function, ones_sum(data, initial=0): the 16-bit ones' complement sum of `data` as
 * big-endian 16-bit words (odd length padded with a zero byte) with the integer `initial`
 * added, reduced the way gateway_pkg.tunnel.checksum.fold reduces a sum:
 *
 *     fold(int.from_bytes(data + (b"\0" if len(data) % 2 else b""), "big") + initial)
 *
 * that is 0 only when that total is 0, else 1..0xFFFF. The pure-Python formula in
 * gateway_pkg/tunnel/checksum.py is the reference; tests/unit/tunnel/test_native.py holds
 * the two equal. Only the limited API (3.11) is used, so one abi3 wheel serves 3.11+.
 *
 * The sum: 64-bit words loaded with memcpy (any alignment) in host byte order, added with
 * end-around carry into a 64-bit accumulator, folded to 16 bits. The ones' complement sum is
 * byte-order independent (RFC 1071 section 2(B)): on a little-endian host the folded sum of
 * little-endian words is the byte swap of the big-endian sum. The tail (< 8 bytes) is
 * copied into a zeroed 8-byte word at the same word offset, which is the zero padding.
 */
#define PY_SSIZE_T_CLEAN
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030B0000
#endif
#include <Python.h>

#include <stdint.h>
#include <string.h>

static inline uint64_t add_carry(uint64_t acc, uint64_t word)
{
    acc += word;
    return acc + (acc < word); /* end-around carry */
}

/* The folded (0..0xFFFF) ones' complement sum of big-endian 16-bit words; 0 iff all zero. */
static uint32_t sum16(const unsigned char *p, Py_ssize_t n)
{
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, w0, w1, w2, w3;
    while (n >= 32) {
        memcpy(&w0, p, 8);
        memcpy(&w1, p + 8, 8);
        memcpy(&w2, p + 16, 8);
        memcpy(&w3, p + 24, 8);
        a0 = add_carry(a0, w0);
        a1 = add_carry(a1, w1);
        a2 = add_carry(a2, w2);
        a3 = add_carry(a3, w3);
        p += 32;
        n -= 32;
    }
    a0 = add_carry(add_carry(a0, a1), add_carry(a2, a3));
    while (n >= 8) {
        memcpy(&w0, p, 8);
        a0 = add_carry(a0, w0);
        p += 8;
        n -= 8;
    }
    if (n > 0) {
        unsigned char tail[8] = {0};
        memcpy(tail, p, (size_t)n);
        memcpy(&w0, tail, 8);
        a0 = add_carry(a0, w0);
    }
    /* 64 -> 32 -> 16 bits, each with end-around carry: stays 0 only for a zero sum. */
    uint64_t s = (a0 & 0xFFFFFFFFu) + (a0 >> 32);
    s = (s & 0xFFFFFFFFu) + (s >> 32);
    s = (s & 0xFFFFu) + (s >> 16);
    s = (s & 0xFFFFu) + (s >> 16);
    s = (s & 0xFFFFu) + (s >> 16);
    const uint16_t probe = 1;
    unsigned char little;
    memcpy(&little, &probe, 1);
    if (little) {
        s = ((s & 0xFFu) << 8) | (s >> 8);
    }
    return (uint32_t)s;
}

/* Python's fold() of (a value congruent to `sum` mod 0xFFFF, nonzero iff `nonzero`). */
static PyObject *folded(uint64_t sum, int nonzero)
{
    uint64_t r = sum % 0xFFFFu;
    if (r == 0 && nonzero) {
        r = 0xFFFF;
    }
    return PyLong_FromUnsignedLong((unsigned long)r);
}

/* The exact route for an `initial` that is negative or does not fit 63 bits: Python ints. */
static PyObject *slow_sum(PyObject *data, Py_ssize_t len, uint32_t s, PyObject *initial)
{
    PyObject *modulus = PyLong_FromLong(0xFFFF), *rem = NULL, *result = NULL;
    PyObject *whole = NULL, *total = NULL;
    if (modulus == NULL) {
        return NULL;
    }
    rem = PyNumber_Remainder(initial, modulus); /* Python's %: 0..0xFFFE */
    if (rem == NULL) {
        goto done;
    }
    unsigned long ri = PyLong_AsUnsignedLong(rem);
    if (ri == (unsigned long)-1 && PyErr_Occurred()) {
        goto done;
    }
    uint64_t r = ((uint64_t)s + ri) % 0xFFFFu;
    if (r != 0) {
        result = PyLong_FromUnsignedLong((unsigned long)r);
        goto done;
    }
    /* A multiple of 0xFFFF: 0 only if the total is exactly 0, which needs the exact integer. */
    whole = PyObject_CallMethod((PyObject *)&PyLong_Type, "from_bytes", "Os", data, "big");
    if (whole == NULL) {
        goto done;
    }
    if (len & 1) {
        PyObject *eight = PyLong_FromLong(8), *shifted;
        if (eight == NULL) {
            goto done;
        }
        shifted = PyNumber_Lshift(whole, eight);
        Py_DECREF(eight);
        Py_DECREF(whole);
        whole = shifted;
        if (whole == NULL) {
            goto done;
        }
    }
    total = PyNumber_Add(whole, initial);
    if (total == NULL) {
        goto done;
    }
    int truth = PyObject_IsTrue(total);
    if (truth < 0) {
        goto done;
    }
    result = PyLong_FromLong(truth ? 0xFFFF : 0);
done:
    Py_DECREF(modulus);
    Py_XDECREF(rem);
    Py_XDECREF(whole);
    Py_XDECREF(total);
    return result;
}

static PyObject *ones_sum(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    (void)module;
    PyObject *data = NULL, *initial = NULL;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_Size(kwnames);
    if (nargs < 0 || nkw < 0) {
        return NULL;
    }
    if (nargs > 2 || nargs + nkw > 2) {
        PyErr_SetString(PyExc_TypeError, "ones_sum() takes at most 2 arguments (data, initial=0)");
        return NULL;
    }
    if (nargs >= 1) {
        data = args[0];
    }
    if (nargs == 2) {
        initial = args[1];
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GetItem(kwnames, i);
        PyObject **slot;
        if (name == NULL) {
            return NULL;
        }
        if (PyUnicode_CompareWithASCIIString(name, "initial") == 0) {
            slot = &initial;
        } else if (PyUnicode_CompareWithASCIIString(name, "data") == 0) {
            slot = &data;
        } else {
            PyErr_Format(PyExc_TypeError, "ones_sum() got an unexpected keyword argument '%U'", name);
            return NULL;
        }
        if (*slot != NULL) {
            PyErr_Format(PyExc_TypeError, "ones_sum() got multiple values for argument '%U'", name);
            return NULL;
        }
        *slot = args[nargs + i];
    }
    if (data == NULL) {
        PyErr_SetString(PyExc_TypeError, "ones_sum() missing required argument 'data'");
        return NULL;
    }

    long long init = 0;
    int overflow = 0;
    if (initial != NULL) {
        if (!PyLong_Check(initial)) {
            PyErr_SetString(PyExc_TypeError, "ones_sum() initial must be an int");
            return NULL;
        }
        init = PyLong_AsLongLongAndOverflow(initial, &overflow);
        if (init == -1 && !overflow && PyErr_Occurred()) {
            return NULL;
        }
    }

    Py_buffer view;
    PyObject *copy = NULL; /* what int.from_bytes would take: a non-contiguous view, ints */
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_BufferError) && !PyErr_ExceptionMatches(PyExc_TypeError)) {
            return NULL;
        }
        PyErr_Clear();
        copy = PyBytes_FromObject(data);
        if (copy == NULL) {
            return NULL;
        }
        if (PyObject_GetBuffer(copy, &view, PyBUF_SIMPLE) < 0) {
            Py_DECREF(copy);
            return NULL;
        }
    }
    uint32_t s = sum16((const unsigned char *)view.buf, view.len);
    Py_ssize_t len = view.len;
    PyBuffer_Release(&view);
    if (copy != NULL) {
        data = copy; /* a borrowed reference from here on, released below */
    }

    PyObject *result;
    if (overflow == 0 && init >= 0) {
        /* s <= 0xFFFF and init < 2**63: no overflow in the sum. */
        result = folded((uint64_t)s + (uint64_t)init, s != 0 || init != 0);
    } else {
        result = slow_sum(data, len, s, initial);
    }
    Py_XDECREF(copy);
    return result;
}

static PyMethodDef methods[] = {
    {"ones_sum", (PyCFunction)(void (*)(void))ones_sum, METH_FASTCALL | METH_KEYWORDS,
     "ones_sum(data, initial=0) -> int\n\n"
     "fold(int.from_bytes(data, 'big') (odd length padded with a zero byte) + initial):\n"
     "the 16-bit ones' complement sum, 0 only for a zero total, else 1..0xFFFF."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef_Slot slots[] = {
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "gateway_pkg._native",
    "The per-packet checksum sum in C (optional; gateway_pkg/tunnel/checksum.py has the reference).",
    0,
    methods,
    slots,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__native(void)
{
    return PyModuleDef_Init(&module_def);
}
