/** Dataset rows with images: the CLI commands refuse them by name (they have no vision encoder option yet). */
import { UsageError } from '../errors.js';
/** Image rows train and evaluate through the library's MultimodalModel; this command has no vision encoder. */
export function refuseImages(lines: readonly number[], source: string): void {
  if (lines.length === 0) return;
  throw new UsageError(`${source}: ${lines.length} line(s) carry an "image" (first: line ${lines[0]}), which this command cannot use`, {
    path: source,
    hint: 'The CLI has no vision encoder option yet; train and evaluate image rows with the library (MultimodalModel + Trainer, see README "Multimodal"), or remove the image fields',
  });
}
