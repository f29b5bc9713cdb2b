"""
test_demo_handler: the demo handler run directly, the way a worker runs it:
job JSON on stdin, result JSON on stdout, progress lines on fd 3, sysexits
codes for bad input and bad options; and in persistent mode, protocol frames
on stdin and stdout. No drover involved, so a failure here
points at handlers/demo.c alone.
"""

import json
import os
import select
import signal
import subprocess
import time

import pytest

import harness

DEMO = harness.BUILD / "handlers" / "demo"
TIMEOUT = 10  # seconds; a run with --duration-ms 20 takes a few milliseconds

EXIT_USAGE = 64
EXIT_DATAERR = 65

pytestmark = pytest.mark.asan


@pytest.fixture(autouse=True)
def built():
    if not DEMO.exists():
        pytest.fail("not built: %s (run make, or set DROVER_BUILD)" % DEMO)


def run_demo(args, stdin, with_progress=False, env=None):
    """Runs demo to completion; (returncode, stdout, stderr, progress bytes or None)."""
    env = harness.clean_env(env)
    env.pop("DROVER_DEMO_OUT", None)
    env.pop("DROVER_JOB_ID", None)
    if not with_progress:
        proc = subprocess.run([str(DEMO)] + args, input=stdin, capture_output=True, env=env, timeout=TIMEOUT)
        return proc.returncode, proc.stdout, proc.stderr, None
    r, w = os.pipe()
    try:
        # The write end must land on fd 3 exactly: pass_fds keeps fd 3 open through
        # close_fds, and preexec_fn puts the pipe there (dup2 clears close-on-exec).
        proc = subprocess.Popen([str(DEMO)] + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, pass_fds=(3,),
                                preexec_fn=lambda: os.dup2(w, 3))
    finally:
        os.close(w)  # only the child holds the write end now, so EOF comes when it exits
    try:
        out, err = proc.communicate(stdin, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        os.close(r)
        raise
    chunks = []
    with os.fdopen(r, "rb") as progress:
        chunks.append(progress.read())
    return proc.returncode, out, err, b"".join(chunks)


def assert_clean_stderr(err):
    text = err.decode(errors="replace")
    for pattern in harness.SANITIZER_PATTERNS:
        assert pattern not in text, "sanitizer report from demo:\n" + text


def read_ppm(path):
    """(width, height, maxval, pixel bytes) of a binary PPM; fails on anything malformed."""
    data = path.read_bytes()
    fields, pos = [], 0
    while len(fields) < 4:
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":  # a comment runs to the end of the line
            pos = data.index(b"\n", pos)
            continue
        start = pos
        while pos < len(data) and not data[pos:pos + 1].isspace():
            pos += 1
        assert pos > start, "truncated PPM header in %s: %r" % (path, data[:64])
        fields.append(data[start:pos])
    assert fields[0] == b"P6", "not a binary PPM: magic %r" % fields[0]
    width, height, maxval = (int(f) for f in fields[1:])
    assert data[pos:pos + 1].isspace(), "no single whitespace after the PPM header"
    return width, height, maxval, data[pos + 1:]


def test_valid_job_writes_the_image_and_reports_progress(workdir):
    out_dir = workdir / "images"  # does not exist yet: demo creates it
    job = {"id": "job-1", "prompt": "a lighthouse at dusk", "extra": [1, {"x": None}]}
    rc, out, err, progress = run_demo(["--out", str(out_dir), "--duration-ms", "20", "--size", "32"],
                                      json.dumps(job).encode(), with_progress=True)
    assert_clean_stderr(err)
    assert rc == 0, "demo exited %d: %s" % (rc, err.decode(errors="replace"))

    result = json.loads(out)
    assert set(result) == {"image", "width", "height"}, result
    assert (result["width"], result["height"]) == (32, 32), result
    image = out_dir.resolve() / "job-1.ppm"
    assert result["image"] == str(image), result
    assert image.is_file(), "%s not written; directory holds %s" % (image, sorted(os.listdir(out_dir)))
    width, height, maxval, pixels = read_ppm(image)
    assert (width, height, maxval) == (32, 32, 255)
    assert len(pixels) == width * height * 3, "pixel data is %d bytes" % len(pixels)
    assert len(set(pixels)) > 1, "the picture is one flat colour"
    assert sorted(os.listdir(out_dir)) == ["job-1.ppm"], "temp files left behind"

    lines = progress.decode().splitlines()
    assert len(lines) >= 3, "too few progress lines on fd 3: %r" % lines
    reports = [json.loads(line) for line in lines]
    fractions = [r["progress"] for r in reports]
    assert all(isinstance(r.get("message"), str) for r in reports), reports
    assert fractions == sorted(fractions), "progress went backwards: %r" % fractions
    assert fractions[0] == 0 and fractions[-1] == 1, fractions


def test_same_prompt_same_picture_without_fd3(workdir):
    """Progress is optional (fd 3 closed) and the picture depends on the prompt alone."""
    images = []
    for job_id in ("a", "b"):
        rc, out, err, _ = run_demo(["--out", str(workdir), "--duration-ms", "0", "--size", "8"],
                                   json.dumps({"id": job_id, "prompt": "same"}).encode())
        assert_clean_stderr(err)
        assert rc == 0, err.decode(errors="replace")
        images.append(read_ppm(workdir / (job_id + ".ppm")))
    assert images[0] == images[1]


@pytest.mark.parametrize("stdin", [
    b"not json",
    b"",
    b"[1, 2]",
    b'{"id": "x", "prompt": "unterminated',
    b'{"id": "x"}',
    b'{"id": "x", "prompt": ""}',
    b'{"id": "x", "prompt": 42}',
    b'{"prompt": "no id anywhere"}',
], ids=["not-json", "empty", "array", "truncated", "no-prompt", "empty-prompt", "prompt-not-string", "no-id"])
def test_bad_job_exits_65(workdir, stdin):
    rc, out, err, _ = run_demo(["--out", str(workdir), "--duration-ms", "0", "--size", "8"], stdin)
    assert_clean_stderr(err)
    assert rc == EXIT_DATAERR, "demo exited %d for %r: %s" % (rc, stdin, err.decode(errors="replace"))
    assert out == b"", "a rejected job printed a result: %r" % out
    assert os.listdir(workdir) == [], "a rejected job left files: %s" % os.listdir(workdir)


@pytest.mark.parametrize("args", [
    ["--bogus", "1"],
    ["--size"],
    ["--size", "7"],
    ["--size", "12x"],
    ["--duration-ms", "-1"],
    ["--out", ""],
], ids=["unknown", "missing-value", "size-too-small", "size-not-number", "negative-duration", "empty-out"])
def test_bad_option_exits_64(workdir, args):
    job = json.dumps({"id": "x", "prompt": "p"}).encode()
    rc, out, err, _ = run_demo(["--out", str(workdir)] + args, job)  # a later option overrides an earlier one
    assert_clean_stderr(err)
    assert rc == EXIT_USAGE, "demo %s exited %d: %s" % (args, rc, err.decode(errors="replace"))
    assert out == b""
    assert b"usage" in err, err


# ---- persistent mode: drover's protocol over the demo's stdin and stdout --------------------------

class Warm:
    """demo --persistent, driven as a drover worker drives it; killed by pid at the end."""

    def __init__(self, args, env=None, flag=True):
        env = harness.clean_env(env)
        env.pop("DROVER_DEMO_OUT", None)
        self.proc = subprocess.Popen([str(DEMO)] + (["--persistent"] if flag else []) + args,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env)
        self.buf = b""

    def send(self, frame):
        self.proc.stdin.write((json.dumps(frame) + "\n").encode() if isinstance(frame, dict) else frame)
        self.proc.stdin.flush()

    def job(self, frame_id, job):
        self.send({"type": "job", "id": frame_id, "attempt": 1, "timeout_ms": 60000,
                   "deadline_ms": 0, "job": job})

    def frame(self):
        """The next line of stdout, which must be one JSON object with a type."""
        deadline = time.monotonic() + TIMEOUT
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, "no frame within %d s" % TIMEOUT
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, "stdout closed; buffered %r" % self.buf
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        frame = json.loads(line)
        assert isinstance(frame, dict) and isinstance(frame.get("type"), str), line
        return frame

    def end_of(self, frame_id):
        """(progress frames, end frame) of one job; frames of other jobs are kept in others."""
        progress, self.others = [], []
        while True:
            frame = self.frame()
            if frame.get("id") != frame_id:
                self.others.append(frame)
            elif frame["type"] == "progress":
                progress.append(frame)
            else:
                return progress, frame

    def finish(self):
        """Closes stdin; (exit status, stderr) once the process is gone."""
        self.proc.stdin.close()
        rest = self.proc.stdout.read()
        err = self.proc.stderr.read()
        return self.proc.wait(timeout=TIMEOUT), rest, err

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


@pytest.fixture
def warm(workdir):
    started = []

    def start(args=(), env=None, flag=True):
        w = Warm(["--out", str(workdir / "images"), "--size", "16"] + list(args), env, flag)
        started.append(w)
        assert w.frame() == {"type": "ready"}, "ready must be the first frame"
        return w

    yield start
    for w in started:
        w.kill()


def test_persistent_renders_the_same_picture_as_exec_mode(workdir, warm):
    w = warm(["--duration-ms", "20"])
    for frame_id, job_id in (("f1", "one"), ("f2", None)):
        w.job(frame_id, {"prompt": "a lighthouse at dusk", **({"id": job_id} if job_id else {})})
        progress, end = w.end_of(frame_id)
        image = (workdir / "images").resolve() / ("%s.ppm" % (job_id or frame_id))  # no job id: drover's id
        assert end == {"type": "result", "id": frame_id, "result": {"image": str(image), "width": 16, "height": 16}}
        fractions = [p["progress"] for p in progress]
        assert fractions[0] == 0 and fractions[-1] == 1 and fractions == sorted(fractions), fractions
        assert all(isinstance(p["message"], str) for p in progress)
    rc, out, err, _ = run_demo(["--out", str(workdir / "exec"), "--duration-ms", "0", "--size", "16"],
                               json.dumps({"id": "one", "prompt": "a lighthouse at dusk"}).encode())
    assert rc == 0, err
    assert read_ppm(workdir / "images" / "one.ppm") == read_ppm(workdir / "exec" / "one.ppm")
    assert read_ppm(workdir / "images" / "f2.ppm") == read_ppm(workdir / "exec" / "one.ppm")
    rc, rest, err = w.finish()
    assert_clean_stderr(err)
    assert (rc, rest) == (0, b"")
    assert sorted(os.listdir(workdir / "images")) == ["f2.ppm", "one.ppm"], "temp files left behind"


def test_persistent_renders_jobs_side_by_side(warm):
    """The second job starts while the first is still rendering: one process, jobs at once."""
    w = warm(["--duration-ms", "400"])
    w.job("a", {"prompt": "first"})
    w.job("b", {"prompt": "second"})
    frames = []
    while sum(f["type"] == "result" for f in frames) < 2:
        frames.append(w.frame())
    b_started = frames.index({"type": "progress", "id": "b", "progress": 0, "message": "starting"})
    a_ended = frames.index(next(f for f in frames if f["type"] == "result" and f["id"] == "a"))
    assert b_started < a_ended, "b did not start before a ended: %r" % frames


def test_persistent_cancel_stops_the_job_and_serves_on(workdir, warm):
    w = warm(["--duration-ms", "60000"])
    w.job("slow", {"prompt": "never finished"})
    assert w.frame()["message"] == "starting"
    w.send({"type": "cancel", "id": "slow", "reason": "timeout"})
    _, end = w.end_of("slow")
    assert end == {"type": "cancelled", "id": "slow"}
    assert os.listdir(workdir / "images") == []
    w.send({"type": "cancel", "id": "slow", "reason": "timeout"})  # no longer held: ignored
    w.send({"type": "job", "id": "next", "job": {"prompt": "p"}})
    assert w.frame() == {"type": "progress", "id": "next", "progress": 0, "message": "starting"}


def test_persistent_bad_frames_and_jobs(warm):
    w = warm(["--duration-ms", "0"], env={"DROVER_HANDLER_MODE": "persistent"}, flag=False)
    w.send(b"not json\n[1]\n{\"type\": \"mystery\", \"id\": \"m\"}\n\n")
    w.job("np", {"id": "x"})
    assert w.end_of("np")[1] == {"type": "error", "id": "np", "error": "the job has no \"prompt\" string", "retry": False}
    w.job("ni", {"prompt": "p", "id": ""})
    end = w.end_of("ni")[1]
    assert end["type"] == "error" and end["retry"] is False and "\"id\"" in end["error"], end
    w.job("ok", {"prompt": "p"})
    assert w.end_of("ok")[1]["type"] == "result"
    rc, rest, err = w.finish()
    assert_clean_stderr(err)
    assert rc == 0 and rest == b""
    assert b"not a JSON object" in err and b'type "mystery"' in err, err


def test_persistent_eof_finishes_the_jobs_held(workdir, warm):
    w = warm(["--duration-ms", "300"])
    w.job("last", {"prompt": "p"})
    rc, rest, err = w.finish()
    assert_clean_stderr(err)
    assert rc == 0
    frames = [json.loads(line) for line in rest.splitlines()]
    assert frames[-1]["type"] == "result" and frames[-1]["id"] == "last", frames
    assert os.listdir(workdir / "images") == ["last.ppm"]


def test_persistent_sigterm_exits_143_without_leftovers(workdir, warm):
    w = warm(["--duration-ms", "60000"])
    w.job("held", {"prompt": "p"})
    assert w.frame()["message"] == "starting"
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(timeout=TIMEOUT) == 143
    assert os.listdir(workdir / "images") == []
