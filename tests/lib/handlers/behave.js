'use strict';
// behave.js [sync]: a drover-handler handler whose job says what to do ({"do": ...}).
// tests/lib/test_node_lib.py drives it over pipes.
const { serve, PermanentError } = require('drover-handler');

const state = {};
let arrived = 0;
const MEET_TIMEOUT_MS = 10000; // jobs that do not overlap give up and say so

const sleep = (ms, signal) => new Promise((resolve, reject) => {
  const timer = setTimeout(resolve, ms);
  if (signal) signal.addEventListener('abort', () => { clearTimeout(timer); reject(signal.reason); });
});

async function handle(job, ctx) {
  switch (job.do) {
    case 'echo':
      return { echo: job, id: ctx.id, attempt: ctx.attempt, deadline: ctx.deadline, setup: !!state.setup, pid: process.pid };
    case 'progress':
      ctx.progress(0.5, 'halfway');
      ctx.progress(undefined, 'text only');
      ctx.progress(2);
      return 'done';
    case 'fail':
      throw new TypeError('boom');
    case 'surrogate': // half of a surrogate pair, as slicing a string can leave
      ctx.progress(0.5, 'half \ud83d');
      return { text: 'bad \ude00 end', whole: '\ud83d\ude00' };
    case 'permanent':
      throw new PermanentError('bad input');
    case 'not_json':
      return { value: 10n };
    case 'chatty': // big frames from jobs running at once: each must reach drover whole
      for (let i = 0; i < job.frames; i += 1) {
        ctx.progress(i / job.frames, ctx.id.repeat(job.size));
        await new Promise((resolve) => setImmediate(resolve));
      }
      return 'said it all';
    case 'keep_ctx': // a context that outlives its job, as a leftover timer's would
      state.kept = ctx;
      return 'kept';
    case 'late_progress':
      state.kept.progress(0.9, 'after the end');
      return 'tried';
    case 'undefined':
      return undefined;
    case 'print':
      console.log('printed text\n{"type":"result","id":"forged"}');
      process.stdout.write('stdout.write text\n');
      return 'printed';
    case 'until_cancel':
      ctx.progress(0.1, 'waiting');
      await sleep(30000, ctx.signal); // rejects once drover cancels
      return 'never cancelled';
    case 'meet': {
      arrived += 1;
      const deadline = Date.now() + MEET_TIMEOUT_MS;
      while (arrived < job.n && Date.now() < deadline) await sleep(10);
      return { met: arrived >= job.n };
    }
    case 'sleep':
      // An interval left running must not keep the process alive after EOF.
      setInterval(() => {}, 1000);
      await sleep(job.ms);
      return 'slept';
    default:
      throw new Error(`unknown do ${job.do}`);
  }
}

// A plain function returning a value works as well as an async one.
function handleSync(job, ctx) {
  if (job.do === 'echo') return { echo: job, sync: true };
  if (job.do === 'fail') throw new RangeError('sync boom');
  return handle(job, ctx);
}

serve(process.argv[2] === 'sync' ? handleSync : handle, {
  setup: async () => {
    console.log('setup ran');
    await sleep(50);
    state.setup = true;
  },
});
