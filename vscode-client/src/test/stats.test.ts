import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { formatStats, isServerStats } from "../stats";

describe("formatStats", () => {
  it("gives the acceptance rate per language, most shown first", () => {
    assert.equal(formatStats({ shown: { go: 1, python: 12 }, accepted: { python: 4 } }),
      "python: 12 shown, 4 accepted (33%); go: 1 shown, 0 accepted (0%)");
  });

  it("says so when nothing was shown", () => {
    assert.equal(formatStats({ shown: {}, accepted: {} }), "no suggestions shown yet");
  });

  it("leaves out the rate when accepts were counted without shows (a restarted server)", () => {
    assert.equal(formatStats({ shown: {}, accepted: { rust: 2 } }), "rust: 0 shown, 2 accepted");
  });
});

describe("isServerStats", () => {
  it("accepts the server's answer and rejects anything else", () => {
    assert.ok(isServerStats({ shown: { python: 1 }, accepted: {}, pending: 0, engine: {} }));
    assert.ok(!isServerStats(null));
    assert.ok(!isServerStats({ shown: { python: "1" }, accepted: {} }));
    assert.ok(!isServerStats({ shown: {} }));
  });

  it("adds partial accepts where there were some", () => {
    assert.equal(formatStats({ shown: { python: 4 }, accepted: { python: 2 }, partlyAccepted: { python: 1 } }),
      "python: 4 shown, 2 accepted (50%), 1 partly");
    assert.ok(isServerStats({ shown: {}, accepted: {}, partlyAccepted: { python: 1 } }));
    assert.ok(!isServerStats({ shown: {}, accepted: {}, partlyAccepted: { python: "1" } }));
  });
});
