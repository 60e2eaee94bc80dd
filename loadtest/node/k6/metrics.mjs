// Stand-in for `k6/metrics` under Node: the metric types record their samples.
import { addSample } from './state.mjs';

class Metric {
  constructor(type, name) {
    if (!name) throw new Error(`${type} needs a name`);
    this.name = name;
    this.type = type;
  }

  add(value) {
    addSample(this.type, this.name, typeof value === 'boolean' ? Number(value) : value);
  }
}

export class Counter extends Metric { constructor(name) { super('counter', name); } }
export class Gauge extends Metric { constructor(name) { super('gauge', name); } }
export class Rate extends Metric { constructor(name) { super('rate', name); } }
export class Trend extends Metric { constructor(name) { super('trend', name); } }

export default { Counter, Gauge, Rate, Trend };
