/**
 * The page: loads the demo base and a routed model from URLs through the library's loaders, generates
 * greedily token by token, draws the routing of every token as it streams (heat-map.ts), switches between
 * the wasm and webgpu backends, and reports timings. Query parameters: `model` and `routed` (directory
 * URLs, default `models/base/` and `models/routed/`), `backend`, `prompt`, `tokens`, `eos=0` (do not stop at
 * EOS), `run=1` (generate once
 * loaded). The finished state is on `document.body.dataset.state` (`loading`, `ready`, `running`, `done`,
 * `error`) and the ids in `#ids`'s `data-ids`, for tests.
 */
import wasmPlain from '@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm.wasm?url';
import wasmSimd from '@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm-simd.wasm?url';
import wasmThreadedSimd from '@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm-threaded-simd.wasm?url';
import * as tf from '@tensorflow/tfjs';
import { builtinRouters } from '../routers/index.js';
import {
  type AdaptedModel,
  type BrowserBackendName,
  HfTokenizer,
  type DroppedFile,
  type FileSource,
  type LoadedModel,
  type RoutingTraceEntry,
  getBackendCapabilities,
  loadBaseModelFrom,
  loadRoutedModelFrom,
  droppedFiles,
  selectBrowserBackend,
  urlFiles,
  webgpuAvailability,
} from '../src/browser.js';
import { filesFromDrop } from './dropped-folder.js';
import { renderHeatmap } from './heatmap.js';
import { trainInPage } from './train.js';

const WASM_PATHS = {
  'tfjs-backend-wasm.wasm': wasmPlain,
  'tfjs-backend-wasm-simd.wasm': wasmSimd,
  'tfjs-backend-wasm-threaded-simd.wasm': wasmThreadedSimd,
};

const query = new URLSearchParams(location.search);
const MODEL_URL = new URL(query.get('model') ?? 'models/base/', location.href);
const ROUTED_URL = new URL(query.get('routed') ?? 'models/routed/', location.href);

const byId = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;
const ui = {
  prompt: byId<HTMLInputElement>('prompt'),
  maxNew: byId<HTMLInputElement>('max-new'),
  useRouted: byId<HTMLInputElement>('use-routed'),
  stopAtEos: byId<HTMLInputElement>('stop-at-eos'),
  generate: byId<HTMLButtonElement>('generate'),
  status: byId<HTMLSpanElement>('status'),
  output: byId<HTMLDivElement>('output'),
  ids: byId<HTMLDivElement>('ids'),
  timings: byId<HTMLTableSectionElement>('timings'),
  heatmap: byId<HTMLDivElement>('heatmap'),
  heatmapNote: byId<HTMLParagraphElement>('heatmap-note'),
  backendNote: byId<HTMLSpanElement>('backend-note'),
  train: byId<HTMLButtonElement>('train'),
  routedSource: byId<HTMLSpanElement>('routed-source'),
  routedFolder: byId<HTMLInputElement>('routed-folder'),
  dropZone: byId<HTMLFieldSetElement>('drop-zone'),
};

/** Where the routed model comes from: the URL, or a folder the user dropped or picked (kept across backend switches). */
let routedFiles: FileSource = urlFiles(ROUTED_URL);

interface Loaded {
  readonly backend: BrowserBackendName;
  readonly base: LoadedModel;
  readonly routed: AdaptedModel;
  readonly tokenizer: HfTokenizer;
}

let loaded: Loaded | undefined;
const timings = new Map<string, string>();

function setState(state: 'loading' | 'ready' | 'running' | 'done' | 'error', message: string): void {
  document.body.dataset['state'] = state;
  ui.status.textContent = message;
  ui.status.className = state === 'error' ? 'error' : '';
  ui.generate.disabled = state === 'loading' || state === 'running';
  ui.train.disabled = ui.generate.disabled || loaded?.backend !== 'wasm';
}

function showTimings(): void {
  ui.timings.replaceChildren(
    ...[...timings].map(([name, value]) => {
      const row = document.createElement('tr');
      const [a, b] = [document.createElement('td'), document.createElement('td')];
      a.textContent = name;
      b.textContent = value;
      row.append(a, b);
      return row;
    }),
  );
}

const ms = (start: number): number => performance.now() - start;
const formatMs = (value: number): string => `${value.toFixed(1)} ms`;
const message = (error: unknown): string => (error instanceof Error ? error.message : String(error));

/** Loads the base, its tokenizer and the routed model on the active backend. */
async function loadModels(backend: BrowserBackendName): Promise<Loaded> {
  const baseFiles = urlFiles(MODEL_URL);
  const base = await loadBaseModelFrom(baseFiles);
  try {
    const tokenizer = await HfTokenizer.fromSource(baseFiles);
    const { model: routed } = await loadRoutedModelFrom(routedFiles, base.model, { routers: builtinRouters() });
    return { backend, base, routed, tokenizer };
  } catch (error) {
    base.model.dispose();
    throw error;
  }
}

/** Switches the backend, then (re)loads the models on it; on failure the previous backend and models stay. */
async function load(backend: BrowserBackendName): Promise<void> {
  setState('loading', `loading on ${backend}…`);
  const previous = loaded?.backend;
  if (backend === 'webgpu') await import('./webgpu.js');
  const report = await selectBrowserBackend(backend, { wasmPaths: WASM_PATHS });
  const start = performance.now();
  let next: Loaded;
  try {
    next = await loadModels(backend);
  } catch (error) {
    if (previous !== undefined && previous !== backend) await selectBrowserBackend(previous, { wasmPaths: WASM_PATHS });
    throw error;
  }
  const loadMs = ms(start);
  loaded?.routed.dispose();
  loaded?.base.model.dispose();
  loaded = next;
  timings.clear();
  timings.set(
    'backend',
    `${report.chosen}${report.threads === undefined ? '' : ` (${report.threads} thread${report.threads === 1 ? '' : 's'})`}${report.adapter === undefined ? '' : ` — ${report.adapter.vendor} ${report.adapter.architecture}${report.adapter.software ? ' (software)' : ''}`}`,
  );
  timings.set('switch backend', formatMs(report.ms));
  timings.set('load base + routed model', formatMs(loadMs));
  ui.routedSource.textContent = `from ${routedFiles.origin}`;
  showTimings();
  setState('ready', `ready on ${backend}`);
}

function tokenLabels(tokenizer: HfTokenizer, ids: readonly number[]): string[] {
  return ids.map((id) => (id === tokenizer.bosId ? '<s>' : id === tokenizer.eosId ? '</s>' : tokenizer.decode([id])));
}

async function generate(): Promise<void> {
  const model = loaded;
  if (model === undefined) return;
  setState('running', 'generating…');
  const prompt = model.tokenizer.encode(ui.prompt.value, { addBos: true });
  const ids = [...prompt];
  const useRouted = ui.useRouted.checked;
  const canTrace = useRouted && getBackendCapabilities().syncReads;
  const trace: RoutingTraceEntry[] = [];
  ui.heatmapNote.textContent = !useRouted
    ? 'The bare base routes nothing.'
    : canTrace
      ? "Columns: tokens (the last one has not been fed back yet); rows: each layer's router, one row per expert; colour: the weight the router gave the expert."
      : `Routing traces read tensors synchronously, which the ${model.backend} backend cannot do: switch to wasm to see the routing.`;
  ui.heatmapNote.className = canTrace || !useRouted ? 'note' : 'note error';
  const experts = model.routed.routes.flatMap((route) => route.expertNames);
  const draw = (): void => {
    ui.output.replaceChildren();
    const promptSpan = document.createElement('span');
    promptSpan.className = 'prompt';
    promptSpan.textContent = model.tokenizer.decode(prompt);
    const generated = document.createElement('span');
    generated.textContent = model.tokenizer.decode(ids.slice(prompt.length));
    ui.output.append(promptSpan, generated);
    ui.ids.textContent = `ids: ${ids.join(' ')}`;
    ui.ids.dataset['ids'] = JSON.stringify(ids);
    ui.heatmap.replaceChildren(canTrace ? renderHeatmap({ experts, tokens: tokenLabels(model.tokenizer, ids), entries: trace }) : '');
  };
  const maxNewTokens = Math.max(1, Math.min(64, Number(ui.maxNew.value) || 12));
  // Compute time only: the waits that let the page paint each token are not counted.
  let computeMs = 0;
  let first: number | undefined;
  let decodeMs = 0;
  try {
    const steps = model.routed.generateStepsAsync([prompt], {
      maxNewTokens,
      temperature: 0,
      select: useRouted ? 'spec' : 'base',
      ...(ui.stopAtEos.checked ? {} : { eosId: null }),
      ...(canTrace ? { routing: { trace } } : {}),
    });
    for (;;) {
      const stepStart = performance.now();
      const step = await steps.next();
      const stepMs = performance.now() - stepStart;
      if (step.done === true) break;
      computeMs += stepMs;
      if (first === undefined) first = stepMs;
      else decodeMs += stepMs;
      const token = step.value[0];
      if (token !== undefined && token >= 0) ids.push(token);
      draw();
      // Let the page paint the token before the next step.
      await new Promise((resolve) => requestAnimationFrame(() => resolve(undefined)));
    }
  } catch (error) {
    setState('error', message(error));
    return;
  }
  const generated = ids.length - prompt.length;
  timings.set('first token (prefill)', formatMs(first ?? 0));
  if (generated > 1) {
    const perToken = decodeMs / (generated - 1);
    timings.set('per next token (decode)', `${formatMs(perToken)} (${(1000 / perToken).toFixed(1)} tokens/s)`);
  }
  timings.set('generation, compute only', formatMs(computeMs));
  timings.set('tokens', `${prompt.length} prompt + ${generated} generated`);
  timings.set('tensors alive', String(tf.memory().numTensors));
  showTimings();
  draw();
  setState('done', `done: ${generated} tokens`);
}

async function start(): Promise<void> {
  if (query.has('prompt')) ui.prompt.value = query.get('prompt') as string;
  if (query.has('tokens')) ui.maxNew.value = query.get('tokens') as string;
  if (query.get('eos') === '0') ui.stopAtEos.checked = false;
  const webgpuRadio = document.querySelector<HTMLInputElement>('input[name=backend][value=webgpu]') as HTMLInputElement;
  const availability = await webgpuAvailability();
  ui.backendNote.textContent = availability.available
    ? `webgpu adapter: ${availability.adapter.vendor || 'unknown vendor'} ${availability.adapter.architecture}${availability.adapter.software ? ' (software)' : ''}`
    : `webgpu unavailable: ${availability.reason}`;
  webgpuRadio.disabled = !availability.available;
  const wanted = query.get('backend') === 'webgpu' && availability.available ? 'webgpu' : 'wasm';
  (document.querySelector<HTMLInputElement>(`input[name=backend][value=${wanted}]`) as HTMLInputElement).checked = true;
  for (const radio of document.querySelectorAll<HTMLInputElement>('input[name=backend]')) {
    radio.addEventListener('change', () => {
      const previous = loaded?.backend ?? 'wasm';
      load(radio.value as BrowserBackendName).catch((error: unknown) => {
        (document.querySelector<HTMLInputElement>(`input[name=backend][value=${previous}]`) as HTMLInputElement).checked = true;
        ui.backendNote.textContent = `${radio.value}: ${message(error)} (staying on ${previous})`;
        ui.backendNote.className = 'note error';
        setState(loaded === undefined ? 'error' : 'ready', loaded === undefined ? message(error) : `ready on ${previous}`);
      });
    });
  }
  ui.generate.addEventListener('click', () => void generate());
  const useFolder = (files: DroppedFile[]): void => {
    if (loaded === undefined || files.length === 0) return;
    const previous = routedFiles;
    routedFiles = droppedFiles(files);
    load(loaded.backend).catch((error: unknown) => {
      routedFiles = previous;
      setState('error', `cannot load the folder: ${message(error)}`);
    });
  };
  ui.routedFolder.addEventListener('change', () => useFolder([...(ui.routedFolder.files ?? [])]));
  ui.dropZone.addEventListener('dragover', (event) => {
    event.preventDefault();
    ui.dropZone.classList.add('over');
  });
  ui.dropZone.addEventListener('dragleave', () => ui.dropZone.classList.remove('over'));
  ui.dropZone.addEventListener('drop', (event) => {
    event.preventDefault();
    ui.dropZone.classList.remove('over');
    if (event.dataTransfer !== null) void filesFromDrop(event.dataTransfer).then(useFolder);
  });
  ui.train.addEventListener('click', () => {
    if (loaded === undefined) return;
    setState('running', 'training…');
    trainInPage(loaded.routed, loaded.tokenizer)
      .then(() => setState('ready', 'trained: generate to use the result'))
      .catch((error: unknown) => setState('error', message(error)));
  });
  try {
    await load(wanted);
  } catch (error) {
    setState('error', message(error));
    return;
  }
  if (query.get('run') === '1') await generate();
}

void start();
