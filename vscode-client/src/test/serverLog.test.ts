import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { classifyServerLine, failureReason, shouldRestart } from "../serverLog";

describe("classifyServerLine", () => {
  it("keeps routine request lines out of the errors", () => {
    const line = '{"event": "completion", "method": "inline", "outcome": "cancelled", "language": "python", "ms": 3}';
    assert.deepEqual(classifyServerLine(line), { level: "info", text: line });
    assert.equal(classifyServerLine("remote completion failed (openai http://x): HTTP 500").level, "info");
  });

  it("marks the server's last word and tracebacks as errors", () => {
    assert.equal(classifyServerLine("code-assistant lsp: cannot load model: model directory /m does not exist").level,
      "error");
    assert.equal(classifyServerLine("Traceback (most recent call last):").level, "error");
    assert.equal(classifyServerLine("ValueError: bad").level, "error");
  });
});

describe("failureReason", () => {
  it("is the server's own reason when it gave one", () => {
    assert.equal(failureReason(['{"event": "settings"}', "code-assistant lsp: cannot load model: model directory /m does not exist"]),
      "cannot load model: model directory /m does not exist");
    assert.equal(failureReason(["Traceback (most recent call last):", '  File "x.py"', "OSError: [Errno 28] No space"]),
      "OSError: [Errno 28] No space");
    assert.equal(failureReason(['{"event": "completion"}']), undefined);
  });
});

describe("shouldRestart", () => {
  it("never restarts a server that did not get ready or said why it stopped", () => {
    assert.equal(shouldRestart({ everRunning: false, reason: undefined, recentRestarts: 0 }), false);
    assert.equal(shouldRestart({ everRunning: true, reason: "cannot load model", recentRestarts: 0 }), false);
  });

  it("restarts a crashed server a few times", () => {
    assert.equal(shouldRestart({ everRunning: true, reason: undefined, recentRestarts: 2 }), true);
    assert.equal(shouldRestart({ everRunning: true, reason: undefined, recentRestarts: 3 }), false);
  });
});
