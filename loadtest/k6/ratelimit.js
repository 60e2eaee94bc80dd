// Exact quota check: with a fixed-window limit of QUOTA requests per WINDOW_SECONDS on the
// caller (a plan with that single limit, or a route's per_caller limit), one VU sends
// QUOTA + EXTRA requests inside ONE window, starting with that window's first request,
// and checks that
//   * exactly the first QUOTA answers are 200 and the other EXTRA are 429,
//   * RateLimit-Policy and RateLimit parse as Structured Field lists (q= w= / r= t=), the
//     policy lists q=QUOTA;w=WINDOW_SECONDS, and r counts down,
//   * X-RateLimit-Limit is QUOTA and X-RateLimit-Remaining counts QUOTA-1, ..., 1, 0, 0, ...
//   * every 429 carries Retry-After (1..WINDOW_SECONDS) and {"error": "rate_limited"}.
//
//   k6 run -e TARGET=http://127.0.0.1:8080 -e API_KEY=tg_… -e QUOTA=20 -e WINDOW_SECONDS=10 ratelimit.js
//
// Use a credential nothing else is using (the count is per caller), and a window of at
// least 2 s (5 s or more on a remote gateway) so QUOTA + EXTRA requests fit in one window.
// Alignment needs no clock: a first request reads `t` (seconds to the window's end) from
// the RateLimit header; unless it was itself the first of a fresh window (r = QUOTA-1),
// the script sleeps until the next window and tries again (ALIGN_ATTEMPTS, default 3).
// Variables: QUOTA (10), WINDOW_SECONDS (10), EXTRA (5), plus those of lib/common.js.
import http from 'k6/http';
import { check, fail, sleep } from 'k6';
import { Counter } from 'k6/metrics';
import { baseOptions, envInt, headers, METHOD, url } from './lib/common.js';
import {
  checkQuotaSequence, lowerCaseHeaders, parsePolicy, parseRateLimit,
} from './lib/ratelimit-headers.js';

const QUOTA = envInt('QUOTA', 10);
const WINDOW = envInt('WINDOW_SECONDS', 10);
const EXTRA = envInt('EXTRA', 5);
const ATTEMPTS = envInt('ALIGN_ATTEMPTS', 3);

// 429 is an expected answer here, not a failed request.
http.setResponseCallback(http.expectedStatuses({ min: 200, max: 299 }, 429));

const problems = new Counter('ratelimit_problems');

export const options = Object.assign(baseOptions(), {
  discardResponseBodies: false,
  scenarios: {
    exact_quota: {
      executor: 'per-vu-iterations',
      vus: 1,
      iterations: 1,
      maxDuration: `${WINDOW * (ATTEMPTS + 2) + 60}s`,
    },
  },
  thresholds: {
    checks: ['rate==1'],
    ratelimit_problems: ['count==0'],
    http_req_failed: ['rate==0'],
    http_req_duration: ['p(95)<500', 'p(99)<1000'],
  },
});

// fail() alone only ends the iteration (k6 would still exit 0): record a failed check
// first so that the `checks` threshold fails the run.
function abort(message) {
  check(null, { 'exact-quota run could start (see the error)': () => false });
  fail(message);
}

function send() {
  const res = http.request(METHOD, url(), null, {
    headers: headers(),
    responseType: 'text',
    tags: { name: 'ratelimit' },
  });
  return { status: res.status, headers: lowerCaseHeaders(res.headers), body: res.body };
}

export function setup() {
  if (!(QUOTA >= 1 && EXTRA >= 1 && WINDOW >= 2)) {
    abort(`need QUOTA >= 1, EXTRA >= 1 and WINDOW_SECONDS >= 2 (got ${QUOTA}, ${EXTRA}, ${WINDOW})`);
  }
}

export default function () {
  // 1. Find the first request of a fresh window.
  let first = null;
  let secondsLeft = 0;
  for (let attempt = 1; attempt <= ATTEMPTS + 1 && first === null; attempt += 1) {
    const res = send();
    if (res.status !== 200 && res.status !== 429) {
      abort(`expected 200 or 429, got ${res.status}: is TARGET/REQUEST_PATH right and the credential valid? ${String(res.body).slice(0, 200)}`);
    }
    let current;
    try {
      current = parseRateLimit(res.headers.ratelimit);
    } catch (e) {
      abort(`no usable RateLimit header (${e.message}): is the route rate limited for this caller?`);
    }
    let member;
    try {
      member = parsePolicy(res.headers['ratelimit-policy']).find((m) => m.name === current.name);
    } catch (e) {
      abort(`bad RateLimit-Policy header: ${e.message}`);
    }
    if (!member || member.params.q !== QUOTA || member.params.w !== WINDOW) {
      abort(`the caller's tightest window is ${member ? `q=${member.params.q};w=${member.params.w}` : 'not in RateLimit-Policy'} `
        + `(RateLimit-Policy: ${res.headers['ratelimit-policy']}) but QUOTA=${QUOTA} WINDOW_SECONDS=${WINDOW}: make them match`);
    }
    if (res.status === 200 && current.params.r === QUOTA - 1) {
      first = res;
      secondsLeft = current.params.t;
    } else {
      // t: seconds (rounded up) to the end of the current window; sleeping that long lands
      // in the first second of the next one.
      const wait = Math.max(current.params.t, 1);
      console.log(`window already in use (status ${res.status}, r=${current.params.r}); waiting ${wait}s`);
      sleep(wait);
    }
  }
  if (first === null) abort(`no fresh window after ${ATTEMPTS} waits: is something else using this credential, or is QUOTA wrong?`);

  // 2. The rest of the window's requests, back to back.
  const started = Date.now();
  const responses = [first];
  for (let i = 1; i < QUOTA + EXTRA; i += 1) responses.push(send());
  const elapsed = (Date.now() - started) / 1000;

  // The window had more than secondsLeft - 1 seconds left at the first answer.
  const inOneWindow = elapsed < secondsLeft - 1;
  check(elapsed, { 'all requests inside one window': () => inOneWindow });
  if (!inOneWindow) {
    console.error(`${QUOTA + EXTRA} requests took ${elapsed.toFixed(2)}s but the window had only ~${secondsLeft - 1}s left: inconclusive, raise WINDOW_SECONDS`);
  }

  const found = checkQuotaSequence(responses, QUOTA, WINDOW);
  for (const p of found) console.error(p.text);
  const has = (kind) => found.some((p) => p.kind === kind);
  problems.add(found.length);
  const ok = responses.filter((r) => r.status === 200).length;
  const limited = responses.filter((r) => r.status === 429).length;
  check(responses, {
    [`exactly ${QUOTA} x 200 then ${EXTRA} x 429`]: (rs) => rs.every((r, i) => r.status === (i < QUOTA ? 200 : 429)),
    'RateLimit-Policy / RateLimit parse and match the quota': () => !has('policy'),
    'X-RateLimit-Remaining counts down to 0': () => !has('remaining'),
    'every 429 has Retry-After and error rate_limited': () => !has('retry'),
  });
  console.log(`${ok} x 200, ${limited} x 429 in ${elapsed.toFixed(2)}s; ${found.length} problem(s)`);
}
