#!/usr/bin/env node
// Runs a k6 script under Node, with the stand-ins of ./k6/ for `k6`, `k6/http` and
// `k6/metrics`: a functional check of a script's logic against a real gateway on a
// machine without k6. It is NOT a load generator: one VU, iterations one after another,
// a curl process per request; thresholds other than the checks are not evaluated.
//
//   node loadtest/node/k6-run.mjs [-e NAME=VALUE]... [--iterations N] [--scenario NAME] SCRIPT
//
// Runs setup(), then each scenario's function (or default) --iterations times (default:
// the scenario's own count for iteration-based executors, else 1), then teardown(), and
// prints the checks. Exit status 1 if a check failed or fail() was called.
import { register } from 'node:module';
import { pathToFileURL } from 'node:url';
import path from 'node:path';

register('./k6-hooks.mjs', import.meta.url);

const args = process.argv.slice(2);
const env = {};
let iterations = null;
let only = null;
let script = null;
while (args.length) {
  const a = args.shift();
  if (a === '-e' || a === '--env') {
    const kv = args.shift() || '';
    const i = kv.indexOf('=');
    if (i <= 0) throw new Error(`-e wants NAME=VALUE, got ${kv}`);
    env[kv.slice(0, i)] = kv.slice(i + 1);
  } else if (a === '--iterations') {
    iterations = Number(args.shift());
  } else if (a === '--scenario') {
    only = args.shift();
  } else if (!script) {
    script = a;
  } else {
    throw new Error(`unexpected argument ${a}`);
  }
}
if (!script) {
  console.error('usage: node k6-run.mjs [-e NAME=VALUE]... [--iterations N] [--scenario NAME] SCRIPT');
  process.exit(2);
}

// Like `k6 run`: the process environment, then -e values.
globalThis.__ENV = { ...process.env, ...env };
const { checks, metrics } = await import('./k6/state.mjs');
const { K6Fail } = await import('./k6/index.mjs');
const mod = await import(pathToFileURL(path.resolve(script)).href);
const opts = mod.options || {};

const plan = [];
if (opts.scenarios) {
  for (const [name, sc] of Object.entries(opts.scenarios)) {
    if (only && name !== only) continue;
    const own = ['per-vu-iterations', 'shared-iterations'].includes(sc.executor) ? (sc.iterations || 1) : 1;
    plan.push({ name, exec: sc.exec || 'default', count: iterations ?? own });
  }
} else {
  plan.push({ name: 'default', exec: 'default', count: iterations ?? (opts.iterations || 1) });
}

let failures = 0;
function run(label, fn, ...fnArgs) {
  try {
    return { value: fn(...fnArgs) };
  } catch (e) {
    failures += 1;
    console.error(`${label}: ${e instanceof K6Fail ? 'fail()' : 'error'}: ${e.message}`);
    return { failed: true };
  }
}

let data;
if (typeof mod.setup === 'function') {
  const r = run('setup', mod.setup);
  if (r.failed) process.exit(1);
  data = r.value;
}
for (const step of plan) {
  const fn = mod[step.exec];
  if (typeof fn !== 'function') {
    console.error(`scenario ${step.name}: no exported function ${step.exec}`);
    process.exit(1);
  }
  for (let i = 0; i < step.count; i += 1) run(`${step.name} iteration ${i + 1}`, fn, data);
}
if (typeof mod.teardown === 'function') run('teardown', mod.teardown, data);

let failedChecks = 0;
for (const [name, c] of checks) {
  failedChecks += c.fails;
  console.log(`${c.fails === 0 ? '✓' : '✗'} ${name}: ${c.passes} passed, ${c.fails} failed`);
}
for (const [name, m] of metrics) {
  const total = m.values.reduce((a, b) => a + b, 0);
  console.log(`  ${name} (${m.type}): ${m.values.length} samples, sum ${total}`);
}
const ok = failures === 0 && failedChecks === 0;
console.log(ok ? 'k6-run: ok' : `k6-run: FAILED (${failedChecks} failed checks, ${failures} aborted iterations)`);
process.exit(ok ? 0 : 1);
