/**
 * API-key check: when the server has a key, every request except GET /health (the load balancer's and
 * Kubernetes' probe) and GET /metrics (Prometheus' scrape; as in vLLM, the key guards the API, not the
 * monitoring endpoints — restrict those at the network level) must send `Authorization: Bearer <key>`. Keys are compared through their SHA-256
 * digests with timingSafeEqual, so the comparison takes the same time whatever the guess.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { ServerError } from './errors.js';

/** Paths that answer without a key. */
export const PUBLIC_PATHS: ReadonlySet<string> = new Set(['/health', '/metrics']);

const digest = (text: string): Buffer => createHash('sha256').update(text, 'utf8').digest();

export class ApiKeyCheck {
  private readonly expected: Buffer;

  constructor(key: string) {
    this.expected = digest(key);
  }

  /** Throws a 401 in OpenAI's shape unless `authorization` is `Bearer <the key>`. */
  check(authorization: string | undefined): void {
    const match = authorization === undefined ? null : /^Bearer\s+(.+)$/i.exec(authorization.trim());
    if (match === null) {
      throw new ServerError('missing API key: send the header "Authorization: Bearer <key>"', {
        status: 401,
        type: 'invalid_request_error',
        code: 'invalid_api_key',
        hint: 'Pass the key the server was started with (--api-key or ROUTED_PEFT_API_KEY)',
      });
    }
    if (!timingSafeEqual(digest(match[1] as string), this.expected)) {
      throw new ServerError('incorrect API key provided', {
        status: 401,
        type: 'invalid_request_error',
        code: 'invalid_api_key',
        hint: 'Pass the key the server was started with (--api-key or ROUTED_PEFT_API_KEY)',
      });
    }
  }
}
