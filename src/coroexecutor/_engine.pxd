# Cython declarations for _engine.py, compiled as coroexecutor._cengine (setup.py).
# The .py stays the one source: this file only gives its classes C fields.
cdef class _Runner:
    cdef public bint _asyncio_future_blocking
    cdef public object add_done_callback
    cdef public bint cancel_requested
    cdef public object coro
    cdef public bint counted
    cdef public object ctx
    cdef public _Engine engine
    cdef public object first
    cdef public object get_loop
    cdef public object handle
    cdef public object on_handle_done
    cdef public bint parked
    cdef public bint release_on_exit
    cdef public bint report
    cdef public int state
    cdef public object task
    cdef public object wakeup

cdef class _Engine:
    cdef public Py_ssize_t _limit
    cdef public Py_ssize_t _cap
    cdef public Py_ssize_t _running
    cdef public Py_ssize_t _active
    cdef public Py_ssize_t _pending
    cdef public Py_ssize_t _completed
    cdef public Py_ssize_t _failed
    cdef public Py_ssize_t _cancelled
    cdef public object _waiters
    cdef public object _ready
    cdef public bint _ready_scheduled
    cdef public object _interval
    cdef public double _last_start
    cdef public object _job_factory
    cdef public list _free
    cdef public dict _tasks
    cdef public bint _copy_context
    cdef public bint _plain_futures
    cdef public object _context
    cdef public object _done_fut
    cdef public object _drained
    cdef public object _workers_gone
    cdef public object _state
    cdef public bint _aborting
    cdef public object _loop
    cdef public object _loop_getter
    cdef public object _max_pending
