/**
 * Mocha root hooks: one harness (database + server) for the whole run.
 */
import { initStatusDecoder, startHarness, type Harness } from "./harness.js";

let h: Harness | undefined;

export const mochaHooks = {
  async beforeAll(this: Mocha.Context) {
    this.timeout(120_000);
    h = await startHarness();
    await initStatusDecoder();
  },
  async afterAll(this: Mocha.Context) {
    this.timeout(60_000);
    await h?.stop();
  },
};
