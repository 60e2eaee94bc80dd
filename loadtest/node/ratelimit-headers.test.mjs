// Unit tests of ../k6/lib/ratelimit-headers.js (node --test), run by tests/loadtest_scripts.rs.
import test from 'node:test';
import assert from 'node:assert/strict';
import {
  checkQuotaSequence, parseList, parsePolicy, parseRateLimit,
} from '../k6/lib/ratelimit-headers.js';

test('parses the gateway\'s policy and current-window headers', () => {
  assert.deepEqual(parsePolicy('"gold-second";q=10;w=1, "gold-hour";q=5000;w=3600'), [
    { name: 'gold-second', params: { q: 10, w: 1 } },
    { name: 'gold-hour', params: { q: 5000, w: 3600 } },
  ]);
  assert.deepEqual(parseRateLimit('"gold-second";r=3;t=1'), { name: 'gold-second', params: { r: 3, t: 1 } });
});

test('accepts the Structured Field List grammar: tokens, escapes, spacing, other parameters', () => {
  assert.deepEqual(parseList('default;q=100;w=60;pk=abc'), [
    { name: 'default', params: { q: 100, w: 60, pk: 'abc' } },
  ]);
  assert.deepEqual(parseList('"a\\"b";q=1;w=2 ,\t"c";q=3;w=4;x'), [
    { name: 'a"b', params: { q: 1, w: 2 } },
    { name: 'c', params: { q: 3, w: 4, x: true } },
  ]);
  assert.deepEqual(parseList(''), []);
});

test('rejects malformed headers', () => {
  for (const bad of [
    '"gold";q=10;w=1,', // trailing comma
    '"gold;q=10;w=1', // unterminated string
    '"gold";Q=10;w=1', // upper-case key
    '"gold" q=10', // missing separator
    '("a" "b");q=1', // inner list
    '"gold";q=1.5.1;w=1',
  ]) {
    assert.throws(() => parseList(bad), undefined, bad);
  }
  assert.throws(() => parsePolicy('"gold";q=10'), /w must be/);
  assert.throws(() => parsePolicy('"gold";q=0;w=1'), /q must be/);
  assert.throws(() => parsePolicy('"gold";q=1.5;w=1'), /q must be/);
  assert.throws(() => parsePolicy(undefined), /missing/);
  assert.throws(() => parseRateLimit('"a";r=1;t=1, "b";r=1;t=1'), /exactly one/);
  assert.throws(() => parseRateLimit('"a";r=-1;t=1'), /r must be/);
  assert.throws(() => parseRateLimit('"a";r=1'), /t must be/);
});

/** What the gateway answers for request n (1-based) of a fresh window. */
function answer(n, quota, windowSeconds) {
  const allowed = n <= quota;
  const remaining = Math.max(quota - n, 0);
  const headers = {
    'ratelimit-policy': `"bench-${windowSeconds}s";q=${quota};w=${windowSeconds}`,
    ratelimit: `"bench-${windowSeconds}s";r=${remaining};t=${windowSeconds}`,
    'x-ratelimit-limit': String(quota),
    'x-ratelimit-remaining': String(remaining),
    'x-ratelimit-reset': String(windowSeconds),
  };
  if (!allowed) headers['retry-after'] = String(windowSeconds);
  return {
    status: allowed ? 200 : 429,
    headers,
    body: allowed ? '' : JSON.stringify({ error: 'rate_limited', policy: 'bench', retry_after: windowSeconds }),
  };
}

function sequence(quota, extra, w) {
  return Array.from({ length: quota + extra }, (_, i) => answer(i + 1, quota, w));
}

test('a correct sequence has no problems', () => {
  assert.deepEqual(checkQuotaSequence(sequence(5, 3, 10), 5, 10), []);
  assert.deepEqual(checkQuotaSequence(sequence(1, 1, 2), 1, 2), []);
});

test('an over-admit, an early refusal and header mistakes are all reported', () => {
  const kinds = (seq) => checkQuotaSequence(seq, 5, 10).map((p) => p.kind);

  const over = sequence(5, 3, 10);
  over[5] = { ...over[4], headers: { ...over[4].headers } };
  over[5].status = 200;
  assert.ok(kinds(over).includes('status'));

  const early = sequence(5, 3, 10);
  early[4].status = 429;
  assert.ok(kinds(early).includes('status'));

  const noRetry = sequence(5, 3, 10);
  delete noRetry[6].headers['retry-after'];
  assert.deepEqual(kinds(noRetry), ['retry']);

  const wrongBody = sequence(5, 3, 10);
  wrongBody[7].body = '{"error":"bad_gateway"}';
  assert.deepEqual(kinds(wrongBody), ['retry']);

  const remaining = sequence(5, 3, 10);
  remaining[2].headers['x-ratelimit-remaining'] = '3';
  assert.deepEqual(kinds(remaining), ['remaining']);

  const policy = sequence(5, 3, 10);
  policy[0].headers['ratelimit-policy'] = '"bench-10s";q=6;w=10';
  assert.deepEqual(kinds(policy), ['policy']);

  const malformed = sequence(5, 3, 10);
  malformed[1].headers.ratelimit = 'bench-10s;r=3;t=';
  assert.deepEqual(kinds(malformed), ['policy']);

  const retryOn200 = sequence(5, 3, 10);
  retryOn200[0].headers['retry-after'] = '1';
  assert.deepEqual(kinds(retryOn200), ['retry']);
});
