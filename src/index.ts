// routed-peft: the public API. Re-exports only; the built-in routers are in 'routed-peft/routers'.
export * from './errors.js';
export {
  selectBackend,
  getBackendReport,
  getBackendCapabilities,
  type BackendCapabilities,
  type BackendReport,
  type BackendPreference,
  type BackendName,
  type GpuAdapterReport,
} from './backend.js';

export { ModelConfig, headDim } from './base/config.js';
export { SITE_NAMES, FAMILY_SITES, FAMILY_SITE_GROUPS, type SiteName, type SiteGroup, type BlockName, type ModelFamily } from './base/sites.js';
export { Transformer, type ForwardOptions, type ForwardOutput, type PrefixEmbeddings } from './base/transformer.js';
export type { ForwardHooks, ForwardContext, AttentionPrefix, PerSiteHooks } from './base/hooks.js';
export { perSiteHooks } from './base/hooks.js';
export { KVCache } from './base/kv-cache.js';
export { loadBaseModel, buildTransformer, type LoadedModel, type CheckpointFormat } from './base/checkpoints/load-model.js';
export { generate, generateAsync, generateSteps, generateStepsAsync, padLeft, type GenerateOptions } from './base/generate.js';
export { SamplingOptions, sampleToken, seededRandom } from './base/sampling.js';
export { listWeightTensors, countParameters, type TransformerWeights } from './base/weights.js';

export * from './tokenizers/index.js';

export { parseSafetensors, serializeSafetensors, readSafetensorsFile, writeSafetensorsFile, decodeEntry, decodeFloat32 } from './formats/safetensors.js';
export type { SafetensorsFile, SafetensorsEntry, SafetensorsDtype, TensorToWrite } from './formats/safetensors.js';
export { readHfModelDirectory, readHfModelFrom } from './base/checkpoints/hf-model-dir.js';
export { loadBaseModelFrom } from './base/checkpoints/load-model.js';
export type { FileSource } from './formats/file-source.js';
export { readJson, readText, readBytes } from './formats/file-source.js';
export { directoryFiles } from './formats/node-files.js';
export { urlFiles, type UrlFilesOptions } from './formats/url-files.js';
export { memoryFiles, droppedFiles, type DroppedFile, type FileContent } from './formats/memory-files.js';
export { readSafetensorsFrom } from './formats/safetensors-source.js';
export { readLlama2cCheckpoint, parseLlama2cCheckpoint } from './base/checkpoints/llama2c-checkpoint.js';
export { readPeftAdapter, writePeftAdapter, peftTargetsToSites, readPeftAdapterFrom, encodePeftAdapter } from './io/peft-adapter.js';
export { parsePeftLoraConfig, PeftLoraConfig } from './io/peft-config.js';
export {
  saveRoutedModel,
  loadRoutedModel,
  readRoutedModelManifest,
  resolveRoutedModelDir,
  RoutedModelManifest,
  loadRoutedModelFrom,
  readRoutedManifestFrom,
} from './io/routed-model-dir.js';
export {
  MultimodalManifest,
  VisionReference,
  isMultimodalModelDir,
  loadMultimodalModel,
  readMultimodalManifest,
  saveMultimodalModel,
  visionWeightsHash,
  type SaveMultimodalOptions,
} from './io/multimodal-model-dir.js';
export { writeFileAtomic, replaceDirectoryAtomic } from './formats/atomic-write.js';
export { replaceDirectoryVersioned, resolveVersionedDirectory } from './formats/versioned-dir.js';
export { checkOutputDirectory } from './formats/output.js';

export type { AdapterKind, AdapterModule, AdapterPoint, DeltaModule, PrefixModule, ModulePlacement, ModuleContext } from './adapters/adapter.js';
export { ADAPTER_KINDS, AdapterSpec } from './adapters/registry.js';
export { TargetSpec } from './adapters/targets.js';
export { LoraConfig, LoraModule, loraScale } from './adapters/lora/index.js';
export { mergeLora, type LoraMergeEntry } from './adapters/lora/merge.js';
export { AdaloraConfig, AdaloraModule } from './adapters/adalora/index.js';
export { AdaloraBudget, type BudgetStep } from './adapters/adalora/controller.js';
export { budgetAt, allocate, type BudgetSchedule, type BudgetPoint } from './adapters/adalora/budget.js';
export { adaloraRanks, adaloraToLora, type AdaloraRankReport, type AdaloraModuleRank } from './adapters/adalora/export.js';
export { writeAdaloraOutputs, ADALORA_RANKS_FILE, ADALORA_LORA_DIR, type AdaloraOutputs } from './io/adalora-outputs.js';
export { analyzeRoutedModel } from './analysis/routed-analysis.js';
export { analyzeSearchRun, parseTrials, searchCurves, monotoneFrontier, TrialLine, TRIALS_FILE } from './analysis/search-curves.js';
export { measureModule, measureFactoredDelta, type MeasuredModule } from './analysis/module-measures.js';
export { effectiveRank, numericalRank, subspaceOverlap, RANK_TOLERANCE, type SubspaceOverlap } from './analysis/spectrum.js';
export { svd, lowRankSvd, householderQr, hostMatrix, type HostMatrix, type ThinSvd } from './analysis/linear-algebra.js';
export {
  AnalysisReport,
  RoutedAnalysis,
  SearchAnalysis,
  SiteAnalysis,
  ModuleMeasure,
  DeltaWeightMeasure,
  ScaleVectorMeasure,
  NotAnalysed,
  RouteOverlap,
  ExpertPairOverlap,
  MethodCurve,
  FrontierPoint,
} from './analysis/report.js';
export { writeAnalysis, ANALYSIS_FILE } from './analysis/write-report.js';
export { renderSpectra } from './analysis/spectra-svg.js';
export { renderOverlap } from './analysis/overlap-svg.js';
export { renderCurves } from './analysis/curves-svg.js';
export { formatAnalysisSummary } from './analysis/summary-table.js';

export { CompositionNode, RouteNode, AuxLossWeights, type CompositionInput } from './compose/spec.js';
export { AdaptedModelSpec, parseAdaptedModelSpec, checkSpecAgainstModel } from './compose/model-spec.js';
export { RegexError } from './config/safe-regex.js';
export { AdapterInstance } from './adapters/instance.js';

export type { Router, RouterKind, RouterInput, RouterShape, RoutingDecision } from './routing/router.js';
export { RouterRegistry } from './routing/router-registry.js';
export { loadBalancingLoss, routerZLoss, importanceLoss, routingEntropy, auxLossTotal } from './routing/aux-losses.js';
export { DeferredTraceReads, NULL_EXPERT, type RoutingTraceEntry } from './routing/trace.js';
export { registerTopKSlotsKernel, unregisterTopKSlotsKernel, type TopKSlotsKernel } from './routing/gating.js';
export { registerRoutedSiteKernel, unregisterRoutedSiteKernel, type RoutedSiteKernel } from './routing/fused-group.js';
export { registerLoraMixKernel, unregisterLoraMixKernel } from './adapters/lora/bank.js';

export { AdaptedModel, type AdaptedForwardOptions, type AdaptedGenerateOptions, type ParameterReport } from './model/adapted-model.js';
export { Selection, type SelectionInput } from './model/selection.js';
export {
  MultimodalModel,
  MultimodalSpec,
  VISION_SITES,
  type MultimodalForwardOptions,
  type MultimodalGenerateOptions,
  type RowImages,
} from './model/multimodal-model.js';
export { VisionEncoder, type VisionWeights } from './vision/encoder.js';
export { VisionConfig, visionConfigFromHf, visionConfigToHf } from './vision/encoder-config.js';
export { loadVisionEncoder, saveVisionEncoder, buildVisionEncoder } from './vision/load-encoder.js';
export { Projector, ProjectorSpec } from './vision/projector.js';
export { decodePng, readPngFile, encodePng, type PixelImage } from './vision/image.js';
export { ImageSpec, renderImageSpec, IMAGE_SIZE } from './vision/image-spec.js';
export type { RoutingOptions } from './routing/routing-pass.js';

export {
  Trainer,
  TrainerConfig,
  TrainObjective,
  type TrainBatch,
  type TrainerConfigInput,
  type StepReport,
  type TrainEvent,
  type TrainSummary,
  type GradientReplicas,
} from './train/trainer.js';
export { TrainingError } from './train/errors.js';
export { modelControllers, type TrainingController } from './train/controllers.js';
export { AdamW, type AdamWState } from './train/adamw.js';
export { paramGroups, type ParamGroupEntry } from './train/param-groups.js';
export { lrSchedule, annealingSchedule } from './train/schedule.js';
export { clipByGlobalNorm, globalNorm } from './train/clip.js';
export { causalLmLoss, classificationLoss, ClassificationHead } from './train/losses.js';
export { parseJsonlDataset } from './train/dataset.js';
export { readJsonlDataset } from './train/dataset-file.js';
export { DatasetError } from './train/dataset-errors.js';
export { tokenizeExamples, makeBatches, packExamples, splitTrainValidation } from './train/batches.js';
export { perplexity, exactMatch, accuracy, taskBreakdown, routingPurity, mutualInformation, expertLoad, baseRetention } from './train/metrics.js';

export { RoutedRuntime, type RoutedRuntimeOptions } from './runtime/runtime.js';
export { MemoryBudgetError } from './runtime/registry.js';
export { RuntimePool, type RuntimePoolOptions, type PoolBaseSource } from './runtime/pool.js';
export { DataParallelGroup, type DataParallelOptions } from './train/data-parallel.js';
export * from './runtime/types.js';
export { saveCheckpoint, loadCheckpoint, readCheckpoint, resumeTrainer, restoreTrainer, type TrainingState } from './train/checkpoint.js';
export { trainFromDataset } from './train/train-loop.js';
export { evaluateDataset } from './train/evaluate.js';

export { runSearch, type SearchOptions, type SearchResult, type SearchEvent } from './search/run-search.js';
export { SearchError } from './search/errors.js';
export { SEARCH_KINDS, type Candidate, type SearchKind } from './search/space.js';
export { readTrials, TrialRecord } from './search/trial-log.js';
