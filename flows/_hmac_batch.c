/* HMAC-SHA256 verification of a whole poll in one call (flows/device_auth.py).
 *
 * Python's hashlib costs about 3 us of interpreter work per message; this loop costs what OpenSSL's SHA-256
 * costs (about 4 blocks per reading). Each key's SHA-256 state after its inner (key XOR 0x36) and outer
 * (key XOR 0x5c) block is computed once per registry load (RFC 2104), copied per message, and the digest is
 * compared with the hex signature the device sent, touching every byte (no early exit). The GIL is released
 * while the loop runs.
 *
 * key_states(secret: bytes) -> bytes: the two precomputed states of one key (its row in `states` below).
 * verify(data, offsets, key_index, states, signatures) -> bytes: one byte per message, 1 when
 *   HMAC-SHA256(key[key_index[i]], data[offsets[i]:offsets[i+1]]) equals signatures[64*i:64*i+64] read as
 *   lower-case hex; 0 otherwise (also for a key index < 0). offsets: int64, n + 1 of them; key_index: int32.
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

static PyObject *verify(PyObject *self, PyObject *args) {
    Py_buffer data, offsets, keys, states, signatures;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*", &data, &offsets, &keys, &states, &signatures)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = offsets.len / 8 - 1;
    Py_ssize_t n_keys = states.len / (Py_ssize_t)STATE_BYTES;
    if (n < 0 || offsets.len % 8 || keys.len != 4 * n || signatures.len != 64 * n ||
        states.len % (Py_ssize_t)STATE_BYTES) {
        PyErr_SetString(PyExc_ValueError, "hmac_batch.verify: inconsistent array lengths");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, n);
    if (result == NULL) goto done;
    char *ok = PyBytes_AS_STRING(result);
    const int64_t *off = (const int64_t *)offsets.buf;
    const int32_t *key_of = (const int32_t *)keys.buf;
    const unsigned char *bytes = (const unsigned char *)data.buf;
    const unsigned char *hex = (const unsigned char *)signatures.buf;
    const SHA256_CTX *ctx = (const SHA256_CTX *)states.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t k = key_of[i];
        int64_t start = off[i], end = off[i + 1];
        ok[i] = 0;
        if (k < 0 || k >= n_keys || start < 0 || end < start || end > data.len) continue;
        SHA256_CTX c;
        unsigned char inner[SHA256_DIGEST_LENGTH], mac[SHA256_DIGEST_LENGTH];
        memcpy(&c, &ctx[2 * k], sizeof c);
        SHA256_Update(&c, bytes + start, (size_t)(end - start));
        SHA256_Final(inner, &c);
        memcpy(&c, &ctx[2 * k + 1], sizeof c);
        SHA256_Update(&c, inner, sizeof inner);
        SHA256_Final(mac, &c);
        unsigned int diff = 0, bad_hex = 0;
        for (int j = 0; j < SHA256_DIGEST_LENGTH; j++) {
            int high = hex_value(hex[64 * i + 2 * j]), low = hex_value(hex[64 * i + 2 * j + 1]);
            bad_hex |= (unsigned int)(high < 0) | (unsigned int)(low < 0);
            diff |= (unsigned int)(mac[j] ^ (unsigned char)((high << 4) | (low & 15)));
        }
        ok[i] = (char)(diff == 0 && bad_hex == 0);
    }
    Py_END_ALLOW_THREADS
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&keys);
    PyBuffer_Release(&states);
    PyBuffer_Release(&signatures);
    return result;
}

static PyMethodDef methods[] = {
    {"key_states", key_states, METH_VARARGS, "The precomputed inner and outer SHA-256 states of one HMAC key."},
    {"verify", verify, METH_VARARGS, "Verify a poll's HMAC-SHA256 hex signatures; one byte (1 = valid) per message."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_hmac_batch", NULL, -1, methods};

PyMODINIT_FUNC PyInit__hmac_batch(void) { return PyModule_Create(&module); }
