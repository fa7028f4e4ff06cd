/**
 * nysact: the NysAct optimizer (Nyström-approximated activation-covariance preconditioning) on a
 * native backend. Everything public is exported from here.
 */
export { NysAct } from './nysact.js';
export type {
  FallbackInfo,
  FallbackStatus,
  LayerStateInfo,
  LayerUpdate,
  ObserveOptions,
  StepOptions,
  StepArray,
  StepResult,
} from './nysact.js';
export { DEFAULT_OPTIONS, layerKey } from './options.js';
export type {
  BackendRequest,
  Conv2dLayerSpec,
  Conv2dOptions,
  DenseLayerSpec,
  DenseLayout,
  DenseOptions,
  LayerSpec,
  NonFiniteMode,
  NysActOptions,
  NystromVariant,
  Padding,
  ParamLayerSpec,
  ParamOptions,
  ResolvedNysActOptions,
  SketchKind,
  SketchOverrides,
  WeightDecayMode,
} from './options.js';
export { decodeState, encodeState } from './state.js';
export type { LayerState, NysActLayerStateEntry, NysActState } from './state.js';
export { ErrorCodes, NysActError } from './errors.js';
export type { InvalidArgumentRangeError, InvalidArgumentTypeError, NysActErrorCode } from './errors.js';
export { liveObjects, nativeInfo, setThreads } from './runtime.js';
export type { BackendInfo, LiveObjects, NativeInfo } from './runtime.js';
export { DeviceTensor, MAX_BUFFER_LENGTH, hostBuffer, tensor } from './tensor.js';
export type { BufferOptions } from './tensor.js';
export { NATIVE_INTERFACE_VERSION, loadNative } from './loader.js';
export type * from './native.js';
