/* pooler._sysio: read(2) and write(2) on a non-blocking descriptor, with the GIL held; and
 * gevent's libev loop run with the GIL held but for its poll (run_loop, used by pooler/hub.py;
 * see its section below).
 *
 * The one piece of hand-written C in Greenvisor, built with the compiled hot path
 * (pooler/hotpath.py) and used by pooler/netio.py in place of os.read and os.write when
 * it is there. Why: CPython's os.read and os.write release the GIL around the system call
 * and take it back after (about 400 instructions a pair), which is right for a call that
 * may block. The relay only reads and writes non-blocking sockets, which never block: an
 * empty or full socket answers EAGAIN at once. A select transaction makes two reads and
 * two writes; releasing the GIL around them was a sixth of its instructions.
 *
 * Same contract as os.read/os.write: read(fd, size) -> bytes (b"" at end of file),
 * write(fd, data) -> int bytes written (data: bytes or anything with the buffer protocol),
 * OSError with the errno on failure (EAGAIN included; EINTR is raised too, not retried:
 * the caller's watcher fires again). No signal handlers can run inside: the call cannot
 * block, so none are waited for.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <sys/syscall.h>
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

static PyObject *
sysio_write(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    Py_ssize_t sent;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "write() takes 2 arguments (fd, data), %zd given", nargs);
        return NULL;
    }
    if (fd_of(args[0], &fd) < 0) {
        return NULL;
    }
    PyObject *data = args[1];
    if (PyBytes_CheckExact(data)) {
        sent = SYS_WRITE(fd, PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data));
    }
    else {
        Py_buffer view;
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
            return NULL;
        }
        sent = SYS_WRITE(fd, view.buf, (size_t)view.len);
        int saved = errno;
        PyBuffer_Release(&view);
        errno = saved;
    }
    if (sent < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromSsize_t(sent);
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

struct ev_loop;
typedef int (*ev_run_fn)(struct ev_loop *, int);
typedef void (*loop_hook_fn)(struct ev_loop *);
typedef void (*ev_set_loop_release_cb_fn)(struct ev_loop *, loop_hook_fn, loop_hook_fn);

static ev_run_fn p_ev_run;
static ev_set_loop_release_cb_fn p_ev_set_loop_release_cb;

/* The thread state saved while this thread's loop waits in the poll. Per thread: each
 * thread's hub has its own loop. */
static _Thread_local PyThreadState *waiting;

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
    dlclose(handle); /* RTLD_NOLOAD took a reference; the module stays loaded */
    if (run == NULL || hook == NULL) {
        PyErr_SetString(PyExc_ImportError, "gevent's libev module does not export ev_run");
        return NULL;
    }
    p_ev_run = run;
    p_ev_set_loop_release_cb = hook;
    Py_RETURN_NONE;
}

static PyObject *
sysio_run_loop(PyObject *module, PyObject *ptr)
{
    if (p_ev_run == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "run_loop() before bind_libev()");
        return NULL;
    }
    struct ev_loop *loop = (struct ev_loop *)PyLong_AsVoidPtr(ptr);
    if (loop == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "run_loop(): the loop is destroyed");
        }
        return NULL;
    }
    p_ev_set_loop_release_cb(loop, loop_release, loop_acquire);
    p_ev_run(loop, 0);
    p_ev_set_loop_release_cb(loop, NULL, NULL);
    Py_RETURN_NONE;
}

static PyMethodDef sysio_methods[] = {
    {"read", (PyCFunction)(void (*)(void))sysio_read, METH_FASTCALL,
     "read(fd, size) -> bytes: read(2) on a non-blocking descriptor, the GIL held."},
    {"write", (PyCFunction)(void (*)(void))sysio_write, METH_FASTCALL,
     "write(fd, data) -> int: write(2) on a non-blocking descriptor, the GIL held."},
    {"bind_libev", (PyCFunction)sysio_bind_libev, METH_O,
     "bind_libev(path): find ev_run in gevent's loaded libev module at path."},
    {"run_loop", (PyCFunction)sysio_run_loop, METH_O,
     "run_loop(loop.ptr): ev_run() on gevent's loop with the GIL held but for its poll."},
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
    return PyModule_Create(&sysio_module);
}
