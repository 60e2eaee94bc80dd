// Soak: a moderate constant rate for a long time (default 30 minutes), plus a health probe
// every second. Look for latency creeping up, errors appearing late, and (outside k6) the
// gateway's memory: watch VmRSS in /proc/<pid>/status or process_resident_memory_bytes.
//
//   k6 run -e TARGET=http://127.0.0.1:8080 -e API_KEY=tg_… -e RATE=200 -e DURATION=2h soak.js
//
// Besides lib/common.js: RATE (50/s), DURATION (30m), PRE_VUS (20), MAX_VUS (200),
// HEALTH_PATH (/health; '-' to skip the probe); thresholds P95_MS (50), P99_MS (100),
// MAX_FAILED (0.001).
import http from 'k6/http';
import { check } from 'k6';
import {
  baseOptions, env, envInt, expectedStatuses, headers, METHOD, url,
} from './lib/common.js';

const expected = expectedStatuses();
if (expected) http.setResponseCallback(http.expectedStatuses(...expected));

const duration = env('DURATION', '30m');
const healthPath = env('HEALTH_PATH', '/health');
const withHealth = healthPath !== '-' && healthPath !== 'none';

const scenarios = {
  soak: {
    executor: 'constant-arrival-rate',
    exec: 'soak',
    rate: envInt('RATE', 50),
    timeUnit: '1s',
    duration,
    preAllocatedVUs: envInt('PRE_VUS', 20),
    maxVUs: envInt('MAX_VUS', 200),
  },
};
const limits = {
  'http_req_duration{scenario:soak}': [`p(95)<${envInt('P95_MS', 50)}`, `p(99)<${envInt('P99_MS', 100)}`],
  'http_req_failed{scenario:soak}': [`rate<=${env('MAX_FAILED', '0.001')}`],
  'checks{scenario:soak}': [`rate>=${env('MIN_CHECKS', '0.999')}`],
  dropped_iterations: [`count<=${envInt('MAX_DROPPED', 0)}`],
};
if (withHealth) {
  scenarios.health = {
    executor: 'constant-arrival-rate',
    exec: 'health',
    rate: 1,
    timeUnit: '1s',
    duration,
    preAllocatedVUs: 2,
    maxVUs: 5,
  };
  limits['checks{scenario:health}'] = ['rate==1'];
}

export const options = Object.assign(baseOptions(), { scenarios, thresholds: limits });

export function soak() {
  const res = http.request(METHOD, url(), null, { headers: headers(), tags: { name: 'soak' } });
  check(res, {
    'status is expected': (r) => (expected ? expected.includes(r.status) : r.status >= 200 && r.status < 400),
  });
}

export function health() {
  const res = http.get(url(healthPath), { responseType: 'text', tags: { name: 'health' } });
  check(res, {
    'health answers 200': (r) => r.status === 200,
  });
}

export default soak;
