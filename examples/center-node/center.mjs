#!/usr/bin/env node
// A small center for one building of the gatewayd center link, written from
// docs/ only (docs/center-link.md, docs/schemas/, docs/signing-vectors.json).
//
//   node center.mjs --vectors [--vectors-file FILE]
//       Reproduce the signing test vectors byte for byte; exit 1 on any difference.
//   node center.mjs --broker mqtt://HOST:1883 --building b07 --key center.key STEP...
//       Subscribe to the building, send each STEP in turn, print what was seen
//       as JSON lines; exit 1 if a message failed its schema or a step got no answer,
//       2 if it could not start (options, key, broker).
//
// A STEP is one of:
//   TYPE or TYPE=JSON   a signed command with those args: state.get='{"account":"a"}'
//   !TYPE=JSON          the same, changed after signing (the gateway must say bad_signature)
//   @SUFFIX             wait for the next message on {root}/SUFFIX (@telemetry, @status)

import { createPublicKey, randomBytes, randomUUID } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { NoCanonicalForm, checkNumbersInText, loadPrivateKey, readPrivateKey, signCommand,
  signedBytes, verifyCommand } from './sign.mjs';

const DOCS = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'docs');
// Commands that should still apply when an offline gateway returns carry `expires`.
const KEEP_WHILE_OFFLINE = new Set(['account.credit', 'card.put', 'card.block']);
const EXPIRES_MS = 3 * 24 * 3600 * 1000; // within the contract's 7 days
const print = (record) => process.stdout.write(JSON.stringify(record) + '\n');

// ---- the signing vectors -------------------------------------------------

function checkVectors(file) {
  const data = JSON.parse(readFileSync(file, 'utf8'));
  const key = loadPrivateKey(data.key.private_pem);
  const problems = [];
  const der = (k, type) => k.export({ format: 'der', type }).subarray(-32).toString('hex');
  if (der(key, 'pkcs8') !== data.key.private_seed_hex) problems.push('key: the PEM is not the seed');
  if (der(createPublicKey(key), 'spki') !== data.key.public_hex) problems.push('key: its public key is not the one listed');
  if (der(createPublicKey(data.key.public_pem), 'spki') !== data.key.public_hex) problems.push('key: the public PEM is not the one listed');
  for (const v of data.vectors) {
    const bytes = signedBytes(v.command);
    const sig = signCommand(v.command, key).sig;
    const diffs = [];
    if (bytes.toString('hex') !== v.canonical_hex) diffs.push(`canonical bytes\n  got  ${bytes.toString('hex')}\n  want ${v.canonical_hex}`);
    if (bytes.toString('utf8') !== v.canonical_utf8) diffs.push('canonical text');
    if (sig !== v.sig || v.command.sig !== v.sig) diffs.push(`sig\n  got  ${sig}\n  want ${v.sig}`);
    if (!verifyCommand({ ...v.command, sig: v.sig }, data.key.public_pem)) diffs.push('sig does not verify');
    problems.push(...diffs.map((d) => `${v.name}: ${d}`));
    print({ vector: v.name, bytes: bytes.length, ok: diffs.length === 0 });
  }
  for (const r of data.refused) {
    try {
      checkNumbersInText(r.payload);
      signedBytes(JSON.parse(r.payload));
      problems.push(`refused "${r.why}": it got a canonical form`);
    } catch (e) {
      if (!(e instanceof NoCanonicalForm)) throw e;
      print({ refused: r.why, because: e.message });
    }
  }
  for (const p of problems) process.stderr.write(`DIFFERENT ${p}\n`);
  return problems.length === 0 ? 0 : 1;
}

// ---- validation by topic -------------------------------------------------

async function schemaValidator(dir) {
  // Imported here, so that --vectors needs nothing but Node itself.
  const { default: Ajv2020 } = await import('ajv/dist/2020.js');
  const { default: addFormats } = await import('ajv-formats');
  const ajv = new Ajv2020({ strict: true, allErrors: false });
  addFormats(ajv);
  const compiled = new Map();
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.json'))) {
    compiled.set(file, ajv.compile(JSON.parse(readFileSync(join(dir, file), 'utf8'))));
  }
  return (name, message) => {
    const validate = compiled.get(name);
    if (validate === undefined) return [`no schema ${name}`];
    return validate(message) ? [] : validate.errors.map((e) => `${e.instancePath || '/'} ${e.message}`);
  };
}

// The schema of a message on {root}SUFFIX (center-link.md, "The machine-readable contract").
function schemaFor(suffix, message) {
  if (suffix === '/status') return message?.online === false ? 'will.json' : 'status.json';
  return { '/events': 'event.json', '/telemetry': 'telemetry.json', '/cmd/result': 'result.json' }[suffix];
}

// ---- the link --------------------------------------------------------------

class Center {
  constructor(opts, validate) {
    this.opts = opts;
    this.validate = validate;
    this.root = `${opts.prefix}/${opts.building}`;
    this.key = readPrivateKey(opts.key);
    this.pending = new Map(); // command id -> {type, resolve}
    this.waiters = new Set();
    this.messages = []; // {suffix, message}
    this.eventIds = new Map(); // event id -> times seen
    this.invalid = 0;
    this.unanswered = 0;
  }

  async connect() {
    const { default: mqtt } = await import('mqtt');
    const persistent = this.opts['client-id'] !== undefined;
    // A fixed id gets a persistent session (events wait at the broker while we are away);
    // a tool takes a random id and a clean session (center-link.md, "Its MQTT session").
    const clientId = this.opts['client-id'] ?? `center-example-${randomBytes(6).toString('hex')}`;
    this.client = mqtt.connect(this.opts.broker, {
      protocolVersion: 5, clientId, clean: !persistent, reconnectPeriod: 0,
      properties: persistent ? { sessionExpiryInterval: Number(this.opts['session-expiry-s']) } : {},
    });
    // Before CONNACK: a resumed session may deliver what waited at once.
    this.client.on('message', (topic, payload) => this.onMessage(topic, payload));
    await new Promise((resolve, reject) => {
      this.client.once('connect', resolve);
      this.client.once('error', reject);
      this.client.once('close', () => reject(new Error(`no connection to ${this.opts.broker}`)));
    });
    await this.client.subscribeAsync({
      [`${this.root}/status`]: { qos: 1 }, [`${this.root}/events`]: { qos: 1 },
      [`${this.root}/cmd/result`]: { qos: 1 }, [`${this.root}/telemetry`]: { qos: 0 },
    });
    print({ connected: this.opts.broker, client_id: clientId, persistent });
  }

  onMessage(topic, payload) {
    if (payload.length === 0) return; // a retained status cleared, not a message
    const suffix = topic.slice(this.root.length);
    let message = null;
    let errors;
    try {
      message = JSON.parse(payload.toString('utf8'));
      errors = this.validate(schemaFor(suffix, message), message);
    } catch (e) {
      errors = [`not JSON: ${e.message}`];
    }
    const mine = suffix === '/cmd/result' ? this.pending.get(message?.id) : undefined;
    if (mine !== undefined && errors.length === 0) errors = this.validate(`result.${mine.type}.json`, message);
    if (errors.length > 0) this.invalid += 1;
    if (suffix === '/events' && message?.id) this.eventIds.set(message.id, (this.eventIds.get(message.id) ?? 0) + 1);
    this.messages.push({ suffix, message });
    print({ seen: suffix.slice(1), schema: schemaFor(suffix, message), valid: errors.length === 0, errors, message });
    if (mine !== undefined) {
      this.pending.delete(message.id);
      mine.resolve(message);
    }
    for (const waiter of this.waiters) waiter();
  }

  /** Resolve once `check()` holds (now or after a message), or with false after the timeout. */
  waitFor(check) {
    if (check()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (value) => { clearTimeout(timer); this.waiters.delete(waiter); resolve(value); };
      const waiter = () => { if (check()) done(true); };
      const timer = setTimeout(() => done(false), Number(this.opts['timeout-s']) * 1000);
      this.waiters.add(waiter);
    });
  }

  command(type, args) {
    const ts = new Date();
    const command = { id: randomUUID(), to: this.opts.building, type, ts: ts.toISOString() };
    if (KEEP_WHILE_OFFLINE.has(type)) command.expires = new Date(ts.getTime() + EXPIRES_MS).toISOString();
    if (args !== undefined) command.args = args;
    return signCommand(command, this.key);
  }

  /** Publish a command at QoS 1 and wait for its result, matched by id. */
  async send(command) {
    const result = new Promise((resolve) => this.pending.set(command.id, { type: command.type, resolve }));
    const mark = this.messages.length;
    print({ sent: command });
    await this.client.publishAsync(`${this.root}/cmd`, JSON.stringify(command), { qos: 1, retain: false });
    const answered = await this.waitFor(() => !this.pending.has(command.id));
    if (!answered) {
      this.pending.delete(command.id);
      this.unanswered += 1;
      print({ unanswered: command.id, type: command.type });
      return;
    }
    const r = await result;
    if (command.type === 'events.resend' && r.ok && r.result.queued > 0) await this.awaitResent(r.result, mark);
  }

  /** Wait until as many events of the resent range arrived as the result says were queued. */
  async awaitResent({ from_seq: from, to_seq: to, queued }, mark) {
    const count = () => this.messages.slice(mark).filter(({ suffix, message }) =>
      suffix === '/events' && message.seq >= Math.max(from, 1) && message.seq <= to).length;
    const whole = await this.waitFor(() => count() >= queued);
    print({ resent: { queued, received: count() } });
    if (!whole) this.unanswered += 1;
  }

  async step(spec) {
    if (spec.startsWith('@')) {
      const suffix = `/${spec.slice(1)}`;
      const mark = this.messages.length;
      const seen = await this.waitFor(() => this.messages.slice(mark).some((m) => m.suffix === suffix));
      if (!seen) this.unanswered += 1;
      return;
    }
    const tamper = spec.startsWith('!');
    const [type, ...json] = spec.slice(tamper ? 1 : 0).split('=');
    const command = this.command(type, json.length > 0 ? JSON.parse(json.join('=')) : undefined);
    // A field added after signing is covered by the signature too: this one cannot verify.
    await this.send(tamper ? { ...command, 'x-added-after-signing': true } : command);
  }

  summary() {
    const seqs = [...new Set(this.messages.filter((m) => m.suffix === '/events').map((m) => m.message.seq))];
    const repeated = [...this.eventIds.values()].filter((n) => n > 1).length;
    return { messages: this.messages.length, invalid: this.invalid, unanswered: this.unanswered,
      events: this.eventIds.size, events_seen_again: repeated, seqs: seqs.sort((a, b) => a - b) };
  }
}

// ---- main ----------------------------------------------------------------

const OPTIONS = {
  vectors: { type: 'boolean', default: false },
  'vectors-file': { type: 'string', default: join(DOCS, 'signing-vectors.json') },
  broker: { type: 'string', default: 'mqtt://127.0.0.1:1883' },
  building: { type: 'string', default: 'b07' },
  prefix: { type: 'string', default: 'ecard/v1' },
  key: { type: 'string', default: 'center.key' },
  'client-id': { type: 'string' },
  'session-expiry-s': { type: 'string', default: String(30 * 24 * 3600) },
  'timeout-s': { type: 'string', default: '20' },
  schemas: { type: 'string', default: join(DOCS, 'schemas') },
};

async function main() {
  const { values: opts, positionals: steps } = parseArgs({ options: OPTIONS, allowPositionals: true });
  if (opts.vectors) return checkVectors(opts['vectors-file']);
  const center = new Center(opts, await schemaValidator(opts.schemas));
  await center.connect();
  try {
    for (const spec of steps) await center.step(spec);
  } finally {
    await center.client.endAsync();
  }
  const summary = center.summary();
  print({ summary });
  return summary.invalid === 0 && summary.unanswered === 0 ? 0 : 1;
}

try {
  process.exitCode = await main();
} catch (e) {
  process.stderr.write(`center.mjs: ${e.message}\n`);
  process.exitCode = 2;
}
