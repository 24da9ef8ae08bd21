/**
 * Events as they commit, for streaming callers (WatchEvents): each watcher
 * polls for the events after its cursor every POLL_MS (at most 100 a read),
 * so a watcher sees an event within about POLL_MS of it becoming readable
 * (see events.ts for when that is), on every replica alike, with no
 * session-level state in the database (works behind PgBouncer's transaction
 * mode).
 */
import type { EventFilter, EventView, Events } from "./events.js";

export const POLL_MS = 250;
const BATCH = 100;

export class EventFeed {
  constructor(private readonly events: Events) {}

  /** Yields the events after `cursor` that match `filter`, in commit order, until `signal` aborts. */
  async *follow(filter: EventFilter, cursor: string, signal: AbortSignal): AsyncGenerator<EventView> {
    let after = cursor;
    while (!signal.aborted) {
      const batch = await this.events.after(filter, after, BATCH);
      for (const event of batch) {
        yield event;
        after = event.cursor;
      }
      if (batch.length < BATCH) await sleep(POLL_MS, signal);
    }
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}
