/* Device-signature checks of a whole poll in one call (flows/device_auth.py).
 *
 * Python's hashlib costs about 3 us of interpreter work per message; this loop costs what OpenSSL's SHA-256
 * costs (about 4 blocks per reading). Each key's SHA-256 chaining value after its inner (key XOR 0x36) and
 * outer (key XOR 0x5c) block is computed once per registry load (RFC 2104) and resumed per message, and the
 * digest is compared with the hex signature the device sent, touching every byte (no early exit). The GIL is
 * released while the HMACs are computed.
 *
 * key_states(secret: bytes) -> bytes: the two precomputed chaining values of one key (its row in `states`).
 * check(values, rows_by_key_id, revoked, states, skip) -> (codes: bytes, rows: bytes, bodies: bytes):
 *   values: the list of one poll's message values, each read as plantpulse.device_signing.split_signed does
 *   (the body, then `,"pp_kid":"<key id>","pp_sig":"<64 hex>"}`), without copying;
 *   rows_by_key_id: dict key id (bytes) -> row in `states`; revoked: one byte per row (1 = revoked);
 *   skip: None or one byte per message (1 = not checked: the caller refused it already).
 *   codes: one byte per message (the CODE_ constants below); rows: int32 per message, the key's row or -1;
 *   bodies: the signed bodies of the messages that verified, in order, joined by newlines (what the decoder
 *   parses: the two signature members are not parsed again).
 *   The per-message work holding the GIL is finding the two members and one dict lookup of the key id.
 */
#define PY_SSIZE_T_CLEAN
#define OPENSSL_SUPPRESS_DEPRECATED /* SHA256_CTX: the low-level API lets a precomputed state be copied */
#include <Python.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 64
/* A key's two chaining values (8 words each) after its inner and outer pad block: 64 bytes, one cache line per
 * key, so that 10,000 keys' states fit in cache far better than two whole SHA256_CTX (224 bytes) would. */
#define STATE_WORDS 8
#define STATE_BYTES (2 * STATE_WORDS * sizeof(SHA_LONG))
#define PREFETCH_AHEAD 8

static PyObject *key_states(PyObject *self, PyObject *args) {
    Py_buffer secret;
    if (!PyArg_ParseTuple(args, "y*", &secret)) return NULL;
    if (secret.len > BLOCK) {
        PyBuffer_Release(&secret);
        PyErr_Format(PyExc_ValueError, "hmac_batch.key_states: a key of %zd bytes is longer than a block", secret.len);
        return NULL;
    }
    unsigned char pad[BLOCK];
    SHA_LONG states[2 * STATE_WORDS];
    for (int which = 0; which < 2; which++) {
        SHA256_CTX c;
        memset(pad, which == 0 ? 0x36 : 0x5c, BLOCK);
        for (Py_ssize_t i = 0; i < secret.len; i++) pad[i] ^= ((const unsigned char *)secret.buf)[i];
        SHA256_Init(&c);
        SHA256_Update(&c, pad, BLOCK);
        memcpy(&states[which * STATE_WORDS], c.h, sizeof c.h);
    }
    PyBuffer_Release(&secret);
    return PyBytes_FromStringAndSize((const char *)states, STATE_BYTES);
}

/* A SHA-256 context that has hashed one block (a key's pad) and reached the chaining value `h`. */
static void resume_after_pad(SHA256_CTX *c, const SHA_LONG *h) {
    SHA256_Init(c);
    memcpy(c->h, h, sizeof c->h);
    c->Nl = 8 * BLOCK; /* bits hashed so far: the length SHA256_Final encodes counts the pad block */
}

/* Whether HMAC-SHA256 of the body (the `body_size` bytes at `value`, then the closing brace) under the key whose
 * two chaining values start at `key` equals the 64 lower-case hex characters at `hex` (every byte compared). */
static int hmac_matches(const SHA_LONG *key, const unsigned char *value, size_t body_size, const unsigned char *hex) {
    SHA256_CTX c;
    unsigned char inner[SHA256_DIGEST_LENGTH], mac[SHA256_DIGEST_LENGTH];
    resume_after_pad(&c, key);
    SHA256_Update(&c, value, body_size);
    SHA256_Update(&c, "}", 1);
    SHA256_Final(inner, &c);
    resume_after_pad(&c, key + STATE_WORDS);
    SHA256_Update(&c, inner, sizeof inner);
    SHA256_Final(mac, &c);
    /* Compared as lower-case hex text, without a branch on the data: decoding the device's hex digit by digit
     * mispredicts a branch about every other digit, which cost as much as the hashing. */
    static const char digits[] = "0123456789abcdef";
    unsigned int diff = 0;
    for (int j = 0; j < SHA256_DIGEST_LENGTH; j++)
        diff |= (unsigned int)(hex[2 * j] ^ digits[mac[j] >> 4]) | (unsigned int)(hex[2 * j + 1] ^ digits[mac[j] & 15]);
    return diff == 0;
}

/* The wire format's pieces (plantpulse/device_signing.py). */
static const char KEY_ID_MEMBER[] = ",\"pp_kid\":\"";
static const char SIGNATURE_MEMBER[] = "\",\"pp_sig\":\"";
#define KEY_ID_MEMBER_SIZE ((Py_ssize_t)sizeof KEY_ID_MEMBER - 1)
#define SIGNATURE_MEMBER_SIZE ((Py_ssize_t)sizeof SIGNATURE_MEMBER - 1)
#define END_SIZE 2 /* "} */
#define SIGNATURE_HEX 64

/* The last start of `needle` (m bytes) lying wholly inside the first `hi` bytes of `text`, or -1 (Python's
 * rfind). Searched from the end: a signed message's members are found at the first or after a key id's
 * length of steps; only a message without them is scanned whole (it is at most the payload limit). */
static Py_ssize_t rfind_before(const char *text, Py_ssize_t hi, const char *needle, Py_ssize_t m) {
    for (Py_ssize_t at = hi - m; at >= 0; at--)
        if (text[at] == needle[0] && memcmp(text + at, needle, (size_t)m) == 0) return at;
    return -1;
}

/* Where the key id member and the signature member start in a value of `n` bytes (split_signed's reading);
 * 0 when the value carries no signature members. */
static int find_members(const char *value, Py_ssize_t n, Py_ssize_t *key_id_at, Py_ssize_t *signature_at) {
    if (n < END_SIZE || value[n - 2] != '"' || value[n - 1] != '}') return 0;
    Py_ssize_t end = n - END_SIZE;
    *signature_at = rfind_before(value, end, SIGNATURE_MEMBER, SIGNATURE_MEMBER_SIZE);
    if (*signature_at < 0) return 0;
    *key_id_at = rfind_before(value, *signature_at, KEY_ID_MEMBER, KEY_ID_MEMBER_SIZE);
    return *key_id_at >= 0;
}

enum { CODE_OK, CODE_UNSIGNED, CODE_UNKNOWN_KEY, CODE_REVOKED, CODE_MALFORMED_SIGNATURE, CODE_MISMATCH, CODE_SKIPPED };

typedef struct {
    Py_ssize_t message, body_size, signature;  /* the body's size without its brace; where the hex starts */
    int32_t row;
    PyObject *value; /* held (INCREF) while the GIL is released */
} Pending;

static PyObject *check(PyObject *self, PyObject *args) {
    PyObject *values, *rows_by_key, *skip_obj;
    Py_buffer revoked, states;
    if (!PyArg_ParseTuple(args, "O!O!y*y*O", &PyList_Type, &values, &PyDict_Type, &rows_by_key, &revoked, &states,
                          &skip_obj))
        return NULL;
    PyObject *result = NULL, *codes_obj = NULL, *rows_obj = NULL, *bodies_obj = NULL;
    Pending *pending = NULL;
    Py_ssize_t n_pending = 0;
    Py_buffer skip = {0};
    int have_skip = skip_obj != Py_None;
    Py_ssize_t n = PyList_GET_SIZE(values);
    Py_ssize_t n_keys = states.len / (Py_ssize_t)STATE_BYTES;
    if (have_skip && PyObject_GetBuffer(skip_obj, &skip, PyBUF_SIMPLE) < 0) { have_skip = 0; goto done; }
    if ((have_skip && skip.len != n) || states.len % (Py_ssize_t)STATE_BYTES || revoked.len != n_keys) {
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
        PyObject *value = PyList_GET_ITEM(values, i);
        Py_ssize_t key_id_at, signature_at;
        if (!PyBytes_CheckExact(value) ||
            !find_members(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), &key_id_at, &signature_at)) {
            codes[i] = CODE_UNSIGNED;
            continue;
        }
        const char *text = PyBytes_AS_STRING(value);
        PyObject *key_id = PyBytes_FromStringAndSize(text + key_id_at + KEY_ID_MEMBER_SIZE,
                                                     signature_at - key_id_at - KEY_ID_MEMBER_SIZE);
        if (key_id == NULL) goto done;
        PyObject *row_obj = PyDict_GetItemWithError(rows_by_key, key_id);
        Py_DECREF(key_id);
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
        Py_ssize_t hex_at = signature_at + SIGNATURE_MEMBER_SIZE;
        if (PyBytes_GET_SIZE(value) - END_SIZE - hex_at != SIGNATURE_HEX) {
            codes[i] = CODE_MALFORMED_SIGNATURE;
            continue;
        }
        Py_INCREF(value);
        pending[n_pending++] = (Pending){i, key_id_at, hex_at, (int32_t)row, value};
    }
    const SHA_LONG *key_states = (const SHA_LONG *)states.buf;
    /* The verified bodies are copied right after their HMAC, while the bytes are in cache: into a buffer big
     * enough for every pending body (a brace and a newline each), cut to size afterwards. */
    Py_ssize_t most = 0;
    for (Py_ssize_t j = 0; j < n_pending; j++) most += pending[j].body_size + 2;
    bodies_obj = PyBytes_FromStringAndSize(NULL, most);
    if (bodies_obj == NULL) goto done;
    char *const first = PyBytes_AS_STRING(bodies_obj);
    char *out = first;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t j = 0; j < n_pending; j++) {
        const Pending *p = &pending[j];
        if (j + PREFETCH_AHEAD < n_pending) {
            /* The keys of a poll are scattered over the registry: fetch a later message's key while this one
             * is hashed. */
            __builtin_prefetch(&key_states[2 * STATE_WORDS * pending[j + PREFETCH_AHEAD].row]);
        }
        const unsigned char *text = (const unsigned char *)PyBytes_AS_STRING(p->value);
        int good = hmac_matches(&key_states[2 * STATE_WORDS * p->row], text, (size_t)p->body_size,
                                text + p->signature);
        codes[p->message] = good ? CODE_OK : CODE_MISMATCH;
        if (good) {
            if (out != first) *out++ = '\n';
            memcpy(out, text, (size_t)p->body_size);
            out += p->body_size;
            *out++ = '}';
        }
    }
    Py_END_ALLOW_THREADS
    if (_PyBytes_Resize(&bodies_obj, out - first) < 0) goto done; /* on failure it freed the object and set it NULL */
    result = PyTuple_Pack(3, codes_obj, rows_obj, bodies_obj);
done:
    for (Py_ssize_t j = 0; j < n_pending; j++) Py_DECREF(pending[j].value);
    PyMem_Free(pending);
    Py_XDECREF(codes_obj);
    Py_XDECREF(rows_obj);
    Py_XDECREF(bodies_obj);
    if (have_skip) PyBuffer_Release(&skip);
    PyBuffer_Release(&revoked);
    PyBuffer_Release(&states);
    return result;
}

static PyMethodDef methods[] = {
    {"key_states", key_states, METH_VARARGS, "The precomputed inner and outer SHA-256 chaining values of one HMAC key."},
    {"check", check, METH_VARARGS,
     "Check a poll's device signatures: (one code byte, one int32 key row) per message, and the verified bodies."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_hmac_batch", NULL, -1, methods};

PyMODINIT_FUNC PyInit__hmac_batch(void) { return PyModule_Create(&module); }
