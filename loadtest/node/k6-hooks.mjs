// Module resolution hooks (node:module register): `k6`, `k6/http` and `k6/metrics` resolve
// to the stand-ins in ./k6/. Any other k6 module is refused: the scripts use only these.
const STUBS = {
  k6: './k6/index.mjs',
  'k6/http': './k6/http.mjs',
  'k6/metrics': './k6/metrics.mjs',
};

export async function resolve(specifier, context, nextResolve) {
  if (specifier === 'k6' || specifier.startsWith('k6/')) {
    const stub = STUBS[specifier];
    if (!stub) throw new Error(`${specifier}: not a k6 module the scripts may use (only k6, k6/http, k6/metrics)`);
    return { url: new URL(stub, import.meta.url).href, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}
