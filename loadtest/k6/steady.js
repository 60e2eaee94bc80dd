// Steady load: a constant arrival rate (open model: new requests start on schedule
// whether or not earlier ones finished, so a slow gateway shows up as latency and
// dropped iterations, not as a politely lower rate).
//
//   k6 run -e TARGET=https://staging.example.com -e API_KEY=tg_… -e RATE=500 -e DURATION=5m steady.js
//
// Besides lib/common.js: RATE requests/s (100), DURATION (1m), PRE_VUS (50), MAX_VUS (500),
// MAX_DROPPED iterations tolerated (0); thresholds P95_MS (50), P99_MS (100), MAX_FAILED (0.001).
import http from 'k6/http';
import { check } from 'k6';
import {
  baseOptions, env, envInt, expectedStatuses, headers, METHOD, thresholds, url,
} from './lib/common.js';

const expected = expectedStatuses();
if (expected) http.setResponseCallback(http.expectedStatuses(...expected));

export const options = Object.assign(baseOptions(), {
  scenarios: {
    steady: {
      executor: 'constant-arrival-rate',
      rate: envInt('RATE', 100),
      timeUnit: '1s',
      duration: env('DURATION', '1m'),
      preAllocatedVUs: envInt('PRE_VUS', 50),
      maxVUs: envInt('MAX_VUS', 500),
    },
  },
  thresholds: Object.assign(thresholds({ p95: 50, p99: 100, failed: 0.001 }), {
    dropped_iterations: [`count<=${envInt('MAX_DROPPED', 0)}`],
  }),
});

export default function () {
  const res = http.request(METHOD, url(), null, { headers: headers(), tags: { name: 'steady' } });
  check(res, {
    'status is expected': (r) => (expected ? expected.includes(r.status) : r.status >= 200 && r.status < 400),
  });
}
