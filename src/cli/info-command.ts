/**
 * `routed-peft info`: the package version, the Node.js version, and which tfjs backend loads on this
 * machine, with every backend that was tried and why it did or did not load.
 */
import * as tf from '@tensorflow/tfjs';
import { BACKEND_ENV_VAR, selectBackend } from '../backend.js';
import type { BackendReport } from '../backend.js';
import { packageInfo } from '../version.js';
import { parseStrict, toChoice } from './args.js';
import type { CliCommand } from './command.js';
import type { CliIo } from './io.js';

const FORMATS = ['text', 'json'] as const;

const usage = `Usage: routed-peft info [--format text|json]

Show the package version, the Node.js version and the tfjs backend chosen on this machine,
the threads it computes on (measured after loading), and each backend that was tried and why
it did or did not load.

Options:
  --format text|json   Output format (default text); json prints one object on stdout

Environment:
  ${BACKEND_ENV_VAR}  tensorflow | webgpu | wasm | cpu | auto (default auto; auto uses webgpu only on a hardware adapter)
`;

/** What `info --format json` prints. */
export interface InfoReport {
  readonly name: string;
  readonly version: string;
  readonly node: string;
  readonly platform: string;
  readonly arch: string;
  readonly tfjs: string;
  readonly backend: BackendReport;
}

export async function collectInfo(): Promise<InfoReport> {
  const backend = await selectBackend();
  const { name, version } = packageInfo();
  return {
    name,
    version,
    node: process.version,
    platform: process.platform,
    arch: process.arch,
    tfjs: tf.version.tfjs,
    backend,
  };
}

export function formatInfoText(info: InfoReport): string {
  const lines = [
    `${info.name} ${info.version}`,
    `node     ${info.node} (${info.platform} ${info.arch})`,
    `tfjs     ${info.tfjs}`,
    `backend  ${info.backend.chosen} (preference: ${info.backend.preference})`,
    `threads  ${formatThreads(info.backend)}`,
    'attempts:',
  ];
  const width = Math.max(...info.backend.attempts.map((a) => a.backend.length));
  for (const attempt of info.backend.attempts) {
    const status = attempt.ok ? 'loaded' : 'failed';
    const why = attempt.reason === undefined ? '' : `  ${attempt.reason}`;
    lines.push(`  ${attempt.backend.padEnd(width)}  ${status}  ${attempt.ms.toFixed(1).padStart(7)} ms${why}`);
    const adapter = attempt.adapter;
    if (adapter !== undefined) {
      const name = [adapter.vendor, adapter.device || adapter.description].filter((s) => s !== '').join(' ') || 'unnamed';
      lines.push(`    adapter  ${name}, architecture ${adapter.architecture || 'unknown'}${adapter.software ? ' (software)' : ''}`);
      const limits = Object.entries(adapter.limits).map(([k, v]) => `${k}=${v}`);
      if (limits.length > 0) lines.push(`    limits   ${limits.join(' ')}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

/** The wasm thread count as measured after loading (XNNPACK's pool and its running workers). */
export function formatThreads(backend: BackendReport): string {
  const t = backend.threads;
  if (t === undefined) return backend.chosen === 'cpu' ? '1 (the cpu backend is single-threaded)' : "the native backend's own (TensorFlow's thread pool)";
  const pool = t.build === 'threaded-simd' ? `XNNPACK pool of ${t.used}: this thread + ${t.workers} worker(s)` : 'single-threaded SIMD build';
  const asked = t.requested === t.used ? '' : `; asked ${t.requested}`;
  return `${t.used} (${pool}${asked})${t.note === undefined ? '' : ` — ${t.note}`}`;
}

export const infoCommand: CliCommand = {
  name: 'info',
  summary: 'Show the version, Node.js and which tfjs backend loads here (and why others do not)',
  usage,
  async run(args: string[], io: CliIo): Promise<number> {
    const { values } = parseStrict(args, { format: { type: 'string', default: 'text' } });
    const format = toChoice('format', values.format, FORMATS);
    const info = await collectInfo();
    io.stdout(format === 'json' ? `${JSON.stringify(info)}\n` : formatInfoText(info));
    return 0;
  },
};
