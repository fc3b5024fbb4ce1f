export { CabError, ERROR_CODES, isCabError, type ErrorCode, type CabErrorData } from './errors.js';
export * from './hash/index.js';
export * from './chunker/index.js';
