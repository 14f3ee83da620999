/**
 * Text rendering of a ParameterReport (trainable and frozen counts, per adapter and router).
 */
import type { ParameterReport } from '../model/adapted-model.js';

function bytes(n: number): string {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(2)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

export function formatParameterReport(report: ParameterReport): string {
  const rows: string[][] = [['', 'kind', 'modules', 'trainable', 'bytes']];
  for (const a of report.adapters) rows.push([a.name, a.kind, String(a.modules), a.trainable.toLocaleString('en-US'), bytes(a.bytes)]);
  for (const r of report.routers) rows.push([`route ${r.route}`, `router ${r.kind}`, String(r.routers), r.trainable.toLocaleString('en-US'), bytes(r.bytes)]);
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((row) => (row[i] ?? '').length))) ?? [];
  const lines = rows.map((row) => row.map((cell, i) => (i >= 2 ? cell.padStart(widths[i] ?? 0) : cell.padEnd(widths[i] ?? 0))).join('  '));
  lines.push(
    `trainable ${report.trainable.toLocaleString('en-US')} (${bytes(report.trainableBytes)}) of ${(report.trainable + report.frozen).toLocaleString('en-US')} parameters: ${(100 * report.trainableFraction).toFixed(4)}%`,
    `frozen    ${report.frozen.toLocaleString('en-US')} (${bytes(report.frozenBytes)})`,
  );
  return `${lines.join('\n')}\n`;
}
