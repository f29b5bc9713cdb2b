"""drover_handler: a drover persistent handler written as one function.

    from drover_handler import serve, PermanentError

    def handle(job, ctx):                 # or: async def handle(job, ctx)
        ctx.progress(0.5, "halfway")      # ctx.id, ctx.attempt, ctx.deadline, ctx.cancelled
        return {"echo": job}

    serve(handle)

With `handler_mode = persistent`, drover starts the program once and sends it
jobs as JSON lines on stdin; serve() answers on stdout with JSON lines: ready
once set-up is done, then progress and exactly one result, error or cancelled
per job (protocol version 1, README "Persistent handlers"). It returns when
drover closes stdin and every job it holds has ended.

Sync functions run in a pool of DROVER_HANDLER_CONCURRENCY threads; async
functions run as asyncio tasks in one loop. Standard library only, python3 >= 3.9.
"""
import asyncio
import inspect
import json
import os
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor

__all__ = ["serve", "PermanentError", "Cancelled", "Context", "PROTOCOL"]

PROTOCOL = 1


class PermanentError(Exception):
    """Fails the job at once: drover does not retry it (an error frame with retry false)."""


class Cancelled(Exception):
    """Raised by ctx.progress() and ctx.check() once drover has cancelled the job."""


def _log(message):
    # sys.stderr is what drover logs per line; it is never the frame channel.
    try:
        sys.stderr.write("drover_handler: %s\n" % message)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _encode(frame):
    """One frame as one line. JSON escapes keep newlines out; NaN is not JSON, so it is refused."""
    text = json.dumps(frame, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return (text + "\n").encode("utf-8")


def _text(value):
    """str(value) that UTF-8 can carry: a lone surrogate (from surrogateescape'd bytes, say) becomes '?'."""
    return str(value).encode("utf-8", "replace").decode("utf-8")


class _Output:
    """The real stdout, kept away from print(): whole frames only, one writer at a time."""

    def __init__(self, fd):
        self._fd = fd
        self._lock = threading.Lock()
        self.broken = False

    def write(self, data, ctx=None, ends=False):
        """Writes one frame. With ctx, nothing is written once that job has ended (drover takes a
        frame for an id it no longer knows as a protocol violation), and ends marks it ended:
        both under the one lock, so no progress frame can slip in after the end frame."""
        with self._lock:
            if self.broken or (ctx is not None and ctx._ended):
                return False
            if ends:
                ctx._ended = True
            view = memoryview(data)
            try:
                while view:
                    written = os.write(self._fd, view)  # EINTR is retried by Python (PEP 475)
                    view = view[written:]
            except OSError as e:
                # drover went away; its closing our stdin ends serve() soon after.
                self.broken = True
                _log("cannot write to drover: %s" % e)
                return False
        return True

    def send(self, frame, ctx=None, ends=False):
        return self.write(_encode(frame), ctx, ends)


class Context:
    """What a job's function knows about its attempt, and its way to report progress."""

    def __init__(self, frame, output):
        self.id = frame["id"]
        self.attempt = frame.get("attempt", 1)
        self.timeout_ms = frame.get("timeout_ms")
        deadline_ms = frame.get("deadline_ms")
        # Unix seconds, as time.time() counts them.
        self.deadline = deadline_ms / 1000.0 if isinstance(deadline_ms, (int, float)) else None
        self.cancel_reason = None
        self._cancel = threading.Event()
        self._output = output
        self._ended = False  # set under the output lock with the job's last frame

    @property
    def cancelled(self):
        """True once drover has sent a cancel for this job (its timeout passed, say)."""
        return self._cancel.is_set()

    def check(self):
        """Raises Cancelled when the job was cancelled: a cheap point for sync code to stop."""
        if self._cancel.is_set():
            raise Cancelled(self.cancel_reason or "cancelled")

    def progress(self, fraction=None, message=None):
        """Reports progress (0..1 and/or a message), shown by `droverctl status`; raises Cancelled.
        Dropped once the job has ended (a thread of the job's that outlived it, say)."""
        self.check()
        frame = {"type": "progress", "id": self.id}
        if fraction is not None:
            frame["progress"] = min(1.0, max(0.0, float(fraction)))
        if message is not None:
            frame["message"] = _text(message)
        self._output.send(frame, self)

    def _set_cancelled(self, reason):
        self.cancel_reason = reason if isinstance(reason, str) else "cancelled"
        self._cancel.set()


class _Jobs:
    """The jobs this process holds, by id; each leaves before its last frame goes out so that
    drover, which may reuse the id once it has that frame, never finds it still held."""

    def __init__(self, output):
        self.output = output
        self._held = {}
        self._lock = threading.Lock()

    def add(self, ctx, runner=None):
        with self._lock:
            if ctx.id in self._held:
                return False
            self._held[ctx.id] = (ctx, runner)
            return True

    def set_runner(self, ctx, runner):
        with self._lock:
            if ctx.id in self._held:
                self._held[ctx.id] = (ctx, runner)

    def get(self, job_id):
        with self._lock:
            return self._held.get(job_id, (None, None))

    def runners(self):
        with self._lock:
            return [runner for _, runner in self._held.values() if runner is not None]

    def finish(self, ctx, frame):
        self._end(ctx, _encode(frame))

    def _end(self, ctx, data):
        with self._lock:
            self._held.pop(ctx.id, None)
        self.output.write(data, ctx, ends=True)

    def result(self, ctx, value):
        try:
            data = _encode({"type": "result", "id": ctx.id, "result": value})
        except (TypeError, ValueError) as e:
            # The same value would fail again: no point in a retry.
            self.error(ctx, "the result is not JSON: %s" % e, retry=False)
            return
        self._end(ctx, data)

    def error(self, ctx, text, retry):
        self.finish(ctx, {"type": "error", "id": ctx.id, "error": _text(text), "retry": retry})

    def cancelled(self, ctx):
        self.finish(ctx, {"type": "cancelled", "id": ctx.id})

    def failed(self, ctx, exc):
        """The end frame for an exception the function raised."""
        if isinstance(exc, PermanentError):
            self.error(ctx, str(exc) or type(exc).__name__, retry=False)
        elif isinstance(exc, Cancelled) or ctx.cancelled:
            self.cancelled(ctx)
        else:
            _log("job %s attempt %s: %s" % (ctx.id, ctx.attempt,
                                            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()))
            self.error(ctx, "%s: %s" % (type(exc).__name__, exc), retry=True)


# ---- frames in ----------------------------------------------------------------------------------

def _parse(line):
    """A frame (a dict with a "type"), or None after saying on stderr why the line is ignored."""
    try:
        frame = json.loads(line)
    except ValueError as e:
        _log("ignoring a line that is not JSON (%s)" % e)
        return None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        _log("ignoring a frame that is not a JSON object with a \"type\"")
        return None
    return frame


def _new_job(frame, jobs):
    """The Context of a job frame, or None when the frame is unusable or its id already held."""
    if not isinstance(frame.get("id"), str):
        _log("ignoring a job frame without a string \"id\"")
        return None
    ctx = Context(frame, jobs.output)
    if not jobs.add(ctx):
        _log("ignoring job %s: this process already holds a job with that id" % ctx.id)
        return None
    return ctx


def _dispatch(frame, jobs, start, cancel):
    """Routes one frame: start(ctx, job) for a job, cancel(ctx, runner) for a held job's cancel."""
    kind = frame["type"]
    if kind == "job":
        ctx = _new_job(frame, jobs)
        if ctx is not None:
            start(ctx, frame.get("job"))
    elif kind == "cancel":
        ctx, runner = jobs.get(frame.get("id"))
        if ctx is not None:  # a job that has just ended: its end frame answers the cancel
            ctx._set_cancelled(frame.get("reason"))
            cancel(ctx, runner)
    else:
        _log("ignoring a frame of unknown type %r" % kind)


def _lines(stream):
    while True:
        line = stream.readline()
        if not line:
            return
        if line.strip():
            yield line


# ---- sync functions: a thread pool ----------------------------------------------------------------

def _run_sync(fn, job, ctx, jobs):
    try:
        value = fn(job, ctx)
    except BaseException as e:  # noqa: B036 - every job gets its end frame, whatever it raised
        jobs.failed(ctx, e)
        return
    jobs.result(ctx, value)


def _serve_sync(fn, concurrency, stream, jobs):
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="drover-job") as pool:
        def start(ctx, job):
            pool.submit(_run_sync, fn, job, ctx, jobs)

        for line in _lines(stream):
            frame = _parse(line)
            if frame is not None:
                _dispatch(frame, jobs, start, lambda ctx, runner: None)
    # Leaving the with block waited for the jobs still running: EOF drains.


# ---- async functions: asyncio tasks ---------------------------------------------------------------

async def _run_async(fn, job, ctx, jobs):
    try:
        value = await fn(job, ctx)
    except asyncio.CancelledError as e:
        if not ctx.cancelled:
            raise  # not drover's cancel: the loop itself is going down
        jobs.failed(ctx, e)
        return
    except BaseException as e:  # noqa: B036
        jobs.failed(ctx, e)
        return
    jobs.result(ctx, value)


def _start_reader(stream, loop, queue):
    """stdin is read by a thread, so that a regular file or a terminal works as well as a pipe."""
    def read():
        try:
            for line in _lines(stream):
                loop.call_soon_threadsafe(queue.put_nowait, line)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    thread = threading.Thread(target=read, name="drover-stdin", daemon=True)
    thread.start()
    return thread


async def _serve_async(fn, setup, stream, jobs):
    if setup is not None:
        await _call_setup(setup)
    jobs.output.send({"type": "ready"})
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()
    _start_reader(stream, loop, queue)

    def start(ctx, job):
        jobs.set_runner(ctx, loop.create_task(_run_async(fn, job, ctx, jobs)))

    def cancel(ctx, task):
        if task is not None:
            task.cancel()

    while True:
        line = await queue.get()
        if line is None:
            break
        frame = _parse(line)
        if frame is not None:
            _dispatch(frame, jobs, start, cancel)
    held = jobs.runners()
    if held:
        await asyncio.gather(*held, return_exceptions=True)


async def _call_setup(setup):
    value = setup()
    if inspect.isawaitable(value):
        await value


# ---- serve ------------------------------------------------------------------------------------------

def _concurrency():
    text = os.environ.get("DROVER_HANDLER_CONCURRENCY", "1")
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        _log("DROVER_HANDLER_CONCURRENCY=%r is not a positive number: using 1" % text)
        return 1
    return value


def _is_async(fn):
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


class _StdioGuard:
    """Keeps stdin and stdout for frames only, from serve() on.

    print(), C code writing to fd 1 and child processes all write to stderr instead, and a
    child process reads /dev/null rather than stealing frames from stdin. This lasts for the
    rest of the process: what the program prints after serve() returns goes to stderr too,
    since drover may still be reading stdout. On exit the frame channel is closed, so drover
    sees its end at once."""

    def __enter__(self):
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except (OSError, ValueError, AttributeError):
                pass
        self.frames_in = os.dup(0)   # Python's dups are close-on-exec: no child inherits them
        self.frames_out = os.dup(1)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return self

    def __exit__(self, *exc):
        os.close(self.frames_out)
        return False


def serve(handle, setup=None):
    """Serves jobs to handle(job, ctx) until drover closes stdin and the jobs held have ended.

    setup, when given, runs once before drover is told the process is ready (load a model,
    open a client); an exception there ends serve() with it, and drover restarts the process."""
    if not callable(handle):
        raise TypeError("serve() needs a function handle(job, ctx)")
    with _StdioGuard() as stdio:
        stream = os.fdopen(stdio.frames_in, "rb", buffering=1 << 16)
        try:
            jobs = _Jobs(_Output(stdio.frames_out))
            if _is_async(handle):
                asyncio.run(_serve_async(handle, setup, stream, jobs))
            else:
                if setup is not None:
                    value = setup()
                    if inspect.isawaitable(value):
                        asyncio.run(_await(value))
                jobs.output.send({"type": "ready"})
                _serve_sync(handle, _concurrency(), stream, jobs)
        finally:
            stream.close()


async def _await(awaitable):
    return await awaitable
