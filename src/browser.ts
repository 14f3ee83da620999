// routed-peft in a browser (package.json "browser" condition): the library without Node built-ins. Files
// come in through a FileSource — URLs (`urlFiles`), dropped or picked files (`droppedFiles`), bytes in
// memory (`memoryFiles`) — and the same loaders as in Node read them. Re-exports only.
export * from './errors.js';
export { getBackendCapabilities, readSync, requireSyncReads, type BackendCapabilities } from './backend-capabilities.js';
export {
  selectBrowserBackend,
  webgpuAvailability,
  BROWSER_BACKENDS,
  type BrowserBackendName,
  type BrowserBackendOptions,
  type BrowserBackendReport,
  type BrowserGpuAdapter,
} from './browser-backend.js';

export type { FileSource } from './formats/file-source.js';
export { readJson, readText, readBytes } from './formats/file-source.js';
export { urlFiles, type UrlFilesOptions } from './formats/url-files.js';
export { memoryFiles, droppedFiles, type DroppedFile, type FileContent } from './formats/memory-files.js';

export { ModelConfig, headDim } from './base/config.js';
export { SITE_NAMES, FAMILY_SITES, FAMILY_SITE_GROUPS, type SiteName, type SiteGroup, type BlockName, type ModelFamily } from './base/sites.js';
export { Transformer, type ForwardOptions, type ForwardOutput } from './base/transformer.js';
export type { ForwardHooks, ForwardContext, AttentionPrefix, PerSiteHooks } from './base/hooks.js';
export { perSiteHooks } from './base/hooks.js';
export { KVCache } from './base/kv-cache.js';
export { loadBaseModelFrom, buildTransformer, type LoadedModel, type CheckpointFormat } from './base/checkpoints/load-model-source.js';
export { readHfModelFrom, modelConfigFromHf } from './base/checkpoints/hf-model-source.js';
export { generate, generateAsync, generateSteps, generateStepsAsync, padLeft, type GenerateOptions } from './base/generate.js';
export { SamplingOptions, sampleToken, seededRandom } from './base/sampling.js';
export { listWeightTensors, countParameters, type TransformerWeights } from './base/weights.js';

export type { EncodeOptions, Tokenizer } from './tokenizers/tokenizer.js';
export { HfTokenizer, type HfTokenizerOptions } from './tokenizers/hf-tokenizer.js';

export { parseSafetensors, serializeSafetensors, decodeEntry, decodeFloat32 } from './formats/safetensors-codec.js';
export type { SafetensorsFile, SafetensorsEntry, SafetensorsDtype, TensorToWrite } from './formats/safetensors-codec.js';
export { readSafetensorsFrom } from './formats/safetensors-source.js';
export { readPeftAdapterFrom, encodePeftAdapter, peftTargetsToSites, type ReadPeftOptions, type ReadPeftResult } from './io/peft-lora.js';
export { parsePeftLoraConfig, PeftLoraConfig } from './io/peft-config.js';
export { loadRoutedModelFrom, readRoutedManifestFrom, RoutedModelManifest, MANIFEST_FILE } from './io/routed-model-source.js';

export type { AdapterKind, AdapterModule, AdapterPoint, DeltaModule, PrefixModule, ModulePlacement, ModuleContext } from './adapters/adapter.js';
export { ADAPTER_KINDS, AdapterSpec } from './adapters/registry.js';
export { TargetSpec } from './adapters/targets.js';
export { LoraConfig, LoraModule, loraScale } from './adapters/lora/index.js';
export { mergeLora, type LoraMergeEntry } from './adapters/lora/merge.js';

export { CompositionNode, RouteNode, AuxLossWeights, type CompositionInput } from './compose/spec.js';
export { AdaptedModelSpec, parseAdaptedModelSpec, checkSpecAgainstModel } from './compose/model-spec.js';
export { RegexError } from './config/safe-regex.js';
export { AdapterInstance } from './adapters/instance.js';

export type { Router, RouterKind, RouterInput, RouterShape, RoutingDecision } from './routing/router.js';
export { RouterRegistry } from './routing/router-registry.js';
export { loadBalancingLoss, routerZLoss, importanceLoss, routingEntropy, auxLossTotal } from './routing/aux-losses.js';
export { NULL_EXPERT, type RoutingTraceEntry } from './routing/trace.js';

export { AdaptedModel, type AdaptedForwardOptions, type AdaptedGenerateOptions, type ParameterReport } from './model/adapted-model.js';
export { Selection, type SelectionInput } from './model/selection.js';
export type { RoutingOptions } from './routing/routing-pass.js';

export { Trainer, TrainerConfig, TrainObjective, type TrainBatch, type TrainerConfigInput, type StepReport, type TrainEvent } from './train/trainer.js';
export { parseJsonlDataset } from './train/dataset.js';
export { tokenizeExamples, makeBatches, packExamples, splitTrainValidation } from './train/batches.js';
