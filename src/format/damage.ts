/**
 * Damage ranges: blob bytes [o, e) that fsck found lost or corrupt (in
 * chunk units, so that every other chunk stays readable), and why. Kept
 * sorted by `o` and merged where they touch.
 */
export interface DamageRange {
  o: number;
  e: number;
  why: string;
}

/** Sorted and merged, empty ranges dropped (the first one of a merge gives its `why`). */
export function normalizeDamage<T extends DamageRange>(ranges: readonly T[]): T[] {
  const out: T[] = [];
  for (const r of [...ranges].filter((x) => x.e > x.o).sort((a, b) => a.o - b.o)) {
    const last = out[out.length - 1];
    if (last && r.o <= last.e) last.e = Math.max(last.e, r.e);
    else out.push({ ...r });
  }
  return out;
}

/** The first range that ends after `pos`: the one holding pos, or the next one. */
export function damageFrom(ranges: readonly DamageRange[], pos: number): DamageRange | undefined {
  return ranges.find((r) => r.e > pos);
}

/** Whether any range overlaps [start, end). */
export function overlapsDamage(ranges: readonly DamageRange[], start: number, end: number): boolean {
  const r = damageFrom(ranges, start);
  return r !== undefined && r.o < end;
}

/** The parts of `found` that `known` (sorted) does not cover. */
export function uncovered<T extends DamageRange>(found: readonly T[], known: ReadonlyArray<{ o: number; e: number }>): T[] {
  const out: T[] = [];
  for (const f of normalizeDamage(found)) {
    let o = f.o;
    for (const k of known) {
      if (k.e <= o || k.o >= f.e) continue;
      if (k.o > o) out.push({ ...f, o, e: k.o });
      o = Math.max(o, k.e);
    }
    if (o < f.e) out.push({ ...f, o });
  }
  return out;
}

/**
 * Damage widened to whole chunks: a damaged byte makes its whole chunk
 * unreadable (it cannot be checked). Ranges past the last chunk boundary
 * (`chunkEnd`) stay as they are.
 */
export async function widenToChunks(
  damage: readonly DamageRange[],
  chunkEnd: number,
  chunkAt: (pos: number) => Promise<{ start: number; size: number }>,
): Promise<DamageRange[]> {
  const out: DamageRange[] = [];
  for (const r of damage) {
    const o = r.o < chunkEnd ? (await chunkAt(r.o)).start : r.o;
    let e = r.e;
    if (e <= chunkEnd) {
      const last = await chunkAt(e - 1);
      e = last.start + last.size;
    }
    out.push({ o, e, why: r.why });
  }
  return normalizeDamage(out);
}

/** As the index keeps them: [o, e, o, e, ...]. */
export function flatDamage(ranges: readonly DamageRange[]): number[] | undefined {
  return ranges.length ? ranges.flatMap((r) => [r.o, r.e]) : undefined;
}
