// Starts data-parallel-worker.ts from the TypeScript sources (tests, `node --import tsx`): loader hooks are
// per thread, so the worker registers tsx's own before importing the worker file. Built packages start the
// compiled data-parallel-worker.js directly and never load this file.
import { register } from 'tsx/esm/api';

register();
await import('./data-parallel-worker.ts');
