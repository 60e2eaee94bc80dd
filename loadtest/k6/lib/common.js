// Settings shared by the k6 scripts, all from environment variables (`k6 run -e NAME=value`
// or the process environment). No k6 imports here, so plain Node can load it too.
//
//   TARGET          base URL of the gateway            default http://127.0.0.1:8080
//   REQUEST_PATH    path (and query) to request        default /
//                   (not PATH: k6 passes the shell's PATH into __ENV)
//   METHOD          HTTP method                        default GET
//   HOST_HEADER     Host header to send                default: the TARGET's host
//   API_KEY         sent as the API-key header         default: none
//   API_KEY_HEADER  name of that header                default x-api-key
//   BEARER_TOKEN    sent as `Authorization: Bearer …`  default: none
//   EXPECTED_STATUSES  statuses that are not failures, e.g. "200,429"   default 200-399
//   P95_MS / P99_MS    latency thresholds (ms) on http_req_duration
//   MAX_FAILED      highest acceptable http_req_failed rate (0..1)
//   INSECURE=1      do not verify the gateway's TLS certificate (staging)

/* global __ENV */
const ENV = typeof __ENV === 'undefined' ? {} : __ENV;

export function env(name, fallback) {
  const v = ENV[name];
  return v === undefined || v === '' ? fallback : v;
}

export function envInt(name, fallback) {
  const v = env(name, undefined);
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`${name}=${v} is not a number`);
  return n;
}

export const TARGET = env('TARGET', 'http://127.0.0.1:8080').replace(/\/+$/, '');
export const REQUEST_PATH = env('REQUEST_PATH', '/');
export const METHOD = env('METHOD', 'GET').toUpperCase();

/** The full URL of `path` (default REQUEST_PATH) on TARGET. */
export function url(path) {
  const p = path === undefined ? REQUEST_PATH : path;
  return TARGET + (p.startsWith('/') ? p : `/${p}`);
}

/** Request headers: credentials and Host from the environment, plus `extra`. */
export function headers(extra) {
  const h = {};
  const key = env('API_KEY', '');
  if (key) h[env('API_KEY_HEADER', 'x-api-key')] = key;
  const token = env('BEARER_TOKEN', '');
  if (token) h.Authorization = `Bearer ${token}`;
  const host = env('HOST_HEADER', '');
  if (host) h.Host = host;
  return Object.assign(h, extra || {});
}

/** Statuses that count as success, from EXPECTED_STATUSES ("200,204,429"). */
export function expectedStatuses() {
  const raw = env('EXPECTED_STATUSES', '');
  if (!raw) return null;
  return raw.split(',').map((s) => {
    const n = Number(s.trim());
    if (!Number.isInteger(n) || n < 100 || n > 599) {
      throw new Error(`EXPECTED_STATUSES: "${s}" is not an HTTP status`);
    }
    return n;
  });
}

/** The usual thresholds; `defaults` gives the p95/p99 (ms) and failure rate when unset. */
export function thresholds(defaults) {
  const p95 = envInt('P95_MS', defaults.p95);
  const p99 = envInt('P99_MS', defaults.p99);
  const failed = Number(env('MAX_FAILED', String(defaults.failed)));
  return {
    http_req_duration: [`p(95)<${p95}`, `p(99)<${p99}`],
    http_req_failed: [`rate<=${failed}`],
    checks: [`rate>=${env('MIN_CHECKS', String(defaults.checks === undefined ? 0.99 : defaults.checks))}`],
  };
}

/** Options common to every script (TLS verification, summary percentiles). */
export function baseOptions() {
  return {
    insecureSkipTLSVerify: env('INSECURE', '') === '1',
    summaryTrendStats: ['min', 'med', 'avg', 'p(90)', 'p(95)', 'p(99)', 'max'],
    discardResponseBodies: env('KEEP_BODIES', '') !== '1',
  };
}

/** A header of a k6 response, whatever its case (k6 canonicalises names, e.g.
 *  `RateLimit-Policy` arrives as `Ratelimit-Policy`). */
export function header(res, name) {
  if (!res || !res.headers) return undefined;
  const want = name.toLowerCase();
  for (const k of Object.keys(res.headers)) {
    if (k.toLowerCase() === want) return res.headers[k];
  }
  return undefined;
}
