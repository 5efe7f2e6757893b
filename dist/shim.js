'use strict';
// The GitHub Action's shim, shared by main.js (`nixdelta start`) and
// post.js (`nixdelta finish`). No dependencies: it finds the nixdelta
// binary for this runner (the `nixdelta-binary` input, else one shipped in
// dist/bin/, else the release matching this action's manifest), checks its
// sha256 against dist/manifest.json, and runs `nixdelta --ci github STEP`
// with this process's environment: the Actions cache token
// (ACTIONS_RUNTIME_TOKEN, ACTIONS_RESULTS_URL, ACTIONS_CACHE_URL) reaches
// JavaScript actions only. The binary reads the INPUT_* variables itself.

const fs = require('fs');
const os = require('os');
const path = require('path');
const crypto = require('crypto');
const { spawnSync } = require('child_process');

const TARGETS = {
  'linux-x64': 'x86_64-unknown-linux-musl',
  'linux-arm64': 'aarch64-unknown-linux-musl',
  'darwin-x64': 'x86_64-apple-darwin',
  'darwin-arm64': 'aarch64-apple-darwin',
};

const STATE_BINARY = 'nixdelta_binary';

function input(name) {
  return (process.env[`INPUT_${name.replace(/ /g, '_').toUpperCase()}`] || '').trim();
}

function escapeData(s) {
  return String(s).replace(/%/g, '%25').replace(/\r/g, '%0D').replace(/\n/g, '%0A');
}

function command(kind, msg) {
  process.stdout.write(`::${kind} title=nixdelta::${escapeData(msg)}\n`);
}

function saveState(name, value) {
  const file = process.env.GITHUB_STATE;
  if (file) fs.appendFileSync(file, `${name}=${value}\n`);
  else process.stdout.write(`::save-state name=${name}::${escapeData(value)}\n`);
}

function sha256File(file) {
  const hash = crypto.createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(1 << 20);
    let n;
    while ((n = fs.readSync(fd, buf, 0, buf.length, null)) > 0) hash.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return hash.digest('hex');
}

function readManifest() {
  const file = path.join(__dirname, 'manifest.json');
  return JSON.parse(fs.readFileSync(file, 'utf8'));
}

function verify(file, want, what) {
  const got = sha256File(file);
  if (got !== want.toLowerCase()) {
    throw new Error(`${what}: sha256 ${got} does not match dist/manifest.json (${want}); refusing to run it`);
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function download(url, dest) {
  let last = '';
  for (let attempt = 0; attempt < 4; attempt++) {
    if (attempt > 0) await sleep(1000 * 2 ** attempt);
    try {
      const res = await fetch(url, { redirect: 'follow', headers: { 'user-agent': 'nixdelta-action' } });
      if (res.status >= 500 || res.status === 429) {
        last = `HTTP ${res.status}`;
        continue;
      }
      if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
      fs.writeFileSync(dest, Buffer.from(await res.arrayBuffer()), { mode: 0o755 });
      return;
    } catch (e) {
      if (/HTTP 4\d\d/.test(e.message)) throw e;
      last = e.message;
    }
  }
  throw new Error(`${url}: gave up after 4 attempts: ${last}`);
}

async function resolveBinary() {
  const local = input('nixdelta-binary');
  if (local) {
    const file = path.resolve(local);
    fs.accessSync(file, fs.constants.X_OK);
    console.log(`nixdelta: using ${file} (nixdelta-binary; not checked against the manifest)`);
    return file;
  }
  const m = readManifest();
  const platform = `${process.platform}-${process.arch}`;
  const target = TARGETS[platform];
  if (!target) {
    throw new Error(`no nixdelta binary for ${platform} (there are: ${Object.keys(TARGETS).join(', ')})`);
  }
  const entry = (m.binaries || {})[target];
  if (!entry || !entry.sha256) {
    throw new Error(
      `dist/manifest.json has no checksum for ${target} (version ${m.version}): use a released version of the action, or the nixdelta-binary input`,
    );
  }
  const shipped = path.join(__dirname, 'bin', entry.file);
  if (fs.existsSync(shipped)) {
    verify(shipped, entry.sha256, shipped);
    return shipped;
  }
  const root = process.env.RUNNER_TOOL_CACHE || process.env.RUNNER_TEMP || os.tmpdir();
  const dir = path.join(root, 'nixdelta', m.version, target);
  const dest = path.join(dir, entry.file);
  if (fs.existsSync(dest) && sha256File(dest) === entry.sha256.toLowerCase()) return dest;
  const server = (process.env.GITHUB_SERVER_URL || 'https://github.com').replace(/\/+$/, '');
  const repo = m.repository || process.env.GITHUB_ACTION_REPOSITORY || process.env.GITHUB_REPOSITORY;
  const tag = m.tag || `v${m.version}`;
  const url = `${server}/${repo}/releases/download/${tag}/${entry.file}`;
  console.log(`nixdelta: downloading ${url}`);
  fs.mkdirSync(dir, { recursive: true });
  const part = `${dest}.${process.pid}.part`;
  try {
    await download(url, part);
    verify(part, entry.sha256, url);
    fs.chmodSync(part, 0o755);
    fs.renameSync(part, dest);
  } finally {
    fs.rmSync(part, { force: true });
  }
  return dest;
}

// Strict from the input or from nixdelta.yml's top-level `strict: true`
// (read here: without a binary there is nobody to ask).
function strict() {
  if (/^(true|yes|on|1)$/i.test(input('strict'))) return true;
  const file = process.env.NIXDELTA_CONFIG || 'nixdelta.yml';
  try {
    return /^strict:[ \t]*true[ \t]*(#.*)?$/m.test(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    return false;
  }
}

async function run(step) {
  let bin;
  try {
    if (step === 'start') {
      bin = await resolveBinary();
      saveState(STATE_BINARY, bin);
    } else {
      bin = process.env[`STATE_${STATE_BINARY}`];
      if (!bin) {
        command('notice', 'the main step found no nixdelta binary: nothing to finish');
        return;
      }
    }
  } catch (e) {
    command(strict() ? 'error' : 'warning', `nixdelta not run (${step}): ${e.message}`);
    process.exitCode = strict() ? 1 : 0;
    return;
  }
  const r = spawnSync(bin, ['--ci', 'github', step], { stdio: 'inherit', env: process.env });
  if (r.error) {
    command(strict() ? 'error' : 'warning', `cannot run ${bin}: ${r.error.message}`);
    process.exitCode = strict() ? 1 : 0;
    return;
  }
  if (r.signal) {
    command('error', `nixdelta ${step} was killed by ${r.signal}`);
    process.exitCode = 1;
    return;
  }
  process.exitCode = r.status;
}

module.exports = { run, resolveBinary, TARGETS };
