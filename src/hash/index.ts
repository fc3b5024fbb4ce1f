export { sha256, sha256Stream, toHex, fromHex, bytesEqual, HASH_NAME, HASH_SIZE } from './sha256.js';
export { MerkleHasher, merkleRoot, LEAF_SIZE, type MerkleState } from './merkle.js';
