// An internal service calling Runwire over gRPC from Node: @grpc/grpc-js, with
// @grpc/proto-loader reading the contracts straight from protos/.
//
// It starts an `assistant` run for a user (on a new thread), follows the run's
// events through the bridge's Subscribe until its terminal event, then lists the
// user's runs. The services trust the user's identity because the caller attests
// it with the cluster's attestation key (RUNWIRE_ATTESTATION_KEYS, the variable
// the services read). Where the key and the addresses come from: docs/grpc.md.
//
//   export RUNWIRE_ATTESTATION_KEYS=...
//   node internal_caller.js --user alice \
//     --execution 127.0.0.1:45305 --bridge 127.0.0.1:37471 --registry 127.0.0.1:41613
'use strict';

const crypto = require('node:crypto');
const path = require('node:path');
const { parseArgs } = require('node:util');
const { setTimeout: sleep } = require('node:timers/promises');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = path.resolve(__dirname, '..', '..', 'protos');
const TERMINAL = new Set(['agent_completed', 'agent_error', 'agent_cancelled', 'agent_death']);
// A subscription ended with one of these is resumed from the last event seen:
// the bridge replica is draining or restarting, or this reader fell behind.
const RESUMABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.RESOURCE_EXHAUSTED]);
const CALL_TIMEOUT_MS = 10_000;

/** The three services' client constructors, loaded from the .proto files. */
function loadServices(protoRoot = PROTOS) {
  const definition = protoLoader.loadSync(
    [
      'runwire/execution/v1/execution.proto',
      'runwire/bridge/v1/bridge.proto',
      'runwire/registry/v1/registry.proto',
    ],
    // keepCase: field names as in the .proto (user_context, not userContext);
    // longs as strings (seq, timestamps); enums by name; `item` names the set oneof member.
    { includeDirs: [protoRoot], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true },
  );
  const { runwire } = grpc.loadPackageDefinition(definition);
  return {
    ExecutionService: runwire.execution.v1.ExecutionService,
    BridgeService: runwire.bridge.v1.BridgeService,
    RegistryService: runwire.registry.v1.RegistryService,
  };
}

/** A client whose channel retries calls refused with UNAVAILABLE (a replica draining or restarting). */
function client(Service, address) {
  const retryPolicy = {
    maxAttempts: 4,
    initialBackoff: '0.2s',
    maxBackoff: '2s',
    backoffMultiplier: 2,
    retryableStatusCodes: ['UNAVAILABLE'],
  };
  const config = { methodConfig: [{ name: [{ service: Service.serviceName }], retryPolicy }] };
  return new Service(address, grpc.credentials.createInsecure(), {
    'grpc.service_config': JSON.stringify(config),
  });
}

/** The signing key of a key set (`KEY_ID:BASE64URL[:FLAG...],...`): the first not marked verify-only. */
function signingKey(keySpec) {
  for (const item of keySpec.split(',')) {
    const [keyId, encoded, ...flags] = item.trim().split(':').map((part) => part.trim());
    if (keyId && encoded && !flags.includes('verify-only')) {
      return { keyId, secret: Buffer.from(encoded, 'base64url') };
    }
  }
  throw new Error('the attestation key set has no signing key');
}

/** `bytes` preceded by their length as 4 bytes big-endian. */
function lengthPrefixed(bytes) {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(bytes.length);
  return Buffer.concat([length, bytes]);
}

/**
 * An attested UserContext, as the services verify it: HMAC-SHA256, with the
 * signing key of the key set, over user_id, tenant_id, the sorted roles (each
 * length-prefixed) and expires_at, each prefixed with its length (docs/grpc.md).
 */
function mintContext(keySpec, { userId, tenantId = '', roles = [], ttlS = 60, ...ids }) {
  const { keyId, secret } = signingKey(keySpec);
  const expiresAt = Math.floor(Date.now() / 1000 + ttlS);
  const sortedRoles = roles.map((role) => Buffer.from(role)).sort(Buffer.compare);
  const fields = [
    Buffer.from(userId),
    Buffer.from(tenantId),
    Buffer.concat(sortedRoles.map(lengthPrefixed)),
    Buffer.from(String(expiresAt)),
  ];
  const mac = crypto.createHmac('sha256', secret).update(Buffer.concat(fields.map(lengthPrefixed))).digest();
  return {
    ...ids, // thread_id, run_id ... are not attested
    user_id: userId,
    tenant_id: tenantId,
    roles,
    request_id: `req_${crypto.randomBytes(16).toString('hex')}`,
    expires_at: { seconds: String(expiresAt), nanos: 0 },
    attestation: { key_id: keyId, mac },
  };
}

/** The output of `runwire context mint --format json` (proto3 JSON) as a proto-loader object. */
function contextFromMintJson(text) {
  const ctx = JSON.parse(text);
  return {
    ...ctx,
    expires_at: { seconds: String(Math.floor(Date.parse(ctx.expires_at) / 1000)), nanos: 0 },
    attestation: { key_id: ctx.attestation.key_id, mac: Buffer.from(ctx.attestation.mac, 'base64') },
  };
}

function deadline() {
  return new Date(Date.now() + CALL_TIMEOUT_MS);
}

/** Promisify one unary call: `await unary(client, 'ListRuns', request)`. */
function unary(serviceClient, method, request) {
  return new Promise((resolve, reject) => {
    serviceClient[method](request, { deadline: deadline() }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

/** End a stream we no longer read. Cancelling reports CANCELLED as an 'error', which is expected. */
function stop(call) {
  call.on('error', () => {});
  call.cancel();
}

/** A cursor at the end of the user's event log: every later event comes after it. */
async function currentCursor(bridge, mint) {
  const call = bridge.Subscribe({ user_context: mint() }, { deadline: deadline() });
  try {
    for await (const item of call) {
      return item.replay_complete.resume_after; // live only (no `after`): replay_complete comes first
    }
  } finally {
    stop(call);
  }
  throw new Error('the bridge ended the subscription without a cursor');
}

/** The user's events after `after`, in order; resumes where it left off when the stream ends. */
async function* follow(bridge, mint, after, warn = console.warn) {
  let cursor = after;
  for (;;) {
    // No deadline: the stream lasts as long as we read. A fresh context per (re)subscription.
    const call = bridge.Subscribe({ user_context: mint(), after: cursor });
    try {
      for await (const item of call) {
        if (item.item === 'gap') {
          warn(`warning: events after ${cursor} are no longer retained`);
        } else if (item.item === 'event') {
          cursor = item.event.event_id;
          yield item.event;
        }
      }
    } catch (err) {
      if (!RESUMABLE.has(err.code)) throw err;
      warn(`subscription ended (${err.details}); resuming after ${cursor}`);
    } finally {
      stop(call);
    }
    await sleep(500);
  }
}

/** Start a run, print its events, list the user's runs; return the run, its events and the runs. */
async function runExample({ user, keys, execution, bridge, registry, message, log = console.log }) {
  const services = loadServices();
  const executions = client(services.ExecutionService, execution);
  const events = client(services.BridgeService, bridge);
  const runs = client(services.RegistryService, registry);
  const mint = () => mintContext(keys, { userId: user });
  try {
    // Take the cursor before starting the run, so none of its events can be missed.
    const cursor = await currentCursor(events, mint);
    const { run } = await unary(executions, 'StartRun', {
      user_context: mint(), // no thread_id: the run starts a new thread
      agent: 'assistant',
      input_json: JSON.stringify({ message }),
    });
    log(`run ${run.run_id} started on thread ${run.thread_id}`);

    const seen = [];
    for await (const event of follow(events, mint, cursor)) {
      if (event.run_id !== run.run_id) continue; // the user's other runs share the stream
      seen.push(event);
      log(`[${event.seq.padStart(3)}] ${event.type.padEnd(16)} ${event.payload_json}`);
      if (TERMINAL.has(event.type)) break;
    }

    const page = await unary(runs, 'ListRuns', { user_context: mint(), page_size: 10 });
    log(`${user}'s latest runs:`);
    for (const listed of page.runs) {
      const state = listed.state.replace('RUN_STATE_', '').toLowerCase();
      log(`  ${listed.run_id}  ${listed.agent.padEnd(10)} ${state.padEnd(10)} ${listed.thread_id}`);
    }
    return { run, events: seen, runs: page.runs };
  } finally {
    for (const c of [executions, events, runs]) c.close();
  }
}

async function main() {
  const { values } = parseArgs({
    options: {
      user: { type: 'string' },
      execution: { type: 'string', default: process.env.RUNWIRE_EXECUTION_ADDRESS },
      bridge: { type: 'string', default: process.env.RUNWIRE_BRIDGE_ADDRESS },
      registry: { type: 'string', default: process.env.RUNWIRE_REGISTRY_ADDRESS },
      message: { type: 'string', default: 'what is 12 * (3 + 4)?' },
    },
  });
  const keys = process.env.RUNWIRE_ATTESTATION_KEYS;
  if (!(values.user && keys && values.execution && values.bridge && values.registry)) {
    console.error('usage: set RUNWIRE_ATTESTATION_KEYS; node internal_caller.js --user NAME '
      + '--execution HOST:PORT --bridge HOST:PORT --registry HOST:PORT');
    return 2;
  }
  try {
    const { events } = await runExample({ ...values, keys });
    return events.at(-1)?.type === 'agent_completed' ? 0 : 1;
  } catch (err) {
    console.error(`error: ${err.code !== undefined ? grpc.status[err.code] : ''} ${err.details ?? err.message}`);
    return 1;
  }
}

module.exports = { loadServices, client, mintContext, contextFromMintJson, unary, currentCursor, follow, runExample };

if (require.main === module) {
  main().then((code) => { process.exitCode = code; });
}
