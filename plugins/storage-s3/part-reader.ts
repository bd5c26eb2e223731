/** The caller's stream failed; rethrown as it was, since it is not a storage error. */
export class SourceError extends Error {
  constructor(readonly error: unknown) {
    super('source stream failed');
  }
}

/**
 * Cuts a stream into parts without holding more than one part of it: the remainder of a chunk that did not fit
 * is kept for the next call. Errors of the stream come out as {@link SourceError}.
 */
export class PartReader {
  private rest: Buffer | undefined;
  private done = false;

  constructor(private readonly source: AsyncIterator<unknown>) {}

  /** Up to `max` bytes in a buffer of just that size, so that a small stream costs a small buffer. */
  async take(max: number): Promise<Buffer> {
    const chunks: Buffer[] = [];
    let total = 0;
    for (let chunk = await this.chunk(); chunk && total < max; chunk = total < max ? await this.chunk() : undefined) {
      const piece = chunk.subarray(0, max - total);
      this.rest = chunk.subarray(piece.length);
      chunks.push(piece);
      total += piece.length;
    }
    return Buffer.concat(chunks, total);
  }

  /** Fill `buffer` from the stream; returns the bytes written (less than its length only at the end). */
  async fill(buffer: Buffer): Promise<number> {
    let filled = 0;
    for (let chunk = await this.chunk(); chunk; chunk = filled < buffer.length ? await this.chunk() : undefined) {
      const n = chunk.copy(buffer, filled);
      this.rest = chunk.subarray(n);
      filled += n;
    }
    return filled;
  }

  /** The kept remainder, else the next chunk of the stream as a Buffer; undefined at the end. */
  private async chunk(): Promise<Buffer | undefined> {
    if (this.rest?.length) return this.rest;
    if (this.done) return undefined;
    let step: IteratorResult<unknown>;
    try {
      step = await this.source.next();
    } catch (error) {
      throw new SourceError(error);
    }
    if (step.done) {
      this.done = true;
      return undefined;
    }
    const value = step.value;
    if (typeof value === 'string') return Buffer.from(value);
    return Buffer.isBuffer(value) ? value : Buffer.from(value as Uint8Array);
  }
}
