/**
 * `routed-peft web`: serves the browser page (dist/web/, built by `npm run build:web`) with a base model
 * directory at /models/base/ and a routed-model directory at /models/routed/ (defaults: the shipped demo
 * base and the routed model trained on it for the page), until SIGTERM or SIGINT.
 */
import { existsSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseStrict, toInt } from './args.js';
import type { CliCommand } from './command.js';
import type { CliIo } from './io.js';
import { UsageError } from '../errors.js';
import { resolveRoutedModelDir } from '../io/routed-model-dir.js';
import { serveStatic } from '../server/static-site.js';

/** This package's root (from src/cli/ or dist/src/cli/). */
function packageRoot(): string {
  for (const up of ['../../', '../../../']) {
    const dir = fileURLToPath(new URL(up, import.meta.url));
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'demo-model'))) return dir;
  }
  return process.cwd();
}

const usage = `Usage: routed-peft web [--model DIR] [--routed DIR] [--page DIR] [--host 127.0.0.1] [--port 8080]

Serve the browser page: it loads the base and the routed model from this server, generates text token by
token on wasm or webgpu, and draws which experts each layer chose for each token.

Options:
  --model DIR    Hugging Face model directory served at /models/base/ (default: the shipped demo-model/)
  --routed DIR   Routed-model directory served at /models/routed/ (default: web/models/routed-demo/, trained
                 on the demo base by scripts/make-web-routed-model.ts)
  --page DIR     The built page (default: dist/web/, made by \`npm run build:web\`)
  --host HOST    Address to listen on (default 127.0.0.1)
  --port N       Port (default 8080; 0 picks a free one)
`;

function directory(flag: string, dir: string, fix: string): string {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new UsageError(`--${flag}: ${JSON.stringify(dir)} is not a directory. ${fix}`);
  return resolve(dir);
}

export const webCommand: CliCommand = {
  name: 'web',
  summary: 'Serve the browser page with a base and a routed model',
  usage,
  async run(args: string[], io: CliIo): Promise<number> {
    const root = packageRoot();
    const { values } = parseStrict(args, {
      model: { type: 'string', default: join(root, 'demo-model') },
      routed: { type: 'string', default: join(root, 'web', 'models', 'routed-demo') },
      page: { type: 'string', default: join(root, 'dist', 'web') },
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '8080' },
    });
    const port = toInt('port', values.port, { min: 0, max: 65535 });
    const page = directory('page', values.page, 'Build the page first: npm run build:web');
    if (!existsSync(join(page, 'index.html'))) throw new UsageError(`--page ${page} has no index.html. Build the page first: npm run build:web`);
    const model = directory('model', values.model, 'Pass a Hugging Face model directory (config.json + model.safetensors)');
    const routed = resolveRoutedModelDir(directory('routed', values.routed, 'Pass a routed-model directory (routed-peft.json)'));
    const { server, url } = await serveStatic(
      [
        { prefix: '/', dir: page },
        { prefix: '/models/base/', dir: model },
        { prefix: '/models/routed/', dir: routed },
      ],
      { host: values.host, port },
    );
    io.stderr(`routed-peft web: ${url} (base ${model}, routed ${routed})\n`);
    await new Promise<void>((done) => {
      const onSignal = (): void => {
        process.off('SIGTERM', onSignal);
        process.off('SIGINT', onSignal);
        done();
      };
      process.on('SIGTERM', onSignal);
      process.on('SIGINT', onSignal);
    });
    await new Promise<void>((done) => server.close(() => done()));
    return 0;
  },
};
