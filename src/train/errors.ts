/**
 * Errors of training: a run that cannot continue (too many consecutive non-finite steps, a model whose
 * base weights are trainable variables, a mis-shaped batch). Like every library error it says what happened
 * and how to fix it.
 */
import { RoutedPeftError } from '../errors.js';

/** Training cannot continue; the message names the cause and the fix. */
export class TrainingError extends RoutedPeftError {}
