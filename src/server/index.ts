// routed-peft/server: the OpenAI-compatible HTTP server, for embedding it in your own process
// (`routed-peft serve` is the same server behind a command). A subpath of its own, so importing the library
// does not load the HTTP stack.
export { RoutedServer, type RoutedServerOptions, type ListenOptions } from './server.js';
export { ServerError, type OpenAiErrorBody, type ErrorType } from './errors.js';
export { poolServingRuntime, sumStats, type PoolServing, type ServingRuntime } from './serving-runtime.js';
export { loadChatTemplate, plainChatTemplate, jinjaChatTemplate, type ChatTemplate, type TemplateMessage } from './chat-template.js';
export {
  CompletionRequest,
  ChatCompletionRequest,
  ChatMessage,
  LoadAdapterRequest,
  UnloadAdapterRequest,
  RoutedPeftExtension,
  SCHEMA_LIMITS,
} from './schemas.js';
export type { ServerMetrics } from './metrics.js';
export type { ModelCard } from './targets.js';
