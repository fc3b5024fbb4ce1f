import type { BlobStore } from '../store.js';
import { serve as serveTransfer, type CabServer, type ServeOptions as TransferServeOptions } from '../transfer/ws.js';
import { HttpFront, type HttpOptions } from './face.js';

export { DEFAULT_MAX_UPLOADS, DEFAULT_UPLOAD_EXPIRY_MS, DEFAULT_UPLOAD_STALL_MS, type HttpOptions } from './face.js';

/**
 * How `serve` serves: the transfer protocol's options (host, port, tokens,
 * TLS, limits) and the HTTP face's (HttpOptions: uploadExpiryMs, maxUploadSize,
 * maxUploads, uploadStallMs).
 */
export interface ServeOptions extends TransferServeOptions, HttpOptions {}

/**
 * Serves a store on one port: WebSocket upgrades speak the transfer
 * protocol (docs/PROTOCOL.md), every other request is plain HTTP
 * (docs/HTTP.md): GET and HEAD of blobs at /blobs/NAME with Range, and tus
 * 1.0 uploads at /files/. Both take the same tokens.
 */
export async function serve(store: BlobStore, options: ServeOptions = {}): Promise<CabServer> {
  const face = new HttpFront(store, options);
  try {
    return await serveTransfer(store, options, face);
  } catch (e) {
    await face.close();
    throw e;
  }
}
