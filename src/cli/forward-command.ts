/**
 * `routed-peft forward`: one forward pass over given token ids; prints the logits of every position.
 */
import { parseStrict, toChoice, toIntList } from './args.js';
import type { CliCommand, CliContext } from './command.js';
import type { CliIo } from './io.js';
import { ADAPTER_FLAGS, ADAPTER_USAGE, MODEL_FLAGS, MODEL_USAGE, loadCliAdapters, loadCliModel } from './model-options.js';
import { NonFiniteError, UsageError } from '../errors.js';
import { firstNonFinite } from '../formats/finite.js';

const usage = `Usage: routed-peft forward --model PATH --ids 1,2,3 [--adapter DIR ... | --routed DIR] [--format json]

Run one forward pass and print {"logits": [[...], ...]}: one row of vocabulary logits per position.
A logit that is NaN or ±Infinity fails with exit 1 (with --allow-non-finite it prints as null).

Options:
${MODEL_USAGE}
${ADAPTER_USAGE}
  --ids LIST           Token ids, comma-separated
  --format json        Output format (json only)
`;

export const forwardCommand: CliCommand = {
  name: 'forward',
  summary: 'Print the logits of one forward pass over token ids',
  usage,
  async run(args: string[], io: CliIo, context: CliContext): Promise<number> {
    const { values } = parseStrict(args, { ...MODEL_FLAGS, ...ADAPTER_FLAGS, ids: { type: 'string' }, format: { type: 'string', default: 'json' } });
    toChoice('format', values.format, ['json'] as const);
    if (values.ids === undefined) throw new UsageError('--ids is required');
    const ids = toIntList('ids', values.ids, { min: 0 });
    const loaded = await loadCliModel(values);
    let attached: Awaited<ReturnType<typeof loadCliAdapters>> | undefined;
    try {
      attached = await loadCliAdapters(loaded, values, context, io);
      const logits =
        attached.model === undefined ? loaded.model.forward({ ids: [ids] }) : attached.model.forward({ ids: [ids], routing: { taskIds: attached.taskIds } }); // [1, T, V]
      const flat = (await logits.data()) as Float32Array;
      const vocab = logits.shape[2] as number;
      const rows = (await logits.array()) as number[][][];
      logits.dispose();
      const bad = firstNonFinite(flat);
      if (bad >= 0) {
        let count = 0;
        for (const v of flat) if (!Number.isFinite(v)) count++;
        const where = `logits[${Math.floor(bad / vocab)}][${bad % vocab}]`;
        const message = `the forward pass produced ${count} non-finite logit${count === 1 ? '' : 's'} of ${flat.length} (first: ${where} = ${flat[bad]})`;
        if (!loaded.allowNonFinite) {
          throw new NonFiniteError(message, {
            path: where,
            tensor: 'logits',
            index: bad,
            hint: 'The model or its adapters hold extreme values (check them with inspect); pass --allow-non-finite to print them as null anyway',
          });
        }
        io.stderr(`warning: ${message}; printed as null\n`);
      }
      io.stdout(`${JSON.stringify({ logits: rows[0] })}\n`);
      return 0;
    } finally {
      attached?.model?.dispose();
      loaded.model.dispose();
    }
  },
};
