// The public surface of nn/: modules, layers, initialisers and the optimizer.

export { Module, parameter, buffer, type StateValue } from './module.ts';
export { Linear, Embedding, LayerNorm, RMSNorm, Dropout, GELU, Conv2d } from './layers.ts';
export * as init from './init.ts';
export { AdamW, clipGradNorm, getLr, type ParamGroup, type AdamWOptions, type AdamWState } from './optim.ts';
