'use strict';
/*
 * drover-handler: a drover persistent handler written as one function.
 *
 *   const { serve, PermanentError } = require('drover-handler');
 *   serve(async (job, ctx) => {
 *     ctx.progress(0.5, 'halfway');        // ctx.id, ctx.attempt, ctx.deadline, ctx.signal
 *     return { echo: job };
 *   });
 *
 * With `handler_mode = persistent`, drover starts the program once and sends it
 * jobs as JSON lines on stdin; serve() answers on stdout with JSON lines: ready
 * once set-up is done, then progress and exactly one result, error or cancelled
 * per job (protocol version 1, README "Persistent handlers"). Every job runs at
 * once (drover sends at most handler_concurrency at a time). When drover closes
 * stdin, the jobs held finish and the process exits 0.
 *
 * CommonJS, no dependencies, node >= 18.
 */

const readline = require('readline');

const PROTOCOL = 1;

/** Fails the job at once: drover does not retry it (an error frame with retry false). */
class PermanentError extends Error {
  constructor(message) {
    super(message);
    this.name = 'PermanentError';
  }
}

function log(message) {
  process.stderr.write(`drover-handler: ${message}\n`);
}

/*
 * Frames go through stdout's own write; everything else that would write to
 * stdout (console.log, process.stdout.write) lands in stderr, which drover logs,
 * so that a stray print never corrupts the protocol. JavaScript runs one
 * callback at a time, so a frame is always written whole.
 */
function takeStdout() {
  const writeFrameText = process.stdout.write.bind(process.stdout);
  process.stdout.write = (chunk, encoding, callback) => process.stderr.write(chunk, encoding, callback);
  return writeFrameText;
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

// One frame as one line. A lone surrogate (half of a pair, from a sliced string say) comes out of
// JSON.stringify as a \udXXX escape, which drover's JSON parser refuses: such strings are
// written again with U+FFFD in its place. The check is on the text, so the common case costs
// one scan.
function encode(frame) {
  const text = JSON.stringify(frame);
  if (!/\\ud[89a-f]/i.test(text)) return text;
  return JSON.stringify(frame, (key, value) => (typeof value === 'string' ? value.replace(LONE_SURROGATE, '\uFFFD') : value));
}

function describe(error) {
  if (error instanceof Error) return `${error.name}: ${error.message}`;
  return String(error);
}

class Server {
  constructor(fn, writeFrameText) {
    this.fn = fn;
    this.writeFrameText = writeFrameText;
    this.held = new Map(); // id -> AbortController
    this.closing = false;
  }

  send(frame) {
    this.writeFrameText(`${encode(frame)}\n`);
  }

  // The id leaves before its last frame goes out: drover may reuse it once it has that frame.
  end(id, frame) {
    this.held.delete(id);
    this.send(frame);
    this.exitWhenDrained();
  }

  onLine(line) {
    if (!line.trim()) return;
    let frame;
    try {
      frame = JSON.parse(line);
    } catch (e) {
      log(`ignoring a line that is not JSON (${e.message})`);
      return;
    }
    if (frame === null || typeof frame !== 'object' || Array.isArray(frame) || typeof frame.type !== 'string') {
      log('ignoring a frame that is not a JSON object with a "type"');
    } else if (frame.type === 'job') {
      this.startJob(frame);
    } else if (frame.type === 'cancel') {
      const controller = this.held.get(frame.id);
      // A job that has just ended: its end frame answers the cancel.
      if (controller) controller.abort(typeof frame.reason === 'string' ? frame.reason : 'cancelled');
    } else {
      log(`ignoring a frame of unknown type ${JSON.stringify(frame.type)}`);
    }
  }

  makeContext(frame, controller) {
    const server = this;
    const id = frame.id;
    return {
      id,
      attempt: Number.isInteger(frame.attempt) ? frame.attempt : 1,
      timeoutMs: typeof frame.timeout_ms === 'number' ? frame.timeout_ms : undefined,
      deadline: typeof frame.deadline_ms === 'number' ? frame.deadline_ms : undefined, // Date ms
      signal: controller.signal,
      get cancelled() {
        return controller.signal.aborted;
      },
      // Progress (0..1 and/or a message), shown by `droverctl status`; dropped once the job ended.
      progress(fraction, message) {
        if (server.held.get(id) !== controller) return;
        const out = { type: 'progress', id };
        if (typeof fraction === 'number' && Number.isFinite(fraction)) out.progress = Math.min(1, Math.max(0, fraction));
        if (message !== undefined && message !== null) out.message = String(message);
        server.send(out);
      },
    };
  }

  startJob(frame) {
    if (typeof frame.id !== 'string') {
      log('ignoring a job frame without a string "id"');
      return;
    }
    if (this.held.has(frame.id)) {
      log(`ignoring job ${frame.id}: this process already holds a job with that id`);
      return;
    }
    const controller = new AbortController();
    this.held.set(frame.id, controller);
    const ctx = this.makeContext(frame, controller);
    let running;
    try {
      running = Promise.resolve(this.fn(frame.job, ctx));
    } catch (e) {
      running = Promise.reject(e);
    }
    running.then(
      (value) => this.completed(ctx, value),
      (error) => this.failed(ctx, controller.signal.aborted, error),
    );
  }

  completed(ctx, value) {
    let text;
    try {
      text = encode({ type: 'result', id: ctx.id, result: value === undefined ? null : value });
    } catch (e) {
      // A BigInt or a cycle: the same value would fail again, so no retry.
      this.end(ctx.id, { type: 'error', id: ctx.id, error: `the result is not JSON: ${e.message}`, retry: false });
      return;
    }
    this.held.delete(ctx.id);
    this.writeFrameText(`${text}\n`);
    this.exitWhenDrained();
  }

  failed(ctx, aborted, error) {
    if (error instanceof PermanentError) {
      this.end(ctx.id, { type: 'error', id: ctx.id, error: error.message || error.name, retry: false });
    } else if (aborted) {
      this.end(ctx.id, { type: 'cancelled', id: ctx.id });
    } else {
      log(`job ${ctx.id} attempt ${ctx.attempt}: ${error instanceof Error && error.stack ? error.stack : describe(error)}`);
      this.end(ctx.id, { type: 'error', id: ctx.id, error: describe(error), retry: true });
    }
  }

  onClose() {
    this.closing = true;
    this.exitWhenDrained();
  }

  // stdin closed and nothing held: exit 0 once stdout has taken every frame, even when the
  // user's code keeps timers or sockets open.
  exitWhenDrained() {
    if (this.closing && this.held.size === 0) this.writeFrameText('', () => process.exit(0));
  }
}

/**
 * Serves jobs to fn(job, ctx) (async or not) until drover closes stdin and the jobs held
 * have ended; then the process exits 0. options.setup, when given, runs (and is awaited)
 * before drover is told the process is ready; if it throws, the process exits 1 and
 * drover restarts it.
 */
function serve(fn, options = {}) {
  if (typeof fn !== 'function') throw new TypeError('serve() needs a function (job, ctx) => result');
  const server = new Server(fn, takeStdout());
  const setup = typeof options.setup === 'function' ? options.setup : async () => {};
  Promise.resolve()
    .then(() => setup())
    .then(
      () => {
        server.send({ type: 'ready' });
        const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
        lines.on('line', (line) => server.onLine(line));
        lines.on('close', () => server.onClose());
      },
      (error) => {
        log(`setup failed: ${error instanceof Error && error.stack ? error.stack : describe(error)}`);
        process.exitCode = 1;
        process.stderr.write('', () => process.exit(1));
      },
    );
}

module.exports = { serve, PermanentError, PROTOCOL };
