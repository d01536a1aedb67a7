// Build a Celeriac task component from a JS task module.
//
//   node build.mjs APP.js [-o OUT.wasm] [--wit DIR] [--features clocks,random,http | --pure]
//
// 1. esbuild bundles APP.js + npm deps + the SDK into one ES module whose
//    entry re-exports the world exports (`tasks`, `call`) from celeriac.js;
//    `import ... from 'celeriac'` resolves to the SDK.
// 2. componentize-js splices bindings for world `task` into StarlingMonkey,
//    runs Wizer (top level evaluated: tasks registered at build time), and
//    wraps it as a component. Engine features: `clocks`, `random` and
//    `http` (fetch(), through wasi:http; the host lets a request through
//    only under the component's signed grant) are kept by default. Without
//    them the component imports nothing but celeriac:task (--pure), but
//    Date.now() is frozen at build time, Math.random() and
//    crypto.getRandomValues() are the same every run, setTimeout() and
//    performance.now() trap, and fetch() fails. fetch-event and stdio are
//    always off (console.* goes to the host log via the SDK).
import { build } from 'esbuild';
import { componentize } from '@bytecodealliance/componentize-js';
import { mkdir, writeFile } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { builtinModules } from 'node:module';

const here = dirname(fileURLToPath(import.meta.url));
const { values: opt, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    out: { type: 'string', short: 'o' },
    wit: { type: 'string' },
    features: { type: 'string', default: 'clocks,random,http' },
    pure: { type: 'boolean', default: false },
  },
});
if (positionals.length !== 1) {
  console.error('usage: node build.mjs APP.js [-o OUT.wasm] [--wit DIR] [--features clocks,random,http | --pure]');
  process.exit(2);
}
if (!opt.wit) {
  console.error('--wit DIR is required (celeriac build passes it)');
  process.exit(2);
}
const app = resolve(positionals[0]);
const name = basename(dirname(app)); // js-text/app.js -> js-text
const out = resolve(opt.out ?? `dist/${name}.wasm`);
const bundlePath = out.replace(/\.wasm$/, '.bundle.js');
const keep = opt.pure ? [] : opt.features.split(',').filter(Boolean);
const ALL = ['stdio', 'random', 'clocks', 'http', 'fetch-event'];

// npm packages sometimes `require('stream')` etc. on a Node-only code path.
// The guest has no Node built-ins: resolve them to a stub that throws only
// when actually used, so the rest of the package still works.
const builtins = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]));
const nodeStub = {
  name: 'node-builtins-stub',
  setup(b) {
    b.onResolve({ filter: /.*/ }, (a) =>
      builtins.has(a.path) ? { path: a.path, namespace: 'node-stub' } : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: 'node-stub' }, (a) => ({
      loader: 'js',
      contents: `module.exports = new Proxy({}, { get(_, k) {
        if (typeof k === 'symbol' || k === '__esModule' || k === 'then') return undefined;
        throw new Error(${JSON.stringify(`Node built-in '${a.path}' is not available in a Celeriac task`)});
      } });`,
    }));
  },
};

const t0 = performance.now();
await mkdir(dirname(out), { recursive: true });
await build({
  stdin: {
    contents: `import ${JSON.stringify(app)};\nexport { tasks, call } from 'celeriac';\n`,
    resolveDir: here,
    sourcefile: 'celeriac-entry.js',
  },
  bundle: true,
  format: 'esm',
  platform: 'neutral', // no Node built-ins in the guest
  mainFields: ['module', 'main'],
  conditions: ['import', 'default'],
  target: 'es2022',
  alias: { celeriac: resolve(here, 'celeriac.js') },
  external: ['celeriac:*', 'wasi:*'],
  plugins: [nodeStub],
  minify: false, // keep names: error messages say `TypeError: ...` either way
  legalComments: 'none',
  outfile: bundlePath,
  logLevel: 'warning',
});
const t1 = performance.now();

const { component } = await componentize({
  sourcePath: bundlePath,
  witPath: resolve(opt.wit),
  worldName: 'task',
  disableFeatures: ALL.filter((f) => !keep.includes(f)),
});
await writeFile(out, component);
const t2 = performance.now();
console.log(out);
console.error(
  `bundle ${(t1 - t0).toFixed(0)} ms, componentize ${(t2 - t1).toFixed(0)} ms, ` +
    `${(component.length / 1048576).toFixed(2)} MiB`,
);
