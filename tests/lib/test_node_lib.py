"""The Node module drover-handler (lib/node/drover-handler), driven over pipes as drover drives it.

Each test starts /usr/bin/node tests/lib/handlers/behave.js (an async handler function, or
with "sync" a plain one), sends job/cancel frames and checks the frames that come back.
"""
import os

from handler_pipes import HANDLERS, NODE


def behave(start, *args, env=None):
    handler = start([NODE, os.path.join(HANDLERS, "behave.js")] + list(args), env)
    assert handler.frame() == {"type": "ready"}, "ready must be the first frame"
    return handler


def test_ready_comes_first_and_after_setup(start):
    h = behave(start)
    h.wait_stderr("setup ran")
    h.job("j1", {"do": "echo"})
    _, end = h.end_of("j1")
    assert end["result"]["setup"] is True


def test_result_carries_the_job_and_its_context(start):
    h = behave(start)
    job = {"do": "echo", "text": "caf\u00e9 \u2028 line\nbreak", "n": [1, 2.5, None]}
    h.send({"type": "job", "id": "j-1", "attempt": 3, "timeout_ms": 5000, "deadline_ms": 1700000000123, "job": job})
    _, end = h.end_of("j-1")
    assert end == {"type": "result", "id": "j-1", "result": {
        "echo": job, "id": "j-1", "attempt": 3, "deadline": 1700000000123, "setup": True, "pid": h.proc.pid}}


def test_a_plain_function_works_too(start):
    h = behave(start, "sync")
    h.job("s", {"do": "echo"})
    assert h.end_of("s")[1] == {"type": "result", "id": "s", "result": {"echo": {"do": "echo"}, "sync": True}}
    h.job("f", {"do": "fail"})
    assert h.end_of("f")[1] == {"type": "error", "id": "f", "error": "RangeError: sync boom", "retry": True}


def test_progress_frames_precede_the_result(start):
    h = behave(start)
    h.job("p", {"do": "progress"})
    progress, end = h.end_of("p")
    assert progress == [{"type": "progress", "id": "p", "progress": 0.5, "message": "halfway"},
                        {"type": "progress", "id": "p", "message": "text only"},
                        {"type": "progress", "id": "p", "progress": 1}]
    assert end == {"type": "result", "id": "p", "result": "done"}


def test_a_thrown_error_is_retryable(start):
    h = behave(start)
    h.job("f", {"do": "fail"})
    assert h.end_of("f")[1] == {"type": "error", "id": "f", "error": "TypeError: boom", "retry": True}
    h.wait_stderr("TypeError: boom\n    at")  # the stack goes to stderr, which drover logs


def test_lone_surrogates_become_replacement_characters(start):
    """drover's JSON parser refuses a lone \\udXXX escape: the frame would be a protocol violation."""
    h = behave(start)
    h.job("s", {"do": "surrogate"})
    progress, end = h.end_of("s")
    assert progress == [{"type": "progress", "id": "s", "progress": 0.5, "message": "half \ufffd"}]
    assert end == {"type": "result", "id": "s", "result": {"text": "bad \ufffd end", "whole": "\U0001f600"}}


def test_permanent_error_is_not_retried(start):
    h = behave(start)
    h.job("p", {"do": "permanent"})
    assert h.end_of("p")[1] == {"type": "error", "id": "p", "error": "bad input", "retry": False}


def test_a_result_that_is_not_json_is_an_error_and_undefined_is_null(start):
    h = behave(start)
    h.job("nj", {"do": "not_json"})
    end = h.end_of("nj")[1]
    assert end["type"] == "error" and end["retry"] is False and "not JSON" in end["error"], end
    h.job("u", {"do": "undefined"})
    assert h.end_of("u")[1] == {"type": "result", "id": "u", "result": None}


def test_cancel_aborts_the_signal_and_the_process_serves_on(start):
    h = behave(start)
    h.job("c", {"do": "until_cancel"})
    first = h.frame()
    assert first["type"] == "progress" and first["id"] == "c", first  # the job is running
    h.send({"type": "cancel", "id": "c", "reason": "timeout"})
    assert h.end_of("c")[1] == {"type": "cancelled", "id": "c"}
    h.job("after", {"do": "echo"})
    _, end = h.end_of("after")
    assert end["type"] == "result" and end["result"]["pid"] == h.proc.pid


def test_a_cancel_for_an_unknown_id_is_ignored(start):
    h = behave(start)
    h.send({"type": "cancel", "id": "nobody", "reason": "timeout"})
    h.job("e", {"do": "echo"})
    assert h.end_of("e")[1]["type"] == "result"


def test_twenty_jobs_run_at_once_in_one_process(start):
    """20 jobs each wait for all 20 to have started: they meet only if they run at once."""
    h = behave(start, env={"DROVER_HANDLER_CONCURRENCY": "20"})
    for i in range(20):
        h.job("m%d" % i, {"do": "meet", "n": 20})
    ends = h.ends(20)
    assert {k: v["result"] for k, v in ends.items()} == {"m%d" % i: {"met": True} for i in range(20)}


def test_eof_finishes_the_jobs_held_then_exits_0(start):
    """The sleeping job leaves an interval timer running: the process exits all the same."""
    h = behave(start)
    h.job("s1", {"do": "sleep", "ms": 300})
    h.job("s2", {"do": "echo"})
    h.close_stdin()
    ends = h.ends(2)
    assert ends["s1"]["result"] == "slept"
    h.stdout_closed()
    assert h.wait() == 0


def test_stray_output_never_corrupts_frames(start):
    h = behave(start)
    h.job("pr", {"do": "print"})
    h.job("after", {"do": "echo"})
    ends = h.ends(2)  # frame() fails on any line that is not a JSON object
    assert ends["pr"] == {"type": "result", "id": "pr", "result": "printed"}
    h.wait_stderr("printed text")
    h.wait_stderr("stdout.write text")


def test_unknown_frames_and_garbage_are_reported_and_ignored(start):
    h = behave(start)
    h.send({"type": "shutdown-now", "id": "x"})
    h.send_raw(b"this is not json\n[1, 2]\n\n")
    h.send({"type": "job", "job": {"do": "echo"}})  # no id
    h.job("ok", {"do": "echo"})
    assert h.end_of("ok")[1]["type"] == "result"
    h.wait_stderr('unknown type "shutdown-now"')
    h.wait_stderr("not JSON")
    h.wait_stderr('without a string "id"')


def test_setup_failure_ends_the_process_before_ready(start, tmp_path):
    script = tmp_path / "broken.js"
    script.write_text("const { serve } = require('drover-handler');\n"
                      "serve((job) => job, { setup: async () => { throw new Error('no model'); } });\n")
    h = start([NODE, str(script)])
    h.stdout_closed()
    assert h.wait() == 1
    assert "no model" in h.stderr


def test_progress_after_the_end_is_dropped(start):
    """drover treats a frame for an id it no longer holds as a protocol violation."""
    h = behave(start)
    h.job("k", {"do": "keep_ctx"})
    assert h.end_of("k")[1]["result"] == "kept"
    h.job("late", {"do": "late_progress"})
    progress, end = h.end_of("late")  # end_of fails on a frame of another id
    assert (progress, end["result"]) == ([], "tried")


def test_big_frames_of_jobs_running_at_once_arrive_whole(start):
    """Frames far above the pipe's atomic size (4 KiB), written by 4 jobs at once."""
    h = behave(start)
    ids = ["c%d" % i for i in range(4)]
    for job_id in ids:
        h.job(job_id, {"do": "chatty", "frames": 30, "size": 50000})
    counts = dict.fromkeys(ids, 0)
    ended = set()
    while len(ended) < len(ids):
        frame = h.frame()  # fails on a line that is not one JSON object
        if frame["type"] == "progress":
            assert frame["message"] == frame["id"] * 50000, "a frame mixed with another"
            counts[frame["id"]] += 1
        else:
            assert frame["result"] == "said it all", frame
            ended.add(frame["id"])
    assert counts == dict.fromkeys(ids, 30)
