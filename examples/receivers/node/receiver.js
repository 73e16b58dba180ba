#!/usr/bin/env node
// A webhook receiver for walhook, Node standard library only (no Express, no body parser).
//
// It verifies every delivery's signature over the RAW request body, answers 401 when the
// signature is missing or wrong, deduplicates by the payload's `id` (walhook delivers at least
// once: a redelivery carries the same id), and prints one line per delivery:
//
//     signature OK  INSERT orders id=1  evt_0000000001a2b3c400000000
//
// Environment:
//   WEBHOOK_SECRET     the subscription's `secret` (required)
//   WEBHOOK_SIGNATURE  "archie" (default: X-Archie-Signature: sha256=<hex>) or "standard"
//                      (Standard Webhooks: webhook-id / webhook-timestamp / webhook-signature)
//   HOST, PORT         where to listen (default 127.0.0.1:9000; PORT=0 picks a free port)
//
// Run:  WEBHOOK_SECRET=whsec_your_signing_secret node receiver.js
'use strict';

const crypto = require('crypto');
const http = require('http');

const SECRET = process.env.WEBHOOK_SECRET || '';
const SCHEME = process.env.WEBHOOK_SIGNATURE || 'archie';
const HOST = process.env.HOST || '127.0.0.1';
const PORT = Number(process.env.PORT || 9000);
const MAX_BODY = 1 << 20;
// Standard Webhooks: reject timestamps further than this from now (replay protection).
const TOLERANCE_SECONDS = 5 * 60;

// Archie's documented verification code, unchanged. Pass it the RAW body as received.
// The documentation's Express example passes JSON.stringify(req.body) instead: that re-serialises
// the parsed JSON, and the bytes differ from what was signed — 99.50 becomes 99.5, any spacing
// or escaping changes — so valid deliveries fail verification. Verify the raw bytes.
function verifyWebhookSignature(payload, signature, secret) {
  const expected = crypto
    .createHmac('sha256', secret)
    .update(payload, 'utf8')
    .digest('hex');

  const sig = signature.replace('sha256=', '');
  return crypto.timingSafeEqual(
    Buffer.from(sig, 'hex'),
    Buffer.from(expected, 'hex')
  );
}

// Standard Webhooks (https://www.standardwebhooks.com): HMAC-SHA256 over
// "{webhook-id}.{webhook-timestamp}.{body}" with the base64 key after "whsec_"; the header holds
// one or more space-separated "v1,<base64>" signatures (two during a secret rotation).
function verifyStandardWebhook(payload, headers, secret) {
  const id = headers['webhook-id'];
  const timestamp = headers['webhook-timestamp'];
  const signatures = headers['webhook-signature'];
  if (!id || !timestamp || !signatures) return false;
  const ts = Number(timestamp);
  if (!Number.isInteger(ts) || Math.abs(Date.now() / 1000 - ts) > TOLERANCE_SECONDS) return false;
  const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64');
  const expected = crypto
    .createHmac('sha256', key)
    .update(`${id}.${timestamp}.${payload}`, 'utf8')
    .digest();
  return signatures.split(' ').some((candidate) => {
    const [version, sig] = candidate.split(',', 2);
    if (version !== 'v1' || !sig) return false;
    const got = Buffer.from(sig, 'base64');
    return got.length === expected.length && crypto.timingSafeEqual(got, expected);
  });
}

function verify(payload, headers) {
  if (SCHEME === 'standard') return verifyStandardWebhook(payload, headers, SECRET);
  const signature = headers['x-archie-signature'];
  if (typeof signature !== 'string') return false;
  try {
    return verifyWebhookSignature(payload, signature, SECRET);
  } catch (e) {
    // timingSafeEqual throws when the lengths differ (e.g. a truncated or non-hex signature).
    return false;
  }
}

// The last 100,000 event ids processed; a delivery whose id is here was already handled.
const seen = new Set();
function firstTime(eventId) {
  if (seen.has(eventId)) return false;
  seen.add(eventId);
  if (seen.size > 100000) seen.delete(seen.values().next().value);
  return true;
}

function reply(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(data),
  });
  res.end(data);
}

function handle(req, res, payload) {
  if (!verify(payload, req.headers)) {
    console.log(`signature INVALID  ${req.url}: answering 401`);
    return reply(res, 401, { error: 'Invalid signature' });
  }
  let event;
  try {
    event = JSON.parse(payload); // parse only after verifying, and never re-serialise to verify
  } catch (e) {
    return reply(res, 400, { error: 'Invalid JSON' });
  }
  const eventId = event.id || req.headers['x-archie-delivery'];
  if (!firstTime(eventId)) {
    console.log(`duplicate  ${eventId}: already processed, answering 200`);
    return reply(res, 200, { status: 'duplicate' });
  }
  const record = event.record || {};
  console.log(
    `signature OK  ${event.event} ${event.table} id=${JSON.stringify(record.id)}  ${eventId}`
  );
  // Process the event here (quickly: answer within a few seconds, queue slow work).
  return reply(res, 200, { status: 'ok' });
}

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/healthz') return reply(res, 200, { status: 'ok' });
  if (req.method !== 'POST') return reply(res, 405, { error: 'POST only' });
  const chunks = [];
  let size = 0;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size > MAX_BODY) {
      reply(res, 413, { error: 'body too large' });
      req.destroy();
      return;
    }
    chunks.push(chunk);
  });
  req.on('end', () => {
    if (size > MAX_BODY) return;
    // The raw body, as a string of exactly the bytes received (walhook sends UTF-8 JSON).
    const payload = Buffer.concat(chunks).toString('utf8');
    handle(req, res, payload);
  });
});

if (!SECRET) {
  console.error("receiver.js: set WEBHOOK_SECRET to the subscription's secret");
  process.exit(1);
}
if (SCHEME !== 'archie' && SCHEME !== 'standard') {
  console.error('receiver.js: WEBHOOK_SIGNATURE must be "archie" or "standard"');
  process.exit(1);
}
process.on('SIGTERM', () => process.exit(0));
server.listen(PORT, HOST, () => {
  const { address, port } = server.address();
  console.log(`listening on http://${address}:${port} (signature scheme: ${SCHEME})`);
});
