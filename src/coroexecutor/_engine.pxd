# C declarations for _engine.py, compiled by setup.py as coroexecutor._cengine.  The .py
# stays the one source: this file gives its classes C fields and defines the C helpers
# (_c_*) that it calls, in `if cython.compiled:` branches or, for _c_pop and _c_push,
# under names that the pure engine binds to the list's own methods.
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_SET_ITEM
from cpython.object cimport PyObject_Call
from cpython.ref cimport PyObject, Py_DECREF, Py_INCREF, Py_XDECREF


cdef extern from "Python.h":
    ctypedef enum PySendResult:
        PYGEN_RETURN
        PYGEN_ERROR
        PYGEN_NEXT
    PySendResult PyIter_Send(object iter, object arg, PyObject** presult) except? PYGEN_ERROR
    int PyContext_Enter(object ctx) except -1
    int PyContext_Exit(object ctx) except -1
    ctypedef struct PyListObject:
        Py_ssize_t allocated
    void Py_SET_SIZE(object o, Py_ssize_t size)
    void PyObject_GC_UnTrack(void* o)
    void PyObject_GC_Track(void* o)
    int PyObject_GC_IsTracked(object o)
    int PyObject_IS_GC(object o)


cdef class _Runner:
    # The object fields first and the flags after them, packed: 160 bytes with the two
    # links, what the flags' padding made it without them when they came in between.
    cdef public object add_done_callback
    cdef public object coro
    cdef public object ctx
    cdef public _Engine engine
    cdef public object feed
    cdef public object get_loop
    cdef public object handle
    cdef public _Runner live_next
    cdef public _Runner live_prev
    cdef public object returned
    cdef public object task
    cdef public object wakeup
    cdef public object yielded
    cdef public int state
    cdef public bint _asyncio_future_blocking
    cdef public bint cancel_requested
    cdef public bint counted
    cdef public bint parked
    cdef public bint release_on_exit
    cdef public bint to_executor

    cdef inline object _park(self)


cdef class _Feed:
    cdef public object error
    cdef public object fn
    cdef public object it
    cdef public bint open
    cdef public object pending
    cdef public bint settle


cdef class _Engine:
    cdef public Py_ssize_t _limit
    cdef public Py_ssize_t _fast_limit
    cdef public Py_ssize_t _counted
    cdef public Py_ssize_t _suspended
    cdef public Py_ssize_t _pending
    cdef public Py_ssize_t _completed
    cdef public Py_ssize_t _failed
    cdef public Py_ssize_t _cancelled
    cdef public object _waiters
    cdef public object _ready
    cdef public bint _ready_scheduled
    cdef public object _pace
    cdef public object _job_factory
    cdef public list _free
    cdef public _Runner _live_first
    cdef public _Runner _live_last
    cdef public bint _copy_context
    cdef public bint _plain_futures
    cdef public bint _step_at_birth
    cdef public dict _future_kwargs
    cdef public object _context
    cdef public object _done_fut
    cdef public object _drained
    cdef public object _workers_gone
    cdef public object _state
    cdef public bint _aborting
    cdef public object _loop
    cdef public object _loop_getter
    cdef public object _max_pending
    cdef public object _name
    cdef public Py_ssize_t _workers_made

    # C calls from the engine itself; still methods to Python (CoroutineExecutor, map).
    cpdef _start(self, fn, tuple args, dict kwargs, bint to_executor, handle=*, list done=*, bint inplace=*)
    cpdef bint _map_fill(self, _Feed feed, list done)
    cdef _pull(self, _Runner runner, _Feed feed)
    cdef object _new_handle(self)
    cpdef _release(self)
    cpdef _job_returned(self, _Runner runner, result)


cdef object _RETURNED
cdef object _OPEN
# Every module-level name the hot paths read is a C variable: since 3.12 Cython cannot
# cache a module global's lookup (dict version tags are deprecated), and each read was a
# dict lookup by name (about 1,100 of a no-op job's 9,900 instructions on 3.12).
cdef object _send, _CancelledError, _Future, _future_cancel, _future_done
cdef object _future_set_result, _task_cancelling, _get_running_loop, _Task
cdef object _IGNORE_CALLBACK, _GO, _LIVE, _swap_current_task, _HANDLE_TYPE
cdef dict _current_tasks  # None on 3.12+
cdef bint _EAGER_START
cdef object _NO_KWARGS, _CoroutineType, _NotAwaitable, _as_coroutine, _check_fn

# A runner's states (the table in _engine.py): C ints.
cdef int _IDLE, _EAGER, _WAIT, _RESUME, _YIELD, _RUN, _STOP
cdef Py_ssize_t _MAP_BATCH


cdef inline object _c_send(_Runner runner, object coro, object value):
    """Step ``coro`` with PyIter_Send, which reports a return without raising
    StopIteration: what it yielded, or _RETURNED with its value in runner.returned."""
    cdef PyObject* res = NULL
    cdef PySendResult status = PyIter_Send(coro, value, &res)
    cdef object out = <object>res
    Py_XDECREF(res)
    if status == PYGEN_RETURN:
        runner.returned = out
        return _RETURNED
    return out


cdef inline object _c_send_in(_Runner runner, object coro):
    """_c_send(runner, coro, None) inside runner.ctx: Context.run without its call."""
    PyContext_Enter(runner.ctx)
    try:
        return _c_send(runner, coro, None)
    finally:
        PyContext_Exit(runner.ctx)


cdef inline object _c_call(object fn, tuple args, dict kwargs):
    """fn(*args, **kwargs), passing that very tuple and dict, as CPython's own call does
    with an exact dict: nothing built or copied per call (Cython's call copies kwargs)."""
    return PyObject_Call(fn, args, kwargs)


# The free list's pop and append, without its resizes: list.pop() shrinks the list's
# storage when it empties, and append() grows it again, two reallocs (440 instructions)
# for every job that ends at once on the one runner a no-op workload needs.  These keep
# the storage: the free list holds at most max_workers runners.  Every push and pop of
# the free list goes through these.
cdef inline object _c_pop(list items):
    """items.pop() on a non-empty list, keeping its storage."""
    cdef Py_ssize_t last = PyList_GET_SIZE(items) - 1
    cdef object item = <object>PyList_GET_ITEM(items, last)
    Py_SET_SIZE(items, last)
    Py_DECREF(item)  # the list's reference, which is now this function's
    return item


cdef inline void _c_push(list items, object item) except *:
    """items.append(item), into the storage already there when it has room."""
    cdef Py_ssize_t size = PyList_GET_SIZE(items)
    if size < (<PyListObject*>items).allocated:
        Py_INCREF(item)
        PyList_SET_ITEM(items, size, item)
        Py_SET_SIZE(items, size + 1)
    else:
        items.append(item)


# A live worker is out of the cyclic GC's sight: its runner, the runner's context and its
# task.  _LIVE holds the engine, the engine its tasks, each task its runner, so nothing a
# live worker references can be garbage, and at every full collection the GC walked
# 100,000 parked workers' fields for nothing (3 of the 10 objects a parked job holds;
# -15 % of its time with 100,000 parked).  _runner_exited() shows them again when the task
# ends, before anything can free them, so a dead worker in a reference cycle is collected
# as usual.  Only for objects of GC types (runner, Context, asyncio's C Task).
cdef inline void _c_gc_hide(object o):
    if PyObject_GC_IsTracked(o):
        PyObject_GC_UnTrack(<void*>o)


cdef inline void _c_gc_show(object o):
    if PyObject_IS_GC(o) and not PyObject_GC_IsTracked(o):
        PyObject_GC_Track(<void*>o)
