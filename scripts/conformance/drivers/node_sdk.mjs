#!/usr/bin/env node
// Conformance driver for the Kernel Node SDK (@onkernel/sdk), its own routing on.
//
//   KERNEL_CONFORM_NODE_PREFIX=<dir holding node_modules/@onkernel/sdk and undici>
//   KERNEL_CONFORM_PROXY=... KERNEL_API_KEY=... KERNEL_BASE_URL=...
//   KERNEL_BROWSER_ROUTING_SUBRESOURCES=telemetry NODE_EXTRA_CA_CERTS=<proxy CA> node node_sdk.mjs
//
// Speaks the driver protocol (docs/conform.md) on stdin and stdout. The SDK version under test is
// loaded from KERNEL_CONFORM_NODE_PREFIX (the runner installs each version there), so this one
// file drives every version. Node's fetch ignores HTTPS_PROXY: the proxy is given to the SDK as an
// undici ProxyAgent, which carries both control-plane and VM requests; NODE_EXTRA_CA_CERTS must
// be set when the process starts. Every call goes through the SDK's public client.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';

function setting(name) {
  const value = process.env[name];
  if (!value) {
    process.stderr.write(`driver: ${name} is not set (the conformance runner sets it)\n`);
    process.exit(2);
  }
  return value;
}

const require = createRequire(join(resolve(setting('KERNEL_CONFORM_NODE_PREFIX')), 'package.json'));
const sdk = require('@onkernel/sdk');
const { ProxyAgent } = require('undici');
const Kernel = sdk.Kernel ?? sdk.default;
const version = JSON.parse(
  readFileSync(join(dirname(require.resolve('@onkernel/sdk')), 'package.json'), 'utf8'),
).version;

const dispatcher = new ProxyAgent(setting('KERNEL_CONFORM_PROXY'));
const client = new Kernel({
  apiKey: setting('KERNEL_API_KEY'),
  baseURL: setting('KERNEL_BASE_URL'),
  fetchOptions: { dispatcher },
});

function parsed(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function failed(kind, message, status = null, fields = {}) {
  return { ok: false, status, error: { kind, message }, ...fields };
}

// What the caller got from an SDK error.
function caught(err, fields = {}) {
  const name = err?.constructor?.name ?? 'Error';
  if (err instanceof sdk.APIError && typeof err.status === 'number') {
    return failed('status', String(err.message), err.status, { json: err.error ?? null, body: null, ...fields });
  }
  if (err instanceof sdk.APIConnectionTimeoutError) return failed('timeout', `${name}: ${err.message}`, null, fields);
  if (err instanceof sdk.APIConnectionError) return failed('connection', `${name}: ${err.message}`, null, fields);
  return failed('other', `${name}: ${err?.message ?? String(err)}`, null, fields);
}

function options(request) {
  return { timeout: request.timeout_ms ?? 10000 };
}

async function browserOp(request) {
  const opts = options(request);
  const id = request.session_id;
  try {
    switch (request.op) {
      case 'create': {
        const { data, response } = await client.browsers.create({}, opts).withResponse();
        return { ok: true, status: response.status, error: null, session_id: data.session_id };
      }
      case 'retrieve': {
        const { data, response } = await client.browsers.retrieve(id, {}, opts).withResponse();
        return { ok: true, status: response.status, error: null, session_id: data.session_id };
      }
      case 'list': {
        const { data, response } = await client.browsers.list({}, opts).withResponse();
        return { ok: true, status: response.status, error: null, count: data.getPaginatedItems().length };
      }
      case 'delete': {
        const response = await client.browsers.deleteByID(id, opts).asResponse();
        return { ok: true, status: response.status, error: null };
      }
      case 'acquire': {
        const { data, response } = await client.browserPools.acquire(request.pool, {}, opts).withResponse();
        return { ok: true, status: response.status, error: null, session_id: data.session_id };
      }
      default: {
        const body = { session_id: id };
        const response = await client.browserPools.release(request.pool, body, opts).asResponse();
        return { ok: true, status: response.status, error: null };
      }
    }
  } catch (err) {
    return caught(err);
  }
}

// A browser subresource call through the SDK's generic methods: routed by the SDK.
async function call(request) {
  const path = `/browsers/${encodeURIComponent(request.session_id)}/${request.path}`;
  const method = String(request.method ?? 'GET').toLowerCase();
  const opts = { ...options(request), query: Object.fromEntries(request.query ?? []) };
  if (['post', 'put', 'patch'].includes(method) && request.body !== undefined) opts.body = request.body;
  if (request.stream) return stream(path, opts, request.max_events ?? 3);
  try {
    const response = await client[method](path, opts).asResponse();
    const text = await response.text();
    return { ok: true, status: response.status, error: null, json: parsed(text), body: text };
  } catch (err) {
    return caught(err);
  }
}

// An SSE stream read through the SDK's Stream, each event timed as the caller sees it.
async function stream(path, opts, maxEvents) {
  const start = performance.now();
  const events = [];
  let status = null;
  try {
    const { data, response } = await client.get(path, { ...opts, stream: true }).withResponse();
    status = response.status;
    for await (const event of data) {
      events.push({ t_ms: Math.round(performance.now() - start), data: event });
      if (events.length >= maxEvents) break; // leaving the loop aborts the stream
    }
  } catch (err) {
    return caught(err, { events });
  }
  return { ok: true, status, error: null, events };
}

const handlers = {
  create: browserOp,
  retrieve: browserOp,
  list: browserOp,
  delete: browserOp,
  acquire: browserOp,
  release: browserOp,
  call,
};
const cannot = {};
if (typeof client.browserPools?.acquire !== 'function') {
  delete handlers.acquire;
  delete handlers.release;
  cannot.acquire = `@onkernel/sdk ${version} has no browserPools.acquire`;
}
const routing = client.browserRouteCache !== undefined;
if (!routing) cannot.routing = `@onkernel/sdk ${version} has no direct-to-VM routing of its own`;
const hello = {
  client: '@onkernel/sdk',
  language: 'node',
  version,
  cannot,
  can: [...Object.keys(handlers), 'stream', ...(routing ? ['routing'] : [])],
};

// One request a line, answered in order: the runner waits for each answer before the next.
const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (!line.trim()) continue;
  const request = parsed(line);
  let answer;
  if (!request || typeof request !== 'object' || Array.isArray(request)) {
    answer = { id: null, driver_error: `not a JSON object: ${line.slice(0, 80)}` };
  } else if (request.op === 'hello') {
    answer = { ok: true, ...hello };
  } else if (request.op === 'close') {
    answer = { ok: true };
  } else if (handlers[request.op]) {
    answer = await handlers[request.op](request);
  } else {
    answer = { driver_error: `unknown op ${JSON.stringify(request.op)}` };
  }
  if (request && typeof request === 'object') answer.id = request.id ?? null;
  process.stdout.write(JSON.stringify(answer) + '\n');
  if (request?.op === 'close') break;
}
await dispatcher.destroy().catch(() => {}); // no idle keep-alive connection holds the process open
