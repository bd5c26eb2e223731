import { ChunkList } from '../chunkstore/chunk-list.js';
import type { ChunkStore } from '../chunkstore/index.js';
import { ChunkPipeline, type ChunkPipelineOptions } from '../chunkstore/pipeline.js';
import type { ImageMirror } from './image-cache.js';
import type { ImageFile } from './manifest.js';

/** Postgres' page size: files are cut into chunks on page boundaries, so a changed page changes one chunk. */
export const PAGE_SIZE = 8192;

/**
 * Turns a stream of files (from a tar archive or a folder walk) into image entries: every file is cut into
 * 8 KiB chunks on page boundaries and each chunk goes to the chunk store, which keeps only the ones it lacks.
 * Chunks are hashed and compressed on worker threads (chunkstore/pipeline.ts): the files' chunk lists are
 * complete only after {@link finish}; await {@link drain} whenever {@link busy} so memory stays bounded.
 */
export class ImageBuilder {
  readonly files: ImageFile[] = [];
  rawBytes = 0;
  private current?: ImageFile & { chunks: ChunkList };
  private carry: Buffer[] = [];
  private carried = 0;
  private readonly pipeline: ChunkPipeline;

  constructor(
    store: ChunkStore,
    /** Also written out as plain files (see ImageCache), when given. */
    private readonly mirror?: ImageMirror,
    options?: ChunkPipelineOptions,
  ) {
    this.pipeline = new ChunkPipeline(store, options);
  }

  /** True when enough chunks wait for the workers that the caller should await {@link drain}. */
  get busy(): boolean {
    return this.pipeline.busy || !!this.mirror?.busy;
  }

  /** Wait until the workers, the store's pack writes and the plain copy's writes have caught up (memory bound). */
  async drain(): Promise<void> {
    await Promise.all([this.pipeline.drain(), this.mirror?.drain?.()]);
  }

  /** End the current file and wait until every chunk is in the store (not flushed) and every list complete. */
  async finish(): Promise<void> {
    this.endFile();
    await this.pipeline.finish();
  }

  addDir(path: string, mode: number): void {
    this.files.push({ path, type: 'dir', mode, size: 0 });
    this.mirror?.addDir(path, mode);
  }

  addSymlink(path: string, link: string, mode: number): void {
    this.files.push({ path, type: 'symlink', mode, size: 0, link });
  }

  beginFile(path: string, mode: number): void {
    if (this.current) this.endFile();
    this.current = { path, type: 'file', mode, size: 0, chunks: new ChunkList() };
    this.mirror?.beginFile(path, mode);
  }

  /** Bytes of the current file, in order, in pieces of any size. */
  write(data: Buffer): void {
    const file = this.current!;
    this.mirror?.write(data);
    file.size += data.length;
    this.rawBytes += data.length;
    let offset = 0;
    // Complete a page begun by earlier pieces, then take whole pages straight from `data`.
    if (this.carried) {
      const take = Math.min(PAGE_SIZE - this.carried, data.length);
      this.carry.push(data.subarray(0, take));
      this.carried += take;
      offset = take;
      if (this.carried === PAGE_SIZE) this.emit(Buffer.concat(this.carry));
    }
    while (data.length - offset >= PAGE_SIZE) {
      this.emit(data.subarray(offset, offset + PAGE_SIZE));
      offset += PAGE_SIZE;
    }
    if (offset < data.length) {
      this.carry = [Buffer.from(data.subarray(offset))];
      this.carried = data.length - offset;
    }
  }

  endFile(): void {
    if (!this.current) return;
    if (this.carried) this.emit(Buffer.concat(this.carry));
    // The pipeline writes hashes through the list object, so its buffer may be swapped for a trimmed copy now.
    this.current.chunks.trim();
    this.files.push(this.current);
    this.current = undefined;
    this.mirror?.endFile();
  }

  private emit(page: Buffer): void {
    const chunks = this.current!.chunks;
    this.pipeline.add(page, chunks, chunks.push()); // the entry is filled in when the page's batch is packed
    this.carry = [];
    this.carried = 0;
  }
}
