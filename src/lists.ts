/**
 * An empty array that V8 already takes for an array of objects (elements
 * kind PACKED_ELEMENTS), for the arrays a pull or a writer makes anew and
 * fills with objects, functions or buffers.
 *
 * A `[]` starts as an array of small integers, and V8 did not carry what the
 * first such array became over to the next one made at the same place (a
 * class field's initializer): code optimized during one pull was made for
 * arrays of objects, the next pull's new empty arrays did not match it (a
 * "wrong map" deopt at the first push), and the code made again failed at
 * the first object pushed ("not a Smi"). The writer's feed, the fetch
 * window's launch and wait, the pace's `ended` and the merkle tree's
 * `update` were each thrown away and compiled again so in the second and
 * third pulls of a process. An array born holding one element, then
 * emptied, keeps the objects' kind.
 */
export function objectArray<T>(): T[] {
  const a: T[] = [undefined as T];
  a.length = 0;
  return a;
}
