// Command signatures of the center link, from docs/center-link.md ("Signing",
// "The canonical form") alone: the bytes signed are RFC 8785 (JCS) of the
// command without `sig`, and commands carry integers only, so JCS needs no
// number formatting here. No JCS library on purpose: the docs must suffice.

import { createPrivateKey, createPublicKey, sign, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';

const MAX_INT = Number.MAX_SAFE_INTEGER; // 2^53 - 1: the contract's integer bound
const MAX_DEPTH = 32; // the command object is level 1; each object or array inside adds one

/** A value that has no canonical form (the gateway answers such a command bad_request). */
export class NoCanonicalForm extends Error {}

// JCS's short escapes; every other character below U+0020 is \u00xx, lower-case hex.
const SHORT = { '"': '\\"', '\\': '\\\\', '\b': '\\b', '\t': '\\t', '\n': '\\n', '\f': '\\f', '\r': '\\r' };

// An unpaired surrogate (String.prototype.isWellFormed is newer than Debian's Node 18).
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function quote(text, path) {
  if (LONE_SURROGATE.test(text)) throw new NoCanonicalForm(`${path}: a string with an unpaired surrogate`);
  let out = '"';
  for (const ch of text) {
    const code = ch.codePointAt(0);
    if (SHORT[ch] !== undefined) out += SHORT[ch];
    else if (code < 0x20) out += '\\u' + code.toString(16).padStart(4, '0');
    else out += ch; // "/", DEL, U+2028 and astral characters as themselves
  }
  return out + '"';
}

/** The canonical JSON text of `value`; throws NoCanonicalForm outside the command domain. */
export function canonicalText(value, path = '$', depth = 0) {
  if (value !== null && typeof value === 'object' && ++depth > MAX_DEPTH) {
    throw new NoCanonicalForm(`${path}: nesting deeper than ${MAX_DEPTH} levels`);
  }
  if (value === null || value === true || value === false) return String(value);
  if (typeof value === 'number') {
    if (!Number.isInteger(value) || Math.abs(value) > MAX_INT) {
      throw new NoCanonicalForm(`${path}: ${value} is not an integer within ±(2^53 − 1)`);
    }
    return String(value === 0 ? 0 : value); // -0 is written 0
  }
  if (typeof value === 'string') return quote(value, path);
  if (Array.isArray(value)) {
    return '[' + value.map((v, i) => canonicalText(v, `${path}[${i}]`, depth)).join(',') + ']';
  }
  if (typeof value === 'object') {
    const keys = Object.keys(value);
    for (const key of keys) {
      if (!/^[\x00-\x7f]*$/.test(key)) throw new NoCanonicalForm(`${path}: the key ${JSON.stringify(key)} is not ASCII`);
    }
    // Keys are ASCII: UTF-16 order (JavaScript's default sort) is code point order.
    const members = keys.sort().map((k) => quote(k, path) + ':' + canonicalText(value[k], `${path}.${k}`, depth));
    return '{' + members.join(',') + '}';
  }
  throw new NoCanonicalForm(`${path}: ${typeof value} is not JSON`);
}

/** The bytes a command's signature covers: UTF-8 of the canonical form, `sig` left out. */
export function signedBytes(command) {
  const { sig: _sig, ...rest } = command;
  return Buffer.from(canonicalText(rest), 'utf8');
}

/**
 * Refuse JSON text whose numbers have a fraction or an exponent (`1500.0`, `1e3`):
 * JSON.parse reads `1500.0` as the integer 1500, so only the text shows it.
 */
export function checkNumbersInText(text) {
  const lexemes = text.replace(/"(?:[^"\\]|\\.)*"/g, '""').match(/-?\d[\d.eE+-]*/g) ?? [];
  const bad = lexemes.find((n) => /[.eE]/.test(n));
  if (bad !== undefined) throw new NoCanonicalForm(`${bad} is a number with a fraction or exponent`);
}

/** An Ed25519 private key from a PKCS#8 PEM file (`-----BEGIN PRIVATE KEY-----`). */
export function loadPrivateKey(pem) {
  const key = createPrivateKey({ key: pem, format: 'pem' });
  if (key.asymmetricKeyType !== 'ed25519') throw new Error(`not an Ed25519 key: ${key.asymmetricKeyType}`);
  return key;
}

export function readPrivateKey(path) {
  return loadPrivateKey(readFileSync(path, 'utf8'));
}

/** `command` with `sig`: standard padded base64 of the 64-byte Ed25519 signature. */
export function signCommand(command, privateKey) {
  const sig = sign(null, signedBytes(command), privateKey).toString('base64');
  return { ...command, sig };
}

/** Whether `command.sig` verifies with an SPKI PEM public key. */
export function verifyCommand(command, publicPem) {
  const key = createPublicKey({ key: publicPem, format: 'pem' });
  return verify(null, signedBytes(command), key, Buffer.from(command.sig, 'base64'));
}
