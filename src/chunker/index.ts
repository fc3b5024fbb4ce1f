export { Chunker, chunk } from './fastcdc.js';
export { GEAR } from './gear.js';
export * from './params.js';
