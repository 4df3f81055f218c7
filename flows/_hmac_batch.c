/* Device-signature checks of a whole poll in one call (flows/device_auth.py).
 *
 * Python's hashlib costs about 3 us of interpreter work per message; this loop costs what OpenSSL's SHA-256
 * costs (about 4 blocks per reading). Each key's SHA-256 state after its inner (key XOR 0x36) and outer
 * (key XOR 0x5c) block is computed once per registry load (RFC 2104), copied per message, and the digest is
 * compared with the hex signature the device sent, touching every byte (no early exit). The GIL is released
 * while the HMACs are computed.
 *
 * key_states(secret: bytes) -> bytes: the two precomputed states of one key (its row in `states` below).
 * check(values, headers, rows_by_key_id, revoked, states, skip) -> (codes: bytes, rows: bytes):
 *   values, headers: lists of one poll, one item per message (its value; its Kafka headers or None, read as
 *   plantpulse.device_signing does);
 *   rows_by_key_id: dict key id (bytes) -> row in `states`; revoked: one byte per row (1 = revoked);
 *   skip: None or one byte per message (1 = not checked: the caller refused it already).
 *   codes: one byte per message (the CODE_ constants below); rows: int32 per message, the key's row or -1.
 *   No Python object is created per message: the only per-message work holding the GIL is a dict lookup.
 */
#define PY_SSIZE_T_CLEAN
#define OPENSSL_SUPPRESS_DEPRECATED /* SHA256_CTX: the low-level API lets a precomputed state be copied */
#include <Python.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 64
#define STATE_BYTES (2 * sizeof(SHA256_CTX))

static PyObject *key_states(PyObject *self, PyObject *args) {
    Py_buffer secret;
    if (!PyArg_ParseTuple(args, "y*", &secret)) return NULL;
    if (secret.len > BLOCK) {
        PyBuffer_Release(&secret);
        PyErr_Format(PyExc_ValueError, "hmac_batch.key_states: a key of %zd bytes is longer than a block", secret.len);
        return NULL;
    }
    unsigned char pad[BLOCK];
    SHA256_CTX states[2];
    for (int which = 0; which < 2; which++) {
        memset(pad, which == 0 ? 0x36 : 0x5c, BLOCK);
        for (Py_ssize_t i = 0; i < secret.len; i++) pad[i] ^= ((const unsigned char *)secret.buf)[i];
        SHA256_Init(&states[which]);
        SHA256_Update(&states[which], pad, BLOCK);
    }
    PyBuffer_Release(&secret);
    return PyBytes_FromStringAndSize((const char *)states, STATE_BYTES);
}

static int hex_value(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Whether HMAC-SHA256 of `message` under the key whose two states start at `key` equals the 64 lower-case hex
 * characters at `hex` (every byte compared). */
static int hmac_matches(const SHA256_CTX *key, const unsigned char *message, size_t size, const unsigned char *hex) {
    SHA256_CTX c;
    unsigned char inner[SHA256_DIGEST_LENGTH], mac[SHA256_DIGEST_LENGTH];
    memcpy(&c, &key[0], sizeof c);
    SHA256_Update(&c, message, size);
    SHA256_Final(inner, &c);
    memcpy(&c, &key[1], sizeof c);
    SHA256_Update(&c, inner, sizeof inner);
    SHA256_Final(mac, &c);
    unsigned int diff = 0, bad_hex = 0;
    for (int j = 0; j < SHA256_DIGEST_LENGTH; j++) {
        int high = hex_value(hex[2 * j]), low = hex_value(hex[2 * j + 1]);
        bad_hex |= (unsigned int)(high < 0) | (unsigned int)(low < 0);
        diff |= (unsigned int)(mac[j] ^ (unsigned char)((high << 4) | (low & 15)));
    }
    return diff == 0 && bad_hex == 0;
}

enum { CODE_OK, CODE_UNSIGNED, CODE_UNKNOWN_KEY, CODE_REVOKED, CODE_MALFORMED_SIGNATURE, CODE_MISMATCH, CODE_SKIPPED };

typedef struct {
    Py_ssize_t message;
    int32_t row;
    PyObject *value, *signature; /* held (INCREF) while the GIL is released */
} Pending;

/* The values of the `pp-kid` and `pp-sig` headers in one message's Kafka headers (a list of (name, value)
 * tuples, or None), as borrowed references; Py_None where missing. As dict(headers): the last one of a name
 * wins; an item that is not a (str, value) pair is ignored. */
static void header_fields(PyObject *headers, PyObject **key_id, PyObject **signature) {
    *key_id = *signature = Py_None;
    if (!PyList_Check(headers) && !PyTuple_Check(headers)) return;
    Py_ssize_t m = PySequence_Fast_GET_SIZE(headers);
    for (Py_ssize_t j = 0; j < m; j++) {
        PyObject *item = PySequence_Fast_GET_ITEM(headers, j);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 || !PyUnicode_Check(PyTuple_GET_ITEM(item, 0))) continue;
        PyObject *name = PyTuple_GET_ITEM(item, 0);
        if (PyUnicode_CompareWithASCIIString(name, "pp-kid") == 0) *key_id = PyTuple_GET_ITEM(item, 1);
        else if (PyUnicode_CompareWithASCIIString(name, "pp-sig") == 0) *signature = PyTuple_GET_ITEM(item, 1);
    }
}

static PyObject *check(PyObject *self, PyObject *args) {
    PyObject *values, *headers, *rows_by_key, *skip_obj;
    Py_buffer revoked, states;
    if (!PyArg_ParseTuple(args, "O!O!O!y*y*O", &PyList_Type, &values, &PyList_Type, &headers, &PyDict_Type,
                          &rows_by_key, &revoked, &states, &skip_obj))
        return NULL;
    PyObject *result = NULL, *codes_obj = NULL, *rows_obj = NULL;
    Pending *pending = NULL;
    Py_ssize_t n_pending = 0;
    Py_buffer skip = {0};
    int have_skip = skip_obj != Py_None;
    Py_ssize_t n = PyList_GET_SIZE(values);
    Py_ssize_t n_keys = states.len / (Py_ssize_t)STATE_BYTES;
    if (have_skip && PyObject_GetBuffer(skip_obj, &skip, PyBUF_SIMPLE) < 0) { have_skip = 0; goto done; }
    if (PyList_GET_SIZE(headers) != n || (have_skip && skip.len != n) ||
        states.len % (Py_ssize_t)STATE_BYTES || revoked.len != n_keys) {
        PyErr_SetString(PyExc_ValueError, "hmac_batch.check: inconsistent lengths of the poll's lists or the keys");
        goto done;
    }
    codes_obj = PyBytes_FromStringAndSize(NULL, n);
    rows_obj = PyBytes_FromStringAndSize(NULL, 4 * n);
    pending = PyMem_Malloc(sizeof(Pending) * (size_t)(n ? n : 1));
    if (codes_obj == NULL || rows_obj == NULL || pending == NULL) { PyErr_NoMemory(); goto done; }
    unsigned char *codes = (unsigned char *)PyBytes_AS_STRING(codes_obj);
    int32_t *rows = (int32_t *)PyBytes_AS_STRING(rows_obj);
    const unsigned char *is_revoked = (const unsigned char *)revoked.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        rows[i] = -1;
        if (have_skip && ((const unsigned char *)skip.buf)[i]) { codes[i] = CODE_SKIPPED; continue; }
        PyObject *key_id, *signature;
        header_fields(PyList_GET_ITEM(headers, i), &key_id, &signature);
        PyObject *value = PyList_GET_ITEM(values, i);
        if (key_id == Py_None || signature == Py_None) { codes[i] = CODE_UNSIGNED; continue; }
        PyObject *row_obj = PyBytes_CheckExact(key_id) ? PyDict_GetItemWithError(rows_by_key, key_id) : NULL;
        if (row_obj == NULL) {
            if (PyErr_Occurred()) goto done;
            codes[i] = CODE_UNKNOWN_KEY;
            continue;
        }
        long row = PyLong_AsLong(row_obj);
        if (row < 0 || row >= n_keys) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "hmac_batch.check: key row %ld out of range", row);
            goto done;
        }
        rows[i] = (int32_t)row;
        if (is_revoked[row]) { codes[i] = CODE_REVOKED; continue; }
        if (!PyBytes_CheckExact(signature) || PyBytes_GET_SIZE(signature) != 64 || !PyBytes_CheckExact(value)) {
            codes[i] = CODE_MALFORMED_SIGNATURE;
            continue;
        }
        Py_INCREF(value);
        Py_INCREF(signature);
        pending[n_pending++] = (Pending){i, (int32_t)row, value, signature};
    }
    const SHA256_CTX *ctx = (const SHA256_CTX *)states.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t j = 0; j < n_pending; j++) {
        const Pending *p = &pending[j];
        int good = hmac_matches(&ctx[2 * p->row], (const unsigned char *)PyBytes_AS_STRING(p->value),
                                (size_t)PyBytes_GET_SIZE(p->value), (const unsigned char *)PyBytes_AS_STRING(p->signature));
        codes[p->message] = good ? CODE_OK : CODE_MISMATCH;
    }
    Py_END_ALLOW_THREADS
    result = PyTuple_Pack(2, codes_obj, rows_obj);
done:
    for (Py_ssize_t j = 0; j < n_pending; j++) {
        Py_DECREF(pending[j].value);
        Py_DECREF(pending[j].signature);
    }
    PyMem_Free(pending);
    Py_XDECREF(codes_obj);
    Py_XDECREF(rows_obj);
    if (have_skip) PyBuffer_Release(&skip);
    PyBuffer_Release(&revoked);
    PyBuffer_Release(&states);
    return result;
}

static PyMethodDef methods[] = {
    {"key_states", key_states, METH_VARARGS, "The precomputed inner and outer SHA-256 states of one HMAC key."},
    {"check", check, METH_VARARGS, "Check a poll's device signatures; (one code byte, one int32 key row) per message."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_hmac_batch", NULL, -1, methods};

PyMODINIT_FUNC PyInit__hmac_batch(void) { return PyModule_Create(&module); }
