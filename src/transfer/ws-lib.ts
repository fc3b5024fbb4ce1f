// ws, the one place it is loaded. ws is CommonJS: imported, it takes the ESM
// loader about 30 ms to load (every file of it is lexed for its exports);
// required, under 10 ms. The CLI's bundle (scripts/bundle.mjs) puts a static
// import of ws in this module's place, so that ws is bundled with the rest.
import { createRequire } from 'node:module';
import type * as WsModule from 'ws';

export const { WebSocket, WebSocketServer } = createRequire(import.meta.url)('ws') as typeof WsModule;
export type WebSocket = WsModule.WebSocket;
