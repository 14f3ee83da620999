/**
 * Writing an analysis: `analysis.json` (the report, checked against its schema first) and the plots
 * (`spectra.svg` and `overlap.svg` with a routed model, `curves.svg` with a search run), each written
 * atomically into the output directory. Returns the files written, in order.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { parseConfig } from '../config/parse.js';
import { writeFileAtomic } from '../formats/atomic-write.js';
import { toOutputError } from '../formats/output.js';
import { renderCurves } from './curves-svg.js';
import { renderOverlap } from './overlap-svg.js';
import { AnalysisReport } from './report.js';
import { renderSpectra } from './spectra-svg.js';

export const ANALYSIS_FILE = 'analysis.json';

export async function writeAnalysis(dir: string, report: AnalysisReport): Promise<string[]> {
  const checked = parseConfig(AnalysisReport, report, 'analysis report');
  try {
    await mkdir(dir, { recursive: true });
  } catch (error) {
    throw toOutputError(error, dir, 'create the output directory');
  }
  const files: [string, string][] = [[ANALYSIS_FILE, `${JSON.stringify(checked, null, 2)}\n`]];
  if (checked.routed !== undefined) files.push(['spectra.svg', renderSpectra(checked.routed)], ['overlap.svg', renderOverlap(checked.routed)]);
  if (checked.search !== undefined) files.push(['curves.svg', renderCurves(checked.search)]);
  const written: string[] = [];
  for (const [name, text] of files) {
    const path = join(dir, name);
    await writeFileAtomic(path, text);
    written.push(path);
  }
  return written;
}
