// Stand-in for the `k6` module under Node (see ../README.md): check, group, sleep, fail.
import { record } from './state.mjs';

export function check(value, sets, tags) {
  let all = true;
  for (const [name, fn] of Object.entries(sets || {})) {
    let ok;
    try {
      ok = !!(typeof fn === 'function' ? fn(value) : fn);
    } catch (e) {
      ok = false;
      console.error(`check "${name}" threw: ${e.message}`);
    }
    record(name, ok, tags);
    all = all && ok;
  }
  return all;
}

export function group(name, fn) {
  return fn();
}

const sleeper = new Int32Array(new SharedArrayBuffer(4));
export function sleep(seconds) {
  const ms = Math.max(0, Number(seconds) * 1000);
  if (ms > 0) Atomics.wait(sleeper, 0, 0, ms);
}

export class K6Fail extends Error {}
export function fail(message) {
  throw new K6Fail(message === undefined ? 'fail() called' : String(message));
}

export default { check, group, sleep, fail };
