/**
 * Prometheus metrics (prom-client), on a registry of the server's own (several servers in one process do not
 * mix their numbers). Names start with `routed_peft_`; the `model` label is a served target name (`base`, an
 * adapter or a routed model) — never a name a client made up, so label values stay bounded.
 *
 *   routed_peft_requests_total{endpoint,model,status}       requests answered, by HTTP status
 *   routed_peft_prompt_tokens_total{model}                  prompt tokens of admitted requests
 *   routed_peft_generation_tokens_total{model}              tokens generated
 *   routed_peft_request_duration_seconds{endpoint,model}    time from arrival to the last byte (histogram)
 *   routed_peft_time_to_first_token_seconds{model}          time from arrival to the first token (histogram)
 *   routed_peft_queue_depth / routed_peft_running_requests  admission state, read at scrape time
 *   routed_peft_rejected_total{reason}                      429s (queue_full) and 503s (draining)
 *   routed_peft_cancelled_total{model,stage}                clients gone before the answer: queued, or running
 *                                                           (the runtime ended the generation as cancelled)
 *   routed_peft_batch_rows{kind} / routed_peft_batch_groups{kind}   rows and distinct selections per runtime pass
 *   routed_peft_target_evictions_total, _target_reloads_total, _target_swaps_total, _resident_bytes, _targets
 *   routed_peft_tensors / routed_peft_tensor_bytes          live tfjs tensors (flat when idle: a rise is a leak)
 * plus prom-client's default process metrics (CPU, memory, event-loop lag) under the same prefix.
 */
import * as tf from '@tensorflow/tfjs';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { RuntimeStats } from '../runtime/types.js';

export interface MetricsSources {
  readonly queued: () => number;
  readonly running: () => number;
  readonly stats: () => RuntimeStats;
}

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128];

export class ServerMetrics {
  readonly registry = new Registry();
  readonly requests: Counter<'endpoint' | 'model' | 'status'>;
  readonly promptTokens: Counter<'model'>;
  readonly generationTokens: Counter<'model'>;
  readonly duration: Histogram<'endpoint' | 'model'>;
  readonly firstToken: Histogram<'model'>;
  readonly rejected: Counter<'reason'>;
  readonly cancelled: Counter<'model' | 'stage'>;
  readonly batchRows: Histogram<'kind'>;
  readonly batchGroups: Histogram<'kind'>;

  constructor(sources: MetricsSources) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'routed_peft_' });
    this.requests = new Counter({
      name: 'routed_peft_requests_total',
      help: 'Requests answered, by endpoint, target and HTTP status',
      labelNames: ['endpoint', 'model', 'status'],
      registers,
    });
    this.promptTokens = new Counter({ name: 'routed_peft_prompt_tokens_total', help: 'Prompt tokens of admitted requests', labelNames: ['model'], registers });
    this.generationTokens = new Counter({ name: 'routed_peft_generation_tokens_total', help: 'Tokens generated', labelNames: ['model'], registers });
    this.duration = new Histogram({
      name: 'routed_peft_request_duration_seconds',
      help: 'Time from a request arriving to its last byte, by endpoint and target',
      labelNames: ['endpoint', 'model'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.firstToken = new Histogram({
      name: 'routed_peft_time_to_first_token_seconds',
      help: 'Time from a request arriving to its first generated token, by target',
      labelNames: ['model'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.rejected = new Counter({
      name: 'routed_peft_rejected_total',
      help: 'Requests refused: queue_full (429) or draining (503)',
      labelNames: ['reason'],
      registers,
    });
    this.cancelled = new Counter({
      name: 'routed_peft_cancelled_total',
      help: 'Requests whose client disconnected before the answer: stage=queued (left the queue) or running (the runtime cancelled the generation)',
      labelNames: ['model', 'stage'],
      registers,
    });
    this.batchRows = new Histogram({ name: 'routed_peft_batch_rows', help: 'Rows per runtime pass', labelNames: ['kind'], buckets: BATCH_BUCKETS, registers });
    this.batchGroups = new Histogram({
      name: 'routed_peft_batch_groups',
      help: 'Distinct selections sharing a runtime pass',
      labelNames: ['kind'],
      buckets: BATCH_BUCKETS,
      registers,
    });
    new Gauge({
      name: 'routed_peft_queue_depth',
      help: 'Requests waiting for a slot',
      registers,
      collect() {
        this.set(sources.queued());
      },
    });
    new Gauge({
      name: 'routed_peft_running_requests',
      help: 'Requests holding a slot',
      registers,
      collect() {
        this.set(sources.running());
      },
    });
    const fromStats = (name: string, help: string, read: (s: RuntimeStats) => number): void => {
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(read(sources.stats()));
        },
      });
    };
    /** A runtime counter (monotonic since start) exposed as a Prometheus counter. */
    const counterFromStats = (name: string, help: string, read: (s: RuntimeStats) => number): void => {
      let seen = 0;
      new Counter({
        name,
        help,
        registers,
        collect() {
          const now = read(sources.stats());
          if (now > seen) this.inc(now - seen);
          seen = now;
        },
      });
    };
    counterFromStats('routed_peft_target_evictions_total', 'Targets evicted to stay under the memory budget (since start)', (s) => s.evictions);
    counterFromStats('routed_peft_target_reloads_total', 'Evicted targets reloaded on demand (since start)', (s) => s.reloads);
    counterFromStats('routed_peft_target_swaps_total', 'Hot swaps (since start)', (s) => s.swaps);
    fromStats('routed_peft_resident_bytes', 'Bytes of resident target weights', (s) => s.residentBytes);
    new Gauge({
      name: 'routed_peft_tensors',
      help: 'Live tfjs tensors in this process (steady between requests; growth is a leak)',
      registers,
      collect() {
        this.set(tf.memory().numTensors);
      },
    });
    new Gauge({
      name: 'routed_peft_tensor_bytes',
      help: 'Bytes held by live tfjs tensors in this process',
      registers,
      collect() {
        this.set(tf.memory().numBytes);
      },
    });
    fromStats('routed_peft_targets', 'Loaded targets (adapters and routed models)', (s) => s.targets.length);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
}
