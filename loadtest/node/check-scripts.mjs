#!/usr/bin/env node
// Loads every k6 script (../k6/*.js) under Node with the stand-in k6 modules and checks
// what k6 would check before running it: `options` is well formed (executors and their
// required fields, durations, threshold expressions), thresholds cover http_req_duration
// p(95) and p(99) and http_req_failed, every scenario's function is exported, and the
// environment variables are honoured. Run by tests/loadtest_scripts.rs; exit 1 on problems.
import { register } from 'node:module';
import { readdirSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import path from 'node:path';

register('./k6-hooks.mjs', import.meta.url);

const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'k6');
const EXPECTED = ['ratelimit.js', 'smoke.js', 'soak.js', 'spike.js', 'steady.js'];
const DURATION = /^(\d+(\.\d+)?(ms|s|m|h))+$/;
const THRESHOLD = /^(p\(\d+(\.\d+)?\)|avg|min|max|med|count|rate|value)\s*(<|<=|>|>=|==|===|!=)\s*-?\d+(\.\d+)?$/;
const EXECUTORS = {
  'constant-arrival-rate': ['rate', 'duration', 'preAllocatedVUs'],
  'ramping-arrival-rate': ['stages', 'preAllocatedVUs'],
  'constant-vus': ['vus', 'duration'],
  'ramping-vus': ['stages'],
  'per-vu-iterations': ['vus', 'iterations'],
  'shared-iterations': ['vus', 'iterations'],
  externally_controlled: [],
};

const problems = [];
const bad = (file, msg) => problems.push(`${file}: ${msg}`);

globalThis.__ENV = {};
let generation = 0;
async function load(file, env) {
  for (const k of Object.keys(globalThis.__ENV)) delete globalThis.__ENV[k];
  Object.assign(globalThis.__ENV, env);
  generation += 1; // a fresh module instance, evaluated with this environment
  return import(`${pathToFileURL(path.join(dir, file)).href}?g=${generation}`);
}

function checkOptions(file, mod) {
  const o = mod.options;
  if (!o || typeof o !== 'object') return bad(file, 'exports no options object');
  const th = o.thresholds || {};
  const keys = Object.keys(th);
  const dur = keys.filter((k) => k === 'http_req_duration' || k.startsWith('http_req_duration{'));
  const all = dur.flatMap((k) => th[k]);
  if (!all.some((t) => /^p\(95\)/.test(t))) bad(file, 'no p(95) threshold on http_req_duration');
  if (!all.some((t) => /^p\(99\)/.test(t))) bad(file, 'no p(99) threshold on http_req_duration');
  if (!keys.some((k) => k === 'http_req_failed' || k.startsWith('http_req_failed{'))) bad(file, 'no threshold on http_req_failed');
  for (const [k, list] of Object.entries(th)) {
    if (!Array.isArray(list) || list.length === 0) bad(file, `threshold ${k}: not a non-empty list`);
    for (const t of list || []) {
      const expr = typeof t === 'string' ? t : t && t.threshold;
      if (!THRESHOLD.test(String(expr))) bad(file, `threshold ${k}: bad expression ${JSON.stringify(expr)}`);
    }
  }
  const scenarios = o.scenarios || { default: { executor: o.iterations ? 'shared-iterations' : 'constant-vus', vus: o.vus || 1, iterations: o.iterations, duration: o.duration || '10s' } };
  for (const [name, sc] of Object.entries(scenarios)) {
    const need = EXECUTORS[sc.executor];
    if (!need) {
      bad(file, `scenario ${name}: unknown executor ${sc.executor}`);
      continue;
    }
    for (const f of need) if (sc[f] === undefined) bad(file, `scenario ${name}: ${sc.executor} needs ${f}`);
    for (const f of ['duration', 'maxDuration', 'gracefulStop']) {
      if (sc[f] !== undefined && !DURATION.test(sc[f])) bad(file, `scenario ${name}: ${f} "${sc[f]}" is not a duration`);
    }
    for (const st of sc.stages || []) {
      if (!DURATION.test(st.duration) || !Number.isFinite(st.target)) bad(file, `scenario ${name}: bad stage ${JSON.stringify(st)}`);
    }
    for (const f of ['rate', 'vus', 'iterations', 'preAllocatedVUs', 'maxVUs', 'startRate']) {
      if (sc[f] !== undefined && !(Number.isInteger(sc[f]) && sc[f] >= 0)) bad(file, `scenario ${name}: ${f} ${sc[f]} is not a count`);
    }
    const exec = sc.exec || 'default';
    if (typeof mod[exec] !== 'function') bad(file, `scenario ${name}: exports no function ${exec}`);
  }
  if (typeof mod.default !== 'function' && !o.scenarios) bad(file, 'exports no default function');
}

const files = readdirSync(dir).filter((f) => f.endsWith('.js')).sort();
for (const f of EXPECTED) if (!files.includes(f)) bad(f, 'missing');
for (const file of files) {
  try {
    checkOptions(file, await load(file, {}));
  } catch (e) {
    bad(file, `does not load: ${e.stack || e}`);
  }
}

// The environment is honoured.
const overrides = [
  ['steady.js', { RATE: '7', DURATION: '3s', P95_MS: '11', P99_MS: '22' }, (o) => o.scenarios.steady.rate === 7
    && o.scenarios.steady.duration === '3s' && o.thresholds.http_req_duration.join() === 'p(95)<11,p(99)<22'],
  ['spike.js', { BASE_RATE: '3', SPIKE_RATE: '30' }, (o) => o.scenarios.spike.startRate === 3
    && o.scenarios.spike.stages.some((s) => s.target === 30)],
  ['soak.js', { HEALTH_PATH: '-' }, (o) => !o.scenarios.health],
  ['smoke.js', { ITERATIONS: '4' }, (o) => o.iterations === 4],
  ['ratelimit.js', { WINDOW_SECONDS: '5', ALIGN_ATTEMPTS: '1' }, (o) => o.scenarios.exact_quota.maxDuration === '75s'],
];
for (const [file, env, ok] of overrides) {
  try {
    if (!ok((await load(file, env)).options)) bad(file, `options ignore ${JSON.stringify(env)}`);
  } catch (e) {
    bad(file, `does not load with ${JSON.stringify(env)}: ${e.message}`);
  }
}
// A bad value is reported, not silently used.
try {
  await load('steady.js', { RATE: 'lots' });
  bad('steady.js', 'RATE=lots was accepted');
} catch (e) {
  if (!/RATE=lots is not a number/.test(e.message)) bad('steady.js', `RATE=lots: unexpected error ${e.message}`);
}

if (problems.length) {
  for (const p of problems) console.error(p);
  console.error(`check-scripts: ${problems.length} problem(s)`);
  process.exit(1);
}
console.log(`check-scripts: ${files.length} scripts ok (${files.join(', ')})`);
