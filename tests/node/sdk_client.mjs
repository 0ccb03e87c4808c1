#!/usr/bin/env node
// Runs a scenario with the official Kernel Node SDK (@onkernel/sdk, pinned in package.json)
// through an HTTP proxy, and prints what happened as one JSON object on stdout.
//
//   NODE_EXTRA_CA_CERTS=<proxy CA, e.g. mitmproxy-ca-cert.pem> node sdk_client.mjs '<input JSON>'
//   ... | NODE_EXTRA_CA_CERTS=... node sdk_client.mjs        (the input JSON on stdin)
//
// NODE_EXTRA_CA_CERTS must be set by the caller, in the environment this process starts with
// (Node reads it once, at start): the proxy intercepts TLS to the VM, and the SDK must trust it.
// Node's built-in fetch ignores HTTPS_PROXY; the proxy is given to the SDK as an undici
// ProxyAgent dispatcher, which carries both control-plane and VM requests.
//
// Input:
//   {"proxy": "http://127.0.0.1:PORT", "base_url": "http://127.0.0.1:CP_PORT", "api_key": "...",
//    "max_retries": N (optional; default: the SDK's own, 2),
//    "steps": [
//      {"op": "create", "name"?},                    browsers.create; records the session_id
//      {"op": "retrieve", "id"?},                    browsers.retrieve (an id or a name)
//      {"op": "delete", "id"?},                      browsers.deleteByID
//      {"op": "stream", "id"?, "max_events"?: N, "timeout_ms"?: T}
//                                                    browsers.telemetry.stream: reads up to N events
//                                                    (default 3), the end of the stream, or T ms
//                                                    (default 10000), whichever comes first
//      {"op": "curl", "id"?, "url"}                  browsers.curl (POST /browsers/{id}/curl)
//      {"op": "get", "path"}                         the client's generic get(path); "{id}" in the
//                                                    path is replaced by the last created session
//    ]}
//   A missing "id" means the session_id of the last successful create.
// Output (exit 0; exit 2 with a message on stderr only when the input is malformed):
//   {"sdk_version": "0.84.0", "routing_subresources": [...], "steps": [
//     {"op", "ok": bool, "status": HTTP status or null, "error": "<Class>: <message>" or null,
//      "requests": [{"method", "url" (jwt shortened), "to": "cp"|"vm"|"other",
//                    "authorization": bool, "jwt": bool, "retry_count", "status" or null,
//                    "error" or null}, ...]   (every attempt the SDK sent for this step),
//      ...op-specific fields}]}
//   every step with an id: "id", "route_cached" (after the step, the SDK's route cache holds the
//   session: the id, or the session a name was seen to belong to); create: "id" is the new
//   session_id; retrieve: "session_id";
//   stream: "events" (count), "event_ids", "ended": "max_events"|"end"|"timeout";
//   curl: "curl_status"; get: "exists" (the client has a generic get), "items" (array length).
// The SDK's routing is left at its defaults (KERNEL_BROWSER_ROUTING_SUBRESOURCES, if set in the
// environment, changes it as it would for any SDK user).

import { readFileSync } from 'node:fs';
import Kernel from '@onkernel/sdk';
import { browserRoutingSubresourcesFromEnv } from '@onkernel/sdk/lib/browser-routing';
import { VERSION } from '@onkernel/sdk/version';
import { ProxyAgent } from 'undici';

const OPS = new Set(['create', 'retrieve', 'delete', 'stream', 'curl', 'get']);

function fail(message) {
  process.stderr.write(`sdk_client: ${message}\n`);
  process.exit(2);
}

function readInput() {
  let text = process.argv[2];
  if (text === undefined) {
    try {
      text = readFileSync(0, 'utf8');
    } catch (err) {
      fail(`cannot read the input from stdin: ${err.message}`);
    }
  }
  let input;
  try {
    input = JSON.parse(text);
  } catch (err) {
    fail(`the input is not JSON: ${err.message}`);
  }
  if (!input || typeof input !== 'object' || Array.isArray(input)) fail('the input must be a JSON object');
  for (const key of ['proxy', 'base_url', 'api_key']) {
    if (typeof input[key] !== 'string' || !input[key]) fail(`"${key}" must be a non-empty string`);
  }
  for (const key of ['proxy', 'base_url']) {
    try {
      new URL(input[key]);
    } catch {
      fail(`"${key}" is not a URL: ${input[key]}`);
    }
  }
  if (input.max_retries !== undefined && !(Number.isInteger(input.max_retries) && input.max_retries >= 0)) {
    fail('"max_retries" must be an integer >= 0');
  }
  if (!Array.isArray(input.steps)) fail('"steps" must be an array');
  input.steps.forEach((step, i) => {
    if (!step || typeof step !== 'object' || !OPS.has(step.op)) {
      fail(`step ${i}: "op" must be one of ${[...OPS].join(', ')}`);
    }
    for (const key of ['id', 'name', 'url', 'path']) {
      if (step[key] !== undefined && typeof step[key] !== 'string') fail(`step ${i}: "${key}" must be a string`);
    }
    for (const key of ['max_events', 'timeout_ms']) {
      if (step[key] !== undefined && !(Number.isInteger(step[key]) && step[key] > 0)) {
        fail(`step ${i}: "${key}" must be a positive integer`);
      }
    }
    if (step.op === 'curl' && !step.url) fail(`step ${i}: curl needs "url"`);
    if (step.op === 'get' && !step.path) fail(`step ${i}: get needs "path"`);
  });
  return input;
}

function shortJwt(url) {
  return url.replace(/([?&]jwt=)([^&]*)/, (_, key, value) => `${key}${value.slice(0, 6)}...`);
}

function describeError(err) {
  if (err === null || err === undefined) return null;
  const name = err?.constructor?.name ?? 'Error';
  const cause = err?.cause ? ` (cause: ${err.cause?.constructor?.name ?? 'Error'}: ${err.cause?.message ?? err.cause})` : '';
  return `${name}: ${err?.message ?? String(err)}${cause}`;
}

const input = readInput();
const cpOrigin = new URL(input.base_url).origin;
const vmOrigins = new Set(); // origins of every base_url a browser object named
let attempts = []; // the requests the SDK sent for the current step

// Watches what leaves the SDK (after its routing: the URL is the one it chose), changing nothing.
async function observingFetch(resource, init) {
  const url = resource instanceof Request ? resource.url : String(resource);
  const headers = new Headers(init?.headers ?? (resource instanceof Request ? resource.headers : undefined));
  const parsed = new URL(url);
  const attempt = {
    method: (init?.method ?? (resource instanceof Request ? resource.method : 'GET')).toUpperCase(),
    url: shortJwt(url),
    to: parsed.origin === cpOrigin ? 'cp' : vmOrigins.has(parsed.origin) ? 'vm' : 'other',
    authorization: headers.has('authorization'),
    jwt: parsed.searchParams.has('jwt'),
    retry_count: headers.get('x-stainless-retry-count'),
    status: null,
    error: null,
  };
  attempts.push(attempt);
  try {
    const response = await fetch(resource, init);
    attempt.status = response.status;
    return response;
  } catch (err) {
    attempt.error = describeError(err);
    throw err;
  }
}

const dispatcher = new ProxyAgent(input.proxy);
const client = new Kernel({
  apiKey: input.api_key,
  baseURL: input.base_url,
  ...(input.max_retries !== undefined ? { maxRetries: input.max_retries } : {}),
  fetch: observingFetch,
  fetchOptions: { dispatcher },
});

let lastCreated = null;
const sessionOfName = new Map(); // browser name -> session_id, from the browser objects seen

function noteBrowser(browser) {
  if (browser && typeof browser.name === 'string' && typeof browser.session_id === 'string') {
    sessionOfName.set(browser.name, browser.session_id);
  }
  if (browser && typeof browser.base_url === 'string') {
    try {
      vmOrigins.add(new URL(browser.base_url).origin);
    } catch {
      // not a URL: nothing to note
    }
  }
}

function idOf(step) {
  return step.id ?? lastCreated;
}

// The SDK keys its routes by session_id: a name is looked up as the session it names.
function routeCached(idOrName) {
  const id = sessionOfName.get(idOrName) ?? idOrName;
  return id ? client.browserRouteCache.get(id) !== undefined : false;
}

async function streamEvents(result, step) {
  const { data: stream, response } = await client.browsers.telemetry.stream(result.id).withResponse();
  result.status = response.status;
  const max = step.max_events ?? 3;
  result.events = 0;
  result.event_ids = [];
  result.ended = 'end';
  const timer = setTimeout(() => {
    result.ended = 'timeout';
    stream.controller.abort();
  }, step.timeout_ms ?? 10000);
  try {
    for await (const event of stream) {
      result.events += 1;
      result.event_ids.push(event?.id ?? event?.seq ?? null);
      if (result.events >= max) {
        result.ended = 'max_events';
        break;
      }
    }
  } finally {
    clearTimeout(timer);
  }
}

async function runStep(step, result) {
  switch (step.op) {
    case 'create': {
      const { data, response } = await client.browsers
        .create(step.name !== undefined ? { name: step.name } : {})
        .withResponse();
      result.status = response.status;
      noteBrowser(data);
      result.id = data.session_id;
      lastCreated = data.session_id;
      result.route_cached = routeCached(data.session_id);
      return;
    }
    case 'retrieve': {
      result.id = idOf(step);
      const { data, response } = await client.browsers.retrieve(result.id).withResponse();
      result.status = response.status;
      noteBrowser(data);
      result.session_id = data.session_id;
      result.route_cached = routeCached(data.session_id);
      return;
    }
    case 'delete': {
      result.id = idOf(step);
      const response = await client.browsers.deleteByID(result.id).asResponse();
      result.status = response.status;
      result.route_cached = routeCached(result.id);
      return;
    }
    case 'stream':
      result.id = idOf(step);
      await streamEvents(result, step);
      return;
    case 'curl': {
      result.id = idOf(step);
      const { data, response } = await client.browsers.curl(result.id, { url: step.url }).withResponse();
      result.status = response.status;
      result.curl_status = data?.status ?? null;
      return;
    }
    case 'get': {
      result.exists = typeof client.get === 'function';
      if (!result.exists) throw new Error('this SDK client has no generic get()');
      const path = step.path.replaceAll('{id}', encodeURIComponent(lastCreated ?? ''));
      const { data, response } = await client.get(path).withResponse();
      result.status = response.status;
      result.items = Array.isArray(data) ? data.length : null;
      return;
    }
  }
}

const results = [];
for (const step of input.steps) {
  attempts = [];
  const result = { op: step.op, ok: false, status: null, error: null };
  try {
    if (['retrieve', 'delete', 'stream', 'curl'].includes(step.op) && !idOf(step)) {
      throw new Error('no "id" given and no browser created yet');
    }
    await runStep(step, result);
    result.ok = true;
  } catch (err) {
    result.error = describeError(err);
    if (typeof err?.status === 'number') result.status = err.status;
  }
  if (result.id !== undefined && !('route_cached' in result)) result.route_cached = routeCached(result.id);
  result.requests = attempts;
  results.push(result);
}

await dispatcher.destroy().catch(() => {}); // no idle keep-alive connection holds the process open
process.stdout.write(
  JSON.stringify({
    sdk_version: VERSION,
    routing_subresources: browserRoutingSubresourcesFromEnv(),
    steps: results,
  }) + '\n',
);
