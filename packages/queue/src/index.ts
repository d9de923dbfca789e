/**
 * @ferry/queue — queue names, job payloads, the flow builder, connections,
 * push state and progress events, and cluster-wide coordination in Redis.
 */
export * from './types';
export {
  createConnection,
  blockingDuplicate,
  isCluster,
  nodeFor,
  waitReady,
  type ConnectionOptions,
  type ConnectionRole,
  type RedisConnection,
  type RedisNode,
  type RedisTarget,
} from './connection';
export {
  createQueues,
  enqueuePush,
  addUploadChild,
  addLayerChildren,
  resolveJobId,
  type LayerRequest,
  removePushJobs,
  assembleJobId,
  imageLookupJobId,
  lookupJobId,
  uploadJobId,
  assertPushId,
  DEFAULT_JOB_POLICY,
  FERRY_BACKOFF_TYPE,
  UNLIMITED_ATTEMPTS,
  ferryBackoffMs,
  type FerryQueues,
  type CreateQueuesOptions,
  type EnqueuePushOptions,
  type JobPolicy,
} from './queues';
export {
  PushStore,
  EventReader,
  isEventId,
  layoutToLayers,
  type PushStoreOptions,
  type CreatePushOptions,
  type IdempotencyResult,
  type TransitionResult,
  type BudgetReading,
} from './push-store';
export {
  Semaphore,
  SemaphoreTimeoutError,
  type SemaphoreOptions,
  type AcquireOptions,
  type Permit,
  type PermitControl,
} from './semaphore';
export {
  Lease,
  type LeaseHolder,
  type LeaseOptions,
  type LeaseRef,
  type LeaseWrite,
  type KeepOptions,
} from './lease';
export { LostError, type Keeper } from './keeper';
export { SigningStore, type KeyKind, type PublishedKey, type PublishResult } from './signing-store';
export {
  BlobIndex,
  type BlobIndexOptions,
  type BlobRecord,
  type CompressedRecord,
  type RecordUploadOptions,
} from './blobs';
export { EventHub, type EventHubOptions } from './event-hub';
export {
  Metrics,
  METRIC_DEFS,
  type MetricName,
  type CounterName,
  type HistogramName,
  type MetricSnapshot,
  type Labels,
} from './metrics';
export { Keys, hashTag, keySlot } from './keys';
export {
  openQueueContext,
  type QueueConfig,
  type QueueContext,
  type QueueContextOptions,
} from './context';
