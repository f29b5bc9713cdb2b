"""handler_pipes: drives a handler library as drover would, over the process's stdin and stdout.

The tests of lib/python (test_python_lib.py) and lib/node (test_node_lib.py) start a real
python3 or node running a handler script, send protocol frames on its stdin and read the
frames it writes on stdout. Every line on stdout must be one JSON object: anything else
fails the test at once. Each process runs in its own session and is killed by its pid's
group when the test ends, so nothing outlives a test.
"""
import json
import os
import queue
import signal
import subprocess
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HANDLERS = os.path.join(ROOT, "tests", "lib", "handlers")
PYTHON = "/usr/bin/python3"
NODE = "/usr/bin/node"
TIMEOUT = 15.0


class HandlerProcess:
    def __init__(self, argv, env=None, lib_paths=True):
        full_env = dict(os.environ)
        full_env.update({"DROVER_HANDLER_MODE": "persistent", "DROVER_PROTOCOL": "1",
                         "DROVER_HANDLER_CONCURRENCY": "1", "DROVER_WORKER": "0"})
        if lib_paths:
            full_env["PYTHONPATH"] = os.path.join(ROOT, "lib", "python")
            full_env["NODE_PATH"] = os.path.join(ROOT, "lib", "node")
        full_env.update(env or {})
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=full_env, start_new_session=True)
        self._frames = queue.Queue()
        self._stderr = []
        self._stderr_lock = threading.Lock()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self):
        for line in self.proc.stdout:
            self._frames.put(line)
        self._frames.put(None)

    def _read_stderr(self):
        for line in self.proc.stderr:
            with self._stderr_lock:
                self._stderr.append(line.decode("utf-8", "replace"))

    @property
    def stderr(self):
        with self._stderr_lock:
            return "".join(self._stderr)

    def wait_stderr(self, text, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while text not in self.stderr:
            assert time.monotonic() < deadline, "no %r on stderr within %.0f s; stderr:\n%s" % (text, timeout, self.stderr)
            time.sleep(0.02)

    def send(self, frame):
        self.send_raw((json.dumps(frame) + "\n").encode())

    def send_raw(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def job(self, job_id, job, attempt=1, timeout_ms=30000):
        self.send({"type": "job", "id": job_id, "attempt": attempt, "timeout_ms": timeout_ms,
                   "deadline_ms": int(time.time() * 1000) + timeout_ms, "job": job})

    def frame(self, timeout=TIMEOUT):
        """The next frame; fails when stdout carries anything but one JSON object per line."""
        try:
            line = self._frames.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no frame within %.0f s; stderr:\n%s" % (timeout, self.stderr))
        assert line is not None, "stdout closed; stderr:\n%s" % self.stderr
        assert line.endswith(b"\n"), "a frame without its newline: %r" % line
        try:
            frame = json.loads(line)
        except ValueError:
            raise AssertionError("stdout carried a line that is not JSON: %r" % line)
        assert isinstance(frame, dict) and isinstance(frame.get("type"), str), "not a frame: %r" % line
        return frame

    def end_of(self, job_id, timeout=TIMEOUT):
        """Frames up to the one that ends job_id (result, error or cancelled): (progress, end)."""
        progress = []
        while True:
            frame = self.frame(timeout)
            assert frame.get("id") == job_id, "a frame for another job: %r" % frame
            if frame["type"] == "progress":
                progress.append(frame)
            else:
                assert frame["type"] in ("result", "error", "cancelled"), frame
                return progress, frame

    def ends(self, count, timeout=TIMEOUT):
        """The next count end frames by id (progress frames skipped)."""
        out = {}
        while len(out) < count:
            frame = self.frame(timeout)
            if frame["type"] != "progress":
                assert frame["id"] not in out, "two end frames for %s" % frame["id"]
                out[frame["id"]] = frame
        return out

    def close_stdin(self):
        self.proc.stdin.close()

    def stdout_closed(self, timeout=TIMEOUT):
        try:
            line = self._frames.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("stdout still open after %.0f s" % timeout)
        assert line is None, "an unexpected frame: %r" % line

    def wait(self, timeout=TIMEOUT):
        return self.proc.wait(timeout=timeout)

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=TIMEOUT)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass
