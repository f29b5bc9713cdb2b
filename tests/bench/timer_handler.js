'use strict';
// timer_handler.js: the Node handler of `make bench`'s "20 in flight" row (issue 9): each job
// awaits a 100 ms timer, as a worker of the seeds' pipeline awaits an image service.
const path = require('path');
const { serve } = require(path.join(__dirname, '..', '..', 'lib', 'node', 'drover-handler'));

const WAIT_MS = 100;

serve(async (job, ctx) => {
  await new Promise((resolve) => setTimeout(resolve, WAIT_MS));
  return { id: ctx.id };
});
