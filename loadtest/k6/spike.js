// Spike: a base rate, a sudden jump to SPIKE_RATE, hold, back to the base, and a recovery
// period; the gateway must keep errors and tail latency bounded throughout and recover.
//
//   k6 run -e TARGET=http://127.0.0.1:8080 -e BASE_RATE=50 -e SPIKE_RATE=2000 spike.js
//
// Besides lib/common.js: BASE_RATE (50/s), SPIKE_RATE (1000/s), WARM (30s), RAMP (10s),
// HOLD (30s), RECOVER (30s), PRE_VUS (100), MAX_VUS (1000); thresholds P95_MS (200),
// P99_MS (500), MAX_FAILED (0.01), MAX_5XX_RATE (0.001).
import http from 'k6/http';
import { check } from 'k6';
import { Rate } from 'k6/metrics';
import {
  baseOptions, env, envInt, expectedStatuses, headers, METHOD, thresholds, url,
} from './lib/common.js';

const expected = expectedStatuses();
if (expected) http.setResponseCallback(http.expectedStatuses(...expected));

const serverErrors = new Rate('server_errors');
const base = envInt('BASE_RATE', 50);
const spike = envInt('SPIKE_RATE', 1000);
const ramp = env('RAMP', '10s');

export const options = Object.assign(baseOptions(), {
  scenarios: {
    spike: {
      executor: 'ramping-arrival-rate',
      startRate: base,
      timeUnit: '1s',
      preAllocatedVUs: envInt('PRE_VUS', 100),
      maxVUs: envInt('MAX_VUS', 1000),
      stages: [
        { duration: env('WARM', '30s'), target: base },
        { duration: ramp, target: spike },
        { duration: env('HOLD', '30s'), target: spike },
        { duration: ramp, target: base },
        { duration: env('RECOVER', '30s'), target: base },
      ],
    },
  },
  thresholds: Object.assign(thresholds({ p95: 200, p99: 500, failed: 0.01, checks: 0.99 }), {
    server_errors: [`rate<=${env('MAX_5XX_RATE', '0.001')}`],
  }),
});

export default function () {
  const res = http.request(METHOD, url(), null, { headers: headers(), tags: { name: 'spike' } });
  serverErrors.add(res.status >= 500 || res.status === 0);
  check(res, {
    'status is expected': (r) => (expected ? expected.includes(r.status) : r.status >= 200 && r.status < 400),
  });
}
