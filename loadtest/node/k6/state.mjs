// What the stand-in modules record while a script runs: checks and custom metrics.
export const checks = new Map(); // name -> {passes, fails}
export const metrics = new Map(); // name -> {type, values: []}

export function record(name, ok) {
  const c = checks.get(name) || { passes: 0, fails: 0 };
  if (ok) c.passes += 1;
  else c.fails += 1;
  checks.set(name, c);
}

export function addSample(type, name, value) {
  const m = metrics.get(name) || { type, values: [] };
  m.values.push(value);
  metrics.set(name, m);
}
