/**
 * Server-sent events as OpenAI streams them: `data: <json>\n\n` per chunk and `data: [DONE]\n\n` at the end,
 * on a raw Node response the route has taken over from fastify (reply.hijack()).
 */
import type { ServerResponse } from 'node:http';

export class SseStream {
  private ended = false;

  constructor(private readonly response: ServerResponse) {}

  /** Sends the status line and headers (200, text/event-stream, no caching or proxy buffering). */
  open(): void {
    this.response.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    this.response.flushHeaders();
  }

  /** False once the client has gone or the stream was ended. */
  get writable(): boolean {
    return !this.ended && !this.response.destroyed && this.response.writable;
  }

  /** One `data:` event holding `payload` as JSON. */
  send(payload: unknown): void {
    if (this.writable) this.response.write(`data: ${JSON.stringify(payload)}\n\n`);
  }

  /** Writes `data: [DONE]` and ends the response. */
  done(): void {
    if (this.writable) this.response.write('data: [DONE]\n\n');
    this.end();
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    if (!this.response.destroyed) this.response.end();
  }
}
