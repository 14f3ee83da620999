/**
 * Finding a Chromium for the browser tests: `CHROMIUM_PATH`, else Debian's `chromium` (what `.ci/run`
 * installs) or a `chromium-browser` / `google-chrome` on the usual paths. Tests skip with this note when
 * none is found.
 */
import { existsSync } from 'node:fs';

const CANDIDATES = ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome', '/usr/bin/google-chrome-stable'];

export const chromiumPath: string | undefined = [process.env['CHROMIUM_PATH'], ...CANDIDATES].find(
  (path): path is string => path !== undefined && path !== '' && existsSync(path),
);

export const CHROMIUM_SKIP_NOTE = chromiumPath === undefined ? ' — SKIPPED: no Chromium found (apt-get install chromium, or set CHROMIUM_PATH)' : '';
