// Smoke test: a few requests from one VU; every one must get an expected status and the
// gateway's X-Request-Id, and the health endpoint must answer. Run before heavier tests.
//
//   k6 run -e TARGET=http://127.0.0.1:8080 -e REQUEST_PATH=/hello -e API_KEY=tg_… smoke.js
//
// Besides the variables of lib/common.js: ITERATIONS (20), SLEEP seconds between requests
// (0.1), HEALTH_PATH (/health; empty to skip).
import http from 'k6/http';
import { check, sleep } from 'k6';
import {
  baseOptions, env, envInt, expectedStatuses, header, headers, METHOD, thresholds, url,
} from './lib/common.js';
import { lowerCaseHeaders, parsePolicy, parseRateLimit } from './lib/ratelimit-headers.js';

const expected = expectedStatuses();
if (expected) http.setResponseCallback(http.expectedStatuses(...expected));

export const options = Object.assign(baseOptions(), {
  vus: 1,
  iterations: envInt('ITERATIONS', 20),
  thresholds: thresholds({ p95: 200, p99: 500, failed: 0, checks: 1 }),
});

function statusOk(status) {
  return expected ? expected.includes(status) : status >= 200 && status < 400;
}

export function setup() {
  const path = env('HEALTH_PATH', '/health');
  if (path === '-' || path === 'none') return;
  const res = http.get(url(path), { headers: headers(), responseType: 'text', tags: { name: 'health' } });
  check(res, {
    'health: 200': (r) => r.status === 200,
    'health: status ok or degraded': (r) => {
      try {
        return ['ok', 'degraded'].includes(JSON.parse(r.body).status);
      } catch (e) {
        return false;
      }
    },
  });
}

export default function () {
  const res = http.request(METHOD, url(), null, { headers: headers(), tags: { name: 'smoke' } });
  check(res, {
    'status is expected': (r) => statusOk(r.status),
    'has X-Request-Id': (r) => !!header(r, 'x-request-id'),
    'rate-limit headers parse (when present)': (r) => {
      const h = lowerCaseHeaders(r.headers);
      if (h['ratelimit-policy'] === undefined && h.ratelimit === undefined) return true;
      try {
        parsePolicy(h['ratelimit-policy']);
        parseRateLimit(h.ratelimit);
        return true;
      } catch (e) {
        console.error(`bad rate-limit headers: ${e.message}`);
        return false;
      }
    },
  });
  sleep(Number(env('SLEEP', '0.1')));
}
