/** A finalized blob no one owns or has open: GC may evict it to meet maxBytes. */
export interface Candidate {
  name: string;
  /** Last access (or creation) time, ms: the least recent goes first. */
  when: number;
  /** The distinct fragments it references. */
  frags: readonly string[];
}

/** What eviction reads and updates; GC marked and listed it. */
export interface EvictionState {
  /** Fragment -> number of blobs using it; decremented as blobs go. */
  marked: Map<string, number>;
  /** The fragments this GC may sweep, with their sizes. */
  sizes: ReadonlyMap<string, number>;
  pinned: ReadonlySet<string>;
  /** Bytes of the listed fragments GC would keep now. */
  bytes: number;
}

export interface EvictionResult {
  evicted: string[];
  passedOver: string[];
}

/**
 * One way to free a fragment: evict every blob that still uses it. `key` is
 * the access time of the most recent of them, `lead` that blob's name, `n`
 * their number; an entry whose fragment's users changed since is stale.
 */
interface Option {
  key: number;
  lead: string;
  n: number;
  frag: string;
}

const older = (a: Candidate, b: Candidate): boolean => a.when < b.when || (a.when === b.when && a.name < b.name);

function before(a: Option, b: Option): boolean {
  if (a.key !== b.key) return a.key < b.key;
  if (a.lead !== b.lead) return a.lead < b.lead;
  if (a.n !== b.n) return a.n < b.n;
  return a.frag < b.frag;
}

/**
 * Evicts candidates until the kept bytes fit in `maxBytes`, counting only the
 * bytes eviction really frees: a fragment goes when its last user goes, and a
 * fragment that a kept blob (owned, open, unfinalized) uses or a live lease
 * pins never goes. So the choice is among fragments whose every remaining user
 * is a candidate; freeing one means evicting all of them. The fragment whose
 * most recent remaining user is least recent goes first (fewer blobs first on
 * a tie), which is plain least-recently-used order when blobs share nothing. A
 * candidate whose eviction frees nothing, alone or with less recent ones, is
 * left in place; two identical blobs go together.
 *
 * `remove` deletes one blob (a dry run's deletes nothing) and returns false
 * if the blob must stay after all (opened, owned or deleted meanwhile); its
 * fragments are then kept, and the rest of that group is not evicted for them.
 */
export async function evict(
  state: EvictionState,
  candidates: readonly Candidate[],
  maxBytes: number,
  remove: (c: Candidate) => Promise<boolean>,
  onEvicted: (done: number) => void,
): Promise<EvictionResult> {
  const { marked, sizes, pinned } = state;
  // Fragment -> its candidate users, for each fragment eviction can free.
  const users = new Map<string, Set<Candidate>>();
  const fromCandidates = new Map<string, number>();
  for (const c of candidates) for (const f of c.frags) fromCandidates.set(f, (fromCandidates.get(f) ?? 0) + 1);
  for (const c of candidates) {
    for (const f of c.frags) {
      if (fromCandidates.get(f) !== marked.get(f) || pinned.has(f) || !sizes.has(f)) continue;
      let u = users.get(f);
      if (!u) users.set(f, (u = new Set()));
      u.add(c);
    }
  }
  fromCandidates.clear();

  const heap = new Heap<Option>(before);
  const option = (frag: string, u: Set<Candidate>): Option => {
    let lead: Candidate | undefined;
    for (const c of u) if (!lead || older(lead, c)) lead = c;
    return { key: lead!.when, lead: lead!.name, n: u.size, frag };
  };
  for (const [f, u] of users) heap.push(option(f, u));

  const evicted: Candidate[] = [];
  const held = new Set<Candidate>();
  while (state.bytes > maxBytes) {
    const top = heap.pop();
    if (!top) break;
    const u = users.get(top.frag);
    if (!u) continue; // freed already, or a user had to stay
    const now = option(top.frag, u);
    if (now.key !== top.key || now.lead !== top.lead || now.n !== top.n) continue; // a fresher entry is queued
    for (const c of [...u].sort((a, b) => (older(a, b) ? -1 : 1))) {
      if (await remove(c)) {
        evicted.push(c);
        onEvicted(evicted.length);
        for (const f of c.frags) {
          const left = marked.get(f)! - 1;
          marked.set(f, left);
          const cu = users.get(f);
          if (!cu) continue;
          cu.delete(c);
          if (left === 0) {
            state.bytes -= sizes.get(f)!;
            users.delete(f);
          } else {
            heap.push(option(f, cu));
          }
        }
      } else {
        held.add(c);
        for (const f of c.frags) users.delete(f);
        break;
      }
    }
  }

  // Candidates that stayed though a more recent one went (any, when the budget was not met).
  // Had one of their fragments had only less recent users, it would have gone first: each is
  // held by a blob that stays (kept, or a more recent candidate) or by a pin.
  const gone = new Set(evicted);
  let newest: Candidate | undefined;
  for (const c of evicted) if (!newest || older(newest, c)) newest = c;
  const met = state.bytes <= maxBytes;
  const passedOver = candidates
    .filter((c) => !gone.has(c) && !held.has(c) && c.frags.length > 0 && (!met || (newest !== undefined && older(c, newest))))
    .map((c) => c.name);
  return { evicted: evicted.map((c) => c.name), passedOver };
}

/** A binary min-heap under `less`. */
class Heap<T> {
  #a: T[] = [];
  constructor(private readonly less: (a: T, b: T) => boolean) {}

  push(x: T): void {
    const a = this.#a;
    let i = a.push(x) - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(a[i]!, a[p]!)) break;
      [a[i], a[p]] = [a[p]!, a[i]!];
      i = p;
    }
  }

  pop(): T | undefined {
    const a = this.#a;
    const top = a[0];
    const last = a.pop();
    if (a.length === 0 || last === undefined) return top;
    a[0] = last;
    for (let i = 0; ; ) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < a.length && this.less(a[l]!, a[m]!)) m = l;
      if (r < a.length && this.less(a[r]!, a[m]!)) m = r;
      if (m === i) break;
      [a[i], a[m]] = [a[m]!, a[i]!];
      i = m;
    }
    return top;
  }
}
