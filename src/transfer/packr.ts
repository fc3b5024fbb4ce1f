import { Packr } from 'msgpackr';

/**
 * The one MessagePack setup of transfer/: plain maps (no record extension),
 * no extra types, so that a second implementation reads what we write. Wire
 * messages (messages.ts) and file records (records.ts) both use it.
 */
export const packr = new Packr({ useRecords: false, moreTypes: false } as ConstructorParameters<typeof Packr>[0]);
