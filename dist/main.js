'use strict';
// The action's main step: `nixdelta start` (restore the store archive, snapshot the store).
require('./shim.js').run('start');
