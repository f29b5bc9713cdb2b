'use strict';
// libhandler.js: a persistent handler written with lib/node's drover-handler, run under a real
// drover by tests/integration/test_handler_libs.py; the job says what to do (see libhandler.py).
const path = require('path');
const { serve, PermanentError } = require(path.join(__dirname, '..', '..', 'lib', 'node', 'drover-handler'));

serve(async (job, ctx) => {
  if (job.do === 'slow') {
    ctx.progress(0.5, 'working');
    await new Promise((resolve, reject) => {
      const timer = setTimeout(resolve, 60000);
      ctx.signal.addEventListener('abort', () => { clearTimeout(timer); reject(ctx.signal.reason); });
    });
  }
  if (job.do === 'permanent') throw new PermanentError('bad input');
  if (job.do === 'fail') throw new Error('try again');
  return { echo: job, pid: process.pid, attempt: ctx.attempt };
});
