/* pooler._sysio: read(2) and write(2) on a non-blocking descriptor, with the GIL held (the
 * write as send, which answers None when the kernel took everything); accept(2)
 * without an exception for "nothing waiting"; gevent's libev loop run with the GIL held but
 * for its poll, skipping gevent's callback run on turns with nothing queued (run_loop, used
 * by pooler/hub.py); read watchers on that loop that libev calls straight into
 * (Watcher); and, on a server's watcher, the relay of a reply that keeps its transaction
 * open (relay_server, compiled against mypyc's structs of the relay's classes). Each has
 * its section below.
 *
 * The one piece of hand-written C in Greenvisor, built with the compiled hot path
 * (pooler/hotpath.py) and used by pooler/netio.py in place of os.read and os.write when
 * it is there. Why: CPython's os.read and os.write release the GIL around the system call
 * and take it back after (about 400 instructions a pair), which is right for a call that
 * may block. The relay only reads and writes non-blocking sockets, which never block: an
 * empty or full socket answers EAGAIN at once. A select transaction makes two reads and
 * two writes; releasing the GIL around them was a sixth of its instructions.
 *
 * read(fd, size) has os.read's contract: bytes (b"" at end of file), OSError with the errno
 * on failure (EAGAIN included; EINTR is raised too, not retried: the caller's watcher fires
 * again). send(fd, data) is write(2) answering None when all was written (its section
 * below). No signal handlers can run inside: the calls cannot block, so none are waited
 * for.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include "structmember.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* read(2) and write(2) as plain system calls. glibc's read() and write() are thread
 * cancellation points: in a process with more than one thread (runpooler's has two) each
 * call switches asynchronous cancellation on and off around the system call
 * (~35 instructions a call, ~1,000 per TPC-B transaction). Greenvisor never cancels a
 * thread, so the plain system call is the same call without that. */
#define SYS_READ(fd, buf, n) ((Py_ssize_t)syscall(SYS_read, (fd), (buf), (n)))
#define SYS_WRITE(fd, buf, n) ((Py_ssize_t)syscall(SYS_write, (fd), (buf), (n)))

/* Reads of up to this size land here first and are copied into a bytes of exactly the
 * size that arrived: one allocation of the right size instead of os.read's allocation of
 * the size asked for, then a shrink (a copy and a free for the small-object allocator,
 * a heap consolidation for 64 KB). Safe as one buffer: the GIL is held from the read to
 * the copy, so no other call can be inside. */
#define STAGE_SIZE (64 * 1024)
static char stage[STAGE_SIZE];

static int
fd_of(PyObject *obj, int *fd)
{
    long value = PyLong_AsLong(obj);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (value < INT_MIN || value > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "file descriptor out of range");
        return -1;
    }
    *fd = (int)value;
    return 0;
}

static PyObject *
sysio_read(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    Py_ssize_t size, got;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "read() takes 2 arguments (fd, size), %zd given", nargs);
        return NULL;
    }
    if (fd_of(args[0], &fd) < 0) {
        return NULL;
    }
    size = PyLong_AsSsize_t(args[1]);
    if (size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (size < 0) {
        errno = EINVAL; /* as os.read */
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (size <= STAGE_SIZE) {
        got = SYS_READ(fd, stage, (size_t)size);
        if (got < 0) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        return PyBytes_FromStringAndSize(stage, got);
    }
    PyObject *data = PyBytes_FromStringAndSize(NULL, size);
    if (data == NULL) {
        return NULL;
    }
    got = SYS_READ(fd, PyBytes_AS_STRING(data), (size_t)size);
    if (got < 0) {
        int saved = errno;
        Py_DECREF(data);
        errno = saved;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (got != size && _PyBytes_Resize(&data, got) < 0) {
        return NULL;
    }
    return data;
}

/* send(fd, data): write(2) for the relay and the login, whose every send wants to know one
 * thing: did the kernel take it all? None when it did (no int object: a written count over
 * 256 was an allocation and a free per send, ~14 per TPC-B transaction), else how many bytes
 * it took, 0 when the socket is full (EAGAIN, or EINTR: an answer, not an exception; the
 * caller waits until the socket is writable). Other errors raise OSError as os.write does.
 * data: bytes or anything with the buffer protocol. */
static PyObject *
sysio_send(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    Py_ssize_t sent, size;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "send() takes 2 arguments (fd, data), %zd given", nargs);
        return NULL;
    }
    if (fd_of(args[0], &fd) < 0) {
        return NULL;
    }
    PyObject *data = args[1];
    if (PyBytes_CheckExact(data)) {
        size = PyBytes_GET_SIZE(data);
        sent = SYS_WRITE(fd, PyBytes_AS_STRING(data), (size_t)size);
    }
    else {
        Py_buffer view;
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
            return NULL;
        }
        size = view.len;
        sent = SYS_WRITE(fd, view.buf, (size_t)size);
        int saved = errno;
        PyBuffer_Release(&view);
        errno = saved;
    }
    if (sent == size) {
        Py_RETURN_NONE;
    }
    if (sent < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            return PyLong_FromLong(0); /* EINTR too, as the relay's write took it */
        }
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromSsize_t(sent);
}


/* --- accept(2) without an exception for "nothing waiting" ------------------------------
 *
 * The login's accept loop (pooler/loginio.py accept_logins) takes every connection waiting
 * on a listening socket, until accept answers EAGAIN. In a connection storm that is one
 * connection per readiness event, so every event ends with a failed accept, which the
 * socket method raises as BlockingIOError: an exception made, raised and caught, some 4,000
 * instructions, ~2% of a SCRAM login. accept(fd) answers None instead, and otherwise what
 * socket._accept() answers: (descriptor, peer address in the socket module's format), the
 * descriptor close-on-exec like the socket module's. Other errors raise OSError as there.
 */

static PyObject *
peer_address(const struct sockaddr_storage *addr, socklen_t len)
{
    char host[INET6_ADDRSTRLEN];
    switch (addr->ss_family) {
    case AF_INET: {
        const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
        if (inet_ntop(AF_INET, &in->sin_addr, host, sizeof host) == NULL) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        return Py_BuildValue("(si)", host, (int)ntohs(in->sin_port));
    }
    case AF_INET6: {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
        if (inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host) == NULL) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        return Py_BuildValue("(siII)", host, (int)ntohs(in6->sin6_port),
                             (unsigned int)ntohl(in6->sin6_flowinfo),
                             (unsigned int)in6->sin6_scope_id);
    }
    case AF_UNIX: {
        const struct sockaddr_un *un = (const struct sockaddr_un *)addr;
        size_t path_len = len > offsetof(struct sockaddr_un, sun_path)
                              ? (size_t)len - offsetof(struct sockaddr_un, sun_path)
                              : 0;
        if (path_len > 0 && un->sun_path[0] == 0) { /* abstract namespace: bytes */
            return PyBytes_FromStringAndSize(un->sun_path, (Py_ssize_t)path_len);
        }
        return PyUnicode_DecodeFSDefaultAndSize(un->sun_path,
                                                (Py_ssize_t)strnlen(un->sun_path, path_len));
    }
    default:
        return Py_BuildValue("(iy#)", (int)addr->ss_family, (const char *)addr, (Py_ssize_t)len);
    }
}

static PyObject *
sysio_accept(PyObject *module, PyObject *arg)
{
    int fd, conn;
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
    if (fd_of(arg, &fd) < 0) {
        return NULL;
    }
    memset(&addr, 0, sizeof addr);
    conn = accept4(fd, (struct sockaddr *)&addr, &len, SOCK_CLOEXEC);
    if (conn < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            Py_RETURN_NONE;
        }
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *address = peer_address(&addr, len);
    if (address == NULL) {
        close(conn);
        return NULL;
    }
    PyObject *result = Py_BuildValue("(iN)", conn, address);
    if (result == NULL) {
        close(conn);
    }
    return result;
}


/* --- gevent's libev loop run with the GIL held ------------------------------------------
 *
 * gevent's loop.run() calls ev_run() with the GIL released, so every watcher callback takes
 * it (PyGILState_Ensure) and gives it back: a take/release pair, ~400 instructions, per
 * event. run_loop() runs the same ev_run() on the same loop with the GIL held and releases
 * it only where the loop can wait: around the backend's poll (epoll_wait), through libev's
 * loop release/acquire hooks, which wrap exactly that call. The callbacks then find the GIL
 * held, and their PyGILState_Ensure/Release do no locking. Nothing else in ev_run blocks.
 *
 * libev is compiled into gevent's corecext module and exports its API; bind_libev() finds
 * the two functions there (dlopen of the already-loaded module, RTLD_NOLOAD). */

/* This module's few bytes of thread-local state in the static TLS block (glibc keeps room
 * for modules loaded later): read per event, and the default model for a shared object
 * calls __tls_get_addr for every read (~200 instructions per TPC-B transaction). */
#define TLS_MODEL __attribute__((tls_model("initial-exec")))

struct ev_loop;
typedef int (*ev_run_fn)(struct ev_loop *, int);
typedef void (*loop_hook_fn)(struct ev_loop *);
typedef void (*ev_set_loop_release_cb_fn)(struct ev_loop *, loop_hook_fn, loop_hook_fn);

static ev_run_fn p_ev_run;
static ev_set_loop_release_cb_fn p_ev_set_loop_release_cb;

/* libev's ev_io as gevent's corecext module builds it: EV_COMMON empty (no data pointer),
 * priorities on. Its ev_io_start reads fd at offset 0x20 and events at 0x24, as here. */
struct gv_io {
    int active;
    int pending;
    int priority;
    void (*cb)(struct ev_loop *, struct gv_io *, int);
    void *next;
    int fd;
    int events;
};
#define GV_EV_READ 0x01
#define GV_EV__IOFDSET 0x80 /* "fd (re)set": libev (re)registers it with epoll */

typedef void (*ev_io_fn)(struct ev_loop *, struct gv_io *);
static ev_io_fn p_ev_io_start;
static ev_io_fn p_ev_io_stop;

/* 1 while this thread is inside run_loop's ev_run: a callback then finds the GIL held. */
static _Thread_local int holding TLS_MODEL;

/* The thread state saved while this thread's loop waits in the poll. Per thread: each
 * thread's hub has its own loop. */
static _Thread_local PyThreadState *waiting TLS_MODEL;

static void
loop_release(struct ev_loop *loop)
{
    (void)loop;
    waiting = PyEval_SaveThread();
}

static void
loop_acquire(struct ev_loop *loop)
{
    (void)loop;
    PyThreadState *tstate = waiting;
    waiting = NULL;
    PyEval_RestoreThread(tstate);
}

/* --- loop turns with no callbacks queued ------------------------------------------------
 *
 * gevent runs its callbacks (loop.run_callback: a greenlet's start, sleep(0), a waiter's
 * switch...) from a prepare watcher, called before every poll whether any are queued or
 * not: PyGILState_Ensure, a check for signals, then loop._run_callbacks, which calls
 * sys.getswitchinterval() through Python, stops a timer and reads the clock. ~870
 * instructions a turn, nearly always for nothing (callbacks ran in 1 turn of 70 under
 * TPC-B): ~4% of a relayed transaction's instructions. Under run_loop the prepare
 * watcher's callback is skip_idle_turn, which looks at the queue (CallbackFIFO's bool,
 * the GIL held) and checks for signals as gevent's does (a Python signal handler runs
 * here while the loop is otherwise idle); only with something queued, or a handler's
 * exception to report, does it call gevent's own callback. The queue being empty also
 * means gevent's zero-delay timer is stopped (it is started only with callbacks left
 * over), so skipping the turn leaves nothing behind. run_loop puts gevent's callback back
 * when ev_run returns. */
typedef void (*prepare_fn)(struct ev_loop *, void *, int);
static prepare_fn p_gevent_run_callbacks;

/* libev's ev_prepare as gevent builds it (EV_COMMON empty, like gv_io below). */
struct gv_prepare {
    int active;
    int pending;
    int priority;
    prepare_fn cb;
};

/* The running loop's callback queue (loop._callbacks), per thread as each thread's hub has
 * its own loop; a reference run_loop holds while ev_run runs. */
static _Thread_local PyObject *queue TLS_MODEL;
/* Turns skip_idle_turn found nothing to do in (for the tests: pooler/hub.py's probe). */
static unsigned long long idle_turns;

static void
skip_idle_turn(struct ev_loop *loop, void *w, int revents)
{
    PyObject *fifo = queue;
    if (holding && fifo != NULL) {
        int queued = PyObject_IsTrue(fifo);
        if (queued == 0 && PyErr_CheckSignals() == 0) {
            idle_turns++;
            return;
        }
        /* Something to run, or an exception set (a signal handler's, or the queue's bool):
         * gevent's callback runs them and reports it (it finds the error set). */
    }
    p_gevent_run_callbacks(loop, w, revents);
}

/* gevent's prepare watcher inside the loop object: the embedded ev_prepare whose callback
 * is gevent_run_callbacks (corecext's PyGeventLoopObject; found by that exact pointer, not
 * by an offset assumed from gevent's source). NULL when it is not there. */
static struct gv_prepare *
prepare_of(PyObject *loop_obj)
{
    if (p_gevent_run_callbacks == NULL) {
        return NULL;
    }
    Py_ssize_t size = Py_TYPE(loop_obj)->tp_basicsize;
    for (Py_ssize_t at = sizeof(PyObject); at + (Py_ssize_t)sizeof(struct gv_prepare) <= size;
         at += sizeof(void *)) {
        struct gv_prepare *w = (struct gv_prepare *)((char *)loop_obj + at);
        if (w->cb == p_gevent_run_callbacks) {
            return w;
        }
    }
    return NULL;
}

static PyObject *
sysio_bind_libev(PyObject *module, PyObject *path)
{
    const char *filename = PyUnicode_AsUTF8(path);
    if (filename == NULL) {
        return NULL;
    }
    void *handle = dlopen(filename, RTLD_NOW | RTLD_NOLOAD);
    if (handle == NULL) {
        PyErr_Format(PyExc_ImportError, "gevent's libev module is not loaded: %s", dlerror());
        return NULL;
    }
    ev_run_fn run = (ev_run_fn)dlsym(handle, "ev_run");
    ev_set_loop_release_cb_fn hook =
        (ev_set_loop_release_cb_fn)dlsym(handle, "ev_set_loop_release_cb");
    ev_io_fn io_start = (ev_io_fn)dlsym(handle, "ev_io_start");
    ev_io_fn io_stop = (ev_io_fn)dlsym(handle, "ev_io_stop");
    prepare_fn callbacks = (prepare_fn)dlsym(handle, "gevent_run_callbacks");
    dlclose(handle); /* RTLD_NOLOAD took a reference; the module stays loaded */
    if (run == NULL || hook == NULL || io_start == NULL || io_stop == NULL) {
        PyErr_SetString(PyExc_ImportError,
                        "gevent's libev module does not export ev_run and ev_io_start");
        return NULL;
    }
    p_ev_run = run;
    p_ev_set_loop_release_cb = hook;
    p_ev_io_start = io_start;
    p_ev_io_stop = io_stop;
    p_gevent_run_callbacks = callbacks; /* may be NULL: then every turn runs gevent's */
    Py_RETURN_NONE;
}

static PyObject *
sysio_run_loop(PyObject *module, PyObject *loop_obj)
{
    if (p_ev_run == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "run_loop() before bind_libev()");
        return NULL;
    }
    PyObject *ptr = PyObject_GetAttrString(loop_obj, "ptr");
    if (ptr == NULL) {
        return NULL;
    }
    struct ev_loop *loop = (struct ev_loop *)PyLong_AsVoidPtr(ptr);
    Py_DECREF(ptr);
    if (loop == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "run_loop(): the loop is destroyed");
        }
        return NULL;
    }
    /* The callback queue, if this loop has gevent's (else every turn runs gevent's). */
    PyObject *fifo = PyObject_GetAttrString(loop_obj, "_callbacks");
    if (fifo == NULL) {
        PyErr_Clear();
    }
    struct gv_prepare *prepare = fifo != NULL ? prepare_of(loop_obj) : NULL;
    PyObject *was_queue = queue;
    queue = prepare != NULL ? fifo : NULL;
    if (prepare != NULL) {
        prepare->cb = skip_idle_turn;
    }
    int was = holding;
    holding = 1;
    p_ev_set_loop_release_cb(loop, loop_release, loop_acquire);
    p_ev_run(loop, 0);
    p_ev_set_loop_release_cb(loop, NULL, NULL);
    holding = was;
    if (prepare != NULL) {
        prepare->cb = p_gevent_run_callbacks;
    }
    queue = was_queue;
    Py_XDECREF(fifo);
    Py_RETURN_NONE;
}

static PyObject *
sysio_idle_turns(PyObject *module, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(idle_turns);
}


/* --- read watchers that libev calls straight into --------------------------------------
 *
 * A gevent io watcher's event goes through gevent's generic callback: take the GIL (a
 * no-op under run_loop, still ~100 instructions), check for signals, build the call from
 * the watcher's callback and args tuple, call it, look at the watcher's state after:
 * ~300 instructions per event, ~12% of a relayed TPC-B statement's. Watcher is the same
 * libev ev_io with a callback that calls the Python callable with no arguments and
 * nothing else. Used by netio.Conn (through pooler/hub.py's reader()) for the read side
 * of every relayed socket, only when pooler/hub.py runs the loop.
 *
 * Signals: Python-level handlers run at gevent's own next callback (its timers and
 * signal watchers still go through gevent), as before within a tenth of a second.
 * An exception from the callback goes to the handler set_error_handler() gave (the hub's
 * handle_error, as gevent's watchers do), else it is printed as unraisable. */

static PyObject *error_handler;

typedef struct {
    PyObject_HEAD
    struct gv_io io;
    struct ev_loop *loop;
    PyObject *loop_obj; /* gevent's loop: keeps it alive, and says whether it is destroyed */
    PyObject *callback; /* NULL while stopped */
} Watcher;

static void
watcher_report(Watcher *self)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (error_handler == NULL) {
        PyErr_Restore(type, value, tb);
        PyErr_WriteUnraisable((PyObject *)self);
        return;
    }
    PyObject *res = PyObject_CallFunctionObjArgs(
        error_handler, (PyObject *)self, type ? type : Py_None, value ? value : Py_None,
        tb ? tb : Py_None, NULL);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    if (res == NULL) {
        PyErr_WriteUnraisable(error_handler);
    }
    else {
        Py_DECREF(res);
    }
}

/* --- the relay's common case, server to client, in C ---------------------------------------
 *
 * A server's reply: read it, scan its headers (framing.Exchange.backend), send it to the
 * client, count it; when it ends the transaction, give the server back. In compiled Python
 * that is a call into ServerConn._on_readable, then Client._on_server_readable, Conn.recv,
 * a bytes object, Exchange.backend, Conn.write and their checks: about a microsecond of
 * pooler CPU per event, which TPC-B pays in tps (docs/BENCHMARKS.md, session 18: ~0.2% per
 * microsecond per transaction). relay_server() does it here, on the compiled objects' own
 * fields: mypyc's generated header (GV_MYPYC_HEADER, given by pooler/hotpath.py's build)
 * declares their C structs, so this file and the compiled modules of the same build share
 * one layout. The end of a transaction (the statistics, the release, the hand-off to a
 * waiting client: the pool's work) stays in Python: Client._transaction_done, called after
 * the reply went out.
 *
 * It takes only the plainest case and leaves everything else to the Python code, unchanged:
 * before reading anything, unless a plain server socket with nothing carried is linked to a
 * plain Client (exactly that class) with nothing queued to send, no SET in flight, no
 * prepared-statement rewriting and no idle-in-transaction timer; after reading, when the
 * scan meets a ParameterStatus or an ErrorResponse (both need Python's bookkeeping), a
 * malformed header or one kind too many to pack: then the bytes read are handed to
 * Client._on_server_readable(data), which does what it does with what it reads itself. The
 * scan works on copies of the Exchange's fields and stores them only once the bytes are
 * known to stay on this path, so a hand-over never sees half a scan. End of file and a
 * failed read go the Python way too; the rest of a write the kernel does not take whole is
 * kept by Conn.write.
 *
 * relay_types(ServerConn, Client, Exchange) switches it on (pooler/client.py, at import,
 * in the compiled build only); relay_counts() answers (events relayed here, events handed
 * over) for the tests. */

#ifdef GV_MYPYC_HEADER
/* mypyc's runtime headers define static helpers and constants this file does not use. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wunused-variable"
#include GV_MYPYC_HEADER
#pragma GCC diagnostic pop
#define GV_RELAY 1

typedef pooler___server___ServerConnObject RelayServer;
typedef pooler___client___ClientObject RelayClient;
typedef pooler___protocol___framing___ExchangeObject RelayExchange;

static PyTypeObject *relay_server_type;
static PyTypeObject *relay_client_type;
static PyTypeObject *relay_exchange_type;
static PyObject *relay_name_readable; /* "_on_server_readable" */
static PyObject *relay_name_client_readable; /* "_on_client_readable" */
static PyObject *relay_name_done;            /* "_transaction_done" */
static PyObject *relay_name_lost;     /* "_server_lost" */
static PyObject *relay_name_write;    /* "write" */
static PyObject *relay_name_stop;     /* "stop_reading" */
static unsigned long long relay_fast;
static unsigned long long relay_handed;

/* framing.py's constants */
#define R_HEADER 5
#define R_PACKED 7
#define R_MAX_MESSAGE_LENGTH 0x3FFFFFFF
#define R_TX_IDLE 'I'
#define R_PARSE_KEPT 4096 /* client.py's PARSE_KEPT */

static int
relay_fd(PyObject *obj)
{
    if (obj == NULL || !PyLong_CheckExact(obj)) {
        return -1;
    }
#if PY_VERSION_HEX < 0x030C0000
    /* Every descriptor is a one-digit int (below 2**30), or 0: read the digit instead of
     * PyLong_AsLong's call and overflow checks (~27 instructions, twice per event, ~760
     * per TPC-B transaction). Python 3.12 changed the int layout: the call there. */
    if (Py_SIZE(obj) == 1) {
        return (int)((PyLongObject *)obj)->ob_digit[0];
    }
    if (Py_SIZE(obj) == 0) {
        return 0;
    }
#endif
    long fd = PyLong_AsLong(obj);
    if (fd < 0 || fd > INT_MAX) {
        PyErr_Clear();
        return -1;
    }
    return (int)fd;
}

/* The length field of the message header at buf[pos]. */
static inline int64_t
relay_length(const unsigned char *buf, int64_t pos)
{
    return (int64_t)buf[pos + 1] << 24 | (int64_t)buf[pos + 2] << 16 |
           (int64_t)buf[pos + 3] << 8 | (int64_t)buf[pos + 4];
}

/* framing._pack's usual case: keep the kind-th message type in a byte of *pack while
 * they fit. 0 when they do not (the list takes the rest: Python's work). */
static inline int
relay_pack(int64_t *pack, int64_t *kn, int64_t type)
{
    if (*kn >= R_PACKED) {
        return 0;
    }
    *pack = *kn == 0 ? type : *pack | type << (*kn << 3);
    (*kn)++;
    return 1;
}

/* owner._server_lost(prefix + str(the exception being raised)): what the relay's Python
 * does when a read or a write fails with an OSError. */
static PyObject *
relay_lose(PyObject *owner, const char *prefix)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *why = value != NULL ? PyUnicode_FromFormat("%s%S", prefix, value) : NULL;
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    if (why == NULL) {
        return NULL;
    }
    PyObject *res = PyObject_CallMethodOneArg(owner, relay_name_lost, why);
    Py_DECREF(why);
    return res;
}

/* relay_lose() for a system call that failed with err. */
static PyObject *
relay_lost(PyObject *owner, int err, const char *prefix)
{
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    return relay_lose(owner, prefix);
}

/* client.<name>(data): the Python relay (Client._on_server_readable or
 * _on_client_readable), with the n bytes already read into stage. */
static PyObject *
relay_hand_over(PyObject *client, PyObject *name, Py_ssize_t n)
{
    relay_handed++;
    PyObject *data = PyBytes_FromStringAndSize(stage, n);
    if (data == NULL) {
        return NULL;
    }
    PyObject *res = PyObject_CallMethodOneArg(client, name, data);
    Py_DECREF(data);
    return res;
}

/* The rest of what the kernel did not take whole: writer's Conn.write keeps it (its
 * outbuf) and watches for the socket to drain; reader (unless NULL) is not read until then,
 * *drained cleared. A write that fails loses the server, as in the Python relay
 * (owner._server_lost, *lost set). */
static PyObject *
relay_keep(PyObject *owner, PyObject *writer, PyObject *reader, const char *rest,
           Py_ssize_t size, const char *prefix, int *lost, int *drained)
{
    PyObject *data = PyBytes_FromStringAndSize(rest, size);
    if (data == NULL) {
        return NULL;
    }
    PyObject *res = PyObject_CallMethodOneArg(writer, relay_name_write, data);
    Py_DECREF(data);
    if (res == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_OSError)) {
            return NULL;
        }
        *lost = 1;
        return relay_lose(owner, prefix);
    }
    int all = PyObject_IsTrue(res);
    Py_DECREF(res);
    if (all < 0) {
        return NULL;
    }
    if (all) {
        Py_RETURN_NONE;
    }
    *drained = 0;
    if (reader == NULL) {
        Py_RETURN_NONE;
    }
    return PyObject_CallMethodNoArgs(reader, relay_name_stop);
}

/* --- the pool's common cases, in C: checkout, release, queue and hand-over -------------
 *
 * With a quiet pool (pgbench -c 1, the latency target; any client between transactions
 * while servers sit idle), each transaction checks a server out of the idle list when its
 * first request arrives and puts it back when ReadyForQuery 'I' ends it. In compiled
 * Python that is Client._on_client_readable's checkout (Pool.checkout, Client._link,
 * Exchange.reset) and Client._transaction_done's release (the counters, the histogram,
 * ServerConn.release, Pool.checkin, ServerConn.park): about half of a one-client
 * transaction's user time, ~1,000 instructions more than the C relay's forwarding
 * around them, and a working set that has left the caches while the pooler slept.
 * relay_checkout_candidate() and relay_release() do the plainest case on the same fields,
 * after checking everything the Python code would have branched on, and leave every
 * other case to it unchanged: a paused, closed or reloaded pool, a server check query, a
 * server to reset or past its lifetime, a cancel in flight, a client whose settings this
 * server has not been seen to fit, session mode, a shutdown. They change nothing until
 * every check has passed, so a case left to Python finds the state it would have found.
 *
 * With clients waiting (more clients than servers: pgbench -c 100 on a pool of 20 or 60),
 * a request that finds no idle server in a full pool is queued here (relay_queue, as
 * Pool.checkout queues it), and the release hands the server to the first waiter here, as
 * Pool.checkin and Client.server_ready would: the waiter is linked (its settings seen to
 * fit this server), counted (a checkout, its wait in the histogram), and what it sent
 * while waiting is scanned and forwarded as relay_client forwards a request
 * (relay_scan_request, relay_send_request). A waiter that is not the plainest case
 * (closed, its statement not judged yet, a named statement, a SET to send,
 * backpressure...) gets the server from Python, in FIFO order all the same.
 *
 * relay_pool_types(Pool, ListDeque, PoolLimits, PoolStats, Histogram) switches it on
 * (pooler/pool.py, at import, when the C relay is on); relay_pool_counts() answers
 * (checkouts, releases to the idle list, hand-overs to a waiter, clients queued) done
 * here, for the tests. */

typedef pooler___pool___PoolObject RelayPool;
typedef pooler___pool___PoolLimitsObject RelayLimits;
typedef pooler___pool___PoolStatsObject RelayStats;
typedef pooler___pool___HistogramObject RelayHistogram;
typedef pooler___listdeque___ListDequeObject RelayDeque;

static PyTypeObject *relay_pool_type;
static PyTypeObject *relay_deque_type;
static PyTypeObject *relay_limits_type;
static PyTypeObject *relay_stats_type;
static PyTypeObject *relay_histogram_type;
static unsigned long long relay_checkouts;
static unsigned long long relay_releases;
static unsigned long long relay_handoffs;
static unsigned long long relay_queued;

/* A non-negative int small enough to stay one after adding a few (mypyc's tagged int:
 * the value shifted left by one, the low bit clear). */
#define R_SMALL(t) (!((t) & CPY_INT_TAG) && (t) < ((CPyTagged)1 << 60))

/* time.monotonic(): the same clock and conversion (CLOCK_MONOTONIC, nanoseconds / 1e9). */
static inline double
relay_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec) / 1e9;
}

static inline RelayDeque *
relay_deque(PyObject *obj)
{
    if (obj == NULL || Py_TYPE(obj) != relay_deque_type) {
        return NULL;
    }
    RelayDeque *deque = (RelayDeque *)obj;
    if (deque->_items == NULL || !PyList_CheckExact(deque->_items) || deque->_head < 0 ||
        deque->_head > PyList_GET_SIZE(deque->_items)) {
        return NULL;
    }
    return deque;
}

static inline int
relay_deque_empty(RelayDeque *deque)
{
    return PyList_GET_SIZE(deque->_items) <= deque->_head;
}

/* The histogram, if Histogram.observe() could be done here on it. */
static inline RelayHistogram *
relay_histogram(PyObject *obj)
{
    if (obj == NULL || Py_TYPE(obj) != relay_histogram_type) {
        return NULL;
    }
    RelayHistogram *h = (RelayHistogram *)obj;
    if (h->_edges.items == NULL || h->_tally.items == NULL ||
        h->_tally.len != h->_edges.len + 1 || !R_SMALL(h->_count)) {
        return NULL;
    }
    return h;
}

/* Histogram.observe(value): the bucket by bisection, as the compiled method does. */
static void
relay_observe(RelayHistogram *h, double value)
{
    Py_ssize_t lo = 0, hi = h->_edges.len;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) >> 1;
        if (h->_edges.items[mid] < value) {
            lo = mid + 1;
        }
        else {
            hi = mid;
        }
    }
    h->_tally.items[lo]++;
    h->_total += value;
    h->_count += 2;
}

/* The pool's parts the fast paths use, each of the compiled class; NULL if any is not. */
static RelayPool *
relay_pool_of(RelayClient *client, RelayLimits **limits, RelayStats **stats, RelayDeque **idle,
              RelayDeque **waiters, int waiters_ok)
{
    PyObject *pool_obj = client->_pool;
    if (relay_pool_type == NULL || pool_obj == NULL || Py_TYPE(pool_obj) != relay_pool_type) {
        return NULL;
    }
    RelayPool *pool = (RelayPool *)pool_obj;
    if (pool->_paused || pool->_closed || !R_SMALL(pool->_active) ||
        pool->_limits == NULL || Py_TYPE(pool->_limits) != relay_limits_type ||
        pool->_stats == NULL || Py_TYPE(pool->_stats) != relay_stats_type) {
        return NULL;
    }
    *limits = (RelayLimits *)pool->_limits;
    *stats = (RelayStats *)pool->_stats;
    *idle = relay_deque(pool->_idle);
    *waiters = relay_deque(pool->_waiters);
    if (*idle == NULL || *waiters == NULL || (!waiters_ok && !relay_deque_empty(*waiters))) {
        return NULL; /* a waiter: it comes first (FIFO) */
    }
    return pool;
}

/* settings_id in server.fits: the client's settings were seen to fit this server. */
static int
relay_fits(RelayClient *client, RelayServer *server)
{
    PyObject *fits = server->_fits;
    PyObject *extra = server->_extra;
    if (fits == NULL || !PySet_CheckExact(fits) || extra == NULL || !PySet_CheckExact(extra) ||
        PySet_GET_SIZE(extra) != 0 || PySet_GET_SIZE(fits) == 0) {
        return 0;
    }
    CPyTagged id = client->_settings_id;
    PyObject *key = (id & CPY_INT_TAG) ? Py_NewRef((PyObject *)(id & ~(CPyTagged)CPY_INT_TAG))
                                       : PyLong_FromSsize_t((Py_ssize_t)id >> 1);
    if (key == NULL) {
        PyErr_Clear();
        return 0;
    }
    int found = PySet_Contains(fits, key);
    Py_DECREF(key);
    if (found < 0) {
        PyErr_Clear();
        return 0;
    }
    return found;
}

/* The idle server Pool.checkout() would hand ``client`` now without a word to Python
 * (borrowed; nothing changed yet), or NULL: the checkout is Python's. */
static PyObject *
relay_checkout_candidate(RelayClient *client)
{
    RelayLimits *limits;
    RelayStats *stats;
    RelayDeque *idle, *waiters;
    if (client->_session_mode || client->_closing ||
        relay_pool_of(client, &limits, &stats, &idle, &waiters, 0) == NULL ||
        relay_deque_empty(idle) || limits->_check_query == NULL ||
        !PyUnicode_CheckExact(limits->_check_query) ||
        PyUnicode_GET_LENGTH(limits->_check_query) != 0 || !R_SMALL(stats->_checkouts) ||
        relay_histogram(stats->_checkout_wait) == NULL) {
        return NULL;
    }
    PyObject *server_obj = PyList_GET_ITEM(idle->_items, PyList_GET_SIZE(idle->_items) - 1);
    if (Py_TYPE(server_obj) != relay_server_type) {
        return NULL;
    }
    RelayServer *server = (RelayServer *)server_obj;
    if (server->_client != Py_None || server->_resetting != Py_None || server->_closed ||
        server->_read_cb == NULL || server->_read_cb == Py_None ||
        server->_reading != server->_read_cb || !relay_fits(client, server)) {
        return NULL;
    }
    return server_obj;
}

/* Pool.checkout() and Client._link() for the candidate: it leaves the idle list (LIFO),
 * is counted (checkouts, a zero wait) and linked; the exchange starts over. -1 (nothing
 * changed, no exception) if the idle list could not be shortened. */
static int
relay_checkout(RelayClient *client, RelayServer *server, double now)
{
    RelayPool *pool = (RelayPool *)client->_pool;
    RelayStats *stats = (RelayStats *)pool->_stats;
    RelayDeque *idle = (RelayDeque *)pool->_idle;
    PyObject *items = idle->_items;
    Py_ssize_t size = PyList_GET_SIZE(items);
    Py_INCREF(server); /* the idle list's reference goes: client->_server's is this one */
    int rc = size - 1 == idle->_head ? PyList_SetSlice(items, 0, size, NULL)
                                     : PyList_SetSlice(items, size - 1, size, NULL);
    if (rc < 0) {
        PyErr_Clear();
        Py_DECREF(server);
        return -1;
    }
    if (PyList_GET_SIZE(items) == 0) {
        idle->_head = 0; /* ListDeque.pop: emptied, start over */
    }
    pool->_active += 2;
    stats->_checkouts += 2;
    RelayHistogram *wait = (RelayHistogram *)stats->_checkout_wait;
    wait->_tally.items[0]++; /* Histogram.observe_zero() */
    wait->_count += 2;
    Py_SETREF(client->_server, (PyObject *)server);
    Py_SETREF(server->_client, Py_NewRef((PyObject *)client));
    client->_busy_since = now;
    relay_checkouts++;
    return 0;
}

/* A client's request as the C relay scanned it: Exchange.frontend's fields after it, how
 * much of it is whole (end), and the recent statement its Parse matched. */
typedef struct {
    int64_t expected, syncs, kn, pack, fe_remaining, end;
    int extended, scanned;
    PyObject *recent_body; /* a reference of ours, or NULL: see relay_take_request */
    int64_t recent_at;
} RelayRequest;

/* Exchange.frontend over buf[0:n] on copies of ex's fields (of Exchange.reset()'s when
 * fresh: a server is being linked), then the session-state check (Client._judge_statement)
 * with only verdicts already known to be clean, for the client's last Parse or the one its
 * sequence goes on with. 0: the request stays in C, *rq filled; -1: Python's (a Terminate,
 * a named statement, a simple Query, a statement to judge, a malformed header...), nothing
 * held and nothing changed. */
static int
relay_scan_request(RelayClient *client, RelayExchange *ex, const unsigned char *buf, int64_t n,
                   int fresh, RelayRequest *rq)
{
    int64_t pos = fresh ? 0 : ex->_fe_remaining;
    int64_t expected = fresh ? 0 : ex->_expected;
    int64_t syncs = fresh ? 0 : ex->_syncs_since_exec;
    int extended = fresh ? 0 : ex->_extended;
    int64_t kn = fresh ? 0 : ex->_fe_n;
    int64_t pack = fresh ? 0 : ex->_fe_pack;
    int watch = ex->_watch;
    int inspect = ex->_inspect;
    int64_t sql_type = 0, sql_start = 0, sql_end = 0;
    int64_t fe_remaining, end;
    int scanned = pos < n;
    if (!scanned) {
        fe_remaining = pos - n;
        end = n;
    }
    else {
        int64_t last = n - R_HEADER;
        int64_t length = 0;
        while (pos <= last) {
            int64_t type = buf[pos];
            length = relay_length(buf, pos);
            if (length < 4) {
                return -1;
            }
            switch (type) {
            case 'P':
            case 'B':
            case 'D':
            case 'E':
            case 'C':
            case 'H':
                if (watch && type != 'E' && type != 'H') { /* names_statement() */
                    int64_t body = pos + R_HEADER;
                    int named;
                    if (n - body < 2) {
                        named = 1;
                    }
                    else if (type == 'P') {
                        named = buf[body] != 0;
                    }
                    else if (type == 'B') {
                        named = buf[body] != 0 || buf[body + 1] != 0;
                    }
                    else {
                        named = buf[body] == 'S' && buf[body + 1] != 0;
                    }
                    if (named) {
                        return -1; /* the rewriter takes over, in Python */
                    }
                }
                extended = 1;
                if (type == 'E') {
                    syncs = 0;
                }
                else if (type == 'P' && inspect && pos + length < n) {
                    if (sql_type != 0) {
                        return -1; /* a second statement to judge */
                    }
                    sql_type = type;
                    sql_start = pos + R_HEADER;
                    sql_end = pos + 1 + length;
                }
                break;
            case 'S':
                expected++;
                syncs++;
                extended = 0;
                break;
            case 'Q':
                return -1; /* the simple protocol's statements are judged by Python */
            case 'd':
                break;
            case 'c':
            case 'f':
                expected -= syncs;
                syncs = 0;
                break;
            case 'F':
                expected++;
                break;
            default:
                return -1; /* Terminate, or a type Python refuses */
            }
            if (watch && type != 'd' && !relay_pack(&pack, &kn, type)) {
                return -1;
            }
            pos += length + 1;
        }
        if (pos > n) {
            if (length > R_MAX_MESSAGE_LENGTH) {
                return -1;
            }
            fe_remaining = pos - n;
            end = n;
        }
        else {
            fe_remaining = 0;
            end = pos;
        }
    }

    PyObject *recent_body = NULL;
    int64_t recent_at = -1;
    if (sql_type != 0) {
        const char *body = (const char *)buf + sql_start;
        Py_ssize_t size = (Py_ssize_t)(sql_end - sql_start);
        PyObject *last_body = client->_parse_last;
        if (last_body != NULL && PyBytes_CheckExact(last_body) &&
            PyBytes_GET_SIZE(last_body) == size &&
            memcmp(PyBytes_AS_STRING(last_body), body, (size_t)size) == 0) {
            if (client->_parse_verdict.f0 != Py_None || client->_parse_verdict.f1) {
                return -1; /* it leaves session state: Python marks the server */
            }
        }
        else {
            PyObject *recent = client->_recent_sql;
            PyObject *verdicts = client->_recent_verdicts;
            if (size > R_PARSE_KEPT || recent == NULL || !PyList_CheckExact(recent) ||
                verdicts == NULL || !PyList_CheckExact(verdicts)) {
                return -1;
            }
            Py_ssize_t count = PyList_GET_SIZE(recent);
            int64_t at = client->_recent_hit + 1;
            if (at >= count) {
                at = 0;
            }
            if (count == 0 || PyList_GET_SIZE(verdicts) != count) {
                return -1;
            }
            PyObject *guess = PyList_GET_ITEM(recent, at);
            if (!PyBytes_CheckExact(guess) || PyBytes_GET_SIZE(guess) != size ||
                memcmp(PyBytes_AS_STRING(guess), body, (size_t)size) != 0) {
                return -1; /* not the next in its sequence: Python looks further */
            }
            PyObject *verdict = PyList_GET_ITEM(verdicts, at);
            if (!PyTuple_CheckExact(verdict) || PyTuple_GET_SIZE(verdict) != 2 ||
                PyTuple_GET_ITEM(verdict, 0) != Py_None || PyTuple_GET_ITEM(verdict, 1) != Py_False) {
                return -1;
            }
            recent_body = Py_NewRef(guess);
            recent_at = at;
        }
    }
    rq->expected = expected;
    rq->syncs = syncs;
    rq->kn = kn;
    rq->pack = pack;
    rq->fe_remaining = fe_remaining;
    rq->end = end;
    rq->extended = extended;
    rq->scanned = scanned;
    rq->recent_body = recent_body;
    rq->recent_at = recent_at;
    return 0;
}

/* Store a scan that stays in C: the Exchange's fields (after Exchange.reset() when fresh).
 * The statement's verdict is stored once the request is sent (relay_take_verdict), as
 * Client._forward_to_server notes it after the write. */
static void
relay_take_request(RelayExchange *ex, int fresh, RelayRequest *rq)
{
    if (fresh) {
        ex->_be_remaining = 0; /* the rest of Exchange.reset() */
        ex->_tx_status = R_TX_IDLE;
        ex->_be_n = 0;
    }
    if (rq->scanned) {
        ex->_terminate_at = -1;
        ex->_named_at = -1;
        ex->_fe_n = rq->kn;
        ex->_fe_pack = rq->pack;
        ex->_expected = rq->expected;
        ex->_syncs_since_exec = rq->syncs;
        ex->_extended = (char)rq->extended;
    }
    ex->_fe_remaining = rq->fe_remaining;
}

/* The recent statement the scan matched becomes the client's last Parse (rq->recent_body's
 * reference goes to the client). */
static void
relay_take_verdict(RelayClient *client, RelayRequest *rq)
{
    if (rq->recent_body != NULL) {
        client->_recent_hit = rq->recent_at;
        Py_SETREF(client->_parse_last, rq->recent_body);
        rq->recent_body = NULL;
        Py_INCREF(Py_None);
        Py_SETREF(client->_parse_verdict.f0, Py_None);
        client->_parse_verdict.f1 = 0;
    }
}

/* What Client._forward_to_server does with a scanned request, buf[0:n] (relay_take_request
 * done): send what is whole (the rest of what the kernel does not take is kept by the
 * server's Conn.write, the client not read meanwhile), keep an incomplete header for the
 * next read, note the statement's verdict. Returns the event's result (None, or NULL with
 * an exception set); rq->recent_body's reference is taken or dropped. */
static PyObject *
relay_send_request(RelayClient *client, RelayServer *server, int sfd, const char *buf,
                   int64_t n, RelayRequest *rq)
{
    PyObject *client_obj = (PyObject *)client;
    int64_t end = rq->end;
    PyObject *tail = NULL; /* an incomplete header, kept for the next read */
    if (end < n && (tail = PyBytes_FromStringAndSize(buf + end, n - end)) == NULL) {
        Py_CLEAR(rq->recent_body);
        return NULL;
    }
    Py_ssize_t sent = end > 0 ? SYS_WRITE(sfd, buf, (size_t)end) : 0;
    if (sent < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            Py_XDECREF(tail);
            Py_CLEAR(rq->recent_body);
            return relay_lost(client_obj, errno, "writing to the server failed: ");
        }
        sent = 0;
    }
    if (sent < end) {
        int lost = 0, drained = 1;
        PyObject *kept = relay_keep(client_obj, (PyObject *)server, client_obj, buf + sent,
                                    end - sent, "writing to the server failed: ", &lost,
                                    &drained);
        if (kept == NULL || lost) {
            Py_XDECREF(tail);
            Py_CLEAR(rq->recent_body);
            return kept;
        }
        Py_DECREF(kept);
    }
    relay_take_verdict(client, rq);
    if (tail != NULL) {
        Py_SETREF(client->_carry, tail);
    }
    Py_RETURN_NONE;
}

/* ListDeque.popleft() with the item dropped (the caller holds a reference to it). -1
 * (nothing changed, no exception) if the list could not be shortened. */
static int
relay_popleft(RelayDeque *deque)
{
    PyObject *items = deque->_items;
    Py_ssize_t size = PyList_GET_SIZE(items);
    int64_t head = deque->_head + 1;
    if (head == size || (head >= 32 && head * 2 >= size)) {
        /* emptied: start over; or half of it served: drop the served part */
        if (PyList_SetSlice(items, 0, head == size ? size : (Py_ssize_t)head, NULL) < 0) {
            PyErr_Clear();
            return -1;
        }
        head = 0;
    }
    else {
        PyList_SetItem(items, (Py_ssize_t)head - 1, Py_NewRef(Py_None)); /* not kept alive */
    }
    deque->_head = head;
    return 0;
}

/* The first waiter, if Pool.checkin's hand-over to it can be done here: Client.server_ready
 * would link it to ``server`` with no SET to send (its settings were seen to fit this
 * server) and forward what it sent while it waited, which stays in C (relay_scan_request;
 * *rq filled). Borrowed; NULL (nothing held) when Python hands the server over. */
static RelayClient *
relay_waiter(RelayPool *pool, RelayDeque *waiters, RelayServer *server, RelayRequest *rq)
{
    PyObject *obj = PyList_GET_ITEM(waiters->_items, (Py_ssize_t)waiters->_head);
    if (Py_TYPE(obj) != relay_client_type) {
        return NULL;
    }
    RelayClient *w = (RelayClient *)obj;
    PyObject *pending = w->_pending;
    PyObject *carry = w->_carry;
    PyObject *ex_obj = w->_ex;
    if (w->_pool != (PyObject *)pool || w->_closed || w->_closing || w->_session_mode ||
        w->_server != Py_None || pending == NULL || !PyBytes_CheckExact(pending) ||
        PyBytes_GET_SIZE(pending) == 0 || w->_held != Py_None || w->_syncing != Py_None ||
        w->_ps != Py_None || w->_refuse_state || !w->_plain || w->_outbuf != Py_None ||
        w->_client_cb == NULL || w->_client_cb == Py_None || w->_reading != w->_client_cb ||
        w->_busy_since == 0.0 || carry == NULL || !PyBytes_CheckExact(carry) ||
        PyBytes_GET_SIZE(carry) != 0 || ex_obj == NULL ||
        Py_TYPE(ex_obj) != relay_exchange_type || !relay_fits(w, server)) {
        return NULL;
    }
    RelayExchange *ex = (RelayExchange *)ex_obj;
    if (ex->_sql_type != 0 || ex->_sql_at != Py_None || ex->_fe_remaining != 0 ||
        relay_scan_request(w, ex, (const unsigned char *)PyBytes_AS_STRING(pending),
                           PyBytes_GET_SIZE(pending), 1, rq) < 0) {
        return NULL;
    }
    return w;
}

/* Client._transaction_done(server, drained) in transaction mode when nothing needs
 * Python: count the transaction and give the server back, to the idle list, or with a
 * client waiting, straight to it (relay_waiter). 0: done, *res the event's result; 1:
 * Python's case (nothing changed). */
static int
relay_release(RelayClient *client, RelayServer *server, PyObject **res)
{
    RelayLimits *limits;
    RelayStats *stats;
    RelayDeque *idle, *waiters;
    RelayPool *pool;
    if (client->_session_mode || client->_closing || !R_SMALL(client->_transactions) ||
        (pool = relay_pool_of(client, &limits, &stats, &idle, &waiters, 1)) == NULL ||
        pool->_active < 2 || server->_pool != (PyObject *)pool || server->_cancels != 0 ||
        server->_dirty || server->_closed || server->_held_back || server->_outbuf != Py_None ||
        server->_read_cb == NULL || server->_read_cb == Py_None ||
        server->_reading != server->_read_cb || (server->_generation & CPY_INT_TAG) ||
        server->_generation != pool->_generation) {
        return 1;
    }
    if (limits->_reset_always) {
        PyObject *query = limits->_reset_query;
        if (query == NULL || !PyUnicode_CheckExact(query) || PyUnicode_GET_LENGTH(query) != 0) {
            return 1; /* server_reset_query_always: ServerConn.release resets it */
        }
    }
    RelayHistogram *xact = NULL;
    if (client->_busy_since != 0.0 && (xact = relay_histogram(stats->_xact_time)) == NULL) {
        return 1;
    }
    double now = relay_now();
    double lifetime = limits->_server_lifetime;
    if (lifetime > 0 && now - server->_created_at > lifetime) {
        return 1; /* Pool.checkin closes it and opens another */
    }
    RelayClient *waiter = NULL;
    RelayHistogram *wait = NULL;
    RelayRequest rq;
    int sfd = -1;
    if (relay_deque_empty(waiters)) {
        if (PyList_Append(idle->_items, (PyObject *)server) < 0) {
            PyErr_Clear();
            return 1;
        }
    }
    else {
        if (!R_SMALL(stats->_checkouts) ||
            (wait = relay_histogram(stats->_checkout_wait)) == NULL ||
            (sfd = relay_fd(server->_fd)) < 0 ||
            (waiter = relay_waiter(pool, waiters, server, &rq)) == NULL) {
            return 1;
        }
        Py_INCREF(waiter); /* server->_client's reference, below */
        if (relay_popleft(waiters) < 0) {
            Py_DECREF(waiter);
            Py_XDECREF(rq.recent_body);
            return 1;
        }
    }
    client->_transactions += 2;
    client->_idle_since = now;
    if (xact != NULL) {
        relay_observe(xact, now - client->_busy_since);
        client->_busy_since = 0.0;
    }
    PyObject *linked = client->_server; /* the server: to the idle list or the waiter */
    client->_server = Py_NewRef(Py_None);
    if (waiter == NULL) {
        pool->_active -= 2;
        server->_idle_since = now; /* ServerConn.park: it keeps reading (any byte: unusable) */
        Py_SETREF(server->_client, Py_NewRef(Py_None));
        Py_DECREF(linked);
        relay_releases++;
        *res = Py_NewRef(Py_None);
        return 0;
    }
    /* Pool.checkin: the server stays active, counted as the waiter's checkout; then
     * Client.server_ready: _link (Exchange.reset) and _forward_to_server. */
    stats->_checkouts += 2;
    relay_observe(wait, now - waiter->_wait_started);
    PyObject *pending = waiter->_pending; /* its reference is ours now */
    waiter->_pending = Py_NewRef(Py_None);
    Py_SETREF(waiter->_server, linked);
    Py_SETREF(server->_client, (PyObject *)waiter);
    relay_take_request((RelayExchange *)waiter->_ex, 1, &rq);
    relay_handoffs++;
    *res = relay_send_request(waiter, server, sfd, PyBytes_AS_STRING(pending),
                              PyBytes_GET_SIZE(pending), &rq);
    Py_DECREF(pending);
    return 0;
}

/* The event of a watcher whose callback is ``callback``. 0: not the case handled here (the
 * caller calls the callback; nothing was read). 1: handled, *res the result (None, or NULL
 * with an exception set). */
static int
relay_server(PyObject *server_obj, PyObject *callback, PyObject **res)
{
    RelayServer *server = (RelayServer *)server_obj;
    PyObject *client_obj = server->_client;
    if (server->_read_cb != callback || client_obj == NULL ||
        Py_TYPE(client_obj) != relay_client_type) {
        return 0; /* idle in the pool, resetting, or another kind of client */
    }
    RelayClient *client = (RelayClient *)client_obj;
    PyObject *ex_obj = client->_ex;
    PyObject *carry = server->_carry;
    if (client->_server != server_obj || client->_syncing != Py_None || client->_ps != Py_None ||
        client->_watch_idle_tx || !client->_plain || client->_closed ||
        client->_outbuf != Py_None || (client->_bytes_out & CPY_INT_TAG) ||
        client->_bytes_out > ((CPyTagged)1 << 60) || !server->_plain || server->_closed ||
        carry == NULL || !PyBytes_CheckExact(carry) || PyBytes_GET_SIZE(carry) != 0 ||
        ex_obj == NULL || Py_TYPE(ex_obj) != relay_exchange_type) {
        return 0;
    }
    int sfd = relay_fd(server->_fd);
    int cfd = relay_fd(client->_fd);
    if (sfd < 0 || cfd < 0) {
        return 0;
    }
    RelayExchange *ex = (RelayExchange *)ex_obj;

    Py_ssize_t n = SYS_READ(sfd, stage, STAGE_SIZE);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            *res = Py_NewRef(Py_None); /* nothing yet: Conn.recv's None */
        }
        else if (n < 0) {
            *res = relay_lost(client_obj, errno, "");
        }
        else {
            *res = relay_hand_over(client_obj, relay_name_readable, 0); /* end of file */
        }
        return 1;
    }

    /* Exchange.backend on copies of its fields. */
    const unsigned char *buf = (const unsigned char *)stage;
    int64_t pos = ex->_be_remaining;
    int64_t expected = ex->_expected;
    int64_t tx_status = ex->_tx_status;
    int64_t ready_count = ex->_ready_count;
    int64_t kn = ex->_be_n;
    int64_t pack = ex->_be_pack;
    int watch = ex->_watch;
    int fe_at_rest = !ex->_extended && ex->_fe_remaining == 0;
    int rest_reset = 0; /* the exchange came to rest: fe_n = 0 */
    int64_t be_remaining, end;
    if (pos >= n) {
        be_remaining = pos - n;
        end = n;
    }
    else {
        int64_t last = n - R_HEADER;
        int64_t length = 0;
        while (pos <= last) {
            int64_t type = buf[pos];
            length = relay_length(buf, pos);
            if (length < 4) {
                goto hand_over; /* Python raises the ProtocolError */
            }
            if (type == 'D' || type == 'd') {
                /* the bulk of a result: nothing to note */
            }
            else if (type == 'Z') {
                if (pos == last) {
                    break; /* the status byte has not arrived yet */
                }
                if (length != 5) {
                    goto hand_over;
                }
                tx_status = buf[pos + 5];
                ready_count++;
                if (expected > 0) {
                    expected--;
                }
                if (watch) {
                    if (expected == 0 && fe_at_rest) {
                        kn = 0;
                        rest_reset = 1;
                    }
                    else if (!relay_pack(&pack, &kn, type)) {
                        goto hand_over;
                    }
                }
            }
            else if (type == 'S' || type == 'E') {
                goto hand_over; /* a status to note, or an error that may be FATAL */
            }
            else if (watch && !relay_pack(&pack, &kn, type)) {
                goto hand_over;
            }
            pos += length + 1;
        }
        if (pos > n) {
            if (length > R_MAX_MESSAGE_LENGTH) {
                goto hand_over;
            }
            be_remaining = pos - n;
            end = n;
        }
        else {
            be_remaining = 0;
            end = pos;
        }
    }
    /* Releasable: the transaction is over. Forwarded here all the same; then
     * Client._transaction_done counts it and gives the server back (the pool's work). */
    int done = end == n && tx_status == R_TX_IDLE && expected == 0 && fe_at_rest &&
               be_remaining == 0;

    /* Stays here: store the scan, then what Client._on_server_readable does. */
    ex->_be_remaining = be_remaining;
    ex->_expected = expected;
    ex->_tx_status = tx_status;
    ex->_ready_count = ready_count;
    ex->_be_n = kn;
    ex->_be_pack = pack;
    if (rest_reset) {
        ex->_fe_n = 0;
    }
    if (end < n) { /* an incomplete header, or a ReadyForQuery without its status byte */
        PyObject *tail = PyBytes_FromStringAndSize(stage + end, n - end);
        if (tail == NULL) {
            *res = NULL;
            return 1;
        }
        Py_SETREF(server->_carry, tail);
    }
    relay_fast++;
    Py_ssize_t sent = end > 0 ? SYS_WRITE(cfd, stage, (size_t)end) : 0;
    if (sent < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            *res = relay_lost(client_obj, errno, "");
            return 1;
        }
        sent = 0;
    }
    int drained = 1;
    if (sent < end) {
        /* The server is not read until the client drains, unless it goes back to the pool
         * (Client._transaction_done decides). */
        int lost = 0;
        PyObject *kept = relay_keep(client_obj, client_obj, done ? NULL : server_obj,
                                    stage + sent, end - sent, "", &lost, &drained);
        if (kept == NULL || lost) {
            *res = kept;
            return 1;
        }
        Py_DECREF(kept);
    }
    client->_bytes_out += (CPyTagged)end << 1;
    if (!done) {
        *res = Py_NewRef(Py_None);
        return 1;
    }
    if (relay_release(client, server, res) == 0) {
        return 1;
    }
    *res = PyObject_CallMethodObjArgs(client_obj, relay_name_done, server_obj,
                                      drained ? Py_True : Py_False, NULL);
    return 1;

hand_over:
    *res = relay_hand_over(client_obj, relay_name_readable, n);
    return 1;
}

/* A client's bytes into stage: how many, or 0 when the event is handled already (*res:
 * None when there is nothing yet; at end of file or a failed read, the client being gone
 * either way, Python's hang-up). */
static Py_ssize_t
relay_read_client(PyObject *client_obj, int cfd, PyObject **res)
{
    Py_ssize_t n = SYS_READ(cfd, stage, STAGE_SIZE);
    if (n > 0) {
        return n;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        *res = Py_NewRef(Py_None);
        return 0;
    }
    *res = relay_hand_over(client_obj, relay_name_client_readable, 0);
    return 0;
}

/* The first request of a transaction with no idle server and the pool full (every server
 * busy, nothing to open): Pool.checkout would queue the client (FIFO) with what it sent,
 * as Client._on_client_readable does. Read and queued here when the request would stay in
 * C at the hand-over (relay_waiter); anything else goes to Python with the bytes read. 0:
 * not this case (nothing read); 1: handled, *res the result. */
static int
relay_queue(RelayClient *client, PyObject **res)
{
    RelayLimits *limits;
    RelayStats *stats;
    RelayDeque *idle, *waiters;
    RelayPool *pool;
    PyObject *ex_obj = client->_ex;
    PyObject *carry = client->_carry;
    if (client->_session_mode || client->_closing || client->_closed || !client->_plain ||
        client->_pending != Py_None || client->_held != Py_None ||
        client->_syncing != Py_None || client->_ps != Py_None || client->_refuse_state ||
        client->_busy_since != 0.0 || (client->_bytes_in & CPY_INT_TAG) ||
        client->_bytes_in > ((CPyTagged)1 << 60) || carry == NULL ||
        !PyBytes_CheckExact(carry) || PyBytes_GET_SIZE(carry) != 0 || ex_obj == NULL ||
        Py_TYPE(ex_obj) != relay_exchange_type ||
        (pool = relay_pool_of(client, &limits, &stats, &idle, &waiters, 1)) == NULL ||
        !relay_deque_empty(idle) || !R_SMALL(pool->_connecting) || !R_SMALL(limits->_size) ||
        !R_SMALL(limits->_reserve_size) || !R_SMALL(limits->_pending_limit) ||
        pool->_active + pool->_connecting < limits->_size + limits->_reserve_size) {
        return 0; /* Pool.checkout may open a server, or lend an idle one */
    }
    RelayExchange *ex = (RelayExchange *)ex_obj;
    int cfd = relay_fd(client->_fd);
    if (ex->_sql_type != 0 || ex->_sql_at != Py_None || ex->_fe_remaining != 0 || cfd < 0) {
        return 0;
    }
    Py_ssize_t n = relay_read_client((PyObject *)client, cfd, res);
    if (n == 0) {
        return 1;
    }
    RelayRequest rq;
    if ((int64_t)n >= (int64_t)(limits->_pending_limit >> 1) ||
        relay_scan_request(client, ex, (const unsigned char *)stage, n, 1, &rq) < 0) {
        goto hand_over; /* backpressure, or a request Python handles */
    }
    Py_XDECREF(rq.recent_body); /* scanned again at the hand-over */
    PyObject *pending = PyBytes_FromStringAndSize(stage, n);
    if (pending == NULL) {
        PyErr_Clear();
        goto hand_over;
    }
    if (PyList_Append(waiters->_items, (PyObject *)client) < 0) {
        PyErr_Clear();
        Py_DECREF(pending);
        goto hand_over;
    }
    Py_SETREF(client->_pending, pending);
    client->_busy_since = client->_wait_started = relay_now();
    client->_bytes_in += (CPyTagged)n << 1;
    relay_queued++;
    *res = Py_NewRef(Py_None);
    return 1;

hand_over:
    *res = relay_hand_over((PyObject *)client, relay_name_client_readable, n);
    return 1;
}

/* The event of a client's watcher whose callback is ``callback``: as relay_server. */
static int
relay_client(PyObject *client_obj, PyObject *callback, PyObject **res)
{
    RelayClient *client = (RelayClient *)client_obj;
    PyObject *server_obj = client->_server;
    if (client->_client_cb != callback || server_obj == NULL) {
        return 0;
    }
    /* No server: the first request of a transaction. An idle one is checked out here
     * (relay_checkout) once the request is known to stay on this path, else Python's. */
    int checkout = server_obj == Py_None;
    if (checkout && (server_obj = relay_checkout_candidate(client)) == NULL) {
        return relay_queue(client, res);
    }
    if (Py_TYPE(server_obj) != relay_server_type) {
        return 0;
    }
    RelayServer *server = (RelayServer *)server_obj;
    PyObject *ex_obj = client->_ex;
    PyObject *carry = client->_carry;
    if (server->_client != (checkout ? Py_None : client_obj) || client->_pending != Py_None ||
        client->_held != Py_None || client->_syncing != Py_None || client->_ps != Py_None ||
        client->_refuse_state || (client->_busy_since == 0.0) != checkout || !client->_plain ||
        client->_closed || (client->_bytes_in & CPY_INT_TAG) ||
        client->_bytes_in > ((CPyTagged)1 << 60) || !server->_plain || server->_closed ||
        server->_outbuf != Py_None || carry == NULL || !PyBytes_CheckExact(carry) ||
        PyBytes_GET_SIZE(carry) != 0 || ex_obj == NULL ||
        Py_TYPE(ex_obj) != relay_exchange_type) {
        return 0;
    }
    RelayExchange *ex = (RelayExchange *)ex_obj;
    if (ex->_sql_type != 0 || ex->_sql_at != Py_None || (checkout && ex->_fe_remaining != 0)) {
        return 0;
    }
    int cfd = relay_fd(client->_fd);
    int sfd = relay_fd(server->_fd);
    if (sfd < 0 || cfd < 0) {
        return 0;
    }

    Py_ssize_t n = relay_read_client(client_obj, cfd, res);
    if (n == 0) {
        return 1;
    }

    RelayRequest rq;
    if (relay_scan_request(client, ex, (const unsigned char *)stage, n, checkout, &rq) < 0) {
        goto hand_over;
    }

    /* Stays here: the checkout (if any), store the scan, then what
     * Client._on_client_readable does. */
    if (checkout && relay_checkout(client, server, relay_now()) < 0) {
        Py_XDECREF(rq.recent_body);
        goto hand_over; /* the idle list could not shrink: Python's checkout */
    }
    relay_take_request(ex, checkout, &rq);
    client->_bytes_in += (CPyTagged)n << 1;
    relay_fast++;
    *res = relay_send_request(client, server, sfd, stage, n, &rq);
    return 1;

hand_over:
    *res = relay_hand_over(client_obj, relay_name_client_readable, n);
    return 1;
}

static int
relay_check_type(PyObject *obj, Py_ssize_t size, const char *what)
{
    if (!PyType_Check(obj) || ((PyTypeObject *)obj)->tp_basicsize != size) {
        PyErr_Format(PyExc_TypeError,
                     "relay_types(): %s is not the compiled class of this build "
                     "(rebuild with `python manage.py hotpath build`)",
                     what);
        return -1;
    }
    return 0;
}

static PyObject *
sysio_relay_types(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "relay_types(ServerConn, Client, Exchange)");
        return NULL;
    }
    if (relay_check_type(args[0], sizeof(RelayServer), "ServerConn") < 0 ||
        relay_check_type(args[1], sizeof(RelayClient), "Client") < 0 ||
        relay_check_type(args[2], sizeof(RelayExchange), "Exchange") < 0) {
        return NULL;
    }
    if (relay_name_readable == NULL) {
        relay_name_readable = PyUnicode_InternFromString("_on_server_readable");
        relay_name_client_readable = PyUnicode_InternFromString("_on_client_readable");
        relay_name_done = PyUnicode_InternFromString("_transaction_done");
        relay_name_lost = PyUnicode_InternFromString("_server_lost");
        relay_name_write = PyUnicode_InternFromString("write");
        relay_name_stop = PyUnicode_InternFromString("stop_reading");
        if (relay_name_readable == NULL || relay_name_client_readable == NULL ||
            relay_name_done == NULL ||
            relay_name_lost == NULL || relay_name_write == NULL ||
            relay_name_stop == NULL) {
            return NULL;
        }
    }
    Py_XSETREF(relay_server_type, (PyTypeObject *)Py_NewRef(args[0]));
    Py_XSETREF(relay_client_type, (PyTypeObject *)Py_NewRef(args[1]));
    Py_XSETREF(relay_exchange_type, (PyTypeObject *)Py_NewRef(args[2]));
    Py_RETURN_NONE;
}

static PyObject *
sysio_relay_pool_types(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "relay_pool_types(Pool, ListDeque, PoolLimits, PoolStats, Histogram)");
        return NULL;
    }
    if (relay_check_type(args[0], sizeof(RelayPool), "Pool") < 0 ||
        relay_check_type(args[1], sizeof(RelayDeque), "ListDeque") < 0 ||
        relay_check_type(args[2], sizeof(RelayLimits), "PoolLimits") < 0 ||
        relay_check_type(args[3], sizeof(RelayStats), "PoolStats") < 0 ||
        relay_check_type(args[4], sizeof(RelayHistogram), "Histogram") < 0) {
        return NULL;
    }
    Py_XSETREF(relay_pool_type, (PyTypeObject *)Py_NewRef(args[0]));
    Py_XSETREF(relay_deque_type, (PyTypeObject *)Py_NewRef(args[1]));
    Py_XSETREF(relay_limits_type, (PyTypeObject *)Py_NewRef(args[2]));
    Py_XSETREF(relay_stats_type, (PyTypeObject *)Py_NewRef(args[3]));
    Py_XSETREF(relay_histogram_type, (PyTypeObject *)Py_NewRef(args[4]));
    Py_RETURN_NONE;
}

/* 1 when the event was the relay's common case, handled in C (*res: its result). */
static int
relay_event(PyObject *callback, PyObject **res)
{
    if (relay_server_type == NULL || !PyCFunction_CheckExact(callback)) {
        return 0;
    }
    PyObject *owner = PyCFunction_GET_SELF(callback);
    if (owner == NULL) {
        return 0;
    }
    if (Py_TYPE(owner) == relay_server_type) {
        return relay_server(owner, callback, res);
    }
    if (Py_TYPE(owner) == relay_client_type) {
        return relay_client(owner, callback, res);
    }
    return 0;
}

#else /* built without the compiled modules' header: every event goes to its callback */

static int
relay_event(PyObject *callback, PyObject **res)
{
    (void)callback;
    (void)res;
    return 0;
}

#endif

static PyObject *
sysio_relay_pool_counts(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
#ifdef GV_RELAY
    return Py_BuildValue("(KKKK)", relay_checkouts, relay_releases, relay_handoffs,
                         relay_queued);
#else
    return Py_BuildValue("(KKKK)", 0ULL, 0ULL, 0ULL, 0ULL);
#endif
}

static PyObject *
sysio_relay_counts(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
#ifdef GV_RELAY
    return Py_BuildValue("(KK)", relay_fast, relay_handed);
#else
    return Py_BuildValue("(KK)", 0ULL, 0ULL);
#endif
}

/* The callback's call for one event: the relay's common case in C when it is that
 * (relay_server), else the callback. */
static PyObject *
watcher_call(PyObject *callback)
{
    PyObject *res;
    if (relay_event(callback, &res)) {
        return res;
    }
    if (PyCFunction_CheckExact(callback) &&
        PyCFunction_GET_FLAGS(callback) == (METH_FASTCALL | METH_KEYWORDS)) {
        /* A bound method of a compiled class (mypyc): its C entry point, called as
         * vectorcall would, minus the dispatch and result checks around it. */
        _PyCFunctionFastWithKeywords meth =
            (_PyCFunctionFastWithKeywords)(void (*)(void))PyCFunction_GET_FUNCTION(callback);
        res = meth(PyCFunction_GET_SELF(callback), NULL, 0, NULL);
        assert(res != NULL || PyErr_Occurred());
        return res;
    }
    return PyObject_CallNoArgs(callback);
}

static void
watcher_cb(struct ev_loop *loop, struct gv_io *io, int revents)
{
    (void)loop;
    (void)revents;
    Watcher *self = (Watcher *)((char *)io - offsetof(Watcher, io));
    int ensure = !holding; /* gevent's own hub runs the loop: the GIL is not held */
    PyGILState_STATE gil = PyGILState_UNLOCKED;
    if (ensure) {
        gil = PyGILState_Ensure();
    }
    PyObject *callback = self->callback;
    if (callback != NULL) {
        /* The callback may stop this watcher or drop the last reference to it. */
        Py_INCREF(callback);
        Py_INCREF(self);
        PyObject *res = watcher_call(callback);
        if (res == NULL) {
            watcher_report(self);
        }
        else {
            Py_DECREF(res);
        }
        Py_DECREF(callback);
        Py_DECREF(self);
    }
    if (ensure) {
        PyGILState_Release(gil);
    }
}

/* fire(): what one readiness event does, called by hand (the tests, bench.relay). */
static PyObject *
watcher_fire(Watcher *self, PyObject *unused)
{
    (void)unused;
    PyObject *callback = self->callback;
    if (callback == NULL) {
        Py_RETURN_NONE;
    }
    Py_INCREF(callback);
    Py_INCREF(self);
    PyObject *res = watcher_call(callback);
    Py_DECREF(callback);
    Py_DECREF(self);
    return res;
}

static PyObject *
watcher_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *loop_obj;
    int fd;
    static char *kwlist[] = {"loop", "fd", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Oi:Watcher", kwlist, &loop_obj, &fd)) {
        return NULL;
    }
    if (p_ev_io_start == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Watcher() before bind_libev()");
        return NULL;
    }
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "Watcher(): negative file descriptor");
        return NULL;
    }
    PyObject *ptr = PyObject_GetAttrString(loop_obj, "ptr");
    if (ptr == NULL) {
        return NULL;
    }
    void *loop = PyLong_AsVoidPtr(ptr);
    Py_DECREF(ptr);
    if (loop == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "Watcher(): the loop is destroyed");
        }
        return NULL;
    }
    Watcher *self = (Watcher *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->io.active = 0;
    self->io.pending = 0;
    self->io.priority = 0;
    self->io.cb = watcher_cb;
    self->io.next = NULL;
    self->io.fd = fd;
    self->io.events = GV_EV_READ | GV_EV__IOFDSET;
    self->loop = (struct ev_loop *)loop;
    Py_INCREF(loop_obj);
    self->loop_obj = loop_obj;
    self->callback = NULL;
    return (PyObject *)self;
}

static PyObject *
watcher_start(Watcher *self, PyObject *callback)
{
    if (!PyCallable_Check(callback)) {
        PyErr_SetString(PyExc_TypeError, "Watcher.start(): the callback must be callable");
        return NULL;
    }
    Py_INCREF(callback);
    Py_XSETREF(self->callback, callback);
    if (!self->io.active) {
        p_ev_io_start(self->loop, &self->io);
        /* Started, it keeps itself alive, as gevent's watchers do: a connection reachable
         * only through its watcher's callback goes on being served. */
        Py_INCREF(self);
    }
    Py_RETURN_NONE;
}

static void
watcher_halt(Watcher *self)
{
    Py_CLEAR(self->callback);
    if (self->io.active) {
        p_ev_io_stop(self->loop, &self->io);
        Py_DECREF(self); /* may free it: the last thing done */
    }
}

static PyObject *
watcher_stop(Watcher *self, PyObject *unused)
{
    (void)unused;
    watcher_halt(self);
    Py_RETURN_NONE;
}

static int
loop_alive(Watcher *self)
{
    /* An active watcher on a loop gevent already destroyed (interpreter exit) must not be
     * stopped: the loop's memory is gone. */
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *ptr = PyObject_GetAttrString(self->loop_obj, "ptr");
    int alive = ptr != NULL && PyLong_AsVoidPtr(ptr) == (void *)self->loop;
    Py_XDECREF(ptr);
    PyErr_Clear();
    PyErr_Restore(type, value, tb);
    return alive;
}

static int
watcher_traverse(Watcher *self, visitproc visit, void *arg)
{
    Py_VISIT(self->callback);
    Py_VISIT(self->loop_obj);
    return 0;
}

static int
watcher_clear(Watcher *self)
{
    /* Only reached stopped (a started watcher holds a reference to itself), but for a
     * watcher freed at interpreter exit: never leave libev a pointer to freed memory. */
    if (self->io.active && loop_alive(self)) {
        p_ev_io_stop(self->loop, &self->io);
    }
    self->io.active = 0;
    Py_CLEAR(self->callback);
    return 0;
}

static void
watcher_dealloc(Watcher *self)
{
    PyObject_GC_UnTrack(self);
    watcher_clear(self);
    Py_CLEAR(self->loop_obj);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
watcher_active(Watcher *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->io.active);
}

static PyMethodDef watcher_methods[] = {
    {"start", (PyCFunction)watcher_start, METH_O,
     "start(callback): call callback() whenever the descriptor is readable."},
    {"stop", (PyCFunction)watcher_stop, METH_NOARGS, "stop(): no more calls; drop the callback."},
    {"fire", (PyCFunction)watcher_fire, METH_NOARGS,
     "fire(): what a readiness event does (the relay's C case, else the callback), by hand."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef watcher_members[] = {
    {"loop", T_OBJECT, offsetof(Watcher, loop_obj), READONLY, "gevent's loop"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef watcher_getset[] = {
    {"active", (getter)watcher_active, NULL, "started", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject WatcherType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pooler._sysio.Watcher",
    .tp_basicsize = sizeof(Watcher),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Watcher(loop, fd): a libev read watcher calling its callback directly.",
    .tp_new = watcher_new,
    .tp_dealloc = (destructor)watcher_dealloc,
    .tp_traverse = (traverseproc)watcher_traverse,
    .tp_clear = (inquiry)watcher_clear,
    .tp_methods = watcher_methods,
    .tp_members = watcher_members,
    .tp_getset = watcher_getset,
};

static PyObject *
sysio_set_error_handler(PyObject *module, PyObject *handler)
{
    if (handler != Py_None && !PyCallable_Check(handler)) {
        PyErr_SetString(PyExc_TypeError, "set_error_handler(): not callable");
        return NULL;
    }
    Py_XSETREF(error_handler, handler == Py_None ? NULL : Py_NewRef(handler));
    Py_RETURN_NONE;
}

static PyMethodDef sysio_methods[] = {
    {"read", (PyCFunction)(void (*)(void))sysio_read, METH_FASTCALL,
     "read(fd, size) -> bytes: read(2) on a non-blocking descriptor, the GIL held."},
    {"send", (PyCFunction)(void (*)(void))sysio_send, METH_FASTCALL,
     "send(fd, data) -> None | int: write(2) with the GIL held; None when all of data was "
     "written, else the bytes written (0: the socket is full)."},
    {"accept", (PyCFunction)sysio_accept, METH_O,
     "accept(fd) -> (fd, address) | None: accept(2) on a non-blocking listening socket; "
     "None when no connection is waiting."},
    {"bind_libev", (PyCFunction)sysio_bind_libev, METH_O,
     "bind_libev(path): find ev_run in gevent's loaded libev module at path."},
    {"run_loop", (PyCFunction)sysio_run_loop, METH_O,
     "run_loop(loop): ev_run() on gevent's loop with the GIL held but for its poll."},
    {"idle_turns", (PyCFunction)sysio_idle_turns, METH_NOARGS,
     "idle_turns() -> int: loop turns run_loop found no gevent callbacks queued in."},
#ifdef GV_RELAY
    {"relay_types", (PyCFunction)(void (*)(void))sysio_relay_types, METH_FASTCALL,
     "relay_types(ServerConn, Client, Exchange): relay their common case in C (this build's "
     "compiled classes only)."},
    {"relay_pool_types", (PyCFunction)(void (*)(void))sysio_relay_pool_types, METH_FASTCALL,
     "relay_pool_types(Pool, ListDeque, PoolLimits, PoolStats, Histogram): check out, "
     "release, queue for and hand over servers in C (after relay_types)."},
#endif
    {"relay_pool_counts", (PyCFunction)sysio_relay_pool_counts, METH_NOARGS,
     "relay_pool_counts() -> (servers checked out in C, released to the idle list in C, "
     "handed to a waiter in C, clients queued in C)."},
    {"relay_counts", (PyCFunction)sysio_relay_counts, METH_NOARGS,
     "relay_counts() -> (relayed in C, handed to Python after reading)."},
    {"set_error_handler", (PyCFunction)sysio_set_error_handler, METH_O,
     "set_error_handler(f): f(watcher, type, value, tb) for a Watcher callback's exception."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef sysio_module = {
    PyModuleDef_HEAD_INIT,
    "pooler._sysio",
    "read(2)/write(2) on non-blocking descriptors, and gevent's loop, without releasing the GIL.",
    -1,
    sysio_methods,
};

PyMODINIT_FUNC
PyInit__sysio(void)
{
    if (PyType_Ready(&WatcherType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&sysio_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&WatcherType);
    if (PyModule_AddObject(module, "Watcher", (PyObject *)&WatcherType) < 0) {
        Py_DECREF(&WatcherType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
