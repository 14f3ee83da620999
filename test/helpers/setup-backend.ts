// Every test file runs on the backend named by ROUTED_PEFT_BACKEND (default: wasm, the fastest one installable here),
// selected through src/backend.ts exactly as the library and CLI select it.
import { BACKEND_ENV_VAR, selectBackend } from '../../src/backend.js';

const wanted = process.env[BACKEND_ENV_VAR];
await selectBackend({ env: { [BACKEND_ENV_VAR]: wanted === undefined || wanted === '' ? 'wasm' : wanted } });
