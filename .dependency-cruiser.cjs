// The layers of src/, lowest first. A file may import its own layer and any layer below it, never one above
// (ARCHITECTURE.md explains each layer). `npm test` runs this check (`npm run lint`); an upward import or an
// import cycle fails it with the offending pair of files named.
const LAYERS = [
  ['leaf', '^src/(errors|variables|version)\\.ts$|^src/config/'],
  ['formats', '^src/(formats|tokenizers)/|^src/(backend|backend-capabilities|browser-backend|wasm-fallbacks|wasm-rope|wasm-threads|webgpu-fallbacks|webgpu-program)\\.ts$'],
  ['base', '^src/base/'],
  ['vision', '^src/vision/'],
  ['adapters', '^src/adapters/'],
  ['compose', '^src/compose/'],
  ['routing', '^src/routing/'],
  ['model', '^src/model/'],
  ['io', '^src/io/'],
  ['analysis', '^src/analysis/'],
  ['serving-and-training', '^src/(runtime|train)/'],
  ['server', '^src/server/'],
  ['search', '^src/search/'],
  ['apps', '^src/(cli|demo)/|^src/(index|browser)\\.ts$'],
];

const upward = LAYERS.flatMap(([name, path], i) => {
  const above = LAYERS.slice(i + 1).map(([, p]) => `(${p})`);
  if (above.length === 0) return [];
  return [{ name: `no-upward-from-${name}`, severity: 'error', comment: `${name} must not import a higher layer`, from: { path }, to: { path: above.join('|') } }];
});

module.exports = {
  forbidden: [
    ...upward,
    { name: 'no-cycles', severity: 'error', comment: 'Import cycles hide layering mistakes', from: {}, to: { circular: true } },
    { name: 'serving-not-training', severity: 'error', comment: 'runtime/ (serving) and train/ are siblings', from: { path: '^src/runtime/' }, to: { path: '^src/train/' } },
    { name: 'server-not-training', severity: 'error', comment: 'the HTTP server (server/) builds on runtime/, not on train/', from: { path: '^src/server/' }, to: { path: '^src/train/' } },
    { name: 'training-not-serving', severity: 'error', comment: 'runtime/ (serving) and train/ are siblings', from: { path: '^src/train/' }, to: { path: '^src/runtime/' } },
    { name: 'src-not-routers', severity: 'error', comment: 'src/ never imports the router plug-ins; a registry wires them', from: { path: '^src/' }, to: { path: '^routers/' } },
    {
      name: 'web-uses-the-browser-entry',
      severity: 'error',
      comment: 'the page (web/) reaches the library only through its browser entry (src/browser.ts) and the router registry',
      from: { path: '^web/' },
      to: { path: '^(src|routers)/', pathNot: '^(src/browser\\.ts|routers/index\\.ts)$' },
    },
    {
      name: 'browser-entry-has-no-node-built-ins',
      severity: 'error',
      comment: 'nothing the browser entry or the page reaches may import a Node built-in (fs, path, crypto, ...)',
      from: { path: '^(src/browser\\.ts|web/(?!vite\\.config).+\\.ts)$' },
      to: { path: '^(node:|(fs|path|os|crypto|util|url|module|http|https|net|stream|child_process|worker_threads|zlib|events|buffer)(/|$))', reachable: true },
    },
    {
      name: 'routers-use-the-contract-only',
      severity: 'error',
      comment: 'a router imports only the routing contract, the gating library, errors and config parsing',
      from: { path: '^routers/' },
      to: { path: '^src/', pathNot: '^src/(routing/(router|gating|router-registry)\\.ts|errors\\.ts|config/)' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
  },
};
