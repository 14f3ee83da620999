/**
 * The set of router kinds a model may use. src/ never imports routers/: the built-in kinds are collected by
 * routers/index.ts (`builtinRouters()`), and users add their own with `register`. Duplicate names throw.
 */
import { parseConfig } from '../config/parse.js';
import { ConfigError } from '../errors.js';
import type { Router, RouterKind, RouterShape } from './router.js';

export class RouterRegistry {
  private readonly kinds = new Map<string, RouterKind>();

  constructor(kinds: readonly RouterKind[] = []) {
    for (const kind of kinds) this.register(kind);
  }

  register(kind: RouterKind): this {
    if (this.kinds.has(kind.kind)) {
      throw new ConfigError(`router kind '${kind.kind}' is already registered`, { hint: 'Give your router a distinct kind name' });
    }
    this.kinds.set(kind.kind, kind);
    return this;
  }

  has(kind: string): boolean {
    return this.kinds.has(kind);
  }

  get(kind: string, path = 'router.kind'): RouterKind {
    const found = this.kinds.get(kind);
    if (found === undefined) {
      throw new ConfigError(`unknown router kind ${JSON.stringify(kind)}`, {
        path,
        hint: `Known kinds: ${[...this.kinds.keys()].join(', ') || '(none registered)'}`,
      });
    }
    return found;
  }

  names(): string[] {
    return [...this.kinds.keys()];
  }

  /** Validates a router spec with its kind's schema and builds the router. */
  create(spec: { readonly kind: string } & Readonly<Record<string, unknown>>, shape: RouterShape, path: string): Router {
    const kind = this.get(spec.kind, `${path}.kind`);
    const config = parseConfig(kind.schema, spec, path);
    return kind.create(config, shape);
  }
}
