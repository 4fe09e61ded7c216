// The hand-written declarations (src/index.d.ts) compile, and the documented usage type-checks against them.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { test } from "node:test";

const root = fileURLToPath(new URL("..", import.meta.url));
const tsc = fileURLToPath(new URL("../node_modules/typescript/bin/tsc", import.meta.url));

test("src/index.d.ts type-checks test/types/usage.ts", { skip: !existsSync(tsc) && "typescript is not installed (npm ci)" }, () => {
  const done = spawnSync(process.execPath, [tsc, "-p", "tsconfig.json"], { cwd: root, encoding: "utf8" });
  assert.equal(done.status, 0, done.stdout + done.stderr);
});
