'use strict';
// The action's post step (always): `nixdelta finish` (push what the job realised, save the archive).
require('./shim.js').run('finish');
