/** A claim on part of a MemoryBudget; releasing it more than once releases it once. */
export interface Reservation {
  release: () => void;
}

/**
 * Counts bytes held in memory by requests at once (upload bodies), against a fixed capacity.
 * Reserving happens before a byte is buffered, so a burst is refused (503) instead of growing the
 * heap: memory is then bounded by the capacity, not by how many clients upload at once.
 */
export class MemoryBudget {
  private used = 0;

  constructor(readonly capacity: number) {}

  /** Reserves `bytes`, or returns undefined when they do not fit beside what is held already. */
  tryReserve(bytes: number): Reservation | undefined {
    if (this.used + bytes > this.capacity) return undefined;
    this.used += bytes;
    let held = bytes;
    return {
      release: () => {
        this.used -= held;
        held = 0;
      },
    };
  }
}
