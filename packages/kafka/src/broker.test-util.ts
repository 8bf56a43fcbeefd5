/**
 * A one-node Kafka broker in memory on 127.0.0.1, speaking just enough of the wire protocol for
 * kafkajs 2 producers and consumers: the lowest API versions kafkajs implements that still carry
 * record batches with headers (Produce v3, Fetch v4). Record batches are stored as produced, with
 * the broker assigning offsets as Kafka does, and fetched back byte for byte.
 * Groups have one member each: the latest member to join is the leader and only member.
 * Test-only: not exported from the package.
 */
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';

const API = {
  Produce: 0,
  Fetch: 1,
  ListOffsets: 2,
  Metadata: 3,
  OffsetCommit: 8,
  OffsetFetch: 9,
  FindCoordinator: 10,
  JoinGroup: 11,
  Heartbeat: 12,
  LeaveGroup: 13,
  SyncGroup: 14,
  ApiVersions: 18,
} as const;

/** The one version advertised for each API. */
const VERSIONS: Record<number, number> = {
  [API.Produce]: 3,
  [API.Fetch]: 4,
  [API.ListOffsets]: 0,
  [API.Metadata]: 0,
  [API.OffsetCommit]: 0,
  [API.OffsetFetch]: 1,
  [API.FindCoordinator]: 0,
  [API.JoinGroup]: 0,
  [API.Heartbeat]: 0,
  [API.LeaveGroup]: 0,
  [API.SyncGroup]: 0,
  [API.ApiVersions]: 2,
};

const ERR = {
  NONE: 0,
  CORRUPT_MESSAGE: 2,
  UNKNOWN_TOPIC_OR_PARTITION: 3,
  ILLEGAL_GENERATION: 22,
  UNKNOWN_MEMBER_ID: 25,
} as const;
const NODE_ID = 0;
/** Record batch v2 layout (KIP-98): offsets of the fields the broker reads or writes. */
const BATCH = { baseOffset: 0, length: 8, magic: 16, lastOffsetDelta: 23, overhead: 61 } as const;

class Reader {
  private at = 0;
  constructor(private readonly buf: Buffer) {}
  int8(): number {
    return this.buf.readInt8((this.at += 1) - 1);
  }
  int16(): number {
    return this.buf.readInt16BE((this.at += 2) - 2);
  }
  int32(): number {
    return this.buf.readInt32BE((this.at += 4) - 4);
  }
  int64(): bigint {
    return this.buf.readBigInt64BE((this.at += 8) - 8);
  }
  string(): string {
    const n = this.int16();
    return n < 0 ? '' : this.buf.toString('utf8', this.at, (this.at += n));
  }
  bytes(): Buffer {
    const n = this.int32();
    return n < 0 ? Buffer.alloc(0) : this.buf.subarray(this.at, (this.at += n));
  }
  array<T>(item: (r: Reader) => T): T[] {
    const n = this.int32();
    const out: T[] = [];
    for (let i = 0; i < n; i++) out.push(item(this));
    return out;
  }
}

class Writer {
  private readonly chunks: Buffer[] = [];
  private fixed(size: number, write: (b: Buffer) => void): this {
    const b = Buffer.alloc(size);
    write(b);
    this.chunks.push(b);
    return this;
  }
  int8(v: number): this {
    return this.fixed(1, (b) => b.writeInt8(v));
  }
  int16(v: number): this {
    return this.fixed(2, (b) => b.writeInt16BE(v));
  }
  int32(v: number): this {
    return this.fixed(4, (b) => b.writeInt32BE(v));
  }
  int64(v: bigint): this {
    return this.fixed(8, (b) => b.writeBigInt64BE(v));
  }
  string(s: string | null): this {
    if (s === null) return this.int16(-1);
    const b = Buffer.from(s, 'utf8');
    this.int16(b.length);
    this.chunks.push(b);
    return this;
  }
  bytes(b: Buffer): this {
    this.int32(b.length);
    this.chunks.push(b);
    return this;
  }
  array<T>(items: readonly T[], item: (w: Writer, value: T) => void): this {
    this.int32(items.length);
    for (const v of items) item(this, v);
    return this;
  }
  toBuffer(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

interface StoredBatch {
  readonly base: bigint;
  /** Offset after the batch's last record. */
  readonly end: bigint;
  readonly bytes: Buffer;
}

interface Group {
  generation: number;
  member: string | undefined;
  protocol: string;
  metadata: Buffer;
  assignment: Buffer;
  readonly offsets: Map<string, bigint>;
}

/** The in-memory broker; `start()` listens on 127.0.0.1 at a free port. */
export class TestKafkaBroker {
  /** `host:port` for kafkajs's `brokers` list. */
  readonly address: string;
  private readonly logs = new Map<string, StoredBatch[]>();
  private readonly groups = new Map<string, Group>();
  private readonly sockets = new Set<Socket>();
  /** Long-polling fetches, woken when records arrive or the broker closes. */
  private readonly waiting = new Set<() => void>();
  private closed = false;

  private constructor(
    private readonly server: Server,
    private readonly port: number,
  ) {
    this.address = `127.0.0.1:${port}`;
  }

  static async start(): Promise<TestKafkaBroker> {
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', resolve);
    });
    const broker = new TestKafkaBroker(server, (server.address() as AddressInfo).port);
    server.on('connection', (socket) => broker.accept(socket));
    return broker;
  }

  /** How many records `topic` holds. */
  count(topic: string): number {
    return Number(this.highWatermark(topic));
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const wake of this.waiting) wake();
    for (const socket of this.sockets) socket.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }

  private accept(socket: Socket): void {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    let pending: Buffer = Buffer.alloc(0);
    // Requests on one connection are answered in order, as a Kafka broker does.
    let queue = Promise.resolve();
    socket.on('data', (chunk: Buffer) => {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      while (pending.length >= 4 && pending.length >= 4 + pending.readInt32BE(0)) {
        const frame = pending.subarray(4, 4 + pending.readInt32BE(0));
        pending = pending.subarray(4 + frame.length);
        queue = queue
          .then(() => this.handle(frame))
          .then((response) => {
            if (response !== undefined && !socket.destroyed) socket.write(response);
          })
          // A request this broker cannot answer ends the connection, as Kafka does.
          .catch(() => {
            socket.destroy();
          });
      }
    });
  }

  private async handle(frame: Buffer): Promise<Buffer | undefined> {
    const r = new Reader(frame);
    const apiKey = r.int16();
    const version = r.int16();
    const correlationId = r.int32();
    r.string(); // client id
    const w = new Writer();
    if (apiKey === API.ApiVersions) {
      this.apiVersions(w, version);
    } else {
      if (VERSIONS[apiKey] !== version) throw new Error(`unsupported API ${apiKey} v${version}`);
      switch (apiKey) {
        case API.Metadata:
          this.metadata(r, w);
          break;
        case API.Produce:
          if (!this.produce(r, w)) return undefined;
          break;
        case API.Fetch:
          await this.fetch(r, w);
          break;
        case API.ListOffsets:
          this.listOffsets(r, w);
          break;
        case API.FindCoordinator:
          w.int16(ERR.NONE).int32(NODE_ID).string('127.0.0.1').int32(this.port);
          break;
        case API.JoinGroup:
          this.joinGroup(r, w);
          break;
        case API.SyncGroup:
          this.syncGroup(r, w);
          break;
        case API.Heartbeat:
          w.int16(this.check(r.string(), r.int32(), r.string()));
          break;
        case API.LeaveGroup:
          this.leaveGroup(r, w);
          break;
        case API.OffsetCommit:
          this.offsetCommit(r, w);
          break;
        case API.OffsetFetch:
          this.offsetFetch(r, w);
          break;
      }
    }
    const body = w.toBuffer();
    return Buffer.concat([
      new Writer()
        .int32(4 + body.length)
        .int32(correlationId)
        .toBuffer(),
      body,
    ]);
  }

  private apiVersions(w: Writer, version: number): void {
    const apis = Object.entries(VERSIONS).map(([key, max]) => [Number(key), max] as const);
    w.int16(ERR.NONE).array(apis, (w, [key, max]) =>
      w
        .int16(key)
        .int16(key === API.ApiVersions ? 0 : max)
        .int16(max),
    );
    if (version >= 1) w.int32(0); // throttle_time_ms
  }

  /** The topic's log, created on first use (auto.create.topics.enable=true) with one partition. */
  private log(topic: string): StoredBatch[] {
    let log = this.logs.get(topic);
    if (log === undefined) this.logs.set(topic, (log = []));
    return log;
  }

  private highWatermark(topic: string): bigint {
    const log = this.logs.get(topic);
    return log === undefined || log.length === 0 ? 0n : log[log.length - 1].end;
  }

  private metadata(r: Reader, w: Writer): void {
    const requested = r.array((r) => r.string());
    const topics = requested.length > 0 ? requested : [...this.logs.keys()];
    for (const t of topics) this.log(t);
    w.array([NODE_ID], (w, id) => w.int32(id).string('127.0.0.1').int32(this.port));
    w.array(topics, (w, t) =>
      w
        .int16(ERR.NONE)
        .string(t)
        .array([0], (w, p) =>
          w
            .int16(ERR.NONE)
            .int32(p)
            .int32(NODE_ID)
            .array([NODE_ID], (w, id) => w.int32(id))
            .array([NODE_ID], (w, id) => w.int32(id)),
        ),
    );
  }

  /** Appends the record batches; returns false when acks=0 asks for no response. */
  private produce(r: Reader, w: Writer): boolean {
    r.string(); // transactional id
    const acks = r.int16();
    r.int32(); // timeout
    const topics = r.array((r) => ({
      topic: r.string(),
      partitions: r.array((r) => ({ partition: r.int32(), records: r.bytes() })),
    }));
    const results = topics.map(({ topic, partitions }) => ({
      topic,
      partitions: partitions.map(({ partition, records }) => ({
        partition,
        ...this.append(topic, partition, records),
      })),
    }));
    for (const wake of this.waiting) wake();
    if (acks === 0) return false;
    w.array(results, (w, t) =>
      w.string(t.topic).array(t.partitions, (w, p) => w.int32(p.partition).int16(p.error).int64(p.base).int64(-1n)),
    );
    w.int32(0); // throttle_time_ms
    return true;
  }

  private append(topic: string, partition: number, records: Buffer): { error: number; base: bigint } {
    if (partition !== 0) return { error: ERR.UNKNOWN_TOPIC_OR_PARTITION, base: -1n };
    const batches: Buffer[] = [];
    for (let at = 0; at < records.length; ) {
      if (records.length - at < BATCH.overhead) return { error: ERR.CORRUPT_MESSAGE, base: -1n };
      const size = 12 + records.readInt32BE(at + BATCH.length);
      if (records.readInt8(at + BATCH.magic) !== 2 || at + size > records.length)
        return { error: ERR.CORRUPT_MESSAGE, base: -1n };
      batches.push(records.subarray(at, at + size));
      at += size;
    }
    const log = this.log(topic);
    const base = this.highWatermark(topic);
    let next = base;
    for (const b of batches) {
      // The broker owns offsets: it writes the batch's base offset, which the batch CRC does not cover.
      const bytes = Buffer.from(b);
      bytes.writeBigInt64BE(next, BATCH.baseOffset);
      const end = next + BigInt(bytes.readInt32BE(BATCH.lastOffsetDelta)) + 1n;
      log.push({ base: next, end, bytes });
      next = end;
    }
    return { error: ERR.NONE, base };
  }

  private async fetch(r: Reader, w: Writer): Promise<void> {
    r.int32(); // replica id
    const maxWait = r.int32();
    r.int32(); // min bytes
    r.int32(); // max bytes
    r.int8(); // isolation level
    const topics = r.array((r) => ({
      topic: r.string(),
      partitions: r.array((r) => ({ partition: r.int32(), offset: r.int64(), maxBytes: r.int32() })),
    }));
    const available = () =>
      topics.some(({ topic, partitions }) =>
        partitions.some((p) => p.partition === 0 && this.highWatermark(topic) > p.offset),
      );
    if (!available() && !this.closed) {
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this.waiting.delete(wake);
          resolve();
        };
        const wake = () => {
          if (this.closed || available()) done();
        };
        const timer = setTimeout(done, maxWait);
        this.waiting.add(wake);
      });
    }
    w.int32(0); // throttle_time_ms
    w.array(topics, (w, { topic, partitions }) =>
      w.string(topic).array(partitions, (w, p) => {
        const known = p.partition === 0 && this.logs.has(topic);
        const hw = known ? this.highWatermark(topic) : -1n;
        // Whole batches holding the offset and after: kafkajs skips the records before it.
        const records = known
          ? Buffer.concat(
              this.log(topic)
                .filter((b) => b.end > p.offset)
                .map((b) => b.bytes),
            )
          : Buffer.alloc(0);
        w.int32(p.partition)
          .int16(known ? ERR.NONE : ERR.UNKNOWN_TOPIC_OR_PARTITION)
          .int64(hw)
          .int64(hw) // last stable offset: no transactions here
          .array([], () => undefined) // aborted transactions
          .bytes(records);
      }),
    );
  }

  private listOffsets(r: Reader, w: Writer): void {
    r.int32(); // replica id
    const topics = r.array((r) => ({
      topic: r.string(),
      partitions: r.array((r) => ({ partition: r.int32(), timestamp: r.int64(), max: r.int32() })),
    }));
    w.array(topics, (w, { topic, partitions }) =>
      // -2 asks for the earliest offset; anything else gets the latest.
      w.string(topic).array(partitions, (w, p) =>
        w
          .int32(p.partition)
          .int16(ERR.NONE)
          .array([p.timestamp === -2n ? 0n : this.highWatermark(topic)], (w, o) => w.int64(o)),
      ),
    );
  }

  private group(id: string): Group {
    let g = this.groups.get(id);
    if (g === undefined) {
      g = {
        generation: 0,
        member: undefined,
        protocol: '',
        metadata: Buffer.alloc(0),
        assignment: Buffer.alloc(0),
        offsets: new Map(),
      };
      this.groups.set(id, g);
    }
    return g;
  }

  private check(groupId: string, generation: number, member: string): number {
    const g = this.groups.get(groupId);
    if (g === undefined || g.member !== member) return ERR.UNKNOWN_MEMBER_ID;
    return g.generation === generation ? ERR.NONE : ERR.ILLEGAL_GENERATION;
  }

  private joinGroup(r: Reader, w: Writer): void {
    const g = this.group(r.string());
    r.int32(); // session timeout
    const requested = r.string();
    r.string(); // protocol type
    const protocols = r.array((r) => ({ name: r.string(), metadata: Buffer.from(r.bytes()) }));
    const member = requested || `member-${randomUUID()}`;
    g.generation++;
    g.member = member;
    g.protocol = protocols[0]?.name ?? '';
    g.metadata = protocols[0]?.metadata ?? Buffer.alloc(0);
    w.int16(ERR.NONE).int32(g.generation).string(g.protocol).string(member).string(member);
    w.array([member], (w, m) => w.string(m).bytes(g.metadata));
  }

  private syncGroup(r: Reader, w: Writer): void {
    const groupId = r.string();
    const generation = r.int32();
    const member = r.string();
    const assignments = r.array((r) => ({ member: r.string(), assignment: Buffer.from(r.bytes()) }));
    const error = this.check(groupId, generation, member);
    const g = this.group(groupId);
    // The leader (the only member) computed the assignment; the broker hands it back.
    if (error === ERR.NONE) g.assignment = assignments.find((a) => a.member === member)?.assignment ?? Buffer.alloc(0);
    w.int16(error).bytes(error === ERR.NONE ? g.assignment : Buffer.alloc(0));
  }

  private leaveGroup(r: Reader, w: Writer): void {
    const g = this.groups.get(r.string());
    const member = r.string();
    if (g !== undefined && g.member === member) g.member = undefined;
    w.int16(ERR.NONE);
  }

  private offsetCommit(r: Reader, w: Writer): void {
    const g = this.group(r.string());
    const topics = r.array((r) => ({
      topic: r.string(),
      partitions: r.array((r) => ({ partition: r.int32(), offset: r.int64(), metadata: r.string() })),
    }));
    for (const { topic, partitions } of topics)
      for (const p of partitions) g.offsets.set(`${topic}:${p.partition}`, p.offset);
    w.array(topics, (w, { topic, partitions }) =>
      w.string(topic).array(partitions, (w, p) => w.int32(p.partition).int16(ERR.NONE)),
    );
  }

  private offsetFetch(r: Reader, w: Writer): void {
    const g = this.group(r.string());
    const topics = r.array((r) => ({ topic: r.string(), partitions: r.array((r) => r.int32()) }));
    w.array(topics, (w, { topic, partitions }) =>
      w.string(topic).array(partitions, (w, p) =>
        w
          .int32(p)
          .int64(g.offsets.get(`${topic}:${p}`) ?? -1n)
          .string('')
          .int16(ERR.NONE),
      ),
    );
  }
}
