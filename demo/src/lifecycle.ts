/** Something started that has to be stopped before the process exits. */
export interface Stoppable {
  stop(): Promise<void>;
}

/** Thrown by {@link Stopper.track} for something that finished starting after stopping began. */
export class StoppingError extends Error {
  constructor() {
    super('stopping: nothing new is started');
    this.name = 'StoppingError';
  }
}

/**
 * Stops everything a program started, newest first, including what is still starting when it is
 * asked to stop: a signal can arrive while nginx is being spawned, and that nginx must not outlive us.
 */
export class Stopper implements Stoppable {
  private readonly stops: Array<() => Promise<void>> = [];
  private readonly pending = new Set<Promise<unknown>>();
  private stopping: Promise<void> | undefined;
  private readonly failures: string[] = [];

  /** True once {@link stop} was called. */
  get stopped(): boolean {
    return this.stopping !== undefined;
  }

  /** What failed to stop, one line each (empty when everything stopped). */
  get errors(): readonly string[] {
    return this.failures;
  }

  /** Registers something being started; resolves to it, or rejects with {@link StoppingError} if stopping began meanwhile. */
  track<T extends Stoppable>(starting: Promise<T>): Promise<T> {
    const registered = starting.then(async (it) => {
      if (this.stopping !== undefined) {
        // Too late to hand it out: stop it here, since stop() may already have run its list.
        await this.stopOne(() => it.stop());
        throw new StoppingError();
      }
      this.stops.push(() => it.stop());
      return it;
    });
    this.pending.add(registered);
    const forget = (): void => void this.pending.delete(registered);
    registered.then(forget, forget);
    return registered;
  }

  /** Stops everything tracked (waiting for what is still starting); safe to call more than once. */
  stop(): Promise<void> {
    this.stopping ??= this.stopAll();
    return this.stopping;
  }

  private async stopAll(): Promise<void> {
    await Promise.allSettled([...this.pending]);
    for (let next = this.stops.pop(); next !== undefined; next = this.stops.pop()) await this.stopOne(next);
  }

  private async stopOne(stop: () => Promise<void>): Promise<void> {
    try {
      await stop();
    } catch (err) {
      this.failures.push(err instanceof Error ? err.message : String(err));
    }
  }
}
