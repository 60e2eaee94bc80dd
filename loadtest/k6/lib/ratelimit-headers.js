// Parsing and checking of the rate-limit response headers, with no k6 imports so that
// plain Node can unit-test it (loadtest/node/ratelimit-headers.test.mjs).
//
//   RateLimit-Policy: "gold-second";q=10;w=1, "gold-hour";q=5000;w=3600
//   RateLimit: "gold-second";r=3;t=1
//
// Both are Structured Field Lists (RFC 9651): members are items (a string or token naming
// the policy) with parameters. parseList() implements the List grammar for items (inner
// lists are rejected: these headers never use them) and returns
// [{ name, params: {q: 10, w: 1} }, ...], or throws on anything malformed.

function fail(msg, input, i) {
  throw new Error(`${msg} at offset ${i} in ${JSON.stringify(input)}`);
}

const TCHAR = /[!#$%&'*+\-.^_`|~0-9A-Za-z:/]/;
const KEY_FIRST = /[a-z*]/;
const KEY_CHAR = /[a-z0-9_\-.*]/;

function parseBareItem(s, i) {
  const c = s[i];
  if (c === '"') {
    let out = '';
    i += 1;
    for (;;) {
      if (i >= s.length) fail('unterminated string', s, i);
      const ch = s[i];
      if (ch === '\\') {
        const next = s[i + 1];
        if (next !== '"' && next !== '\\') fail('bad escape', s, i);
        out += next;
        i += 2;
      } else if (ch === '"') {
        return { value: out, i: i + 1 };
      } else {
        const code = ch.charCodeAt(0);
        if (code < 0x20 || code > 0x7e) fail('bad string character', s, i);
        out += ch;
        i += 1;
      }
    }
  }
  if (c === '-' || (c >= '0' && c <= '9')) {
    const m = /^-?[0-9]{1,15}(\.[0-9]{1,3})?/.exec(s.slice(i));
    if (!m) fail('bad number', s, i);
    if (!m[1] && m[0].replace('-', '').length > 15) fail('integer too long', s, i);
    return { value: Number(m[0]), i: i + m[0].length };
  }
  if (c === '?') {
    if (s[i + 1] === '1') return { value: true, i: i + 2 };
    if (s[i + 1] === '0') return { value: false, i: i + 2 };
    fail('bad boolean', s, i);
  }
  if (c !== undefined && /[A-Za-z*]/.test(c)) {
    let j = i + 1;
    while (j < s.length && TCHAR.test(s[j])) j += 1;
    return { value: s.slice(i, j), token: true, i: j };
  }
  return fail('expected an item', s, i);
}

function parseParams(s, i) {
  const params = {};
  while (s[i] === ';') {
    i += 1;
    while (s[i] === ' ') i += 1;
    if (!KEY_FIRST.test(s[i] || '')) fail('bad parameter key', s, i);
    let j = i + 1;
    while (j < s.length && KEY_CHAR.test(s[j])) j += 1;
    const key = s.slice(i, j);
    i = j;
    let value = true;
    if (s[i] === '=') {
      const item = parseBareItem(s, i + 1);
      value = item.value;
      i = item.i;
    }
    params[key] = value;
  }
  return { params, i };
}

/** Parses a Structured Field List of items; throws on malformed input. */
export function parseList(input) {
  if (typeof input !== 'string') throw new Error(`header missing (got ${input})`);
  const s = input.trim();
  const members = [];
  let i = 0;
  if (s.length === 0) return members;
  for (;;) {
    if (s[i] === '(') fail('inner lists are not expected', s, i);
    const item = parseBareItem(s, i);
    const p = parseParams(s, item.i);
    members.push({ name: item.value, params: p.params });
    i = p.i;
    while (s[i] === ' ' || s[i] === '\t') i += 1;
    if (i >= s.length) return members;
    if (s[i] !== ',') fail('expected a comma', s, i);
    i += 1;
    while (s[i] === ' ' || s[i] === '\t') i += 1;
    if (i >= s.length) fail('trailing comma', s, i);
  }
}

function nonNegativeInt(v) {
  return Number.isInteger(v) && v >= 0;
}

/** RateLimit-Policy: every member named, with integer q >= 1 and w >= 1. */
export function parsePolicy(value) {
  const members = parseList(value);
  if (members.length === 0) throw new Error('RateLimit-Policy is empty');
  for (const m of members) {
    if (typeof m.name !== 'string' || m.name === '') throw new Error(`policy member without a name: ${value}`);
    if (!nonNegativeInt(m.params.q) || m.params.q < 1) throw new Error(`policy "${m.name}": q must be an integer >= 1 in ${value}`);
    if (!nonNegativeInt(m.params.w) || m.params.w < 1) throw new Error(`policy "${m.name}": w must be an integer >= 1 in ${value}`);
  }
  return members;
}

/** RateLimit: exactly one member, with integer r >= 0 and t >= 0. */
export function parseRateLimit(value) {
  const members = parseList(value);
  if (members.length !== 1) throw new Error(`RateLimit must have exactly one member: ${value}`);
  const m = members[0];
  if (!nonNegativeInt(m.params.r)) throw new Error(`RateLimit: r must be an integer >= 0 in ${value}`);
  if (!nonNegativeInt(m.params.t)) throw new Error(`RateLimit: t must be an integer >= 0 in ${value}`);
  return m;
}

/**
 * Checks the sequence of responses of one exact-quota run: `responses` is an array of
 * {status, headers: {lower-case name: value}, body} in the order sent, all in one window
 * of a fixed-window policy with `quota` requests per `windowSeconds`, starting with the
 * first request of that window. Returns a list of problems (empty: all good), each
 * {kind, text}; kind is 'status', 'policy' (RateLimit-Policy / RateLimit), 'remaining'
 * (X-RateLimit-*) or 'retry' (Retry-After and the 429 body).
 */
export function checkQuotaSequence(responses, quota, windowSeconds) {
  const problems = [];
  let kind = 'status';
  const say = (i, msg) => problems.push({ kind, text: `request ${i + 1}/${responses.length}: ${msg}` });
  responses.forEach((res, i) => {
    const h = res.headers;
    const expected = i < quota ? 200 : 429;
    kind = 'status';
    if (res.status !== expected) say(i, `status ${res.status}, expected ${expected}`);
    kind = 'policy';
    let policy = null;
    let current = null;
    try {
      policy = parsePolicy(h['ratelimit-policy']);
    } catch (e) {
      say(i, `RateLimit-Policy: ${e.message}`);
    }
    try {
      current = parseRateLimit(h.ratelimit);
    } catch (e) {
      say(i, `RateLimit: ${e.message}`);
    }
    if (policy && current) {
      const member = policy.find((m) => m.name === current.name);
      if (!member) {
        say(i, `RateLimit names "${current.name}", which RateLimit-Policy does not list`);
      } else {
        if (member.params.q !== quota) say(i, `policy "${member.name}" has q=${member.params.q}, expected QUOTA=${quota}`);
        if (member.params.w !== windowSeconds) say(i, `policy "${member.name}" has w=${member.params.w}, expected WINDOW_SECONDS=${windowSeconds}`);
      }
      const wantR = Math.max(quota - (i + 1), 0);
      if (current.params.r !== wantR) say(i, `RateLimit r=${current.params.r}, expected ${wantR}`);
      if (current.params.t > windowSeconds) say(i, `RateLimit t=${current.params.t} exceeds the window (${windowSeconds}s)`);
    }
    kind = 'remaining';
    const remaining = h['x-ratelimit-remaining'];
    const wantRemaining = String(Math.max(quota - (i + 1), 0));
    if (remaining !== wantRemaining) say(i, `X-RateLimit-Remaining ${remaining}, expected ${wantRemaining}`);
    if (h['x-ratelimit-limit'] !== String(quota)) say(i, `X-RateLimit-Limit ${h['x-ratelimit-limit']}, expected ${quota}`);
    kind = 'retry';
    const retry = h['retry-after'];
    if (expected === 429) {
      if (retry === undefined) say(i, 'a 429 without Retry-After');
      else if (!/^[0-9]+$/.test(retry) || Number(retry) < 1 || Number(retry) > windowSeconds) {
        say(i, `Retry-After "${retry}" is not an integer in 1..${windowSeconds}`);
      }
      if (res.body !== undefined && res.body !== null) {
        let err;
        try {
          err = JSON.parse(res.body).error;
        } catch (e) {
          err = `unparsable body ${JSON.stringify(String(res.body).slice(0, 80))}`;
        }
        if (err !== 'rate_limited') say(i, `429 body error is ${JSON.stringify(err)}, expected "rate_limited"`);
      }
    } else if (retry !== undefined) {
      say(i, `Retry-After "${retry}" on an allowed request`);
    }
  });
  return problems;
}

/** Lower-cases the header names of a k6 (or any) response's headers object. */
export function lowerCaseHeaders(headers) {
  const out = {};
  for (const k of Object.keys(headers || {})) out[k.toLowerCase()] = headers[k];
  return out;
}
