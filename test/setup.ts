/**
 * Mocha root hooks: one harness (database + server) for the whole run.
 */
import { KNOWN_SECRETS, RECORDED_RESPONSES, initStatusDecoder, responsesLeakingSecrets, startHarness, type Harness } from "./harness.js";

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
    // The secrets scan over every response of the whole run.
    const leaks = responsesLeakingSecrets();
    if (leaks.length > 0) throw new Error(`${leaks.length} of ${RECORDED_RESPONSES.length} responses contain a stored secret (${KNOWN_SECRETS.size} known)`);
  },
};
