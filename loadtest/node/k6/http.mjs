// Stand-in for `k6/http` under Node. Requests are real and synchronous, like k6's: each
// one runs `curl` (HTTP/1.1, a new connection per request). Response objects have the
// fields the scripts use: status, headers (names canonicalised the way k6/Go does, e.g.
// `Ratelimit-Policy`), body, timings.duration, error, json().
import { execFileSync } from 'node:child_process';

let responseCallback = null;

function canonical(name) {
  return name.toLowerCase().replace(/(^|-)([a-z])/g, (m, dash, c) => dash + c.toUpperCase());
}

function parseResponse(raw) {
  // curl -i may print several header blocks (e.g. 100 Continue); the last one counts.
  let rest = raw;
  let head;
  for (;;) {
    const end = rest.indexOf('\r\n\r\n');
    head = end < 0 ? rest : rest.slice(0, end);
    rest = end < 0 ? '' : rest.slice(end + 4);
    if (!/^HTTP\/\S+ 1\d\d/.test(head) || !/^HTTP\//.test(rest)) break;
  }
  const lines = head.split('\r\n');
  const status = Number((lines[0].match(/^HTTP\/\S+ (\d{3})/) || [])[1] || 0);
  const headers = {};
  for (const line of lines.slice(1)) {
    const i = line.indexOf(':');
    if (i <= 0) continue;
    const name = canonical(line.slice(0, i).trim());
    const value = line.slice(i + 1).trim();
    headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
  }
  return { status, headers, body: rest };
}

export function request(method, url, body, params) {
  const p = params || {};
  const args = ['-sS', '-i', '--http1.1', '-X', method, '--max-time', String(p.timeoutSeconds || 60)];
  for (const [k, v] of Object.entries(p.headers || {})) args.push('-H', `${k}: ${v}`);
  if (body !== null && body !== undefined) args.push('--data-binary', typeof body === 'string' ? body : JSON.stringify(body));
  args.push(url);
  const started = process.hrtime.bigint();
  let res;
  try {
    const out = execFileSync('curl', args, { maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'pipe'] });
    res = parseResponse(out.toString('latin1'));
    res.error = '';
    res.error_code = 0;
  } catch (e) {
    res = { status: 0, headers: {}, body: null, error: String(e.stderr || e.message).trim(), error_code: 1000 };
  }
  res.timings = { duration: Number(process.hrtime.bigint() - started) / 1e6 };
  res.url = url;
  res.request = { method, url, headers: p.headers || {} };
  res.json = (selector) => {
    const v = JSON.parse(res.body);
    return selector ? selector.split('.').reduce((o, k) => (o == null ? o : o[k]), v) : v;
  };
  if (responseCallback) responseCallback(res);
  return res;
}

export const get = (url, params) => request('GET', url, null, params);
export const head = (url, params) => request('HEAD', url, null, params);
export const del = (url, body, params) => request('DELETE', url, body, params);
export const options = (url, body, params) => request('OPTIONS', url, body, params);
export const patch = (url, body, params) => request('PATCH', url, body, params);
export const post = (url, body, params) => request('POST', url, body, params);
export const put = (url, body, params) => request('PUT', url, body, params);

export function batch(requests) {
  const list = Array.isArray(requests) ? requests : Object.values(requests);
  return list.map((r) => (Array.isArray(r) ? request(r[0], r[1], r[2], r[3]) : request(r.method || 'GET', r.url, r.body, r.params)));
}

export function expectedStatuses(...specs) {
  for (const s of specs) {
    const ok = Number.isInteger(s) || (s && Number.isInteger(s.min) && Number.isInteger(s.max));
    if (!ok) throw new Error(`expectedStatuses: bad argument ${JSON.stringify(s)}`);
  }
  return { expectedStatuses: specs };
}

export function setResponseCallback(cb) {
  if (cb !== null && !(cb && Array.isArray(cb.expectedStatuses))) {
    throw new Error('setResponseCallback takes http.expectedStatuses(...) or null');
  }
  responseCallback = null; // only recorded in k6's http_req_failed; nothing to do here
}

export default {
  request, get, head, del, options, patch, post, put, batch, expectedStatuses, setResponseCallback,
};
