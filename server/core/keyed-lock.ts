/**
 * Runs work one at a time per key, in the order it was asked for, across awaits: a user's changes
 * that span the directory and their file (each an atomic step of its own) cannot interleave in this
 * process. Keys with nothing queued take no memory.
 */
export class KeyedLock {
  private readonly tails = new Map<string, Promise<unknown>>();

  run<T>(key: string, work: () => Promise<T>): Promise<T> {
    const before = this.tails.get(key) ?? Promise.resolve();
    const result = before.then(work, work);
    // The queue goes on whether this work fails or not; the caller sees its own outcome.
    const tail = result.then(
      () => undefined,
      () => undefined,
    );
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return result;
  }
}
