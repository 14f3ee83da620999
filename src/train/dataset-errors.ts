/** Errors raised while reading or preparing training data. */
import { RoutedPeftError } from '../errors.js';

/**
 * A dataset file is unusable: too many malformed lines, no examples at all, or kinds that cannot be trained
 * together (language-modelling lines mixed with labelled classification lines). `path` names the file.
 */
export class DatasetError extends RoutedPeftError {}
