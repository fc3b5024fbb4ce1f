import { GEAR } from './gear.js';

/**
 * The chunker's hot loop (fastcdc.ts, `lanes`) as WebAssembly: the same
 * four-lane gear scan, without the bounds check that every typed-array
 * access costs in JavaScript. The module is small enough to write out here
 * instruction by instruction (the listing beside the bytes), so that it
 * needs no toolchain and can be read and checked like the rest.
 *
 * Memory: the gear table at 0 (256 little-endian i32), the fp out at
 * FP_AT, the bytes to scan from DATA_AT (at most DATA_MAX of them), and
 * from SLOTS_AT SLOT_COUNT slots of SLOT_BYTES, where blocks of input are
 * read and then scanned where they lie (src/hash/blocks.ts). The memory is
 * shared (a SharedArrayBuffer) where that is available, so that the
 * hashing thread reads the same blocks without a copy.
 *
 *   (func $lanes (param $j i32) (param $stop i32) (param $mask i32) (param $fp i32) (result i32)
 *     (local $f0 $f1 $f2 $f3 $t $a1 $a2 $a3 $k i32)
 *     block $done
 *       loop $win
 *         (br_if $done (i32.lt_s (i32.sub $stop $j) 2048))      ;; not a whole window left
 *         $a1 = $j + 512; $a2 = $j + 1024; $a3 = $j + 1536
 *         $f1 = $f2 = $f3 = 0; $k = -32
 *         loop $warm                                             ;; lanes 1-3: the 32 bytes before them
 *           $fN = ($fN << 1) + gear[mem8[$aN + $k]]   (N = 1, 2, 3)
 *           (br_if $warm ($k = $k + 1))                          ;; until $k is 0
 *         end
 *         $f0 = $fp; $t = 0
 *         block $hit
 *           loop $inner
 *             $fN = ($fN << 1) + gear[mem8[$aN + $t]]  (N = 0..3, $a0 = $j)
 *             (br_if $hit (i32.eqz (i32.and $fN $mask)))         ;; after each
 *             (br_if $inner (i32.ne ($t = $t + 1) 512))
 *           end
 *           $fp = $f3; $j = $j + 2048
 *           br $win
 *         end
 *         br $done                                               ;; a cut in this window: $j is its start
 *       end
 *     end
 *     (i32.store FP_AT $fp)
 *     $j)
 */
export const DATA_AT = 1088;
export const DATA_MAX = 1024 * 1024;
/** Bytes per lane; a window is four lanes. The same as fastcdc.ts's LANE. */
export const WASM_LANE = 512;
const FP_AT = 1024;
const PAGE = 65536;
/** Slots for blocks of input, their size, and where the first starts (a page boundary after the data). */
export const SLOT_COUNT = 16;
export const SLOT_BYTES = 1024 * 1024;
export const SLOTS_AT = Math.ceil((DATA_AT + DATA_MAX) / PAGE) * PAGE;
const PAGES = (SLOTS_AT + SLOT_COUNT * SLOT_BYTES) / PAGE;

// Instructions used (WebAssembly binary format, section 5.4).
const BLOCK = 0x02, LOOP = 0x03, END = 0x0b, BR = 0x0c, BR_IF = 0x0d, VOID = 0x40;
const GET = 0x20, SET = 0x21, TEE = 0x22;
const LOAD = 0x28, LOAD8_U = 0x2d, STORE = 0x36;
const CONST = 0x41, EQZ = 0x45, NE = 0x47, LT_S = 0x48, ADD = 0x6a, SUB = 0x6b, AND = 0x71, SHL = 0x74;

/** Signed LEB128 (i32.const immediates). */
function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) return [...out, b];
    out.push(b | 0x80);
  }
}

/** Unsigned LEB128 (sizes, counts). */
function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    const b = n & 0x7f;
    n >>>= 7;
    out.push(n ? b | 0x80 : b);
  } while (n);
  return out;
}

// Locals: the four params, then the nine locals.
const J = 0, STOP = 1, MASK = 2, FP = 3, F0 = 4, F1 = 5, F2 = 6, F3 = 7, T = 8, A1 = 9, A2 = 10, A3 = 11, K = 12;

/** $f = ($f << 1) + gear[mem8[$base + $idx]], leaving $f on the stack when `tee`. */
function step(f: number, base: number, idx: number, tee: boolean): number[] {
  return [GET, f, CONST, 1, SHL, GET, base, GET, idx, ADD, LOAD8_U, 0, 0, CONST, 2, SHL, LOAD, 2, 0, ADD, tee ? TEE : SET, f];
}

function body(): number[] {
  const L = WASM_LANE;
  const code = [
    BLOCK, VOID,
    LOOP, VOID,
    GET, STOP, GET, J, SUB, CONST, ...sleb(4 * L), LT_S, BR_IF, 1,
    GET, J, CONST, ...sleb(L), ADD, SET, A1,
    GET, J, CONST, ...sleb(2 * L), ADD, SET, A2,
    GET, J, CONST, ...sleb(3 * L), ADD, SET, A3,
    CONST, 0, SET, F1, CONST, 0, SET, F2, CONST, 0, SET, F3,
    CONST, ...sleb(-32), SET, K,
    LOOP, VOID,
    ...step(F1, A1, K, false), ...step(F2, A2, K, false), ...step(F3, A3, K, false),
    GET, K, CONST, 1, ADD, TEE, K, BR_IF, 0,
    END,
    GET, FP, SET, F0, CONST, 0, SET, T,
    BLOCK, VOID,
    LOOP, VOID,
    ...[[F0, J], [F1, A1], [F2, A2], [F3, A3]].flatMap(([f, a]) => [...step(f!, a!, T, true), GET, MASK, AND, EQZ, BR_IF, 1]),
    GET, T, CONST, 1, ADD, TEE, T, CONST, ...sleb(L), NE, BR_IF, 0,
    END,
    GET, F3, SET, FP, GET, J, CONST, ...sleb(4 * L), ADD, SET, J,
    BR, 1,
    END,
    BR, 1,
    END,
    END,
    CONST, ...sleb(FP_AT), GET, FP, STORE, 2, 0,
    GET, J,
    END,
  ];
  return [...uleb(1), ...uleb(9), 0x7f, ...code];
}

function section(id: number, bytes: number[]): number[] {
  return [id, ...uleb(bytes.length), ...bytes];
}

const name = (s: string) => [...uleb(s.length), ...Buffer.from(s, 'latin1')];

/** The module, which imports its memory (`m.mem`, PAGES pages; `shared`: a shared memory, limits flag 3). */
function moduleBytes(shared: boolean): Uint8Array {
  const b = body();
  return Uint8Array.from([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, [1, 0x60, 4, 0x7f, 0x7f, 0x7f, 0x7f, 1, 0x7f]), // type 0: (i32 i32 i32 i32) -> i32
    ...section(2, [1, ...name('m'), ...name('mem'), 0x02, shared ? 0x03 : 0x01, ...uleb(PAGES), ...uleb(PAGES)]), // memory import
    ...section(3, [1, 0]), // function 0 has type 0
    ...section(7, [1, ...name('lanes'), 0x00, 0]),
    ...section(10, [1, ...uleb(b.length), ...b]),
  ]);
}

/** The module's scan over its memory, and the memory: or undefined where WebAssembly is not available (node --jitless). */
export interface GearWasm {
  /** Scans whole windows from absolute address `j` while a window fits before `stop`; returns where it stopped (a window with a cut starts there) and leaves fp at that point in `fp` (getInt32(0, true)). */
  lanes: (j: number, stop: number, mask: number, fp: number) => number;
  /** The memory's bytes from DATA_AT, for the bytes to scan. */
  data: Uint8Array;
  /** The fp where `lanes` stopped. */
  fp: DataView;
  /** The memory, where it is shared (then blocks in its slots are scanned in place): otherwise undefined. */
  shared: SharedArrayBuffer | undefined;
}

/** The little of the WebAssembly API used here (our TypeScript lib has no declarations of it). */
interface Wasm {
  Module: new (bytes: Uint8Array) => object;
  Memory: new (d: { initial: number; maximum: number; shared?: boolean }) => { buffer: ArrayBuffer | SharedArrayBuffer };
  Instance: new (module: object, imports: object) => { exports: { lanes: GearWasm['lanes'] } };
}

/** The module with a memory: shared if this runtime shares WebAssembly memory, a plain one otherwise. */
function withMemory(wasm: Wasm): { inst: InstanceType<Wasm['Instance']>; mem: { buffer: ArrayBuffer | SharedArrayBuffer } } {
  for (const shared of [true, false]) {
    try {
      const mem = new wasm.Memory({ initial: PAGES, maximum: PAGES, shared });
      if (shared && !(mem.buffer instanceof SharedArrayBuffer)) continue;
      return { inst: new wasm.Instance(new wasm.Module(moduleBytes(shared)), { m: { mem } }), mem };
    } catch (e) {
      if (!shared) throw e;
    }
  }
  throw new Error('unreachable');
}

function instantiate(): GearWasm | undefined {
  const wasm = (globalThis as { WebAssembly?: Wasm }).WebAssembly;
  if (wasm === undefined) return undefined;
  const { inst, mem } = withMemory(wasm);
  const table = new DataView(mem.buffer, 0, 1024);
  GEAR.forEach((g, i) => table.setInt32(4 * i, g, true)); // little-endian, as i32.load reads it
  return {
    lanes: inst.exports.lanes,
    data: new Uint8Array(mem.buffer, DATA_AT, DATA_MAX),
    fp: new DataView(mem.buffer, FP_AT, 4),
    shared: typeof SharedArrayBuffer !== 'undefined' && mem.buffer instanceof SharedArrayBuffer ? mem.buffer : undefined,
  };
}

export const gearWasm: GearWasm | undefined = instantiate();
