/**
 * `routed-peft inspect`: parameter accounting for a base with adapters or a routed model — trainable and
 * frozen counts, the trainable fraction and bytes, per adapter and router.
 */
import { UsageError } from '../errors.js';
import { parseStrict, toChoice } from './args.js';
import type { CliCommand, CliContext } from './command.js';
import type { CliIo } from './io.js';
import { ADAPTER_FLAGS, ADAPTER_USAGE, MODEL_FLAGS, MODEL_USAGE, loadCliAdapters, loadCliModel } from './model-options.js';
import { formatParameterReport } from './parameter-report.js';

const usage = `Usage: routed-peft inspect --model PATH (--adapter DIR ... | --routed DIR) [--format text|json]

Count trainable and frozen parameters: per adapter and router, the trainable fraction and bytes.

Options:
${MODEL_USAGE}
${ADAPTER_USAGE}
  --format text|json   Output format (default text)
`;

export const inspectCommand: CliCommand = {
  name: 'inspect',
  summary: 'Count trainable and frozen parameters of adapters or a routed model',
  usage,
  async run(args: string[], io: CliIo, context: CliContext): Promise<number> {
    const { values } = parseStrict(args, { ...MODEL_FLAGS, ...ADAPTER_FLAGS, format: { type: 'string', default: 'text' } });
    const format = toChoice('format', values.format, ['text', 'json'] as const);
    if (values.routed === undefined && (values.adapter ?? []).length === 0) throw new UsageError('give --adapter DIR or --routed DIR to inspect');
    const loaded = await loadCliModel(values);
    try {
      const attached = await loadCliAdapters(loaded, values, context, io);
      try {
        const report = attached.model?.parameterReport();
        if (report === undefined) throw new UsageError('nothing to inspect');
        io.stdout(format === 'json' ? `${JSON.stringify(report)}\n` : formatParameterReport(report));
      } finally {
        attached.model?.dispose();
      }
      return 0;
    } finally {
      loaded.model.dispose();
    }
  },
};
