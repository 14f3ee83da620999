/** Dataset rows with images: a command running a text-only model refuses them by name. */
import { UsageError } from '../errors.js';
/** Image rows need a multimodal model (--vision DIR); a text-only model cannot read them. */
export function refuseImages(lines: readonly number[], source: string): void {
  if (lines.length === 0) return;
  throw new UsageError(`${source}: ${lines.length} line(s) carry an "image" (first: line ${lines[0]}), which a text-only model cannot read`, {
    path: source,
    hint: 'Pass --vision DIR (a vision encoder, e.g. demo-vision/) with a multimodal spec or directory, or remove the image fields',
  });
}
