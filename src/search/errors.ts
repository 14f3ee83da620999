/**
 * Errors of the architecture search: a search directory that does not fit the run (other settings, a
 * malformed trial log), or a search space with no candidate inside the budget.
 */
import { RoutedPeftError } from '../errors.js';

export class SearchError extends RoutedPeftError {}
