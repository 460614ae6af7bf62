/**
 * Fixed bounds of the sync channel, beyond those set by configuration (README, "Limits"). They
 * keep the work and memory one client can cause bounded by what it sends.
 */
export const FIXED_SYNC_LIMITS = {
  /** Deleted ranges an update may name beyond what the document has (refused with 4400 past it). */
  maxUnknownDeleteRanges: 1000,
  /** Content waiting for updates the document does not have yet, per document. */
  maxPendingStructBytes: 1024 * 1024,
  /** Deletions waiting for their content, per document: every later update re-reads them. */
  maxPendingDeleteBytes: 8 * 1024,
  /** JSON bytes of one awareness state (refused with 4413 past it). */
  maxStateBytes: 16 * 1024,
  /** Awareness states one connection may hold (a client has one; refused with 4400 past it). */
  maxStatesPerConnection: 4,
  /** JSON of all awareness states of one document together (refused with 4413 past it). */
  maxDocumentStateBytes: 1024 * 1024,
} as const;
